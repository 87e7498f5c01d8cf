//! Real Prometheus (Debian's package, installed by scripts/test.sh) scraping the services of a
//! test every 250 ms, asked through its HTTP API as an on-call engineer's dashboard would; and
//! `promtool`, to check expositions and rule files as Prometheus itself parses them.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{ports::Port, process::wait_until_listening};

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/usr/bin/{name}"));
    assert!(
        path.is_file(),
        "{} not found (Debian's prometheus package; scripts/test.sh installs it)",
        path.display()
    );
    path
}

/// Whether Prometheus at `addr` says it is ready (`GET /-/ready` answers 200).
fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

pub struct Prometheus {
    port: Port,
    dir: tempfile::TempDir,
    child: Child,
    http: reqwest::Client,
}

impl Prometheus {
    /// Prometheus scraping `targets` (job name → the `host:port` of its `/metrics`).
    pub fn scraping(targets: &[(&str, SocketAddr)]) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let jobs: String = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n")
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\nscrape_configs:\n{jobs}"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let port = Port::reserve();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(binary("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={}", port.addr()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("prometheus starts");
        wait_until_listening(
            "prometheus",
            &mut child,
            port.number(),
            Duration::from_secs(30),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        // Listening is not ready: until its storage is open, Prometheus answers its API with
        // a plain-text 503.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(port.addr()) {
            assert!(
                Instant::now() < deadline,
                "prometheus never became ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            dir,
            child,
            http: reqwest::Client::new(),
        }
    }

    /// An instant query; the result vector (`[{metric, value: [t, "v"]}, …]`).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let response = self
            .http
            .get(format!("http://{}/api/v1/query", self.port.addr()))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("prometheus answers");
        let status = response.status();
        let body = response.text().await.expect("prometheus' answer");
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: prometheus answered {status} {body:?}: {e}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of `promql` (none when the query has no result).
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        assert!(result.len() <= 1, "{promql} has several series: {result:?}");
        result
            .first()
            .and_then(|series| series["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    /// Waits (at most 15 s: several scrapes) until `promql`'s value is `expected`.
    pub async fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.value(promql).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} is {value:?}, not {expected}; prometheus log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on an exposition: its complaints (empty when it has none).
pub fn check_metrics(exposition: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(binary("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.trim().is_empty() {
        String::new()
    } else {
        format!("({}) {text}", output.status)
    }
}

/// `promtool check rules` on a rule file: Ok with its report, or Err with it.
pub fn check_rules(file: &Path) -> Result<String, String> {
    let output = Command::new(binary("promtool"))
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
