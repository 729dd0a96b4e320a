//! DestinationRules: subsets and traffic policy, validated and resolved per cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use super::scope::export_to;
use super::{
    ClientTls, ClientTlsMode, ConnectionPool, DestinationRule, HashKey, HashRing, LoadBalancer,
    OutlierDetection, Service, Subset, TcpKeepalive, TrafficPolicy, spec_of,
};
use crate::error::{Report, ValidationError};
use crate::host;
use crate::istio::networking as wire;
use crate::loader::{Object, Spec};

/// The policy in force for one cluster after DestinationRule, port and subset overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
}

impl ResolvedPolicy {
    fn overlay(&mut self, p: &TrafficPolicy) {
        if p.load_balancer.is_some() {
            self.load_balancer.clone_from(&p.load_balancer);
        }
        if p.connection_pool.is_some() {
            self.connection_pool.clone_from(&p.connection_pool);
        }
        if p.outlier_detection.is_some() {
            self.outlier_detection.clone_from(&p.outlier_detection);
        }
        if p.tls.is_some() {
            self.tls.clone_from(&p.tls);
        }
    }

    fn overlay_with_port(&mut self, p: &TrafficPolicy, port: u16) {
        self.overlay(p);
        if let Some(port_policy) = p.port_level.get(&port) {
            self.overlay(port_policy);
        }
    }
}

impl DestinationRule {
    /// Istio's merge: top level, its port-level settings, then the subset and its port level.
    pub fn resolve(&self, port: u16, subset: Option<&str>) -> ResolvedPolicy {
        let mut out = ResolvedPolicy::default();
        out.overlay_with_port(&self.policy, port);
        if let Some(s) = subset.and_then(|name| self.subsets.iter().find(|s| s.name == name)) {
            out.overlay_with_port(&s.policy, port);
        }
        out
    }
}

pub(super) fn lookup<'a>(
    rules: &'a BTreeMap<String, DestinationRule>,
    host: &str,
) -> Option<&'a DestinationRule> {
    rules.get(host).or_else(|| {
        rules
            .iter()
            .filter(|(pattern, _)| pattern.starts_with('*') && host::covers(pattern, host))
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, dr)| dr)
    })
}

pub(super) fn build(
    objects: &[&Object],
    services: &BTreeMap<String, Service>,
    errors: &mut Vec<ValidationError>,
    warnings: &mut Vec<ValidationError>,
) -> BTreeMap<String, DestinationRule> {
    let mut out: BTreeMap<String, DestinationRule> = BTreeMap::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::DestinationRule(d) => Some(d),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        if spec.host.is_empty() {
            r.error("spec.host", "a host is required");
            continue;
        }
        if let Err(m) = host::check(&spec.host) {
            r.error("spec.host", m);
            continue;
        }
        let resolved = host::resolve(&spec.host, &o.id.namespace);
        let export_to = export_to(&spec.export_to, &o.id.namespace, "spec.exportTo", &mut r);
        if spec.workload_selector.is_some() {
            r.unsupported(
                "spec.workloadSelector",
                "workloadSelector on a DestinationRule",
            );
        }
        let policy = match &spec.traffic_policy {
            Some(p) => traffic_policy(p, "spec.trafficPolicy", true, &mut r),
            None => TrafficPolicy::default(),
        };
        let mut subsets: Vec<Subset> = Vec::new();
        for (i, s) in spec.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                r.error(format!("{path}.name"), "a subset name is required");
            } else if let Err(m) = crate::loader::check_dns_name(&s.name) {
                r.error(format!("{path}.name"), m);
            } else if subsets.iter().any(|t| t.name == s.name) {
                r.error(
                    format!("{path}.name"),
                    format!("subset {:?} is defined twice", s.name),
                );
            }
            let policy = match &s.traffic_policy {
                Some(p) => traffic_policy(p, &format!("{path}.trafficPolicy"), true, &mut r),
                None => TrafficPolicy::default(),
            };
            subsets.push(Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy,
            });
        }
        if let Some(existing) = out.get(&resolved) {
            r.error(
                "spec.host",
                format!(
                    "host {resolved:?} already has {}; merge them into one",
                    existing.id
                ),
            );
        }
        if r.count() > before {
            continue;
        }
        let known = services.keys().any(|h| host::covers(&resolved, h));
        if !known {
            warnings.push(ValidationError {
                origin: o.origin.clone(),
                object: Some(o.id.clone()),
                path: "spec.host".into(),
                message: format!("no service matches host {resolved:?}"),
            });
        }
        out.insert(
            resolved.clone(),
            DestinationRule {
                id: o.id.clone(),
                host: resolved,
                export_to,
                policy,
                subsets,
            },
        );
    }
    out
}

