//! The shipped binaries (`session-svc`, `gateway-svc`) run as real processes, for the fault
//! tests that need what only a process has: SIGKILL, SIGTERM and a restart from scratch.
//!
//! The binaries are built by the test itself (`cargo build` of the same profile into the same
//! target directory, once per test process), so a test never runs a stale binary.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{ports::Port, process::wait_until_listening};

/// Where the binaries of this build live: `<target>/<profile>/`, beside the `deps/` folder
/// that holds the running test.
fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("path of the test binary");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps")
            .to_owned();
        let target_dir = profile_dir.parent().expect("<target>").to_owned();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("unexpected target layout: {}", profile_dir.display()),
        };
        let mut cargo = Command::new(env!("CARGO"));
        // This process carries what cargo set for the test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME,
        // …). ring's build script asks to be rerun when some of those change, so a build that
        // inherits them rebuilds ring, and all that depends on it, under the same fingerprint,
        // and the next build from a shell rebuilds it all back (in a fresh-clone CI run, the
        // MongoDB step 142 → 66 s and the local stack's 83 → 9 s once this was mended).
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(set_by_cargo_for_the_test) {
                cargo.env_remove(key);
            }
        }
        let status = cargo
            .args([
                "build",
                "--quiet",
                "--bins",
                "-p",
                "session-svc",
                "-p",
                "gateway-svc",
            ])
            .args(["--profile", profile, "--target-dir"])
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the service binaries failed");
        profile_dir
    })
}

/// The variables cargo sets for the process of a test (not those that configure cargo).
fn set_by_cargo_for_the_test(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_EXE_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// A shipped binary of this build (`session-svc`, `gateway-svc`), for its subcommands.
pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// One service process: its address, environment and log, restartable on the same port.
pub struct ServiceProcess {
    name: &'static str,
    program: PathBuf,
    env: BTreeMap<String, String>,
    port: Port,
    /// Where its `/metrics` is, when the test did not say.
    metrics_port: Option<Port>,
    log: tempfile::NamedTempFile,
    child: Option<Child>,
}

impl ServiceProcess {
    /// session-svc listening on a fresh port, configured by `env` (`WEAPP_*` variables).
    pub fn session_svc(env: &[(&str, String)]) -> Self {
        Self::new("session-svc", "WEAPP_SESSION_LISTEN", env)
    }

    /// gateway-svc listening on a fresh port, configured by `env` (`WEAPP_*` variables).
    pub fn gateway(env: &[(&str, String)]) -> Self {
        Self::new("gateway-svc", "WEAPP_GATEWAY_LISTEN", env)
    }

    fn new(name: &'static str, listen_var: &str, env: &[(&str, String)]) -> Self {
        let port = Port::reserve();
        let mut vars: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        vars.insert(listen_var.to_owned(), port.addr().to_string());
        vars.entry("RUST_LOG".into())
            .or_insert_with(|| "info".into());
        // Several services run side by side: each takes a port of its own for its metrics.
        let metrics_port = (!vars.contains_key("WEAPP_METRICS_LISTEN")).then(Port::reserve);
        if let Some(metrics) = &metrics_port {
            vars.insert("WEAPP_METRICS_LISTEN".into(), metrics.addr().to_string());
        }
        let mut service = Self {
            name,
            program: bin_dir().join(name),
            env: vars,
            port,
            metrics_port,
            log: tempfile::NamedTempFile::new().expect("log file"),
            child: None,
        };
        service.start();
        service
    }

    pub fn addr(&self) -> SocketAddr {
        self.port.addr()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Until a gateway's `/readyz` answers 200 (some replica takes its key), within `within`.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let http = reqwest::Client::new();
        loop {
            let ready = http
                .get(format!("{}/readyz", self.url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        let port = self
            .metrics_port
            .as_ref()
            .expect("the test set WEAPP_METRICS_LISTEN itself");
        reqwest::get(format!("http://{}/metrics", port.addr()))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Starts the process (again) on its port and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = self.log.reopen().expect("log file");
        let err_log = log.try_clone().expect("log file");
        let mut child = Command::new(&self.program)
            .env_clear()
            .envs(std::env::var("PATH").map(|p| ("PATH".to_owned(), p)))
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.program.display()));
        wait_until_listening(
            self.name,
            &mut child,
            self.port.number(),
            Duration::from_secs(30),
            || self.log(),
        );
        self.child = Some(child);
    }

    /// SIGKILL: the process dies at once, with no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (at most `within`; SIGKILL after that, and a panic).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the process is running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM was not delivered");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the process") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {within:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the process a signal by name (`HUP`: reload its configuration files).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the process is running");
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIG{name} was not delivered");
    }

    /// Waits until the log holds `needle` `count` times (a reload logged, …).
    pub fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?} {count} times:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still the one started last (it did not exit or crash).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
