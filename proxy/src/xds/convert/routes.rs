//! RDS: route configurations, virtual hosts and routes, with their matchers and actions.

use super::*;

// === impl RouteConfig ===

impl TryFrom<&RouteConfiguration> for RouteConfig {
    type Error = ConvertError;

    fn try_from(rc: &RouteConfiguration) -> Result<Self, Self::Error> {
        let resource = format!("route configuration {:?}", rc.name);
        let at = At::new(&resource);
        if !rc.request_headers_to_add.is_empty()
            || !rc.response_headers_to_add.is_empty()
            || !rc.request_headers_to_remove.is_empty()
            || !rc.response_headers_to_remove.is_empty()
        {
            return Err(at.unsupported("route-configuration-level header changes"));
        }
        let virtual_hosts = rc
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(i, vh)| virtual_host(&at.at(format!("virtual_hosts[{i}]")), vh))
            .collect::<Result<_, _>>()?;
        Ok(RouteConfig {
            name: rc.name.as_str().into(),
            virtual_hosts,
        })
    }
}

pub(super) fn virtual_host(at: &At<'_>, vh: &PbVirtualHost) -> Result<VirtualHost, ConvertError> {
    #[allow(deprecated)]
    if vh.cors.is_some() {
        return Err(at
            .at("cors")
            .unsupported("virtual-host CORS (the deprecated field)"));
    }
    if vh.retry_policy.is_some() {
        return Err(at.at("retry_policy").unsupported("retries"));
    }
    if !vh.typed_per_filter_config.is_empty() {
        return Err(at
            .at("typed_per_filter_config")
            .unsupported("per-filter config"));
    }
    if !vh.request_headers_to_add.is_empty()
        || !vh.response_headers_to_add.is_empty()
        || !vh.request_headers_to_remove.is_empty()
        || !vh.response_headers_to_remove.is_empty()
    {
        return Err(at.unsupported("virtual-host-level header changes"));
    }
    let domains = vh
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.to_ascii_lowercase();
            let stars = d.matches('*').count();
            let ok =
                stars == 0 || d == "*" || (stars == 1 && (d.starts_with('*') || d.ends_with('*')));
            if ok {
                Ok(Arc::from(d))
            } else {
                Err(at
                    .at(format!("domains[{i}]"))
                    .invalid(format!("{d:?}: a wildcard may only lead or trail")))
            }
        })
        .collect::<Result<_, _>>()?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(&at.at(format!("routes[{i}]")), r))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        domains,
        routes,
        require_tls: match vh.require_tls {
            0 => false,
            2 => true,
            other => {
                return Err(at
                    .at("require_tls")
                    .unsupported(format!("tls requirement {other}")));
            }
        },
    })
}

pub(super) fn route(at: &At<'_>, r: &PbRoute) -> Result<Route, ConvertError> {
    let mut fault = None;
    let mut cors = None;
    for (name, any) in &r.typed_per_filter_config {
        let at = at.at(format!("typed_per_filter_config[{name:?}]"));
        match name.as_str() {
            FAULT_FILTER => {
                let f: HttpFault = at.decode(any, FAULT)?;
                fault = Some(fault_from(&at, &f)?);
            }
            CORS_FILTER => {
                let c: PbCorsPolicy = at.decode(any, CORS_POLICY)?;
                cors = Some(cors_from(&at, &c)?);
            }
            _ => return Err(at.unsupported(format!("per-route config of {name:?}"))),
        }
    }
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| at.at("match").invalid("missing"))?;
    let matcher = route_match(&at.at("match"), m)?;
    let action = match &r.action {
        Some(route::Action::Route(a)) => Action::Forward(forward(&at.at("route"), a)?),
        Some(route::Action::Redirect(rd)) => Action::Redirect(redirect(&at.at("redirect"), rd)?),
        Some(route::Action::DirectResponse(d)) => {
            let at = at.at("direct_response");
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    at.at("status")
                        .invalid(format!("{} is not an HTTP status", d.status))
                })?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(Arc::from(s.as_str())),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(Arc::from(String::from_utf8_lossy(b).as_ref()))
                }
                Some(_) => {
                    return Err(at
                        .at("body")
                        .unsupported("bodies from files or the environment"));
                }
            };
            Action::Direct { status, body }
        }
        Some(_) => return Err(at.at("action").unsupported("this route action")),
        None => return Err(at.at("action").invalid("missing")),
    };
    Ok(Route {
        name: r.name.as_str().into(),
        matcher,
        action,
        fault,
        cors,
        headers: header_changes(
            at,
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
    })
}