fn traffic_policy(
    p: &wire::TrafficPolicy,
    path: &str,
    allow_ports: bool,
    r: &mut Report<'_>,
) -> TrafficPolicy {
    if p.tunnel.is_some() {
        r.unsupported(format!("{path}.tunnel"), "tunnel");
    }
    if p.proxy_protocol.is_some() {
        r.unsupported(format!("{path}.proxyProtocol"), "proxyProtocol");
    }
    let mut port_level = BTreeMap::new();
    if !p.port_level_settings.is_empty() && !allow_ports {
        r.error(format!("{path}.portLevelSettings"), "not allowed here");
    }
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        let Some(port) = super::registry::port_number(
            pl.port.as_ref().and_then(|s| s.number),
            &format!("{pp}.port.number"),
            r,
        ) else {
            continue;
        };
        let policy = TrafficPolicy {
            load_balancer: pl
                .load_balancer
                .as_ref()
                .and_then(|lb| load_balancer(lb, &format!("{pp}.loadBalancer"), r)),
            connection_pool: pl
                .connection_pool
                .as_ref()
                .map(|c| connection_pool(c, &format!("{pp}.connectionPool"), r)),
            outlier_detection: pl
                .outlier_detection
                .as_ref()
                .map(|o| outlier_detection(o, &format!("{pp}.outlierDetection"), r)),
            tls: pl
                .tls
                .as_ref()
                .and_then(|t| client_tls(t, &format!("{pp}.tls"), r)),
            port_level: BTreeMap::new(),
        };
        if port_level.insert(port, policy).is_some() {
            r.error(
                format!("{pp}.port.number"),
                format!("port {port} has settings twice"),
            );
        }
    }
    TrafficPolicy {
        load_balancer: p
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(lb, &format!("{path}.loadBalancer"), r)),
        connection_pool: p
            .connection_pool
            .as_ref()
            .map(|c| connection_pool(c, &format!("{path}.connectionPool"), r)),
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .map(|o| outlier_detection(o, &format!("{path}.outlierDetection"), r)),
        tls: p
            .tls
            .as_ref()
            .and_then(|t| client_tls(t, &format!("{path}.tls"), r)),
        port_level,
    }
}

fn client_tls(tls: &wire::ClientTlsSettings, path: &str, r: &mut Report<'_>) -> Option<ClientTls> {
    let mode = match tls.mode.as_deref() {
        None | Some("DISABLE") => ClientTlsMode::Disable,
        Some("SIMPLE") => ClientTlsMode::Simple,
        Some("MUTUAL") => ClientTlsMode::Mutual,
        Some("ISTIO_MUTUAL") => ClientTlsMode::IstioMutual,
        Some(other) => {
            r.error(
                format!("{path}.mode"),
                format!(
                    "unknown TLS mode {other:?}; expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
                ),
            );
            return None;
        }
    };
    if tls.credential_name.is_some() {
        r.unsupported(
            format!("{path}.credentialName"),
            "credentialName (Kubernetes secrets); use file paths",
        );
    }
    if tls.ca_crl.is_some() {
        r.unsupported(format!("{path}.caCrl"), "caCrl");
    }
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
    ];
    match mode {
        ClientTlsMode::IstioMutual | ClientTlsMode::Disable => {
            for (field, value) in files {
                if value.is_some() {
                    r.error(
                        format!("{path}.{field}"),
                        "not allowed with this mode: the mesh's own certificates are used",
                    );
                }
            }
        }
        ClientTlsMode::Mutual => {
            for (field, value) in &files[..2] {
                if value.as_deref().is_none_or(str::is_empty) {
                    r.error(format!("{path}.{field}"), "required for mode MUTUAL");
                }
            }
        }
        ClientTlsMode::Simple => {
            for (field, value) in &files[..2] {
                if value.is_some() {
                    r.error(format!("{path}.{field}"), "only for mode MUTUAL");
                }
            }
        }
    }
    let verifies = matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    if verifies && tls.ca_certificates.is_none() && tls.insecure_skip_verify != Some(true) {
        r.error(
            format!("{path}.caCertificates"),
            "required to verify the server; set insecureSkipVerify: true to skip verification explicitly",
        );
    }
    Some(ClientTls {
        mode,
        client_certificate: tls.client_certificate.clone(),
        private_key: tls.private_key.clone(),
        ca_certificates: tls.ca_certificates.clone(),
        sni: tls.sni.clone(),
        subject_alt_names: tls.subject_alt_names.clone(),
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
    })
}

