//! Circuit breakers: a cluster's max_requests, max_connections (with max_pending_requests
//! waiting for one) and max_retries, counted as Envoy counts them for HTTP/1.1 upstreams.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Cluster, Limits};
use crate::stats::ClusterStats;

/// One cluster's breaker state; rebuilt (counts start afresh, as in Envoy) when its limits change.
#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    http2: bool,
    requests: AtomicUsize,
    /// HTTP/1.1 holds a connection for each request in flight, so a request needs one of
    /// these for each attempt: at most max_connections attempts are on the wire.
    connections: Arc<Semaphore>,
    pending: AtomicUsize,
    retries: AtomicUsize,
}

/// Which limit turned a request (or retry) away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    MaxRequests,
    MaxPendingRequests,
    MaxConnections,
}

/// Counts against max_requests until dropped.
#[derive(Debug)]
pub struct RequestSlot(Arc<Breaker>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts against max_retries until dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<Breaker>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 connection's worth of capacity for one attempt (none for HTTP/2, where
/// requests share connections); held until the attempt's response is done.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Counts a request as pending until dropped (also when its wait is abandoned).
struct PendingSlot<'a>(&'a AtomicUsize);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Breaker {
    pub fn new(cluster: &Cluster) -> Breaker {
        let permits = (cluster.limits.max_connections as usize).min(Semaphore::MAX_PERMITS);
        Breaker {
            limits: cluster.limits,
            http2: cluster.http2,
            requests: AtomicUsize::new(0),
            connections: Arc::new(Semaphore::new(permits)),
            pending: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        }
    }

    /// Whether this breaker still applies to `cluster` (so its counts carry over).
    pub fn fits(&self, cluster: &Cluster) -> bool {
        self.limits == cluster.limits && self.http2 == cluster.http2
    }

    /// Admits a request under max_requests.
    pub fn request(self: &Arc<Self>, stats: &ClusterStats) -> Result<RequestSlot, Overflow> {
        let before = self.requests.fetch_add(1, Ordering::Relaxed);
        let slot = RequestSlot(self.clone());
        if before >= self.limits.max_requests as usize {
            stats.overflow_max_requests.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::MaxRequests);
        }
        Ok(slot)
    }

    /// A connection for one attempt: at once if one is free, else after waiting as one of at
    /// most max_pending_requests pending requests. The caller bounds the wait (route timeout).
    pub async fn connection(&self, stats: &ClusterStats) -> Result<ConnectionSlot, Overflow> {
        if self.http2 {
            return Ok(ConnectionSlot { _permit: None });
        }
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Ok(ConnectionSlot {
                _permit: Some(permit),
            });
        }
        stats
            .overflow_max_connections
            .fetch_add(1, Ordering::Relaxed);
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = PendingSlot(&self.pending);
        if before >= self.limits.max_pending_requests as usize {
            stats
                .overflow_max_pending_requests
                .fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::MaxPendingRequests);
        }
        match self.connections.clone().acquire_owned().await {
            Ok(permit) => Ok(ConnectionSlot {
                _permit: Some(permit),
            }),
            // The semaphore is never closed; treat it as an overflow should that change.
            Err(_) => Err(Overflow::MaxPendingRequests),
        }
    }

    /// A proxied TCP connection under max_connections: at once or not at all (Envoy's TCP
    /// proxy does not queue; the connection is closed and counted as an overflow).
    pub fn tcp_connection(&self, stats: &ClusterStats) -> Result<ConnectionSlot, Overflow> {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => Ok(ConnectionSlot {
                _permit: Some(permit),
            }),
            Err(_) => {
                stats
                    .overflow_max_connections
                    .fetch_add(1, Ordering::Relaxed);
                Err(Overflow::MaxConnections)
            }
        }
    }

    /// Admits one retry under max_retries (retries in progress, cluster-wide); `None`: the
    /// retry is not attempted.
    pub fn retry(self: &Arc<Self>, stats: &ClusterStats) -> Option<RetrySlot> {
        let before = self.retries.fetch_add(1, Ordering::Relaxed);
        let slot = RetrySlot(self.clone());
        if before >= self.limits.max_retries as usize {
            stats.overflow_max_retries.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(slot)
    }

    pub fn active_requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn pending_requests(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Discovery, LbPolicy};

    fn cluster(limits: Limits) -> Cluster {
        Cluster {
            name: "c".into(),
            discovery: Discovery::Static,
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            limits,
            outlier: None,
            healthy_panic_threshold: 50.0,
            http2: false,
            idle_timeout: None,
            max_requests_per_connection: None,
            endpoints: Arc::from([]),
            tls: None,
            upstream_bind: None,
            transport_matches: Vec::new(),
        }
    }

    #[tokio::test]
    async fn connections_queue_up_to_max_pending_then_overflow() {
        let b = Arc::new(Breaker::new(&cluster(Limits {
            max_connections: 1,
            max_pending_requests: 1,
            ..Limits::default()
        })));
        let stats = Arc::new(ClusterStats::default());
        let first = b.connection(&stats).await.expect("a free connection");
        let (b2, s2) = (b.clone(), stats.clone());
        let queued = tokio::spawn(async move { b2.connection(&s2).await.map(|_| ()) });
        while b.pending_requests() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            b.connection(&stats).await.err(),
            Some(Overflow::MaxPendingRequests)
        );
        assert!(!queued.is_finished());
        drop(first);
        queued
            .await
            .expect("joined")
            .expect("got the freed connection");
        assert_eq!(b.pending_requests(), 0);
        assert_eq!(
            stats.overflow_max_pending_requests.load(Ordering::Relaxed),
            1
        );
        assert_eq!(stats.overflow_max_connections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn retries_and_requests_are_capped_while_in_progress() {
        let b = Arc::new(Breaker::new(&cluster(Limits {
            max_retries: 1,
            max_requests: 2,
            ..Limits::default()
        })));
        let stats = ClusterStats::default();
        let retry = b.retry(&stats).expect("first retry");
        assert!(b.retry(&stats).is_none());
        drop(retry);
        assert!(b.retry(&stats).is_some());
        let held = [b.request(&stats), b.request(&stats)];
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(b.request(&stats).err(), Some(Overflow::MaxRequests));
        drop(held);
        assert_eq!(b.active_requests(), 0);
        assert_eq!(stats.overflow_max_retries.load(Ordering::Relaxed), 1);
    }
}
