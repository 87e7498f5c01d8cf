//! What the helpers that run real servers (nx-27017, nginx, the shipped binaries) share:
//! waiting until a freshly spawned server listens — or failing with its log if it died.
use std::{
    net::TcpStream,
    process::Child,
    time::{Duration, Instant},
};

/// Waits until `port` on loopback accepts connections. Panics, with `log()`, when `child`
/// exits first or `within` passes.
pub fn wait_until_listening(
    name: &str,
    child: &mut Child,
    port: u16,
    within: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited at start-up ({status}): {}", log());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen within {within:?}: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
