//! What session-svc sends its store, counted at the wire: `tests/mongo/command_counter.py`, a
//! TCP proxy between session-svc and nx-27017 that names every command a client sends (the
//! first key of each OP_MSG body). A test points session-svc's MongoDB URI at [`uri`] and
//! reads the counts between two moments.
//!
//! [`uri`]: CommandCounter::uri
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::ports::Port;

pub struct CommandCounter {
    child: Child,
    port: Port,
    control: Port,
}

/// Commands counted since the last reset: everything the application sent, and apart the
/// driver's own monitoring (`hello`, `ping`, …), which it sends on its own timer.
#[derive(Clone, Debug)]
pub struct Counts {
    pub total: u64,
    pub monitoring: u64,
    pub by_command: Value,
}

impl CommandCounter {
    /// A counting proxy in front of the MongoDB-wire server at `upstream` (host:port).
    pub fn start(upstream: &str) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../target/test-venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: scripts/test.sh installs tests/requirements.txt there",
            python.display()
        );
        let (port, control) = (Port::reserve(), Port::reserve());
        let mut child = Command::new(python)
            .arg(root.join("mongo/command_counter.py"))
            .arg(port.number().to_string())
            .arg(control.number().to_string())
            .arg(upstream)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the command counter starts");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut line).ok();
        }
        assert_eq!(
            line.trim(),
            "listening",
            "the command counter did not start"
        );
        Self {
            child,
            port,
            control,
        }
    }

    /// A MongoDB URI that reaches the server through the counter.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true",
            self.port.number()
        )
    }

    async fn ask(&self, reset: bool) -> Counts {
        let url = format!("http://127.0.0.1:{}/", self.control.number());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let request = match reset {
            true => http.post(format!("{url}reset")),
            false => http.get(url),
        };
        let answer: Value = request
            .send()
            .await
            .expect("the command counter answers")
            .json()
            .await
            .expect("the command counter's JSON");
        Counts {
            total: answer["total"].as_u64().unwrap_or_default(),
            monitoring: answer["monitoring"].as_u64().unwrap_or_default(),
            by_command: answer["by_command"].clone(),
        }
    }

    /// The counts so far.
    pub async fn counts(&self) -> Counts {
        self.ask(false).await
    }

    /// Starts counting from zero.
    pub async fn reset(&self) {
        self.ask(true).await;
    }
}

impl Drop for CommandCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