pub(super) fn cors_from(at: &At<'_>, c: &PbCorsPolicy) -> Result<Cors, ConvertError> {
    if c.shadow_enabled.is_some() {
        return Err(at.at("shadow_enabled").unsupported("shadow-mode CORS"));
    }
    // Unset is enabled; the runtime key has no runtime to read here, so the default holds.
    if let Some(f) = &c.filter_enabled
        && per_million(&at.at("filter_enabled"), f.default_value.as_ref())? != 1_000_000
    {
        return Err(at
            .at("filter_enabled")
            .unsupported("CORS enabled for a fraction of requests"));
    }
    let allow_origins = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| string_match(&at.at(format!("allow_origin_string_match[{i}]")), m))
        .collect::<Result<_, _>>()?;
    let value = |field: &str, v: &str| -> Result<Arc<str>, ConvertError> {
        if http::HeaderValue::from_str(v).is_err() {
            return Err(at
                .at(field)
                .invalid(format!("{v:?} is not a valid header value")));
        }
        Ok(v.into())
    };
    Ok(Cors {
        allow_origins,
        allow_methods: value("allow_methods", &c.allow_methods)?,
        allow_headers: value("allow_headers", &c.allow_headers)?,
        expose_headers: value("expose_headers", &c.expose_headers)?,
        max_age: value("max_age", &c.max_age)?,
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
        allow_private_network_access: c
            .allow_private_network_access
            .as_ref()
            .is_some_and(|b| b.value),
        // Envoy's default.
        forward_not_matching_preflights: c
            .forward_not_matching_preflights
            .as_ref()
            .is_none_or(|b| b.value),
    })
}

pub(super) fn fault_from(at: &At<'_>, f: &HttpFault) -> Result<Fault, ConvertError> {
    if !f.headers.is_empty()
        || !f.downstream_nodes.is_empty()
        || !f.upstream_cluster.is_empty()
        || f.max_active_faults.is_some()
        || f.response_rate_limit.is_some()
    {
        return Err(at.unsupported(
            "fault header/node/cluster conditions, max_active_faults or rate limits",
        ));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let at = at.at("delay");
            let fixed = match &d.fault_delay_secifier {
                Some(fault_delay::FaultDelaySecifier::FixedDelay(pd)) => {
                    duration(&at.at("fixed_delay"), pd)?
                }
                _ => return Err(at.unsupported("header-controlled delays")),
            };
            Some(FaultDelay {
                fixed,
                per_million: per_million(&at.at("percentage"), d.percentage.as_ref())?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let at = at.at("abort");
            let status = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => u16::try_from(*s)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .ok_or_else(|| {
                        at.at("http_status")
                            .invalid(format!("{s} is not an HTTP status"))
                    })?,
                _ => return Err(at.unsupported("gRPC or header-controlled aborts")),
            };
            Some(FaultAbort {
                status,
                per_million: per_million(&at.at("percentage"), a.percentage.as_ref())?,
            })
        }
    };
    Ok(Fault { delay, abort })
}

/// A fractional percent in millionths; unset means 100% (Envoy's default for faults).
pub(super) fn per_million(at: &At<'_>, p: Option<&FractionalPercent>) -> Result<u32, ConvertError> {
    let Some(p) = p else {
        return Ok(1_000_000);
    };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(at.invalid(format!("denominator {}", p.denominator))),
    };
    Ok(p.numerator.saturating_mul(scale).min(1_000_000))
}

pub(super) fn route_match(
    at: &At<'_>,
    m: &envoy_types::pb::envoy::config::route::v3::RouteMatch,
) -> Result<RouteMatch, ConvertError> {
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.as_str().into()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.as_str().into()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(at.at("safe_regex").pattern(&r.regex)?)
        }
        Some(_) => return Err(at.unsupported("this path specifier")),
        None => return Err(at.at("path_specifier").invalid("missing")),
    };
    if m.runtime_fraction.is_some() {
        return Err(at.at("runtime_fraction").unsupported("runtime fractions"));
    }
    if m.grpc.is_some() || m.tls_context.is_some() || !m.dynamic_metadata.is_empty() {
        return Err(at.unsupported("grpc, tls_context or metadata matches"));
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(&at.at(format!("headers[{i}]")), h))
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(&at.at(format!("query_parameters[{i}]")), q))
        .collect::<Result<_, _>>()?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query,
    })
}

