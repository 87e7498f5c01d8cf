//! Ports that cannot race. A test's server may be stopped and started again on the same
//! port, and a port picked by binding, closing and hoping can be taken in between — by
//! another test's server, or by any outgoing connection as its local port. A [`Port`] holds
//! its port for as long as it lives with a socket that is bound but never listens, with
//! `SO_REUSEADDR`: Linux then lets a server (which sets `SO_REUSEADDR` too, as Rust's std,
//! tokio, nginx and nx-27017 all do) bind and listen on it, refuses binds without the option,
//! and never picks it as an outgoing connection's local port or for a bind to port 0. While no server listens, connections to it are
//! refused at once, as they would be on a free port.
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Socket, Type};

pub struct Port {
    _holder: Socket,
    addr: SocketAddr,
}

impl Port {
    /// A fresh loopback port, held until this is dropped.
    pub fn reserve() -> Self {
        let holder = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        holder.set_reuse_address(true).expect("SO_REUSEADDR");
        holder
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind a loopback port");
        let addr = holder
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the reserved port's address");
        Self {
            _holder: holder,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn number(&self) -> u16 {
        self.addr.port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_can_listen_on_a_reserved_port_again_and_again_and_nobody_else_can_bind_it() {
        let port = Port::reserve();
        for _ in 0..2 {
            // A socket without SO_REUSEADDR (as an outgoing connection's autobind behaves).
            let plain = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            assert!(
                plain.bind(&port.addr().into()).is_err(),
                "a bind without SO_REUSEADDR must be refused"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async {
                let server = tokio::net::TcpListener::bind(port.addr()).await.unwrap();
                let client = tokio::net::TcpStream::connect(port.addr());
                let (accepted, connected) = tokio::join!(server.accept(), client);
                assert!(accepted.is_ok() && connected.is_ok());
            });
        }
        assert!(
            std::net::TcpStream::connect(port.addr()).is_err(),
            "refused while down"
        );
    }
}
