//! CDS and EDS: clusters, their policies and endpoints.

use super::*;

// === impl Cluster ===

impl TryFrom<&PbCluster> for Cluster {
    type Error = ConvertError;

    fn try_from(c: &PbCluster) -> Result<Self, Self::Error> {
        let resource = format!("cluster {:?}", c.name);
        let at = At::new(&resource);
        if c.name.is_empty() {
            return Err(at.at("name").invalid("must not be empty"));
        }
        let tls = tls::upstream(&at.at("transport_socket"), c.transport_socket.as_ref())?;
        let transport_matches = tls::matches(&at, &c.transport_socket_matches)?;
        let outlier = c
            .outlier_detection
            .as_ref()
            .map(|od| outlier_detection(&at.at("outlier_detection"), od))
            .transpose()?;
        let healthy_panic_threshold = match &c.common_lb_config {
            None => 50.0,
            Some(common) => {
                let at = at.at("common_lb_config");
                let mut rest = common.clone();
                rest.healthy_panic_threshold = None;
                if rest != Default::default() {
                    return Err(at.unsupported("common lb settings other than the panic threshold"));
                }
                common
                    .healthy_panic_threshold
                    .as_ref()
                    .map_or(50.0, |p| p.value.clamp(0.0, 100.0))
            }
        };
        if !c.health_checks.is_empty() {
            return Err(at.at("health_checks").unsupported("active health checks"));
        }
        let lb_policy = match (PbLbPolicy::try_from(c.lb_policy), &c.lb_config) {
            (Ok(PbLbPolicy::RoundRobin), None) => LbPolicy::RoundRobin,
            (Ok(PbLbPolicy::LeastRequest), None) => LbPolicy::LeastRequest,
            (Ok(PbLbPolicy::Random), None) => LbPolicy::Random,
            (Ok(PbLbPolicy::RingHash), None) => LbPolicy::ConsistentHash { ring_size: 1024 },
            (Ok(PbLbPolicy::RingHash), Some(LbConfig::RingHashLbConfig(r))) => {
                LbPolicy::ConsistentHash {
                    ring_size: r
                        .minimum_ring_size
                        .as_ref()
                        .map_or(1024, |v| v.value)
                        .clamp(1, 1 << 23),
                }
            }
            (Ok(PbLbPolicy::Maglev), None) => LbPolicy::ConsistentHash { ring_size: 65537 },
            (Ok(PbLbPolicy::Maglev), Some(LbConfig::MaglevLbConfig(m))) => {
                LbPolicy::ConsistentHash {
                    ring_size: m
                        .table_size
                        .as_ref()
                        .map_or(65537, |v| v.value)
                        .clamp(1, 1 << 23),
                }
            }
            (Ok(PbLbPolicy::ClusterProvided), None | Some(LbConfig::OriginalDstLbConfig(_))) => {
                LbPolicy::ClusterProvided
            }
            (_, Some(_)) => {
                return Err(at.at("lb_config").unsupported("this load balancer config"));
            }
            _ => {
                return Err(at
                    .at("lb_policy")
                    .unsupported(format!("lb policy {}", c.lb_policy)));
            }
        };
        let mut http2 = false;
        let mut idle_timeout = None;
        let mut max_requests_per_connection = None;
        for (key, any) in &c.typed_extension_protocol_options {
            let at = at.at(format!("typed_extension_protocol_options[{key:?}]"));
            if key != HTTP_PROTOCOL_OPTIONS {
                return Err(at.unsupported("this extension"));
            }
            let options: HttpProtocolOptions =
                at.decode(any, &format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"))?;
            if let Some(common) = &options.common_http_protocol_options {
                let at = at.at("common_http_protocol_options");
                let mut rest = *common;
                rest.idle_timeout = None;
                rest.max_requests_per_connection = None;
                if rest != Default::default() {
                    return Err(at.unsupported(
                        "connection durations and header limits (only idle_timeout and \
                         max_requests_per_connection are)",
                    ));
                }
                // Envoy reads 0 as no limit.
                max_requests_per_connection = common
                    .max_requests_per_connection
                    .map(|v| v.value)
                    .filter(|n| *n > 0);
                idle_timeout = common
                    .idle_timeout
                    .as_ref()
                    .map(|d| duration(&at.at("idle_timeout"), d))
                    .transpose()?;
            }
            match &options.upstream_protocol_options {
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                    Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)) => {}
                    Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)) => {
                        let mut rest = h2.clone();
                        rest.max_concurrent_streams = None;
                        if rest != Default::default() {
                            return Err(at
                                .at("explicit_http_config.http2_protocol_options")
                                .unsupported("HTTP/2 settings other than max_concurrent_streams"));
                        }
                        http2 = true;
                    }
                    _ => {
                        return Err(at
                            .at("explicit_http_config")
                            .unsupported("HTTP/3 to upstreams"));
                    }
                },
                _ => return Err(at.unsupported("this upstream protocol selection")),
            }
        }
        let connect_timeout = match &c.connect_timeout {
            None => DEFAULT_CONNECT_TIMEOUT,
            Some(d) => duration(&at.at("connect_timeout"), d)?,
        };
        let limits = limits(c);
        let discovery = match &c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
                Ok(DiscoveryType::Eds) => Discovery::Eds {
                    service_name: c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.as_str())
                        .filter(|s| !s.is_empty())
                        .unwrap_or(&c.name)
                        .into(),
                },
                Ok(DiscoveryType::Static) => Discovery::Static,
                Ok(DiscoveryType::StrictDns) => Discovery::StrictDns,
                Ok(DiscoveryType::OriginalDst) => {
                    let use_http_header = match &c.lb_config {
                        None => false,
                        Some(LbConfig::OriginalDstLbConfig(o)) => {
                            let mut rest = o.clone();
                            rest.use_http_header = false;
                            if rest != Default::default() {
                                return Err(at.at("original_dst_lb_config").unsupported(
                                    "original destination settings other than use_http_header",
                                ));
                            }
                            o.use_http_header
                        }
                        Some(_) => {
                            return Err(at.at("lb_config").invalid(
                                "an original destination cluster takes original_dst_lb_config",
                            ));
                        }
                    };
                    Discovery::OriginalDst { use_http_header }
                }
                _ => return Err(at.at("type").unsupported(format!("discovery type {t}"))),
            },
            None => Discovery::Static,
            Some(_) => return Err(at.at("cluster_type").unsupported("custom cluster types")),
        };
        match (&discovery, lb_policy) {
            (Discovery::OriginalDst { .. }, LbPolicy::ClusterProvided) => {}
            (Discovery::OriginalDst { .. }, _) | (_, LbPolicy::ClusterProvided) => {
                return Err(at.at("lb_policy").invalid(
                    "CLUSTER_PROVIDED goes with ORIGINAL_DST discovery, and only with it",
                ));
            }
            _ => {}
        }
        let upstream_bind = c
            .upstream_bind_config
            .as_ref()
            .map(|b| upstream_bind(&at.at("upstream_bind_config"), b))
            .transpose()?;
        let endpoints = match (&discovery, &c.load_assignment) {
            (Discovery::Eds { .. }, _) => Arc::from([]),
            (_, Some(cla)) => endpoints(&at.at("load_assignment"), cla, &discovery)?,
            (_, None) => Arc::from([]),
        };
        let cluster = Cluster {
            name: c.name.as_str().into(),
            discovery,
            lb_policy,
            connect_timeout,
            limits,
            outlier,
            healthy_panic_threshold,
            http2,
            idle_timeout,
            max_requests_per_connection,
            endpoints,
            upstream_bind,
            tls,
            transport_matches,
        };
        if cluster.tls_settings().len() > 1 {
            return Err(at
                .at("transport_socket_matches")
                .unsupported("different TLS settings for different endpoints of one cluster"));
        }
        Ok(cluster)
    }
}