// The deprecated matchers are still valid xDS; Envoy honours them, so the proxy does too.
#[allow(deprecated)]
pub(super) fn header_matcher(
    at: &At<'_>,
    h: &PbHeaderMatcher,
) -> Result<HeaderMatcher, ConvertError> {
    let exact = |v: &str| StringMatch::Exact {
        value: v.into(),
        ignore_case: false,
    };
    let matches = match &h.header_match_specifier {
        None => HeaderMatch::Present(true),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => HeaderMatch::Value(exact(v)),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => HeaderMatch::Value(StringMatch::Prefix {
            value: v.as_str().into(),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => HeaderMatch::Value(StringMatch::Suffix {
            value: v.as_str().into(),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => HeaderMatch::Value(StringMatch::Contains {
            value: v.as_str().into(),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderMatch::Value(StringMatch::Regex(
            at.at("safe_regex_match").pattern(&r.regex)?,
        )),
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            HeaderMatch::Value(string_match(&at.at("string_match"), sm)?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(at.at("range_match").unsupported("range matches"));
        }
    };
    if h.treat_missing_header_as_empty {
        return Err(at
            .at("treat_missing_header_as_empty")
            .unsupported("treating a missing header as empty"));
    }
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase().into(),
        matches,
        invert: h.invert_match,
    })
}

pub(super) fn query_matcher(
    at: &At<'_>,
    q: &QueryParameterMatcher,
) -> Result<QueryMatcher, ConvertError> {
    let value = match &q.query_parameter_match_specifier {
        None | Some(QueryParameterMatchSpecifier::PresentMatch(true)) => None,
        Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
            return Err(at.unsupported("present_match: false"));
        }
        Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
            Some(string_match(&at.at("string_match"), sm)?)
        }
    };
    Ok(QueryMatcher {
        name: q.name.as_str().into(),
        value,
    })
}

pub(super) fn string_match(at: &At<'_>, sm: &StringMatcher) -> Result<StringMatch, ConvertError> {
    let ignore_case = sm.ignore_case;
    let value = |v: &str| -> Arc<str> {
        if ignore_case {
            v.to_lowercase().into()
        } else {
            v.into()
        }
    };
    Ok(match &sm.match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) => StringMatch::Exact {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::Prefix(v)) => StringMatch::Prefix {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::Suffix(v)) => StringMatch::Suffix {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::Contains(v)) => StringMatch::Contains {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::SafeRegex(r)) => {
            if ignore_case {
                return Err(at.unsupported("ignore_case with a regex"));
            }
            StringMatch::Regex(at.at("safe_regex").pattern(&r.regex)?)
        }
        Some(string_matcher::MatchPattern::Custom(_)) => {
            return Err(at.unsupported("custom string matchers"));
        }
        None => return Err(at.at("match_pattern").invalid("missing")),
    })
}

