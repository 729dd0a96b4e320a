//! Signing benchmark: raw ECDSA P-256, CSR signing (1 thread and all cores), 1000 workloads over gRPC.

// Run: cargo bench -p strait-ca --bench signing
// Knobs (env): STRAIT_BENCH_SECS (per throughput run, default 3), STRAIT_BENCH_WORKLOADS
// (default 1000), STRAIT_BENCH_CONCURRENCY (in-flight gRPC requests, default 64).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use strait_ca::{
    CaOptions, CaSource, CertificateAuthority, CertificateService, Identity, ServiceOptions,
    TokenIssuer,
};
use strait_proto::istio::v1::auth::IstioCertificateRequest;
use strait_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::TcpListenerStream;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `op` on `threads` threads for `secs`; returns operations per second.
fn throughput<S: Send>(
    threads: usize,
    secs: u64,
    make_state: impl Fn(usize) -> S + Sync,
    op: impl Fn(&mut S, u64) + Sync,
) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (stop, done, make_state, op) = (&stop, &done, &make_state, &op);
            scope.spawn(move || {
                let mut state = make_state(t);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(&mut state, n);
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn csr_for(key: &KeyPair, identity: &Identity) -> Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.spiffe_uri().as_str().try_into()?)];
    Ok(params.serialize_request(key)?.pem()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<()> {
    let secs = env_or("STRAIT_BENCH_SECS", 3);
    let workloads = env_or("STRAIT_BENCH_WORKLOADS", 1000) as usize;
    let concurrency = env_or("STRAIT_BENCH_CONCURRENCY", 64) as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("ca");
    let ca = CertificateAuthority::load(
        CaSource::SelfSigned {
            data_dir: data_dir.clone(),
        },
        CaOptions::default(),
    )?;
    let tokens = TokenIssuer::load_or_create(&data_dir)?;

    // (a) the crypto library alone: one P-256 signature over a certificate-sized message.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("ring key generation"))?;
    let raw_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("ring key parse"))?;
    let message = vec![0x5a_u8; 450];
    let sign = |_: &mut (), _| {
        let sig = raw_key.sign(&rng, &message).expect("ring signs");
        std::hint::black_box(sig);
    };
    let raw_1 = throughput(1, secs, |_| (), sign);
    let raw_n = throughput(cores, secs, |_| (), sign);
    let sig = raw_key
        .sign(&rng, &message)
        .map_err(|_| anyhow::anyhow!("sign"))?;
    let public = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        raw_key.public_key().as_ref().to_vec(),
    );
    let verify_1 = throughput(
        1,
        secs,
        |_| (),
        |_, _| {
            public.verify(&message, sig.as_ref()).expect("verifies");
        },
    );

    // (b) CA signing of CSRs (parse, key checks, CSR signature verify, sign, PEM), as the
    // gRPC service does per request. 64 distinct CSRs, cycled.
    let identity = Identity::new("cluster.local", "bench", "workload")?;
    let csrs: Vec<String> = (0..64)
        .map(|_| csr_for(&KeyPair::generate()?, &identity))
        .collect::<Result<_>>()?;
    let sign_csr = |_: &mut (), n: u64| {
        let csr = &csrs[(n % csrs.len() as u64) as usize];
        let cert = ca.sign_csr(csr, &identity, None).expect("signs");
        std::hint::black_box(cert);
    };
    let ca_1 = throughput(1, secs, |_| (), sign_csr);
    let ca_n = throughput(cores, secs, |_| (), sign_csr);
    // issue(): key generation + signing, the SDS path for Envoy.
    let issue_1 = throughput(
        1,
        secs,
        |_| (),
        |_, _| {
            std::hint::black_box(ca.issue(&identity, None).expect("issues"));
        },
    );

    // (c) 1000 workloads get their first certificate through the real gRPC API.
    println!("preparing {workloads} workloads (keys, CSRs, tokens)...");
    let prep = Instant::now();
    let mut requests = Vec::with_capacity(workloads);
    for i in 0..workloads {
        let sa = format!("sa-{i}");
        let id = Identity::new("cluster.local", "bench", sa.as_str())?;
        let token = tokens.create("bench", &sa, Duration::from_secs(600))?;
        requests.push((csr_for(&KeyPair::generate()?, &id)?, token, id.spiffe_uri()));
    }
    let prep = prep.elapsed();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (total, mut latencies) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service =
            CertificateService::new(ca.clone(), tokens.clone(), ServiceOptions::default());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let limit = Arc::new(Semaphore::new(concurrency));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(workloads);
        for (csr, token, uri) in requests {
            let permit = limit.clone().acquire_owned().await?;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let began = Instant::now();
                // Each workload is its own client: its own connection, as a new pod's agent.
                let mut client =
                    IstioCertificateServiceClient::connect(format!("http://{addr}")).await?;
                let mut request = tonic::Request::new(IstioCertificateRequest {
                    csr,
                    validity_duration: 3600,
                    metadata: None,
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                let response = client.create_certificate(request).await?.into_inner();
                let elapsed = began.elapsed();
                ensure!(
                    response.cert_chain.len() == 2,
                    "chain of {}",
                    response.cert_chain.len()
                );
                ensure!(
                    response.cert_chain[0].contains("BEGIN CERTIFICATE"),
                    "not a certificate for {uri}"
                );
                Ok::<_, anyhow::Error>(elapsed)
            }));
        }
        let mut latencies = Vec::with_capacity(tasks.len());
        for task in tasks {
            latencies.push(task.await.context("request task")??);
        }
        Ok::<_, anyhow::Error>((start.elapsed(), latencies))
    })?;
    latencies.sort();

    println!();
    println!(
        "strait-ca signing benchmark ({cores} cores, {secs}s per throughput run, release build)"
    );
    println!();
    println!(
        "| measurement                                   | 1 thread     | {cores} threads    |"
    );
    println!("|-----------------------------------------------|--------------|--------------|");
    println!("| ring ECDSA P-256 sign (raw), signatures/s     | {raw_1:>12.0} | {raw_n:>12.0} |");
    println!("| ring ECDSA P-256 verify (raw), verifies/s     | {verify_1:>12.0} |              |");
    println!("| CA sign_csr (verify CSR + sign + PEM), certs/s| {ca_1:>12.0} | {ca_n:>12.0} |");
    println!("| CA issue (P-256 keygen + sign), certs/s       | {issue_1:>12.0} |              |");
    println!(
        "| sign_csr throughput / raw sign throughput     | {:>11.1}% | {:>11.1}% |",
        100.0 * ca_1 / raw_1,
        100.0 * ca_n / raw_n
    );
    // Each sign_csr verifies the CSR's signature and makes one: that pair is its crypto floor.
    let pair_1 = 1.0 / (1.0 / raw_1 + 1.0 / verify_1);
    println!("| raw sign + verify pair (sign_csr's crypto), /s| {pair_1:>12.0} |              |");
    println!(
        "| sign_csr throughput / raw sign+verify pair    | {:>11.1}% |              |",
        100.0 * ca_1 / pair_1
    );
    println!();
    println!(
        "gRPC: {workloads} workloads, first certificate each (connect + CreateCertificate, token auth, plaintext 127.0.0.1, {concurrency} in flight)"
    );
    println!(
        "  total     {:>9.1} ms  ({:.0} certs/s)",
        total.as_secs_f64() * 1e3,
        workloads as f64 / total.as_secs_f64()
    );
    println!(
        "  p50       {:>9.2} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3
    );
    println!(
        "  p99       {:>9.2} ms",
        percentile(&latencies, 99.0).as_secs_f64() * 1e3
    );
    println!(
        "  max       {:>9.2} ms",
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    println!(
        "  (workload keys, CSRs and tokens prepared beforehand in {:.1} ms, not timed)",
        prep.as_secs_f64() * 1e3
    );
    Ok(())
}
