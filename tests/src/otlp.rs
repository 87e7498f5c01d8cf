//! A real OTLP receiver process for the tracing tests: `tests/otlp/receiver.py`, the collector's
//! gRPC TraceService on the official protocol definitions (PyPI `opentelemetry-proto`, in the
//! test venv scripts/test.sh builds), writing every span it receives as a line of JSON.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// One span as the receiver got it: ids in lowercase hex, attributes by key.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, …
    pub kind: String,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`, …
    pub status: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Value,
}

pub struct OtlpReceiver {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl OtlpReceiver {
    /// A receiver on a free port.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// A receiver on `port` (one a service was told to export to before anything listened).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(Some(port))
    }

    fn spawn(port: Option<u16>) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../target/test-venv/bin/python");
        assert!(
            python.is_file(),
            "{} not found: scripts/test.sh builds the test venv",
            python.display()
        );
        let dir = tempfile::tempdir().expect("receiver dir");
        let out = dir.path().join("spans.jsonl");
        let log = std::fs::File::create(dir.path().join("receiver.log")).expect("log file");
        let mut child = Command::new(python)
            .arg(root.join("otlp/receiver.py"))
            .arg(&out)
            .args(port.map(|p| p.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the OTLP receiver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let first = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(port) = first
                .lines()
                .next()
                .and_then(|line| serde_json::from_str::<Value>(line).ok())
                .and_then(|line| line["listening"].as_u64())
            {
                break u16::try_from(port).expect("a port");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the OTLP receiver exited ({status}): {}",
                    std::fs::read_to_string(dir.path().join("receiver.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the OTLP receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { dir, child, port }
    }

    /// The endpoint to configure (`WEAPP_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let text = std::fs::read_to_string(self.dir.path().join("spans.jsonl")).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|span| {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                ReceivedSpan {
                    service: text("service"),
                    trace_id: text("trace_id"),
                    span_id: text("span_id"),
                    parent_span_id: text("parent_span_id"),
                    name: text("name"),
                    kind: text("kind"),
                    status: text("status"),
                    start_ns: span["start"].as_u64().unwrap_or_default(),
                    end_ns: span["end"].as_u64().unwrap_or_default(),
                    attributes: span["attributes"].clone(),
                }
            })
            .collect()
    }

    /// Waits (at most 15 s) until a received span satisfies `found`, and returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        found: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(span) = self.spans().into_iter().find(&found) {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} arrived; received: {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