pub(super) fn forward(at: &At<'_>, a: &RouteAction) -> Result<Forward, ConvertError> {
    #[allow(deprecated)]
    if a.cors.is_some() {
        return Err(at
            .at("cors")
            .unsupported("CORS in the route action (the deprecated field)"));
    }
    let retry = a
        .retry_policy
        .as_ref()
        .map(|r| retry_policy(&at.at("retry_policy"), r))
        .transpose()?;
    let mirrors = a
        .request_mirror_policies
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = at.at(format!("request_mirror_policies[{i}]"));
            if m.cluster.is_empty() {
                return Err(at
                    .at("cluster")
                    .unsupported("mirror clusters named by a header"));
            }
            if m.trace_sampled.is_some() || m.disable_shadow_host_suffix_append {
                return Err(at.unsupported("trace_sampled or disable_shadow_host_suffix_append"));
            }
            let per_million = match &m.runtime_fraction {
                None => 1_000_000,
                Some(f) => per_million(&at.at("runtime_fraction"), f.default_value.as_ref())?,
            };
            Ok(Mirror {
                cluster: m.cluster.as_str().into(),
                per_million,
            })
        })
        .collect::<Result<_, _>>()?;
    let hash_policy = a
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash_policy(&at.at(format!("hash_policy[{i}]")), h))
        .collect::<Result<_, _>>()?;
    let regex_rewrite = match &a.regex_rewrite {
        None => None,
        Some(rw) => {
            let at = at.at("regex_rewrite");
            let pattern = rw
                .pattern
                .as_ref()
                .ok_or_else(|| at.at("pattern").invalid("missing"))?;
            let pattern = Pattern::unanchored(&pattern.regex).map_err(|e| ConvertError::Regex {
                resource: at.resource.to_string(),
                field: at.at("pattern").field,
                pattern: pattern.regex.clone(),
                source: Box::new(e),
            })?;
            Some(RegexRewrite {
                pattern,
                substitution: envoy_substitution(&rw.substitution).into(),
            })
        }
    };
    if a.idle_timeout.is_some() || a.max_stream_duration.is_some() {
        return Err(at.unsupported("idle_timeout or max_stream_duration"));
    }
    let clusters = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) if !name.is_empty() => {
            ClusterChoice::Single(name.as_str().into())
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let at = at.at("weighted_clusters");
            if !w.runtime_key_prefix.is_empty() {
                return Err(at.at("runtime_key_prefix").unsupported("runtime keys"));
            }
            let clusters: Vec<WeightedCluster> = w
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = at.at(format!("clusters[{i}]"));
                    if c.name.is_empty() {
                        return Err(at.at("name").invalid("must name a cluster"));
                    }
                    if !c.typed_per_filter_config.is_empty() || c.host_rewrite_specifier.is_some() {
                        return Err(at.unsupported("per-cluster filter config or host rewrite"));
                    }
                    Ok(WeightedCluster {
                        name: c.name.as_str().into(),
                        weight: c.weight.as_ref().map_or(0, |w| w.value),
                        headers: header_changes(
                            &at,
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                        )?,
                    })
                })
                .collect::<Result<_, _>>()?;
            let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
            let total = u32::try_from(total)
                .ok()
                .filter(|t| *t > 0)
                .ok_or_else(|| at.invalid(format!("total weight {total} must be 1..=u32::MAX")))?;
            ClusterChoice::Weighted {
                clusters: clusters.into(),
                total,
            }
        }
        _ => {
            return Err(at
                .at("cluster_specifier")
                .unsupported("this cluster specifier"));
        }
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.as_str().into()),
        Some(_) => {
            return Err(at
                .at("host_rewrite_specifier")
                .unsupported("this host rewrite"));
        }
    };
    let timeout = match &a.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(duration(&at.at("timeout"), d)?).filter(|d| !d.is_zero()),
    };
    Ok(Forward {
        clusters,
        timeout,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.as_str().into()),
        host_rewrite,
        regex_rewrite,
        retry,
        mirrors,
        hash_policy,
    })
}

/// Envoy's `\\1` capture references in Rust's `${1}` syntax; a literal `$` stays literal.
pub(super) fn envoy_substitution(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn hash_policy(at: &At<'_>, h: &PbHashPolicy) -> Result<HashPolicy, ConvertError> {
    use route_action::hash_policy::PolicySpecifier;
    let key = match &h.policy_specifier {
        Some(PolicySpecifier::Header(hd)) if hd.regex_rewrite.is_none() => {
            HashKey::Header(hd.header_name.to_ascii_lowercase().into())
        }
        Some(PolicySpecifier::Cookie(c)) if c.ttl.is_none() && c.attributes.is_empty() => {
            HashKey::Cookie(c.name.as_str().into())
        }
        Some(PolicySpecifier::Cookie(_)) => {
            return Err(at.at("cookie").unsupported("generated cookies (a ttl)"));
        }
        Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => HashKey::SourceIp,
        Some(PolicySpecifier::QueryParameter(q)) => HashKey::QueryParameter(q.name.as_str().into()),
        _ => return Err(at.unsupported("this hash policy")),
    };
    Ok(HashPolicy {
        key,
        terminal: h.terminal,
    })
}

pub(super) const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

pub(super) fn retry_policy(at: &At<'_>, r: &PbRetryPolicy) -> Result<RetryPolicy, ConvertError> {
    if r.retry_priority.is_some()
        || !r.retriable_headers.is_empty()
        || !r.retriable_request_headers.is_empty()
        || r.retry_back_off.is_some()
        || r.rate_limited_retry_back_off.is_some()
        || !r.retry_options_predicates.is_empty()
        || r.per_try_idle_timeout.is_some()
    {
        return Err(at.unsupported(
            "retry priorities, header conditions, custom back-off or per-try idle timeouts",
        ));
    }
    let mut on = RetryOn::default();
    for token in r
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match token {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            // Only a failed connect is known to be before the request: the conservative reading.
            "reset-before-request" => on.connect_failure = true,
            // Conditions that cannot arise here (no h2/h3 upstreams, no rate limiting, and
            // retriable header lists are rejected above): nothing to retry on.
            "refused-stream"
            | "envoy-ratelimited"
            | "retriable-headers"
            | "http3-post-connect-failure" => {}
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "cancelled" => on.grpc.cancelled = true,
            "deadline-exceeded" => on.grpc.deadline_exceeded = true,
            "internal" => on.grpc.internal = true,
            "resource-exhausted" => on.grpc.resource_exhausted = true,
            "unavailable" => on.grpc.unavailable = true,
            other => {
                return Err(at
                    .at("retry_on")
                    .unsupported(format!("retry condition {other:?}")));
            }
        }
    }
    let mut other_host = false;
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        if p.name != PREVIOUS_HOSTS {
            return Err(at
                .at(format!("retry_host_predicate[{i}]"))
                .unsupported(format!("host predicate {:?}", p.name)));
        }
        other_host = true;
    }
    let retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    at.at("retriable_status_codes")
                        .invalid(format!("{c} is not an HTTP status"))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(RetryPolicy {
        // Envoy's default is one retry.
        num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
        retry_on: on,
        retriable_status_codes,
        per_try_timeout: r
            .per_try_timeout
            .as_ref()
            .map(|d| duration(&at.at("per_try_timeout"), d))
            .transpose()?
            .filter(|d| !d.is_zero()),
        other_host,
        host_selection_attempts: u32::try_from(r.host_selection_retry_max_attempts.max(1))
            .unwrap_or(u32::MAX),
    })
}