fn load_balancer(
    lb: &wire::LoadBalancerSettings,
    path: &str,
    r: &mut Report<'_>,
) -> Option<LoadBalancer> {
    for (field, present) in [
        ("localityLbSetting", lb.locality_lb_setting.is_some()),
        ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
        ("warmup", lb.warmup.is_some()),
    ] {
        if present {
            r.unsupported(format!("{path}.{field}"), field);
        }
    }
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => {
            r.error(path, "set either simple or consistentHash, not both");
            None
        }
        (Some(simple), None) => match simple.as_str() {
            "UNSPECIFIED" => None,
            "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
            "LEAST_REQUEST" | "LEAST_CONN" => Some(LoadBalancer::LeastRequest),
            "RANDOM" => Some(LoadBalancer::Random),
            "PASSTHROUGH" => Some(LoadBalancer::Passthrough),
            other => {
                r.error(
                    format!("{path}.simple"),
                    format!("unknown load balancer {other:?}; expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"),
                );
                None
            }
        },
        (None, Some(ch)) => consistent_hash(ch, &format!("{path}.consistentHash"), r),
        (None, None) => None,
    }
}

fn consistent_hash(
    ch: &wire::ConsistentHashLb,
    path: &str,
    r: &mut Report<'_>,
) -> Option<LoadBalancer> {
    let mut keys = Vec::new();
    if let Some(h) = &ch.http_header_name {
        if h.is_empty() {
            r.error(format!("{path}.httpHeaderName"), "must not be empty");
        }
        keys.push(HashKey::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = &ch.http_cookie {
        if c.name.is_empty() {
            r.error(
                format!("{path}.httpCookie.name"),
                "a cookie name is required",
            );
        }
        if c.attributes.is_some() {
            r.unsupported(format!("{path}.httpCookie.attributes"), "cookie attributes");
        }
        let ttl = c
            .ttl
            .as_deref()
            .and_then(|t| r.duration(t, format!("{path}.httpCookie.ttl")));
        keys.push(HashKey::Cookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl,
        });
    }
    if ch.use_source_ip == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(q) = &ch.http_query_parameter_name {
        if q.is_empty() {
            r.error(
                format!("{path}.httpQueryParameterName"),
                "must not be empty",
            );
        }
        keys.push(HashKey::QueryParameter(q.clone()));
    }
    if keys.len() != 1 {
        r.error(
            path,
            format!(
                "exactly one hash key is required (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName), got {}",
                keys.len()
            ),
        );
        return None;
    }
    let ring = match (&ch.ring_hash, &ch.maglev, ch.minimum_ring_size) {
        (Some(_), Some(_), _) => {
            r.error(path, "set either ringHash or maglev, not both");
            return None;
        }
        (Some(rh), None, None) => HashRing::RingHash {
            minimum_ring_size: rh.minimum_ring_size,
        },
        (None, Some(m), None) => HashRing::Maglev {
            table_size: m.table_size,
        },
        (None, None, size) => HashRing::RingHash {
            minimum_ring_size: size,
        },
        (_, _, Some(_)) => {
            r.error(
                format!("{path}.minimumRingSize"),
                "deprecated field conflicts with ringHash/maglev; use ringHash.minimumRingSize",
            );
            return None;
        }
    };
    Some(LoadBalancer::ConsistentHash {
        key: keys.remove(0),
        ring,
    })
}

fn connection_pool(
    c: &wire::ConnectionPoolSettings,
    path: &str,
    r: &mut Report<'_>,
) -> ConnectionPool {
    let mut out = ConnectionPool::default();
    if let Some(tcp) = &c.tcp {
        let p = format!("{path}.tcp");
        out.max_connections = count(tcp.max_connections, &format!("{p}.maxConnections"), r);
        out.connect_timeout = tcp
            .connect_timeout
            .as_deref()
            .and_then(|d| positive(d, &format!("{p}.connectTimeout"), r));
        out.max_connection_duration = tcp
            .max_connection_duration
            .as_deref()
            .and_then(|d| positive(d, &format!("{p}.maxConnectionDuration"), r));
        // Istio's default is an hour, as Envoy's; `0s` turns the timeout off.
        out.tcp_idle_timeout = tcp
            .idle_timeout
            .as_deref()
            .and_then(|d| r.duration(d, format!("{p}.idleTimeout")));
        if let Some(k) = &tcp.tcp_keepalive {
            out.tcp_keepalive = Some(TcpKeepalive {
                probes: k.probes,
                time: k
                    .time
                    .as_deref()
                    .and_then(|d| positive(d, &format!("{p}.tcpKeepalive.time"), r)),
                interval: k
                    .interval
                    .as_deref()
                    .and_then(|d| positive(d, &format!("{p}.tcpKeepalive.interval"), r)),
            });
        }
    }
    if let Some(http) = &c.http {
        let p = format!("{path}.http");
        out.http1_max_pending_requests = count(
            http.http1_max_pending_requests,
            &format!("{p}.http1MaxPendingRequests"),
            r,
        );
        out.http2_max_requests =
            count(http.http2_max_requests, &format!("{p}.http2MaxRequests"), r);
        out.max_requests_per_connection = count(
            http.max_requests_per_connection,
            &format!("{p}.maxRequestsPerConnection"),
            r,
        );
        out.max_retries = count(http.max_retries, &format!("{p}.maxRetries"), r);
        out.max_concurrent_streams = count(
            http.max_concurrent_streams,
            &format!("{p}.maxConcurrentStreams"),
            r,
        );
        out.idle_timeout = http
            .idle_timeout
            .as_deref()
            .and_then(|d| positive(d, &format!("{p}.idleTimeout"), r));
        out.h2_upgrade = match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => false,
            Some("UPGRADE") => true,
            Some(other) => {
                r.error(
                    format!("{p}.h2UpgradePolicy"),
                    format!(
                        "unknown policy {other:?}; expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"
                    ),
                );
                false
            }
        };
        if http.use_client_protocol == Some(true) {
            r.unsupported(format!("{p}.useClientProtocol"), "useClientProtocol");
        }
    }
    out
}

