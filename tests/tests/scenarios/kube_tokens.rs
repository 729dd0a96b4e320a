//! straitd --kubernetes takes Kubernetes ServiceAccount tokens as proof of identity on its TLS
//! port, as istiod does: a proxy (either data plane) with a token of audience `strait-ca` gets
//! its workload certificate; the certificate API and xDS refuse tokens of another audience, the API
//! server's own audience and forged ones; straitd's bootstrap tokens keep working; without the
//! API server a token not reviewed yet is `Unavailable`.
//!
//! etcd, the API server and straitd run in a hub (`strait_tests::netns`), the proxy in a pod.
//! Needs the kube tools (`scripts/install-kube-tools.sh`) and root.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use strait_proto::istio::v1::auth::IstioCertificateRequest;
use strait_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use strait_tests::envoy::XdsTarget;
use strait_tests::kube::KubeApi;
use strait_tests::netns::Network;
use strait_tests::{ConfigDir, ProxySpec, Straitd, data_plane, eventually_blocking};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const REVIEWS: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

/// A TLS channel to straitd's TLS port that trusts the mesh root and presents no certificate.
async fn channel(addr: SocketAddr, root: &Path) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(root)?));
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

fn with_bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// CreateCertificate for `spiffe` with `token`: the leaf's URI SANs, or the refusal.
async fn create_certificate(
    channel: &Channel,
    token: &str,
    spiffe: &str,
) -> anyhow::Result<Result<Vec<String>, tonic::Status>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let request = with_bearer(
        IstioCertificateRequest {
            csr,
            validity_duration: 600,
            metadata: None,
        },
        token,
    )?;
    let answer = IstioCertificateServiceClient::new(channel.clone())
        .create_certificate(request)
        .await;
    let response = match answer {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let leaf = response
        .cert_chain
        .first()
        .ok_or_else(|| anyhow::anyhow!("an empty certificate chain"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.as_bytes())?;
    let cert = pem.parse_x509()?;
    let sans = cert
        .subject_alternative_name()?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Ok(sans))
}

/// Opens a delta ADS stream with `token`: `Ok` once straitd accepts it.
async fn open_ads(channel: &Channel, token: &str) -> anyhow::Result<Result<(), tonic::Status>> {
    let first = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "token-probe.shop".into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let request = with_bearer(tokio_stream::iter(vec![first]), token)?;
    Ok(AggregatedDiscoveryServiceClient::new(channel.clone())
        .delta_aggregated_resources(request)
        .await
        .map(|_| ()))
}

fn expect_granted(
    what: &str,
    answer: Result<Vec<String>, tonic::Status>,
    spiffe: &str,
) -> anyhow::Result<()> {
    match answer {
        Ok(sans) if sans == [spiffe] => Ok(()),
        other => anyhow::bail!("{what}: expected a certificate for {spiffe}, got {other:?}"),
    }
}

fn expect_refused(
    what: &str,
    answer: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    needle: &str,
) -> anyhow::Result<()> {
    match answer {
        Err(status) if status.code() == code && status.message().contains(needle) => Ok(()),
        other => anyhow::bail!("{what}: expected {code:?} saying {needle:?}, got {other:?}"),
    }
}

