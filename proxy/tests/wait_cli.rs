//! `strait-proxy wait`: the injected postStart hook that holds the app until the sidecar's
//! admin `/ready` says 200.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An admin stand-in on 127.0.0.1 answering `/ready` with 503 `not_before` times, then 200
/// (never, for `usize::MAX`). Returns its address and the count of requests seen.
fn admin(not_before: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            // Read the request head.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = if n >= not_before {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (addr, seen)
}

fn wait(addr: &str, timeout: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strait-proxy"))
        .args(["wait", "--admin-addr", addr, "--timeout", timeout])
        .env_clear()
        .output()
        .expect("running strait-proxy wait")
}

#[test]
fn waits_until_ready_then_exits_zero() {
    let (addr, seen) = admin(3);
    let out = wait(&addr, "20s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seen.load(Ordering::SeqCst), 4, "three 503s, then the 200");
}

#[test]
fn gives_up_at_the_timeout_saying_why() {
    let (addr, _) = admin(usize::MAX);
    let out = wait(&addr, "1s");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not ready") && stderr.contains("503"),
        "{stderr}"
    );
}
