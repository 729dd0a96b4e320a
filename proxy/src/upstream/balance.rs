//! Load balancing: weighted round robin, least request (two choices), random, outlier ejection.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{Cluster, Endpoint, LbPolicy, OutlierDetection};

/// Per-cluster balancing state, rebuilt when the cluster's endpoints or policies change.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    endpoints: Arc<[Endpoint]>,
    /// Running sum of weights, for weighted picks.
    cumulative: Box<[u64]>,
    total: u64,
    next: AtomicU64,
    active: Box<[AtomicUsize]>,
    outlier: Option<OutlierDetection>,
    panic_threshold: f64,
    health: Box<[Health]>,
    /// Some endpoint may be ejected (a hint; cleared when a scan finds none).
    any_ejected: AtomicBool,
    /// Consistent hashing: (point, endpoint) sorted by point.
    ring: Box<[(u64, usize)]>,
}

/// A stable 64-bit hash (SipHash with fixed keys).
pub fn hash_of(value: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn ring(policy: LbPolicy, endpoints: &[Endpoint], total: u64) -> Box<[(u64, usize)]> {
    let LbPolicy::ConsistentHash { ring_size } = policy else {
        return Box::new([]);
    };
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let replicas = (ring_size * u64::from(e.weight) / total.max(1)).max(1);
        for r in 0..replicas {
            ring.push((hash_of((&*e.host, e.port, r)), i));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    times_ejected: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Health {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| until > now)
    }
}

/// How an attempt at an endpoint ended, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// Connect failure, reset or timeout.
    LocalFailure,
}

/// An endpoint picked for one request; counts as in flight until dropped.
#[derive(Debug)]
pub struct Pick {
    balancer: Arc<Balancer>,
    index: usize,
}