#[test]
fn service_account_tokens_prove_identity_on_the_tls_port() -> anyhow::Result<()> {
    let test = "service_account_tokens_prove_identity_on_the_tls_port";
    if !strait_tests::netns::available(test) || !strait_tests::kube::available(test) {
        return Ok(());
    }
    let net = Network::new()?;
    let pod = net.pod("reviews")?;
    let hub = net.hub().clone();
    let kube = KubeApi::start_in(&hub)?;
    let config = ConfigDir::new()?;
    let mut options = kube.straitd_options(config.path());
    // Two audiences, comma-separated: either will do.
    options
        .extra_args
        .extend(["--token-audience".into(), "strait-ca,istio-ca".into()]);
    let straitd = hub.spawn_from(move || Straitd::start(options))??;

    let kubectl = |args: &[&str]| kube.kubectl(args);
    kube.ensure_namespace("shop")?;
    kubectl(&["create", "serviceaccount", "reviews", "-n", "shop"])?;
    kubectl(&["create", "serviceaccount", "ratings", "-n", "shop"])?;
    let token = |sa: &str, audience: Option<&str>| -> anyhow::Result<String> {
        let mut args = vec!["create", "token", sa, "-n", "shop"];
        if let Some(audience) = audience {
            args.extend(["--audience", audience]);
        }
        Ok(kubectl(&args)?.trim().to_owned())
    };
    let reviews = token("reviews", Some("strait-ca"))?;
    let ratings_istio = token("ratings", Some("istio-ca"))?;
    let wrong_audience = token("reviews", Some("someone-else"))?;
    let api_server_audience = token("reviews", None)?;
    let mut forged: Vec<&str> = reviews.split('.').collect();
    forged[2] = "c2lnbmF0dXJl";
    let forged = forged.join(".");
    // Kept for when the API server is gone: never reviewed before that.
    let unreviewed = token("ratings", Some("strait-ca"))?;
    let bootstrap = straitd.token("shop", "details")?;

    // (1) A proxy with the ServiceAccount token (strait-proxy's --token-file, Envoy's
    // bootstrap token) gets its workload certificate.
    // With an inbound side, so that Envoy, too, loads the certificate (its inbound uses it).
    let spec = ProxySpec::sidecar("reviews-1.shop", "shop", &[("app", "reviews")])
        .workload("reviews", 9080);
    let xds = XdsTarget {
        addr: straitd.tls_addr(),
        tls: Some((straitd.root_cert(), reviews.clone())),
    };
    let plane = data_plane().name();
    let proxy = pod
        .ns
        .spawn_from(move || strait_tests::dataplane::named(plane).launch(&xds, &spec))??;
    let certs_url = format!("{}/certs", proxy.admin_url());
    eventually_blocking(Duration::from_secs(10), || {
        let (status, certs) = pod.enter(|| strait_tests::client::get_blocking(&certs_url))?;
        anyhow::ensure!(
            status == 200 && certs.contains(REVIEWS),
            "the proxy's /certs shows {REVIEWS}: {status} {certs}"
        );
        Ok(())
    })?;

    let tls_addr = straitd.tls_addr();
    let root = straitd.root_cert();
    hub.block_on(async {
        let channel = channel(tls_addr, &root).await?;
        // (2) The certificate API: the identity is the token's ServiceAccount...
        expect_granted(
            "a ServiceAccount token",
            create_certificate(&channel, &reviews, REVIEWS).await?,
            REVIEWS,
        )?;
        let ratings = "spiffe://cluster.local/ns/shop/sa/ratings";
        expect_granted(
            "a token for the second --token-audience",
            create_certificate(&channel, &ratings_istio, ratings).await?,
            ratings,
        )?;
        // ...and no other.
        expect_refused(
            "another identity's CSR",
            create_certificate(&channel, &reviews, ratings).await?,
            Code::PermissionDenied,
            "ns/shop/sa/reviews",
        )?;
        // Tokens not for us, or not the API server's, are refused, saying why.
        expect_refused(
            "a token for another audience",
            create_certificate(&channel, &wrong_audience, REVIEWS).await?,
            Code::Unauthenticated,
            "TokenReview",
        )?;
        expect_refused(
            "a token for the API server",
            create_certificate(&channel, &api_server_audience, REVIEWS).await?,
            Code::Unauthenticated,
            "TokenReview",
        )?;
        expect_refused(
            "a forged token",
            create_certificate(&channel, &forged, REVIEWS).await?,
            Code::Unauthenticated,
            "TokenReview",
        )?;
        // (3) straitd's own bootstrap tokens still work.
        let details = "spiffe://cluster.local/ns/shop/sa/details";
        expect_granted(
            "a bootstrap token",
            create_certificate(&channel, &bootstrap, details).await?,
            details,
        )?;

        // xDS on the TLS port: the same tokens open a stream, or not.
        for good in [&reviews, &bootstrap] {
            if let Err(status) = open_ads(&channel, good).await? {
                anyhow::bail!("an ADS stream with a good token is refused: {status:?}");
            }
        }
        expect_refused(
            "ADS with a token for another audience",
            open_ads(&channel, &wrong_audience).await?,
            Code::Unauthenticated,
            "TokenReview",
        )?;
        anyhow::Ok(())
    })?;

    // Without the API server, a token it has not reviewed yet cannot be checked.
    drop(kube);
    hub.block_on(async {
        let channel = channel(tls_addr, &root).await?;
        expect_refused(
            "a token while the API server is gone",
            create_certificate(
                &channel,
                &unreviewed,
                "spiffe://cluster.local/ns/shop/sa/ratings",
            )
            .await?,
            Code::Unavailable,
            "TokenReview",
        )?;
        // Bootstrap tokens need no API server.
        let details = "spiffe://cluster.local/ns/shop/sa/details";
        expect_granted(
            "a bootstrap token",
            create_certificate(&channel, &bootstrap, details).await?,
            details,
        )?;
        anyhow::Ok(())
    })?;
    let log = straitd.log();
    anyhow::ensure!(
        !log.contains("panicked") && !log.contains(&reviews) && !log.contains(&unreviewed),
        "straitd neither panics nor logs tokens:\n{log}"
    );
    drop(proxy);
    Ok(())
}
