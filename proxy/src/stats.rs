//! What the admin API exposes: requests by route, cluster and status, per-cluster latency,
//! connections, retries, overflows and ejections, and xDS updates by type.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;

#[derive(Debug, Default)]
pub struct Stats {
    /// Sharded, so concurrent requests rarely meet on a lock; the value is an atomic. Keys come
    /// from config, not from requests, so a fast hasher is safe.
    requests: DashMap<RequestKey, AtomicU64, foldhash::fast::RandomState>,
    xds: Mutex<BTreeMap<&'static str, TypeStats>>,
    connected: AtomicBool,
    /// Connections closed because no filter chain of their listener matched, by listener.
    no_filter_chain: DashMap<Arc<str>, AtomicU64, foldhash::fast::RandomState>,
    /// Connections closed at accept because their listener had as many as it may hold, by
    /// listener (Envoy's `downstream_cx_overflow`).
    cx_overflow: DashMap<Arc<str>, AtomicU64, foldhash::fast::RandomState>,
    /// Connections closed because a request's headers took too long, by listener (Envoy's
    /// `downstream_rq_header_timeout`).
    header_timeout: DashMap<Arc<str>, AtomicU64, foldhash::fast::RandomState>,
}

type ByListener = DashMap<Arc<str>, AtomicU64, foldhash::fast::RandomState>;

fn count(map: &ByListener, listener: &Arc<str>) {
    if let Some(n) = map.get(listener) {
        n.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.entry(listener.clone())
        .or_default()
        .fetch_add(1, Ordering::Relaxed);
}

fn render_by_listener(out: &mut String, metric: &str, map: &ByListener) {
    let _ = writeln!(out, "# TYPE {metric} counter");
    let mut counts: Vec<(Arc<str>, u64)> = map
        .iter()
        .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
        .collect();
    counts.sort();
    for (listener, n) in counts {
        let _ = writeln!(out, "{metric}{{listener=\"{}\"}} {n}", escape(&listener));
    }
}

/// What a finished request is counted by; empty names where there was none (404, direct
/// responses have no cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub virtual_host: Arc<str>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    pub code: u16,
}

