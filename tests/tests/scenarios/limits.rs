//! Limits on what a client may send, the same on both data planes: request headers over 60 KiB
//! or over 100 of them are answered 431 and never reach the backend (Envoy's defaults), and a
//! client trickling its headers is answered 408 and cut off after straitd's
//! `request_headers_timeout` (10 s).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_tests::{Backend, XdsProtocol, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{CONVERGE, Plain, assert_no_nacks};

const HOST: &str = "api.default.svc.cluster.local:8080";

fn config(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"#
    )
}

/// Sends `request` on a new connection and reads until the proxy closes it or `wait` passes;
/// returns what came back.
async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    read_until_closed(&mut stream, wait).await
}

async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        // A whole response with a length is enough when the connection stays open.
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

fn get_with(headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!("GET /limits HTTP/1.1\r\nhost: {HOST}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

async fn headers_over_the_limits_are_refused(protocol: XdsProtocol) -> anyhow::Result<()> {
    let backend = Backend::start("api-v1");
    let mesh = Plain::start(&[("api.yaml", &config(backend.port()))], protocol)?;
    let addr = mesh.proxy.outbound_addr();
    let wait = Duration::from_secs(5);
    let big = |kib: usize| vec![("x-big".to_string(), "a".repeat(kib * 1024))];
    eventually(CONVERGE, || async {
        let resp = exchange(addr, &get_with(&[]), wait).await?;
        anyhow::ensure!(status(&resp) == Some(200), "{resp}");
        Ok(())
    })
    .await?;

    // Under the limits: through to the backend.
    let seen = backend.requests();
    let resp = exchange(addr, &get_with(&big(50)), wait).await?;
    anyhow::ensure!(status(&resp) == Some(200), "a 50 KiB header: {resp:.200}");
    let ninety: Vec<_> = (0..90).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let resp = exchange(addr, &get_with(&ninety), wait).await?;
    anyhow::ensure!(status(&resp) == Some(200), "90 headers: {resp:.200}");
    anyhow::ensure!(backend.requests() == seen + 2, "both reached the backend");

    // Over them: 431 from the proxy, nothing to the backend.
    let seen = backend.requests();
    let resp = exchange(addr, &get_with(&big(100)), wait).await?;
    anyhow::ensure!(status(&resp) == Some(431), "a 100 KiB header: {resp:.200}");
    let many: Vec<_> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let resp = exchange(addr, &get_with(&many), wait).await?;
    anyhow::ensure!(status(&resp) == Some(431), "120 headers: {resp:.200}");
    anyhow::ensure!(
        backend.requests() == seen,
        "a refused request reached the backend"
    );
    assert_no_nacks(&mesh.straitd).await
}

crate::both_protocols!(
    request_headers_over_the_limits,
    super::headers_over_the_limits_are_refused
);

/// One header line every second: Envoy and strait-proxy both answer 408 once the request's
/// headers have taken 10 s, and close the connection; a kept-alive connection that sends
/// nothing is not cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_are_cut_off() -> anyhow::Result<()> {
    let backend = Backend::start("api-v1");
    let mesh = Plain::start(&[("api.yaml", &config(backend.port()))], XdsProtocol::Delta)?;
    let addr = mesh.proxy.outbound_addr();
    eventually(CONVERGE, || async {
        let resp = exchange(addr, &get_with(&[]), Duration::from_secs(5)).await?;
        anyhow::ensure!(status(&resp) == Some(200), "{resp}");
        Ok(())
    })
    .await?;

    // A connection that has served a request and then sits idle stays open past the timeout.
    let mut idle = TcpStream::connect(addr).await?;
    idle.write_all(&get_with(&[])).await?;
    let first = read_until_closed(&mut idle, Duration::from_secs(5)).await?;
    anyhow::ensure!(status(&first) == Some(200), "{first}");

    let mut slow = TcpStream::connect(addr).await?;
    slow.write_all(format!("GET /slow HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
        .await?;
    let started = Instant::now();
    let mut closed_after = None;
    let mut answer = String::new();
    for i in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if slow
            .write_all(format!("x-line-{i}: still coming\r\n").as_bytes())
            .await
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    let closed_after = closed_after.ok_or_else(|| {
        anyhow::anyhow!("a client trickling its headers was still connected after 30 s")
    })?;
    anyhow::ensure!(
        closed_after >= Duration::from_secs(9) && closed_after <= Duration::from_secs(15),
        "cut off after {closed_after:?}, expected about 10 s"
    );
    anyhow::ensure!(status(&answer) == Some(408), "answer: {answer:?}");

    // The idle connection is still there and serves another request.
    idle.write_all(&get_with(&[])).await?;
    let again = read_until_closed(&mut idle, Duration::from_secs(5)).await?;
    anyhow::ensure!(status(&again) == Some(200), "{again}");
    assert_no_nacks(&mesh.straitd).await
}
