//! Listener sockets bound before an LDS update is ACKed, so an unbindable port is NACKed (as Envoy).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct Sockets {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bound for an accepted listener update, not yet serving.
    reserved: HashMap<SocketAddr, std::net::TcpListener>,
    /// Serving.
    active: HashSet<SocketAddr>,
}

impl Sockets {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure every listener address is bound (serving or reserved), and drops reservations
    /// no longer wanted. On failure nothing new stays reserved.
    pub fn reserve<'a>(
        &self,
        listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>,
    ) -> Result<(), String> {
        let mut inner = self.lock();
        let mut wanted = HashSet::new();
        let mut fresh = Vec::new();
        for (name, addr) in listeners {
            wanted.insert(addr);
            if inner.active.contains(&addr) || inner.reserved.contains_key(&addr) {
                continue;
            }
            let bound = bind(addr);
            match bound {
                Ok(socket) => {
                    inner.reserved.insert(addr, socket);
                    fresh.push(addr);
                }
                Err(error) => {
                    for a in fresh {
                        inner.reserved.remove(&a);
                    }
                    return Err(format!("listener {name:?}: cannot bind {addr}: {error}"));
                }
            }
        }
        inner.reserved.retain(|addr, _| wanted.contains(addr));
        Ok(())
    }

    /// The reserved socket for `addr`, now to be served.
    pub fn take(&self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.lock().reserved.remove(&addr)
    }

    pub fn set_active(&self, addr: SocketAddr, active: bool) {
        let mut inner = self.lock();
        if active {
            inner.active.insert(addr);
        } else {
            inner.active.remove(&addr);
        }
    }
}

/// A listening socket on `addr`, as Envoy binds one: address reuse on, and an IPv6 socket for
/// IPv6 only (so `[::]:P` and `0.0.0.0:P` can both be bound, as a dual-stack listener's two
/// addresses are). Non-blocking, for tokio.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_refused_with_the_reason_and_nothing_stays_bound() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy = taken.local_addr().expect("addr");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let sockets = Sockets::default();
        let error = sockets
            .reserve([("a", free), ("b", busy)])
            .expect_err("busy port");
        assert!(error.contains("listener \"b\": cannot bind"), "{error}");
        // The free one was released again.
        assert!(sockets.take(free).is_none());
        drop(taken);
        sockets.reserve([("b", busy)]).expect("free now");
        assert!(sockets.take(busy).is_some());
    }
}
