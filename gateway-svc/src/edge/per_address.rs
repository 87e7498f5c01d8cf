//! Connections per client address (`WEAPP_HTTP_MAX_CONNECTIONS_PER_ADDRESS`, off by default).
//! Behind a load balancer without nginx, nothing else stops one address from taking every
//! connection slot of a gateway. The address is the peer's, as the gateway sees it at accept;
//! a trusted proxy's connections (`WEAPP_TRUSTED_PROXIES`) carry many clients, and are not
//! counted. A WebSocket counts while its HTTP connection is being upgraded; after that the
//! socket caps (`WEAPP_WS_MAX_CONNECTIONS`, `WEAPP_WS_MAX_PER_SESSION`) hold it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use ipnet::IpNet;

use crate::config::is_trusted_proxy;

pub struct PerAddress {
    /// 0: off.
    max: usize,
    trusted: Vec<IpNet>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// That address holds its share already.
#[derive(Debug)]
pub struct AtLimit;

/// One counted connection of an address; dropped with the connection.
pub struct Counted {
    owner: Arc<PerAddress>,
    address: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize, trusted: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Self {
            max,
            trusted,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `address`: `Err` when that address is at the limit;
    /// `Ok(None)` when the limit is off or the address is a trusted proxy.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Option<Counted>, AtLimit> {
        let address = address.to_canonical();
        if self.max == 0 || is_trusted_proxy(&self.trusted, address) {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(address).or_default();
        if *count >= self.max {
            return Err(AtLimit);
        }
        *count += 1;
        Ok(Some(Counted {
            owner: self.clone(),
            address,
        }))
    }

    #[cfg(test)]
    fn open(&self, address: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&address).copied().unwrap_or(0)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            // An address with no connection takes no memory.
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let limit = PerAddress::new(2, vec!["10.0.0.1/32".parse().unwrap()]);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let first = limit.admit(client).unwrap();
        let second = limit.admit(client).unwrap();
        assert!(limit.admit(client).is_err());
        // Another address is not affected, nor a trusted proxy.
        assert!(limit.admit("192.0.2.8".parse().unwrap()).is_ok());
        for _ in 0..10 {
            assert!(matches!(limit.admit("10.0.0.1".parse().unwrap()), Ok(None)));
        }
        drop(first);
        assert_eq!(limit.open(client), 1);
        let third = limit.admit(client).unwrap();
        drop((second, third));
        assert_eq!(limit.open(client), 0);
        assert!(limit.open.lock().unwrap().get(&client).is_none());
        // IPv4 mapped into IPv6 is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _a = limit.admit(mapped).unwrap();
        let _b = limit.admit(client).unwrap();
        assert!(limit.admit(client).is_err());
        // Off.
        let off = PerAddress::new(0, Vec::new());
        assert!((0..100).all(|_| matches!(off.admit(client), Ok(None))));
    }
}
