//! Counters the admin API exposes: requests by cluster and status, and xDS updates by type.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Stats {
    requests: Mutex<HashMap<(Arc<str>, u16), u64>>,
    xds: Mutex<BTreeMap<&'static str, TypeStats>>,
    connected: AtomicBool,
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
    /// A finished request: `cluster` is empty when none was chosen (404, direct responses).
    pub fn request(&self, cluster: &Arc<str>, status: u16) {
        *lock(&self.requests)
            .entry((cluster.clone(), status))
            .or_default() += 1;
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

    /// Requests by (cluster, status).
    pub fn requests(&self) -> BTreeMap<(String, u16), u64> {
        lock(&self.requests)
            .iter()
            .map(|((c, s), n)| ((c.to_string(), *s), *n))
            .collect()
    }

    /// The Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE strait_proxy_requests_total counter");
        for ((cluster, status), n) in self.requests() {
            let _ = writeln!(
                out,
                "strait_proxy_requests_total{{cluster=\"{}\",code=\"{status}\"}} {n}",
                escape(&cluster)
            );
        }
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

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