fn outlier_detection(
    o: &wire::OutlierDetection,
    path: &str,
    r: &mut Report<'_>,
) -> OutlierDetection {
    if o.consecutive_errors.is_some() {
        r.error(
            format!("{path}.consecutiveErrors"),
            "deprecated and removed by Istio; use consecutive5xxErrors",
        );
    }
    let non_negative = |v: Option<i64>, field: &str, r: &mut Report<'_>| -> Option<u32> {
        let v = v?;
        match u32::try_from(v) {
            Ok(n) => Some(n),
            Err(_) => {
                r.error(
                    format!("{path}.{field}"),
                    format!("expected a non-negative count, got {v}"),
                );
                None
            }
        }
    };
    let percent = |v: Option<i64>, field: &str, r: &mut Report<'_>| -> Option<u32> {
        let v = v?;
        if (0..=100).contains(&v) {
            Some(v as u32)
        } else {
            r.error(
                format!("{path}.{field}"),
                format!("expected a percentage 0-100, got {v}"),
            );
            None
        }
    };
    OutlierDetection {
        consecutive_5xx: non_negative(o.consecutive_5xx_errors, "consecutive5xxErrors", r),
        consecutive_gateway_errors: non_negative(
            o.consecutive_gateway_errors,
            "consecutiveGatewayErrors",
            r,
        ),
        consecutive_local_origin_failures: non_negative(
            o.consecutive_local_origin_failures,
            "consecutiveLocalOriginFailures",
            r,
        ),
        split_external_local_origin_errors: o.split_external_local_origin_errors.unwrap_or(false),
        interval: o
            .interval
            .as_deref()
            .and_then(|d| positive(d, &format!("{path}.interval"), r)),
        base_ejection_time: o
            .base_ejection_time
            .as_deref()
            .and_then(|d| positive(d, &format!("{path}.baseEjectionTime"), r)),
        max_ejection_percent: percent(o.max_ejection_percent, "maxEjectionPercent", r),
        min_health_percent: percent(o.min_health_percent, "minHealthPercent", r),
    }
}

/// A count where 0 means "not set", as in Istio's protobuf; negatives are errors.
fn count(v: Option<i64>, path: &str, r: &mut Report<'_>) -> Option<u32> {
    match v {
        None | Some(0) => None,
        Some(n) => match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                r.error(path, format!("expected a count 0-4294967295, got {n}"));
                None
            }
        },
    }
}

/// A duration that must be at least 1ms, as Istio requires of timeouts and intervals.
pub(super) fn positive(s: &str, path: &str, r: &mut Report<'_>) -> Option<Duration> {
    let d = r.duration(s, path)?;
    if d < Duration::from_millis(1) {
        r.error(path, format!("must be at least 1ms, got {s:?}"));
        return None;
    }
    Some(d)
}
