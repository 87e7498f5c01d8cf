//! What the helpers that run real servers (nx-27017, nginx) share: a free port, and waiting
//! until a freshly spawned server listens — or failing with its log if it died.
use std::{
    net::TcpStream,
    process::Child,
    time::{Duration, Instant},
};

/// A free port for a server that a test may stop and start again on the same port. It lies
/// below the kernel's ephemeral range: a port from that range, once its server stopped, can be
/// taken by any test's outgoing connection as its local port, and the restart then fails with
/// "address in use".
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_100));
    for attempt in 0..1000u64 {
        let port = low + (random_u64(attempt) % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

fn random_u64(salt: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(salt);
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

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
