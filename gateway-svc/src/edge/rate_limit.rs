//! Login rate limiting per client address, so that a flood of bogus codes from one place is
//! refused at the edge (429, with Retry-After) before it costs a WeChat call: WeChat's
//! `jscode2session` quota is the app's, and every exchange spends it.
//!
//! Mobile networks put many users behind one address (carrier-grade NAT), so the default is
//! generous; the shipped nginx config adds its own, coarser limit in front.
use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};
use http::HeaderMap;
use ipnet::IpNet;

use crate::config::client_ip;

pub struct LoginLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Peers whose `X-Real-IP` is believed (the reverse proxy in front).
    trusted_proxies: Vec<IpNet>,
    checks: AtomicU64,
}

impl LoginLimiter {
    /// At most `per_minute` logins a minute per client address (0: no limit), in bursts of up
    /// to that many.
    pub fn new(per_minute: u32, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            trusted_proxies,
            checks: AtomicU64::new(0),
        }
    }

    /// The address a login is counted against (`config::client_ip`).
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(&self.trusted_proxies, peer.ip(), headers)
    }

    /// Ok, or how long until this address may log in again.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Forget idle addresses now and then, so the table does not grow without bound.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(real_ip: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-real-ip", real_ip.parse().unwrap());
        headers
    }

    #[test]
    fn each_address_has_its_own_budget() {
        let limiter = LoginLimiter::new(2, vec![]);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(limiter.check(b).is_ok());
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = LoginLimiter::new(0, vec![]);
        for _ in 0..1000 {
            assert!(limiter.check("10.0.0.1".parse().unwrap()).is_ok());
        }
    }

    #[test]
    fn only_trusted_proxies_name_the_client() {
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let limiter = LoginLimiter::new(1, vec!["127.0.0.1/32".parse().unwrap()]);
        let named = headers("203.0.113.9");
        assert_eq!(
            limiter.client_address(proxy, &named),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            limiter.client_address(stranger, &named),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            limiter.client_address(proxy, &headers("not an address")),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        // A network: the proxies of a container network.
        let limiter = LoginLimiter::new(1, vec!["172.16.0.0/12".parse().unwrap()]);
        let compose_nginx: SocketAddr = "172.18.0.5:41000".parse().unwrap();
        assert_eq!(
            limiter.client_address(compose_nginx, &named),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }
}
