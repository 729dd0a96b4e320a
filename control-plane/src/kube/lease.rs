//! Leader election with a `coordination.k8s.io/v1` Lease, as Kubernetes controllers do: every
//! replica serves xDS, and the one holding the Lease also writes objects' `status`.
//!
//! The holder renews every `renew` interval; another replica takes over once `renewTime` is
//! older than `leaseDurationSeconds`. Writes carry the Lease's resourceVersion, so two
//! replicas racing for an expired Lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Runs the election forever; `leader` says whether this replica holds the Lease now.
pub async fn run(client: kube::Client, options: LeaseOptions, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &options.namespace);
    loop {
        let held = match try_acquire(&api, &options).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = %options.name, "leader election: {e}");
                false
            }
        };
        leader.send_if_modified(|was| {
            if *was != held {
                tracing::info!(lease = %options.name, identity = %options.identity, leader = held, "leadership changed");
                *was = held;
                true
            } else {
                false
            }
        });
        tokio::time::sleep(options.renew).await;
    }
}

/// Takes or renews the Lease if it is free, expired or ours; returns whether we hold it.
async fn try_acquire(api: &Api<Lease>, o: &LeaseOptions) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = i32::try_from(o.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(current) = api.get_opt(&o.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(o.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(o.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(o.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(secs)) => {
            now.duration_since(*renewed).as_secs() >= i64::from(secs)
        }
        _ => true,
    };
    if !ours && !expired {
        return Ok(false);
    }
    let mut lease = current;
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(o.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if ours {
            spec.acquire_time
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..spec
    });
    // Carries the resourceVersion read above: a replica that raced us gets 409.
    match api.replace(&o.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Paces work that only the leader does: [`Leading::tick`] returns once this replica leads and
/// the interval since the last tick has passed (or leadership changed).
pub struct Leading {
    leader: watch::Receiver<bool>,
    interval: Duration,
    started: bool,
    was_leading: bool,
}

impl Leading {
    pub fn new(leader: watch::Receiver<bool>, interval: Duration) -> Leading {
        Leading {
            leader,
            interval,
            started: false,
            was_leading: false,
        }
    }

    /// `Some(fresh)` when it is time to work, `fresh` when leadership was (re)gained since the
    /// last tick, so what was remembered as written must be written again; `None` once the
    /// election has ended.
    pub async fn tick(&mut self) -> Option<bool> {
        if self.started {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                changed = self.leader.changed() => changed.ok()?,
            }
        }
        self.started = true;
        loop {
            if *self.leader.borrow_and_update() {
                let fresh = !self.was_leading;
                self.was_leading = true;
                return Some(fresh);
            }
            self.was_leading = false;
            self.leader.changed().await.ok()?;
        }
    }
}
