//! A real MongoDB-wire-protocol server for tests: `nx-27017` (SQLite behind the MongoDB wire
//! protocol, from PyPI), one process per test, on its own port and data directory. Stopping
//! and starting it again keeps its data, as a database restart does.
//!
//! The binary is found through `NX_27017_BIN`, then `PATH`, then the virtualenv that
//! `scripts/test.sh` creates. Without it the test fails, loudly: Mongo tests are never skipped.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{ports::Port, process::wait_until_listening};

pub struct MongoServer {
    port: Port,
    data_dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("NX_27017_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nx-27017"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(path) = on_path {
        return path;
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/nx-27017");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "nx-27017 (the MongoDB-wire test server) is not installed: run scripts/test.sh, which \
         installs it, or `pip install nx-27017==0.8.1` and put it on PATH or in NX_27017_BIN"
    );
}

impl MongoServer {
    /// Starts a fresh, empty server.
    pub fn start() -> Self {
        let mut server = Self {
            port: Port::reserve(),
            data_dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        server.resume();
        server
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port.number())
    }

    pub fn port(&self) -> u16 {
        self.port.number()
    }

    /// Starts the server again on the same port and data after [`Self::stop`].
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nx-27017 already running");
        let dir = self.data_dir.path();
        std::fs::create_dir_all(dir.join("data")).expect("nx-27017 data dir");
        let mut child = Command::new(binary())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--port")
            .arg(self.port.number().to_string())
            .arg("--log-file")
            .arg(dir.join("nx.log"))
            .arg("--pid-file")
            .arg(dir.join("nx.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nx-27017 starts");
        let log = dir.join("nx.log");
        wait_until_listening(
            "nx-27017",
            &mut child,
            self.port.number(),
            Duration::from_secs(20),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        self.child = Some(child);
    }

    /// Kills the server (as an outage would) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
