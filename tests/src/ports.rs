//! Free loopback ports for the processes a test starts.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// A port on 127.0.0.1 that nothing listened on a moment ago.
///
/// The port is released before it is returned, so another process could take it first; the
/// kernel hands out ephemeral ports in sequence, which makes that rare. Within this test
/// process, no port is handed out twice, since parallel tests would otherwise race for one.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0 to find a free port")
            .port();
        let mut given = given.lock().expect("free_port lock poisoned");
        if given.insert(port) {
            return port;
        }
    }
}
