//! Prometheus metrics of the ADS server.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    type_url: String,
}

/// Handles to the registered metrics; clones share the same series.
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    connected: Gauge,
    admission_waiting: Gauge,
    pushes: Family<TypeLabels, Counter>,
    acks: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    push_seconds: Histogram,
    convergence_seconds: Family<TypeLabels, Histogram>,
    push_bytes: Family<TypeLabels, Histogram>,
}

impl XdsMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connected: Gauge::default(),
            admission_waiting: Gauge::default(),
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            // 1 ms .. ~16 s: a push that takes longer is stuck behind a slow client.
            push_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            convergence_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            // 64 B .. 64 MiB
            push_bytes: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(64.0, 4.0, 11))
            }),
        };
        registry.register(
            "strait_xds_connected_proxies",
            "Open ADS streams",
            metrics.connected.clone(),
        );
        registry.register(
            "strait_xds_admission_waiting",
            "ADS streams waiting for a slot to begin their initial sync",
            metrics.admission_waiting.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "strait_xds_pushes",
            "xDS responses sent, by type",
            metrics.pushes.clone(),
        );
        registry.register(
            "strait_xds_acks",
            "xDS responses acknowledged, by type",
            metrics.acks.clone(),
        );
        registry.register(
            "strait_xds_nacks",
            "xDS responses rejected by the proxy, by type",
            metrics.nacks.clone(),
        );
        registry.register(
            "strait_xds_push_seconds",
            "Time from a snapshot being published (or a request making a response due) to the response being written",
            metrics.push_seconds.clone(),
        );
        registry.register(
            "strait_xds_convergence_seconds",
            "Time from a configuration change (or a request making a response due) to the proxy's ACK of the response carrying it, by type",
            metrics.convergence_seconds.clone(),
        );
        registry.register(
            "strait_xds_push_bytes",
            "Encoded size of each xDS response sent, by type",
            metrics.push_bytes.clone(),
        );
        metrics
    }

    /// Metrics attached to no registry, for tests and embedders that do not export them.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    pub(crate) fn stream_opened(&self) {
        self.connected.inc();
    }

    /// Counts a stream as waiting for admission until the guard drops.
    pub(crate) fn admission_waiting(&self) -> impl Drop + use<> {
        struct Waiting(Gauge);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.admission_waiting.inc();
        Waiting(self.admission_waiting.clone())
    }

    pub(crate) fn stream_closed(&self) {
        self.connected.dec();
    }

    pub(crate) fn pushed(&self, type_url: &str, latency: Duration, bytes: usize) {
        let labels = labels(type_url);
        self.pushes.get_or_create(&labels).inc();
        self.push_seconds.observe(latency.as_secs_f64());
        self.push_bytes.get_or_create(&labels).observe(bytes as f64);
    }

    pub(crate) fn acked(&self, type_url: &str, convergence: Duration) {
        let labels = labels(type_url);
        self.acks.get_or_create(&labels).inc();
        self.convergence_seconds
            .get_or_create(&labels)
            .observe(convergence.as_secs_f64());
    }

    pub(crate) fn nacked(&self, type_url: &str) {
        self.nacks.get_or_create(&labels(type_url)).inc();
    }
}

fn labels(type_url: &str) -> TypeLabels {
    TypeLabels {
        type_url: type_url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::CLUSTER_TYPE;

    #[test]
    fn metrics_are_exported_with_their_names() {
        let mut registry = Registry::default();
        let metrics = XdsMetrics::new(&mut registry);
        metrics.stream_opened();
        metrics.pushed(CLUSTER_TYPE, Duration::from_millis(3), 512);
        metrics.acked(CLUSTER_TYPE, Duration::from_millis(40));
        metrics.nacked(CLUSTER_TYPE);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("strait_xds_connected_proxies 1"), "{text}");
        for name in [
            "strait_xds_pushes_total",
            "strait_xds_acks_total",
            "strait_xds_nacks_total",
        ] {
            let line = format!("{name}{{type_url=\"{CLUSTER_TYPE}\"}} 1");
            assert!(text.contains(&line), "missing {line} in {text}");
        }
        assert!(text.contains("strait_xds_push_seconds_count 1"), "{text}");
        for name in ["strait_xds_convergence_seconds", "strait_xds_push_bytes"] {
            let line = format!("{name}_count{{type_url=\"{CLUSTER_TYPE}\"}} 1");
            assert!(text.contains(&line), "missing {line} in {text}");
        }
    }
}