/// What happened to one xDS resource type.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStats {
    pub version: String,
    pub accepted: u64,
    pub rejected: u64,
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a counter lock leaves the counters usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The type name at the end of a type URL (`...v3.Cluster` -> `Cluster`).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Stats {
    /// A request whose response headers were sent.
    pub fn request(&self, key: RequestKey) {
        if let Some(n) = self.requests.get(&key) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.requests
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection that no filter chain of `listener` takes (Envoy's `no_filter_chain_match`).
    pub fn no_filter_chain(&self, listener: &Arc<str>) {
        count(&self.no_filter_chain, listener);
    }

    /// A connection refused at accept: `listener` holds as many as it may.
    pub fn connection_overflow(&self, listener: &Arc<str>) {
        count(&self.cx_overflow, listener);
    }

    /// A connection closed because a request's headers took too long.
    pub fn header_timeout(&self, listener: &Arc<str>) {
        count(&self.header_timeout, listener);
    }

    pub fn xds_accepted(&self, type_url: &'static str, version: &str) {
        let mut xds = lock(&self.xds);
        let t = xds.entry(type_url).or_default();
        t.accepted += 1;
        t.version = version.to_string();
    }

    pub fn xds_rejected(&self, type_url: &'static str, error: &str) {
        let mut xds = lock(&self.xds);
        let t = xds.entry(type_url).or_default();
        t.rejected += 1;
        t.last_error = Some(error.to_string());
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn xds(&self) -> BTreeMap<&'static str, TypeStats> {
        lock(&self.xds).clone()
    }

    /// Requests by virtual host, route, cluster and status.
    pub fn requests(&self) -> BTreeMap<RequestKey, u64> {
        self.requests
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect()
    }

    /// The Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE strait_proxy_requests_total counter");
        for (k, n) in self.requests() {
            let _ = writeln!(
                out,
                "strait_proxy_requests_total{{cluster=\"{}\",code=\"{}\",virtual_host=\"{}\",route=\"{}\"}} {n}",
                escape(&k.cluster),
                k.code,
                escape(&k.virtual_host),
                escape(&k.route),
            );
        }
        render_by_listener(
            &mut out,
            "strait_proxy_downstream_no_filter_chain_total",
            &self.no_filter_chain,
        );
        render_by_listener(
            &mut out,
            "strait_proxy_downstream_cx_overflow_total",
            &self.cx_overflow,
        );
        render_by_listener(
            &mut out,
            "strait_proxy_downstream_rq_header_timeout_total",
            &self.header_timeout,
        );
        let xds = self.xds();
        let _ = writeln!(out, "# TYPE strait_proxy_xds_updates_total counter");
        for (type_url, t) in &xds {
            let ty = short_type(type_url);
            let _ = writeln!(
                out,
                "strait_proxy_xds_updates_total{{type=\"{ty}\",result=\"accepted\"}} {}",
                t.accepted
            );
            let _ = writeln!(
                out,
                "strait_proxy_xds_updates_total{{type=\"{ty}\",result=\"rejected\"}} {}",
                t.rejected
            );
        }
        let _ = writeln!(out, "# TYPE strait_proxy_xds_version_info gauge");
        for (type_url, t) in &xds {
            let _ = writeln!(
                out,
                "strait_proxy_xds_version_info{{type=\"{}\",version=\"{}\"}} 1",
                short_type(type_url),
                escape(&t.version)
            );
        }
        let _ = writeln!(out, "# TYPE strait_proxy_xds_connected gauge");
        let _ = writeln!(
            out,
            "strait_proxy_xds_connected {}",
            u8::from(self.connected.load(Ordering::Relaxed))
        );
        out
    }
}

/// Envoy's default histogram bucket bounds, in milliseconds.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A Prometheus histogram of durations, lock-free: one atomic per bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let ms = micros as f64 / 1000.0;
        let slot = BUCKETS_MS.partition_point(|le| *le < ms);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`, the total), and the sum in ms.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (
            cumulative,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

/// One upstream cluster's counters; they live as long as the cluster does.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// From a request's arrival to the last byte of its response.
    pub duration: Histogram,
    pub connections_opened: AtomicU64,
    pub connections_active: AtomicU64,
    pub retries: AtomicU64,
    /// Requests whose bodies outgrew the retry buffer: sent once, without retries or mirrors
    /// (Envoy's `retry_or_shadow_abandoned`).
    pub retry_or_shadow_abandoned: AtomicU64,
    pub overflow_max_connections: AtomicU64,
    pub overflow_max_pending_requests: AtomicU64,
    pub overflow_max_requests: AtomicU64,
    pub overflow_max_retries: AtomicU64,
    pub ejections: AtomicU64,
    /// Connections or requests that found no endpoint to go to (Envoy's
    /// `upstream_cx_none_healthy`): no healthy endpoint, or none at all (a black hole).
    pub none_healthy: AtomicU64,
    /// Upstream connections that could not be made.
    pub connect_failures: AtomicU64,
    /// Proxied TCP connections (TCP chains) in progress.
    pub tcp_active: AtomicU64,
}

/// What a cluster's balancer and breaker know at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterGauges {
    pub pending_requests: usize,
    pub active_requests: usize,
    pub ejected_endpoints: usize,
}

/// Appends the per-cluster families in the Prometheus text format.
pub fn render_clusters(
    out: &mut String,
    clusters: &[(Arc<str>, Arc<ClusterStats>, ClusterGauges)],
) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# TYPE strait_proxy_request_duration_milliseconds histogram"
    );
    for (name, stats, _) in clusters {
        let cluster = escape(name);
        let (cumulative, sum) = stats.duration.snapshot();
        for (le, n) in BUCKETS_MS.iter().zip(&cumulative) {
            let _ = writeln!(
                out,
                "strait_proxy_request_duration_milliseconds_bucket{{cluster=\"{cluster}\",le=\"{le}\"}} {n}"
            );
        }
        let count = cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "strait_proxy_request_duration_milliseconds_bucket{{cluster=\"{cluster}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "strait_proxy_request_duration_milliseconds_sum{{cluster=\"{cluster}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "strait_proxy_request_duration_milliseconds_count{{cluster=\"{cluster}\"}} {count}"
        );
    }
    type Counter = fn(&ClusterStats, &ClusterGauges) -> u64;
    let families: [(&str, &str, Counter); 11] = [
        (
            "strait_proxy_upstream_connections_total",
            "counter",
            |s, _| s.connections_opened.load(Ordering::Relaxed),
        ),
        (
            "strait_proxy_upstream_connections_active",
            "gauge",
            |s, _| s.connections_active.load(Ordering::Relaxed),
        ),
        ("strait_proxy_upstream_requests_active", "gauge", |_, g| {
            g.active_requests as u64
        }),
        ("strait_proxy_upstream_requests_pending", "gauge", |_, g| {
            g.pending_requests as u64
        }),
        ("strait_proxy_upstream_retries_total", "counter", |s, _| {
            s.retries.load(Ordering::Relaxed)
        }),
        (
            "strait_proxy_upstream_retry_or_shadow_abandoned_total",
            "counter",
            |s, _| s.retry_or_shadow_abandoned.load(Ordering::Relaxed),
        ),
        ("strait_proxy_outlier_ejections_total", "counter", |s, _| {
            s.ejections.load(Ordering::Relaxed)
        }),
        ("strait_proxy_outlier_ejections_active", "gauge", |_, g| {
            g.ejected_endpoints as u64
        }),
        (
            "strait_proxy_upstream_none_healthy_total",
            "counter",
            |s, _| s.none_healthy.load(Ordering::Relaxed),
        ),
        (
            "strait_proxy_upstream_connect_failures_total",
            "counter",
            |s, _| s.connect_failures.load(Ordering::Relaxed),
        ),
        ("strait_proxy_tcp_connections_active", "gauge", |s, _| {
            s.tcp_active.load(Ordering::Relaxed)
        }),
    ];
    for (family, kind, value) in families {
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (name, stats, gauges) in clusters {
            let _ = writeln!(
                out,
                "{family}{{cluster=\"{}\"}} {}",
                escape(name),
                value(stats, gauges)
            );
        }
    }
    let _ = writeln!(out, "# TYPE strait_proxy_upstream_overflow_total counter");
    for (name, s, _) in clusters {
        for (limit, n) in [
            ("max_connections", &s.overflow_max_connections),
            ("max_pending_requests", &s.overflow_max_pending_requests),
            ("max_requests", &s.overflow_max_requests),
            ("max_retries", &s.overflow_max_retries),
        ] {
            let _ = writeln!(
                out,
                "strait_proxy_upstream_overflow_total{{cluster=\"{}\",limit=\"{limit}\"}} {}",
                escape(name),
                load(n)
            );
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The local rate limit filters' decisions by stat prefix.
pub fn render_rate_limits(
    out: &mut String,
    counters: &BTreeMap<Arc<str>, Arc<crate::http::rate_limit::Counters>>,
) {
    let metric = "strait_proxy_local_rate_limit_total";
    let _ = writeln!(out, "# TYPE {metric} counter");
    for (prefix, c) in counters {
        for (decision, n) in [("ok", &c.ok), ("rate_limited", &c.rate_limited)] {
            let _ = writeln!(
                out,
                "{metric}{{stat_prefix=\"{}\",decision=\"{decision}\"}} {}",
                escape(prefix),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_envoy_bounds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300)); // <= 0.5 ms
        h.observe(Duration::from_millis(1)); // <= 1 ms: bounds are inclusive
        h.observe(Duration::from_millis(7)); // <= 10 ms
        h.observe(Duration::from_secs(7200)); // +Inf only
        let (cumulative, sum) = h.snapshot();
        assert_eq!(cumulative.len(), BUCKETS_MS.len() + 1);
        assert_eq!(&cumulative[..4], &[1, 2, 2, 3]);
        assert_eq!(cumulative[BUCKETS_MS.len() - 1], 3);
        assert_eq!(cumulative[BUCKETS_MS.len()], 4);
        assert!((sum - 7_200_008.3).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn requests_are_counted_by_route_cluster_and_code() {
        let stats = Stats::default();
        let key = |code| RequestKey {
            virtual_host: "reviews".into(),
            route: "default".into(),
            cluster: "c|1".into(),
            code,
        };
        stats.request(key(200));
        stats.request(key(200));
        stats.request(key(503));
        let text = stats.prometheus();
        assert!(
            text.contains("strait_proxy_requests_total{cluster=\"c|1\",code=\"200\",virtual_host=\"reviews\",route=\"default\"} 2"),
            "{text}"
        );
        assert!(text.contains("code=\"503\",virtual_host=\"reviews\",route=\"default\"} 1"));
    }
}
