//! strait-proxy's workload identity against a real straitd: the bootstrap token is needed
//! once; renewals and xDS reconnects prove the workload with its certificate.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use strait_tests::config::http_service;
use strait_tests::envoy::XdsTarget;
use strait_tests::strait_proxy::StraitProxyProcess;
use strait_tests::{Backend, ConfigDir, Proxy, ProxySpec, Straitd, StraitdOptions};
use strait_tests::{Req, eventually};

/// The SPIFFE certificate serials `/certs` shows now.
fn serials(proxy: &StraitProxyProcess) -> anyhow::Result<BTreeSet<String>> {
    Ok(proxy.certificate_serials()?.into_iter().collect())
}

fn xds_connected(proxy: &StraitProxyProcess) -> anyhow::Result<bool> {
    let (status, body) =
        strait_tests::client::get_blocking(&format!("{}/stats/prometheus", proxy.admin_url()))?;
    anyhow::ensure!(status == 200, "/stats/prometheus said {status}");
    Ok(body.lines().any(|l| l == "strait_proxy_xds_connected 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_and_reconnects_outlive_the_bootstrap_token() -> anyhow::Result<()> {
    let backend = Backend::start("ratings-v1");
    let config = ConfigDir::new()?;
    config.write(
        "ratings.yaml",
        &http_service("ratings", "default", 9080, &[("v1", backend.port())]),
    )?;
    let mut straitd = Straitd::start(StraitdOptions {
        extra_args: vec!["--workload-cert-ttl".into(), "4s".into()],
        ..StraitdOptions::new(config.path())
    })?;
    // Good for the first certificate and one renewal (at 2s), not for the ones after.
    let token = straitd.token_valid_for("default", "client", "3s")?;
    let target = XdsTarget {
        addr: straitd.tls_addr(),
        tls: Some((straitd.root_cert(), token)),
    };
    let spec =
        ProxySpec::sidecar("client-1.default", "default", &[("app", "client")]).secure("client");
    let proxy = StraitProxyProcess::spawn(&target, &spec)?;

    // 9s: the token expires at 3s, the certificates of 4s renew every 2s.
    let mut seen = serials(&proxy)?;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        seen.extend(serials(&proxy)?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::ensure!(
        seen.len() >= 4,
        "renewals stopped once the token expired: serials {seen:?}\n{}",
        proxy.log()
    );
    // Renewed at half life as held (straitd back-dates not_before by a minute), not at once.
    anyhow::ensure!(
        seen.len() <= 7,
        "{} certificates in 9s: renewing far more often than every 2s",
        seen.len()
    );
    let outbound = proxy.outbound_addr();
    let ratings = || async move {
        let r = strait_tests::client::request(outbound, Req::get("ratings:9080", "/")).await?;
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok::<_, anyhow::Error>(())
    };
    ratings().await?;

    // A new xDS stream, long after the token expired, is accepted on the certificate.
    straitd.restart()?;
    eventually(Duration::from_secs(20), || async {
        anyhow::ensure!(xds_connected(&proxy)?, "the xDS stream is not back");
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    let log = proxy.log();
    anyhow::ensure!(
        !log.contains("bootstrap token refused"),
        "straitd saw the expired token:\n{log}"
    );
    ratings().await?;
    Ok(())
}