impl Pick {
    /// The endpoint's index in its cluster's endpoints.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.balancer.endpoints[self.index]
    }

    /// Feeds outlier detection with how the attempt ended; true if it ejected the endpoint.
    pub fn report(&self, outcome: Outcome) -> bool {
        self.balancer.report(self.index, outcome)
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.balancer.active[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(cluster: &Cluster) -> Balancer {
        let mut sum = 0u64;
        let cumulative = cluster
            .endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.weight);
                sum
            })
            .collect();
        Balancer {
            policy: cluster.lb_policy,
            endpoints: cluster.endpoints.clone(),
            cumulative,
            total: sum,
            next: AtomicU64::new(fastrand::u64(..)),
            active: cluster
                .endpoints
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            outlier: cluster.outlier.clone(),
            panic_threshold: cluster.healthy_panic_threshold,
            health: cluster
                .endpoints
                .iter()
                .map(|_| Health::default())
                .collect(),
            any_ejected: AtomicBool::new(false),
            ring: ring(cluster.lb_policy, &cluster.endpoints, sum),
        }
    }

    /// Whether this balancer still fits `cluster` (so its counters can carry over).
    pub fn fits(&self, cluster: &Cluster) -> bool {
        self.policy == cluster.lb_policy
            && self.endpoints == cluster.endpoints
            && self.outlier == cluster.outlier
            && self.panic_threshold == cluster.healthy_panic_threshold
    }

    /// An endpoint for the next request (`hash`: the request's, for consistent hashing);
    /// `None` when the cluster has none it may use.
    pub fn pick(self: &Arc<Self>, hash: Option<u64>) -> Option<Pick> {
        if self.total == 0 {
            return None;
        }
        let index = if let (Some(h), false) = (hash, self.ring.is_empty()) {
            self.ring_pick(h)?
        } else if self.any_ejected.load(Ordering::Relaxed) {
            self.pick_among_healthy()?
        } else {
            self.pick_from(&self.cumulative, self.total, None)
        };
        self.active[index].fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            balancer: self.clone(),
            index,
        })
    }

    /// The first endpoint on the ring at or after `hash` that is not ejected.
    fn ring_pick(&self, hash: u64) -> Option<usize> {
        let start = self.ring.partition_point(|(point, _)| *point < hash) % self.ring.len();
        let first = self.ring[start].1;
        if !self.any_ejected.load(Ordering::Relaxed) {
            return Some(first);
        }
        let now = Instant::now();
        let n = self.ring.len();
        (0..n)
            .map(|k| self.ring[(start + k) % n].1)
            .find(|i| !self.health[*i].ejected(now))
            .or((self.panic_threshold > 0.0).then_some(first))
    }

    /// A pick that skips ejected endpoints, or uses all of them in panic mode.
    fn pick_among_healthy(&self) -> Option<usize> {
        let now = Instant::now();
        let healthy: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !self.health[*i].ejected(now))
            .collect();
        if healthy.len() == self.endpoints.len() {
            self.any_ejected.store(false, Ordering::Relaxed);
            return Some(self.pick_from(&self.cumulative, self.total, None));
        }
        let share = 100.0 * healthy.len() as f64 / self.endpoints.len() as f64;
        if share < self.panic_threshold {
            return Some(self.pick_from(&self.cumulative, self.total, None));
        }
        if healthy.is_empty() {
            return None;
        }
        let mut sum = 0;
        let cumulative: Vec<u64> = healthy
            .iter()
            .map(|i| {
                sum += u64::from(self.endpoints[*i].weight);
                sum
            })
            .collect();
        Some(healthy[self.pick_from(&cumulative, sum, Some(&healthy))])
    }

    /// An index into `cumulative` (whose entries map to endpoints through `map`, if given).
    fn pick_from(&self, cumulative: &[u64], total: u64, map: Option<&[usize]>) -> usize {
        let at = |n: u64| cumulative.partition_point(|c| *c <= n);
        let random = || at(fastrand::u64(..total));
        match self.policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                at(self.next.fetch_add(1, Ordering::Relaxed) % total)
            }
            // Without a hash (no key in the request) Envoy picks at random too.
            LbPolicy::Random | LbPolicy::ConsistentHash { .. } => random(),
            LbPolicy::LeastRequest => {
                let (a, b) = (random(), random());
                let load = |i: usize| {
                    let e = map.map_or(i, |m| m[i]);
                    self.active[e].load(Ordering::Relaxed)
                };
                if load(b) < load(a) { b } else { a }
            }
        }
    }

    fn report(&self, index: usize, outcome: Outcome) -> bool {
        let Some(od) = &self.outlier else {
            return false;
        };
        let h = &self.health[index];
        let bump = |counter: &AtomicU32, threshold: Option<u32>| -> bool {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            threshold.is_some_and(|t| n >= t)
        };
        let trip = match outcome {
            Outcome::Status(status) if status >= 500 => {
                let gateway = matches!(status, 502..=504);
                let five = bump(&h.consecutive_5xx, od.consecutive_5xx);
                let gw = if gateway {
                    bump(&h.consecutive_gateway, od.consecutive_gateway_failure)
                } else {
                    h.consecutive_gateway.store(0, Ordering::Relaxed);
                    false
                };
                five || gw
            }
            Outcome::Status(_) => {
                h.consecutive_5xx.store(0, Ordering::Relaxed);
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                h.consecutive_local.store(0, Ordering::Relaxed);
                false
            }
            Outcome::LocalFailure if od.split_local_origin => {
                bump(&h.consecutive_local, od.consecutive_local_origin_failure)
            }
            Outcome::LocalFailure => {
                let five = bump(&h.consecutive_5xx, od.consecutive_5xx);
                let gw = bump(&h.consecutive_gateway, od.consecutive_gateway_failure);
                five || gw
            }
        };
        trip && self.eject(index, od)
    }

    /// Ejects the endpoint unless max_ejection_percent forbids it; true if it did.
    fn eject(&self, index: usize, od: &OutlierDetection) -> bool {
        let now = Instant::now();
        let ejected = (0..self.endpoints.len())
            .filter(|i| *i != index && self.health[*i].ejected(now))
            .count();
        let n = self.endpoints.len();
        // Envoy ejects at least one endpoint whatever the percentage.
        if ejected > 0 && (ejected + 1) * 100 > od.max_ejection_percent as usize * n {
            return false;
        }
        let h = &self.health[index];
        let times = h.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        *h.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(now + od.base_ejection_time * times);
        h.consecutive_5xx.store(0, Ordering::Relaxed);
        h.consecutive_gateway.store(0, Ordering::Relaxed);
        h.consecutive_local.store(0, Ordering::Relaxed);
        self.any_ejected.store(true, Ordering::Relaxed);
        let e = &self.endpoints[index];
        tracing::info!(host = %e.host, port = e.port, times, "endpoint ejected");
        true
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        if !self.any_ejected.load(Ordering::Relaxed) {
            return 0;
        }
        let now = Instant::now();
        self.health.iter().filter(|h| h.ejected(now)).count()
    }

    /// Requests in flight to each endpoint.
    pub fn active(&self) -> Vec<usize> {
        self.active
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::config::{Discovery, Limits};

    fn cluster(policy: LbPolicy, weights: &[u32]) -> Cluster {
        Cluster {
            name: "c".into(),
            discovery: Discovery::Static,
            lb_policy: policy,
            connect_timeout: Duration::from_secs(1),
            limits: Limits::default(),
            outlier: None,
            healthy_panic_threshold: 50.0,
            http2: false,
            idle_timeout: None,
            max_requests_per_connection: None,
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    host: "127.0.0.1".into(),
                    port: 1000 + i as u16,
                    weight: *w,
                    transport_labels: Default::default(),
                })
                .collect(),
            tls: None,
            upstream_bind: None,
            transport_matches: Vec::new(),
        }
    }

    fn tally(b: &Arc<Balancer>, n: usize) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let pick = b.pick(None).expect("endpoints");
            *out.entry(pick.endpoint().port).or_default() += 1;
        }
        out
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let b = Arc::new(Balancer::new(&cluster(LbPolicy::RoundRobin, &[1, 3])));
        let t = tally(&b, 400);
        assert_eq!(t, BTreeMap::from([(1000, 100), (1001, 300)]));
    }

    #[test]
    fn random_follows_weights() {
        let b = Arc::new(Balancer::new(&cluster(LbPolicy::Random, &[9, 1])));
        let t = tally(&b, 10_000);
        let light = t.get(&1001).copied().unwrap_or(0);
        assert!((800..=1200).contains(&light), "{t:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Arc::new(Balancer::new(&cluster(LbPolicy::LeastRequest, &[1, 1])));
        // Hold many requests on one endpoint.
        let held: Vec<Pick> = (0..50)
            .filter_map(|_| b.pick(None))
            .filter(|p| p.endpoint().port == 1000)
            .collect();
        assert!(!held.is_empty());
        let t = tally(&b, 1000);
        let busy = t.get(&1000).copied().unwrap_or(0);
        // Two choices: the busy one wins only when both draws land on it (~25%).
        assert!(busy < 350, "{t:?}");
        drop(held);
        assert!(b.active().iter().all(|a| *a == 0), "{:?}", b.active());
    }

    #[test]
    fn consecutive_errors_eject_and_panic_mode_is_off_at_zero() {
        let mut c = cluster(LbPolicy::RoundRobin, &[1, 1, 1]);
        c.outlier = Some(OutlierDetection {
            consecutive_5xx: Some(2),
            consecutive_gateway_failure: None,
            consecutive_local_origin_failure: None,
            split_local_origin: false,
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 100,
        });
        c.healthy_panic_threshold = 0.0;
        let b = Arc::new(Balancer::new(&c));
        let report = |port: u16, outcome: Outcome| -> bool {
            for _ in 0..10 {
                let p = b.pick(None).expect("endpoint");
                if p.endpoint().port == port {
                    return p.report(outcome);
                }
            }
            panic!("{port} never picked");
        };
        // A success in between resets the count.
        report(1000, Outcome::Status(503));
        report(1000, Outcome::Status(200));
        assert!(
            !report(1000, Outcome::Status(503)),
            "one in a row is not two"
        );
        assert!(tally(&b, 30).contains_key(&1000));
        assert!(
            report(1000, Outcome::Status(503)),
            "the second in a row ejects"
        );
        assert_eq!(b.ejected(), 1);
        let t = tally(&b, 30);
        assert!(!t.contains_key(&1000), "{t:?}");
        assert_eq!(t.values().sum::<usize>(), 30);
        // Local failures count as 5xx unless split.
        report(1001, Outcome::LocalFailure);
        report(1001, Outcome::LocalFailure);
        report(1002, Outcome::Status(500));
        report(1002, Outcome::Status(500));
        assert!(b.pick(None).is_none(), "all ejected and no panic mode");
    }

    #[test]
    fn consistent_hash_sticks_and_spreads() {
        let b = Arc::new(Balancer::new(&cluster(
            LbPolicy::ConsistentHash { ring_size: 1024 },
            &[1, 1, 1],
        )));
        let port = |key: &str| {
            b.pick(Some(hash_of(key)))
                .expect("endpoint")
                .endpoint()
                .port
        };
        for key in ["alice", "bob", "carol"] {
            let first = port(key);
            assert!((0..20).all(|_| port(key) == first), "{key} moved");
        }
        let spread: std::collections::BTreeSet<u16> =
            (0..100).map(|i| port(&format!("user-{i}"))).collect();
        assert_eq!(spread.len(), 3, "{spread:?}");
    }

    #[test]
    fn no_endpoints_no_pick() {
        let b = Arc::new(Balancer::new(&cluster(LbPolicy::RoundRobin, &[])));
        assert!(b.pick(None).is_none());
    }
}
