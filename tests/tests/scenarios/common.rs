//! Shared set-up for scenarios: a mesh of bookinfo backends, straitd and one sidecar.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use strait_tests::backend::Bookinfo;
use strait_tests::client::{Req, send_many};
use strait_tests::{ConfigDir, Proxy, ProxySpec, Straitd, StraitdOptions, XdsProtocol, data_plane};

pub const CONVERGE: Duration = Duration::from_secs(10);

/// Istio's own sample files, as they are (kept unmodified in `tests/istio-samples/`).
pub fn istio_sample(name: &str) -> String {
    let path: PathBuf = strait_tests::bins::workspace_root()
        .join("tests/istio-samples")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Istio sample {}: {e}", path.display()))
}

pub struct Mesh {
    pub bookinfo: Bookinfo,
    pub config: ConfigDir,
    pub straitd: Straitd,
    pub proxy: Box<dyn Proxy>,
}

impl Mesh {
    /// Bookinfo backends, a config dir with their registry plus `files`, straitd, and the
    /// productpage sidecar speaking `protocol`.
    pub fn start(files: &[(&str, &str)], protocol: XdsProtocol) -> anyhow::Result<Mesh> {
        let bookinfo = Bookinfo::start();
        let config = ConfigDir::new()?;
        config.write("registry.yaml", &bookinfo.registry_yaml())?;
        for (name, yaml) in files {
            config.write(name, yaml)?;
        }
        let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
        let spec = ProxySpec::sidecar(
            "productpage-v1.default",
            "default",
            &[("app", "productpage"), ("version", "v1")],
        )
        .with_xds_protocol(protocol);
        let proxy = data_plane().start(&straitd, &spec)?;
        Ok(Mesh {
            bookinfo,
            config,
            straitd,
            proxy,
        })
    }

    pub async fn tally(&self, n: usize, req: &Req) -> BTreeMap<String, usize> {
        send_many(n, self.proxy.outbound_addr(), req).await
    }

    /// No proxy connected to this straitd has NACKed anything, and every push is ACKed.
    pub async fn assert_no_nacks(&self) -> anyhow::Result<()> {
        assert_no_nacks(&self.straitd).await
    }
}

/// Fails at once if any proxy connected to `straitd` has NACKed a resource type. A push still
/// on the wire (sent, not yet answered) is given a few seconds to be ACKed: certificate
/// renewals and config updates push at any moment, and a check that lands between the push and
/// the ACK has found nothing wrong.
pub async fn assert_no_nacks(straitd: &Straitd) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match unacked_push(straitd)? {
            None => return Ok(()),
            Some(pending) if std::time::Instant::now() >= deadline => anyhow::bail!(pending),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `Err` on any NACK; otherwise the first push not yet ACKed, if there is one.
fn unacked_push(straitd: &Straitd) -> anyhow::Result<Option<String>> {
    let proxies = straitd.proxies()?;
    anyhow::ensure!(!proxies.is_empty(), "no proxy is connected");
    let mut pending = None;
    for p in proxies {
        for (type_url, t) in p["types"].as_object().into_iter().flatten() {
            anyhow::ensure!(
                t["nack"].is_null(),
                "{} NACKed {type_url}: {}",
                p["node_id"],
                t["nack"]
            );
            if t["acked_version"] != t["sent_version"] && pending.is_none() {
                pending = Some(format!("{} has not ACKed {type_url}: {t}", p["node_id"]));
            }
        }
    }
    Ok(pending)
}

pub fn reviews() -> Req {
    Req::get("reviews:9080", "/")
}

/// Runs `f` once per xDS protocol, so every scenario that uses it covers delta and SotW.
#[macro_export]
macro_rules! both_protocols {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delta() -> anyhow::Result<()> {
                $body(strait_tests::XdsProtocol::Delta).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sotw() -> anyhow::Result<()> {
                $body(strait_tests::XdsProtocol::Sotw).await
            }
        }
    };
}

/// straitd with just `files`, and one sidecar in `default`.
pub struct Plain {
    pub config: ConfigDir,
    pub straitd: Straitd,
    pub proxy: Box<dyn Proxy>,
}

impl Plain {
    pub fn start(files: &[(&str, &str)], protocol: XdsProtocol) -> anyhow::Result<Plain> {
        let config = ConfigDir::new()?;
        for (name, yaml) in files {
            config.write(name, yaml)?;
        }
        let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
        let spec = ProxySpec::sidecar("client-1.default", "default", &[("app", "client")])
            .with_xds_protocol(protocol);
        let proxy = data_plane().start(&straitd, &spec)?;
        Ok(Plain {
            config,
            straitd,
            proxy,
        })
    }
}

/// A plain HTTP/1.1 GET from `source` (a loopback address of the test's choice), as a client
/// elsewhere would send it; the response's status.
pub async fn get_from(
    source: std::net::IpAddr,
    to: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(to).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await??;
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {answer:?}"))
}