/// The source addresses of upstream connections: one per family, port 0.
pub(super) fn upstream_bind(
    at: &At<'_>,
    b: &envoy_types::pb::envoy::config::core::v3::BindConfig,
) -> Result<UpstreamBind, ConvertError> {
    let mut rest = b.clone();
    rest.source_address = None;
    rest.extra_source_addresses.clear();
    if rest != Default::default() {
        return Err(at.unsupported("bind settings other than source addresses"));
    }
    let mut bind = UpstreamBind::default();
    let extra = b.extra_source_addresses.iter().enumerate().map(|(i, e)| {
        (
            at.at(format!("extra_source_addresses[{i}].address")),
            e.address.as_ref(),
            e.socket_options.is_some(),
        )
    });
    let first = (at.at("source_address"), b.source_address.as_ref(), false);
    for (at, address, options) in std::iter::once(first).chain(extra) {
        if options {
            return Err(at.unsupported("socket options"));
        }
        let Some(a) = address else {
            return Err(at.invalid("missing"));
        };
        let ip: std::net::IpAddr = a
            .address
            .parse()
            .map_err(|_| at.invalid(format!("expected an IP address, got {:?}", a.address)))?;
        if !matches!(
            a.port_specifier,
            None | Some(socket_address::PortSpecifier::PortValue(0))
        ) {
            return Err(at.unsupported("a fixed source port"));
        }
        let taken = match ip {
            std::net::IpAddr::V4(v4) => bind.v4.replace(v4).is_some(),
            std::net::IpAddr::V6(v6) => bind.v6.replace(v6).is_some(),
        };
        if taken {
            return Err(at.invalid("a second source address of the same family"));
        }
    }
    Ok(bind)
}