pub(super) fn redirect(at: &At<'_>, rd: &RedirectAction) -> Result<Redirect, ConvertError> {
    use redirect_action::RedirectResponseCode as Code;
    let status = match Code::try_from(rd.response_code) {
        Ok(Code::MovedPermanently) => 301,
        Ok(Code::Found) => 302,
        Ok(Code::SeeOther) => 303,
        Ok(Code::TemporaryRedirect) => 307,
        Ok(Code::PermanentRedirect) => 308,
        Err(_) => {
            return Err(at
                .at("response_code")
                .invalid(format!("{}", rd.response_code)));
        }
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        None => None,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.as_str().into()),
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
    };
    let path = match &rd.path_rewrite_specifier {
        None => None,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => Some(p.as_str().into()),
        Some(_) => {
            return Err(at
                .at("path_rewrite_specifier")
                .unsupported("prefix or regex redirects"));
        }
    };
    if rd.strip_query {
        return Err(at.at("strip_query").unsupported("strip_query"));
    }
    let port = match rd.port_redirect {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| at.at("port_redirect").invalid(format!("{p}")))?),
    };
    Ok(Redirect {
        scheme,
        host: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.as_str().into()),
        port,
        path,
        status,
    })
}

// `append` is deprecated but still honoured by Envoy when set.
#[allow(deprecated)]
pub(super) fn header_changes(
    at: &At<'_>,
    request_add: &[HeaderValueOption],
    request_remove: &[String],
    response_add: &[HeaderValueOption],
    response_remove: &[String],
) -> Result<HeaderChanges, ConvertError> {
    let adds =
        |field: &str, list: &[HeaderValueOption]| -> Result<Arc<[HeaderAdd]>, ConvertError> {
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    let at = at.at(format!("{field}[{i}]"));
                    let h = o
                        .header
                        .as_ref()
                        .ok_or_else(|| at.at("header").invalid("missing"))?;
                    let name = h.key.to_ascii_lowercase();
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || http::HeaderValue::from_str(&h.value).is_err()
                    {
                        return Err(
                            at.invalid(format!("{:?}: {:?} is not a valid header", h.key, h.value))
                        );
                    }
                    let append = match HeaderAppendAction::try_from(o.append_action) {
                        Ok(HeaderAppendAction::AppendIfExistsOrAdd) => {
                            o.append.as_ref().is_none_or(|a| a.value)
                        }
                        Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => false,
                        _ => {
                            return Err(at
                                .at("append_action")
                                .unsupported(format!("append action {}", o.append_action)));
                        }
                    };
                    Ok(HeaderAdd {
                        name: name.into(),
                        value: h.value.as_str().into(),
                        append,
                    })
                })
                .collect()
        };
    let names = |field: &str, list: &[String]| -> Result<Arc<[Arc<str>]>, ConvertError> {
        list.iter()
            .map(|n| {
                let n = n.to_ascii_lowercase();
                http::HeaderName::from_bytes(n.as_bytes())
                    .map(|_| Arc::from(n.as_str()))
                    .map_err(|_| at.at(field).invalid(format!("{n:?} is not a header name")))
            })
            .collect()
    };
    Ok(HeaderChanges {
        request_add: adds("request_headers_to_add", request_add)?,
        request_remove: names("request_headers_to_remove", request_remove)?,
        response_add: adds("response_headers_to_add", response_add)?,
        response_remove: names("response_headers_to_remove", response_remove)?,
    })
}