/// Envoy's defaults where a field is unset: 5 consecutive errors, 30s base ejection, 10%.
pub(super) fn outlier_detection(
    at: &At<'_>,
    od: &PbOutlier,
) -> Result<OutlierDetection, ConvertError> {
    let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        x.as_ref().map_or(default, |x| x.value)
    };
    if v(&od.enforcing_success_rate, 100) != 0 {
        return Err(at
            .at("enforcing_success_rate")
            .unsupported("success-rate ejection"));
    }
    if v(&od.enforcing_failure_percentage, 0) != 0
        || v(&od.enforcing_failure_percentage_local_origin, 0) != 0
    {
        return Err(at.unsupported("failure-percentage ejection"));
    }
    let detector = |threshold: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                    enforcing: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                    default_enforcing: u32| {
        let threshold = v(threshold, 5);
        (v(enforcing, default_enforcing) > 0 && threshold > 0).then_some(threshold)
    };
    Ok(OutlierDetection {
        consecutive_5xx: detector(&od.consecutive_5xx, &od.enforcing_consecutive_5xx, 100),
        consecutive_gateway_failure: detector(
            &od.consecutive_gateway_failure,
            &od.enforcing_consecutive_gateway_failure,
            0,
        ),
        consecutive_local_origin_failure: if od.split_external_local_origin_errors {
            detector(
                &od.consecutive_local_origin_failure,
                &od.enforcing_consecutive_local_origin_failure,
                100,
            )
        } else {
            None
        },
        split_local_origin: od.split_external_local_origin_errors,
        base_ejection_time: od
            .base_ejection_time
            .as_ref()
            .map(|d| duration(&at.at("base_ejection_time"), d))
            .transpose()?
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: v(&od.max_ejection_percent, 10).min(100),
    })
}

pub(super) fn limits(c: &PbCluster) -> Limits {
    let mut limits = Limits::default();
    let Some(t) = c.circuit_breakers.as_ref().and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == RoutingPriority::Default as i32)
    }) else {
        return limits;
    };
    let set = |slot: &mut u32, v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        if let Some(v) = v {
            *slot = v.value;
        }
    };
    set(&mut limits.max_connections, &t.max_connections);
    set(&mut limits.max_pending_requests, &t.max_pending_requests);
    set(&mut limits.max_requests, &t.max_requests);
    set(&mut limits.max_retries, &t.max_retries);
    limits
}

/// The endpoints of an assignment for an EDS cluster (given as IP addresses).
pub fn eds_endpoints(cla: &ClusterLoadAssignment) -> Result<Arc<[Endpoint]>, ConvertError> {
    let resource = format!("cluster load assignment {:?}", cla.cluster_name);
    let at = At::new(&resource);
    if cla.cluster_name.is_empty() {
        return Err(at.at("cluster_name").invalid("must not be empty"));
    }
    endpoints(
        &at,
        cla,
        &Discovery::Eds {
            service_name: cla.cluster_name.as_str().into(),
        },
    )
}

pub(super) fn endpoints(
    at: &At<'_>,
    cla: &ClusterLoadAssignment,
    discovery: &Discovery,
) -> Result<Arc<[Endpoint]>, ConvertError> {
    let mut out = Vec::new();
    if let Some(p) = &cla.policy
        && (!p.drop_overloads.is_empty() || p.overprovisioning_factor.is_some())
    {
        return Err(at
            .at("policy")
            .unsupported("drop overloads or overprovisioning"));
    }
    for (i, locality) in cla.endpoints.iter().enumerate() {
        let at = at.at(format!("endpoints[{i}]"));
        if locality.priority != 0 {
            return Err(at.at("priority").unsupported("priorities other than 0"));
        }
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = at.at(format!("lb_endpoints[{j}]"));
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                return Err(at.at("endpoint").invalid("missing"));
            };
            let healthy = matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
            );
            if !healthy {
                continue;
            }
            let (host, port) = host_port(&at.at("endpoint.address"), e.address.as_ref())?;
            if !matches!(discovery, Discovery::StrictDns) && host.parse::<IpAddr>().is_err() {
                return Err(at
                    .at("endpoint.address")
                    .invalid(format!("{host:?} is not an IP address")));
            }
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(at.at("load_balancing_weight").invalid("must be at least 1"));
            }
            let transport_labels = tls::endpoint_labels(&at, lb.metadata.as_ref())?;
            out.push(Endpoint {
                host: host.into(),
                port,
                weight,
                transport_labels,
            });
        }
    }
    Ok(out.into())
}
