//! Watches the API server and feeds the store's Kubernetes layer.
//!
//! One watcher per resource (Services, EndpointSlices or Endpoints, Pods, each Istio kind,
//! Ingresses, Secrets) sends its events to one task that owns what has been seen, turns it into the model's
//! objects (`convert`) and hands the store what changed, in batches gathered over a few
//! milliseconds. The store accepts or refuses each object alone. Of Secrets only those shaped
//! as TLS credentials are kept, read by the model's reader (a malformed one is refused alone,
//! logged with the field, and its last good version stays).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use strait_model::{Credential, CredentialId, Kind, Object, ObjectId};
use tokio::sync::mpsc;

use super::convert::{self, EndpointAddress, PodInfo};
use super::ingress::{self, IngressOptions};
use crate::store::ConfigStore;
use crate::store::kube::{CredentialChange, KubeChange};

/// How long events are gathered into one batch for the store.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// The configuration kinds (Istio's and Strait's RateLimitPolicy), as the API server serves
/// them: (kind, group, version, plural).
pub const CONFIG_KINDS: [(Kind, &str, &str, &str); 11] = [
    (
        Kind::VirtualService,
        "networking.istio.io",
        "v1",
        "virtualservices",
    ),
    (
        Kind::DestinationRule,
        "networking.istio.io",
        "v1",
        "destinationrules",
    ),
    (Kind::Gateway, "networking.istio.io", "v1", "gateways"),
    (
        Kind::ServiceEntry,
        "networking.istio.io",
        "v1",
        "serviceentries",
    ),
    (
        Kind::WorkloadEntry,
        "networking.istio.io",
        "v1",
        "workloadentries",
    ),
    (
        Kind::PeerAuthentication,
        "security.istio.io",
        "v1",
        "peerauthentications",
    ),
    (
        Kind::AuthorizationPolicy,
        "security.istio.io",
        "v1",
        "authorizationpolicies",
    ),
    (
        Kind::RequestAuthentication,
        "security.istio.io",
        "v1",
        "requestauthentications",
    ),
    (Kind::Sidecar, "networking.istio.io", "v1", "sidecars"),
    (Kind::Telemetry, "telemetry.istio.io", "v1", "telemetries"),
    (
        Kind::RateLimitPolicy,
        "policy.strait.io",
        "v1alpha1",
        "ratelimitpolicies",
    ),
];

#[derive(Clone, Debug)]
pub struct KubeSourceOptions {
    /// The cluster's DNS domain: Service hosts are `NAME.NAMESPACE.svc.DOMAIN`.
    pub cluster_domain: String,
    /// The ingress gateway's labels: the selector of the Gateways made from Ingresses.
    pub ingress_selector: BTreeMap<String, String>,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        KubeSourceOptions {
            cluster_domain: "cluster.local".to_string(),
            ingress_selector: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
        }
    }
}

/// One watcher's event.
enum Update {
    Service(Event<Service>),
    Endpoints(Event<Endpoints>),
    Slice(Event<EndpointSlice>),
    Pod(Event<Pod>),
    Istio(Kind, Event<DynamicObject>),
    Ingress(Event<Ingress>),
    IngressClass(Event<IngressClass>),
    Secret(Event<SecretData>),
}

/// A Secret as kept: its key, and its type and data only if it is shaped as a credential
/// (other Secrets' contents are not held).
#[derive(Clone, Debug)]
struct SecretData {
    key: Key,
    credential: Option<SecretContents>,
}

/// A Secret's type and data.
type SecretContents = (Option<String>, BTreeMap<String, Vec<u8>>);

impl SecretData {
    fn of(secret: Secret) -> SecretData {
        let key = key_of(&secret.metadata);
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let credential = Credential::is_candidate(secret.type_.as_deref(), &data)
            .then_some((secret.type_, data));
        SecretData { key, credential }
    }
}

/// Secrets of these types are never credentials: not even listed.
const NOT_CREDENTIALS: &str = "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1,type!=bootstrap.kubernetes.io/token";

fn map_event<A, B>(event: Event<A>, f: impl Fn(A) -> B) -> Event<B> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// Runs the watchers until the store is dropped; errors of one watcher are retried with
/// backoff and logged, never fatal.
pub async fn run(
    client: kube::Client,
    store: ConfigStore,
    options: KubeSourceOptions,
) -> anyhow::Result<()> {
    let slices = serves(&client, "discovery.k8s.io/v1", "endpointslices").await;
    let ingresses = serves(&client, "networking.k8s.io/v1", "ingresses").await;
    tracing::info!(
        endpoints = if slices {
            "discovery.k8s.io/v1 EndpointSlices"
        } else {
            "core/v1 Endpoints"
        },
        "watching the Kubernetes API server"
    );
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    spawn_watch(
        Api::<Service>::all(client.clone()),
        "Services",
        tx.clone(),
        Update::Service,
    );
    spawn_watch(
        Api::<Pod>::all(client.clone()),
        "Pods",
        tx.clone(),
        Update::Pod,
    );
    if slices {
        spawn_watch(
            Api::<EndpointSlice>::all(client.clone()),
            "EndpointSlices",
            tx.clone(),
            Update::Slice,
        );
    } else {
        spawn_watch(
            Api::<Endpoints>::all(client.clone()),
            "Endpoints",
            tx.clone(),
            Update::Endpoints,
        );
    }
    if ingresses {
        spawn_watch(
            Api::<Ingress>::all(client.clone()),
            "Ingresses",
            tx.clone(),
            Update::Ingress,
        );
        spawn_watch(
            Api::<IngressClass>::all(client.clone()),
            "IngressClasses",
            tx.clone(),
            Update::IngressClass,
        );
    } else {
        tracing::info!("the API server does not serve networking.k8s.io/v1 Ingresses: not watched");
    }
    for (kind, resource) in istio_resources() {
        let what = format!("{}.{}", resource.plural, resource.group);
        spawn_watch(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            what,
            tx.clone(),
            move |event| Update::Istio(kind, event),
        );
    }
    store.watch_credentials();
    spawn_watch_with(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().fields(NOT_CREDENTIALS),
        "Secrets",
        tx.clone(),
        |event| Update::Secret(map_event(event, SecretData::of)),
    );
    drop(tx);

    let mut state = State::new(options);
    while let Some(first) = rx.recv().await {
        state.update(first);
        let deadline = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                next = rx.recv() => match next {
                    Some(u) => state.update(u),
                    None => break,
                },
            }
        }
        let changes = state.changes();
        let credentials = state.credential_changes();
        if !(changes.is_empty() && credentials.is_empty())
            && let Err(errors) = store.kube_apply_with(changes, credentials)
        {
            tracing::error!(%errors, "Kubernetes objects not applied: the other sources do not validate with them");
        }
    }
    Ok(())
}

/// The API resources of Istio's kinds, by kind, as the server serves them.
pub fn istio_resources() -> Vec<(Kind, ApiResource)> {
    CONFIG_KINDS
        .iter()
        .map(|(kind, group, version, plural)| {
            let gvk = GroupVersionKind::gvk(group, version, &kind.to_string());
            (*kind, ApiResource::from_gvk_with_plural(&gvk, plural))
        })
        .collect()
}

/// Whether the server serves `resource` in `group_version` (EndpointSlices from 1.21,
/// Ingresses from 1.19).
async fn serves(client: &kube::Client, group_version: &str, resource: &str) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == resource),
        Err(_) => false,
    }
}

/// Watches `api` (relisting with backoff on errors, which are logged as `what`'s) and sends
/// each event, wrapped, to `tx` until the receiver goes.
fn spawn_watch<K>(
    api: Api<K>,
    what: impl std::fmt::Display + Send + 'static,
    tx: mpsc::Sender<Update>,
    wrap: impl Fn(Event<K>) -> Update + Send + 'static,
) where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    spawn_watch_with(api, watcher::Config::default(), what, tx, wrap);
}

/// [`spawn_watch`] with a watcher config (selectors).
fn spawn_watch_with<K>(
    api: Api<K>,
    config: watcher::Config,
    what: impl std::fmt::Display + Send + 'static,
    tx: mpsc::Sender<Update>,
    wrap: impl Fn(Event<K>) -> Update + Send + 'static,
) where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if tx.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(resource = %what, "watch failed (retrying): {e}"),
            }
        }
    });
}

/// `(namespace, name)`.
type Key = (String, String);

/// The entries of `map` in namespace `ns`, by name: a range of the sorted keys, not a scan.
fn in_namespace<'a, T>(
    map: &'a BTreeMap<Key, T>,
    ns: &'a str,
) -> impl Iterator<Item = (&'a String, &'a T)> + 'a {
    map.range((ns.to_string(), String::new())..)
        .take_while(move |((n, _), _)| n == ns)
        .map(|((_, name), v)| (name, v))
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A resource's objects as watched, with the relist in progress.
struct Seen<T> {
    items: BTreeMap<Key, T>,
    relist: Option<BTreeMap<Key, T>>,
}

impl<T> Seen<T> {
    fn new() -> Self {
        Seen {
            items: BTreeMap::new(),
            relist: None,
        }
    }

    /// Applies an event; returns the keys whose object changed (or went).
    fn apply(&mut self, event: Event<T>, key: impl Fn(&T) -> Key) -> Vec<Key> {
        match event {
            Event::Apply(o) => {
                let k = key(&o);
                self.items.insert(k.clone(), o);
                vec![k]
            }
            Event::Delete(o) => {
                let k = key(&o);
                self.items.remove(&k);
                vec![k]
            }
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                let k = key(&o);
                self.relist.get_or_insert_with(BTreeMap::new).insert(k, o);
                Vec::new()
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.items, fresh);
                old.into_keys().chain(self.items.keys().cloned()).collect()
            }
        }
    }
}

struct State {
    options: KubeSourceOptions,
    services: Seen<Service>,
    endpoints: Seen<Endpoints>,
    slices: Seen<EndpointSlice>,
    pods: Seen<Pod>,
    istio: BTreeMap<Kind, Seen<DynamicObject>>,
    ingresses: Seen<Ingress>,
    ingress_classes: Seen<IngressClass>,
    secrets: Seen<SecretData>,
    /// Secrets to read again.
    dirty_secrets: BTreeSet<Key>,
    /// The credentials the store was last given.
    sent_credentials: BTreeMap<CredentialId, Credential>,
    /// Services whose ServiceEntry must be made again.
    dirty_services: BTreeSet<Key>,
    /// Istio objects that changed.
    dirty_istio: BTreeSet<(Kind, Key)>,
    /// Ingresses to convert again.
    dirty_ingresses: BTreeSet<Key>,
    /// The objects each Ingress last made, and what of it was last warned about.
    from_ingress: BTreeMap<Key, (BTreeSet<ObjectId>, Vec<String>)>,
    /// What the store was last given, by id (to send only what changed).
    sent: BTreeMap<ObjectId, serde_json::Value>,
}

impl State {
    fn new(options: KubeSourceOptions) -> State {
        State {
            options,
            services: Seen::new(),
            endpoints: Seen::new(),
            slices: Seen::new(),
            pods: Seen::new(),
            istio: BTreeMap::new(),
            ingresses: Seen::new(),
            ingress_classes: Seen::new(),
            secrets: Seen::new(),
            dirty_secrets: BTreeSet::new(),
            sent_credentials: BTreeMap::new(),
            dirty_services: BTreeSet::new(),
            dirty_istio: BTreeSet::new(),
            dirty_ingresses: BTreeSet::new(),
            from_ingress: BTreeMap::new(),
            sent: BTreeMap::new(),
        }
    }

    fn update(&mut self, update: Update) {
        match update {
            Update::Service(e) => {
                let keys = self.services.apply(e, |s| key_of(&s.metadata));
                // An Ingress may name a Service's port by name.
                let namespaces: BTreeSet<&String> = keys.iter().map(|(ns, _)| ns).collect();
                let ingresses: Vec<Key> = self
                    .ingresses
                    .items
                    .keys()
                    .filter(|(ns, _)| namespaces.contains(ns))
                    .cloned()
                    .collect();
                self.dirty_ingresses.extend(ingresses);
                self.dirty_services.extend(keys);
            }
            Update::Endpoints(e) => {
                let keys = self.endpoints.apply(e, |s| key_of(&s.metadata));
                self.dirty_services.extend(keys);
            }
            Update::Slice(e) => {
                let keys = self.slices.apply(e, |s| key_of(&s.metadata));
                // A slice names its Service by label; a changed slice dirties that Service.
                // (A deleted one is gone from the map: dirty every Service of its namespace.)
                for (ns, slice) in keys {
                    let service = self
                        .slices
                        .items
                        .get(&(ns.clone(), slice))
                        .and_then(convert::slice_service);
                    match service {
                        Some(name) => {
                            self.dirty_services.insert((ns, name));
                        }
                        None => self.dirty_namespace(&ns),
                    }
                }
            }
            Update::Pod(e) => {
                let keys = self.pods.apply(e, |p| key_of(&p.metadata));
                let namespaces: BTreeSet<String> = keys.into_iter().map(|(ns, _)| ns).collect();
                for ns in namespaces {
                    self.dirty_namespace(&ns);
                }
            }
            Update::Istio(kind, e) => {
                let keys = self
                    .istio
                    .entry(kind)
                    .or_insert_with(Seen::new)
                    .apply(e, |o| key_of(&o.metadata));
                self.dirty_istio.extend(keys.into_iter().map(|k| (kind, k)));
            }
            Update::Ingress(e) => {
                let keys = self.ingresses.apply(e, |i| key_of(&i.metadata));
                self.dirty_ingresses.extend(keys);
            }
            Update::IngressClass(e) => {
                // Which Ingresses are Strait's may have changed: look at every one again.
                if !self
                    .ingress_classes
                    .apply(e, |c| key_of(&c.metadata))
                    .is_empty()
                {
                    self.dirty_ingresses
                        .extend(self.ingresses.items.keys().cloned());
                }
            }
            Update::Secret(e) => {
                let keys = self.secrets.apply(e, |s| s.key.clone());
                self.dirty_secrets.extend(keys);
            }
        }
    }

    /// The credentials that changed since the last call. A Secret that does not read as a
    /// credential is refused alone: logged, naming the field; its last good version stays.
    fn credential_changes(&mut self) -> Vec<CredentialChange> {
        let mut changes = Vec::new();
        for key in std::mem::take(&mut self.dirty_secrets) {
            let id = CredentialId::new(key.0.clone(), key.1.clone());
            let shaped = self
                .secrets
                .items
                .get(&key)
                .and_then(|s| s.credential.as_ref());
            let Some((secret_type, data)) = shaped else {
                if self.sent_credentials.remove(&id).is_some() {
                    changes.push(CredentialChange::Remove(id));
                }
                continue;
            };
            match Credential::from_secret(id.clone(), secret_type.as_deref(), data) {
                Ok(credential) => {
                    if self.sent_credentials.get(&id) != Some(&credential) {
                        self.sent_credentials.insert(id, credential.clone());
                        changes.push(CredentialChange::Upsert(credential));
                    }
                }
                Err(error) => {
                    let kept = self.sent_credentials.contains_key(&id);
                    tracing::error!(%error, last_good_in_force = kept, "Secret refused as a credential");
                }
            }
        }
        changes
    }

    fn dirty_namespace(&mut self, ns: &str) {
        let keys: Vec<Key> = in_namespace(&self.services.items, ns)
            .map(|(name, _)| (ns.to_string(), name.clone()))
            .collect();
        self.dirty_services.extend(keys);
    }

    /// The endpoints of Service `key`, from its slices or its Endpoints.
    fn endpoints_of(&self, key: &Key) -> Vec<EndpointAddress> {
        let from_slices: Vec<EndpointAddress> = in_namespace(&self.slices.items, &key.0)
            .filter(|(_, s)| convert::slice_service(s).as_ref() == Some(&key.1))
            .flat_map(|(_, s)| convert::from_slice(s))
            .collect();
        if !from_slices.is_empty() {
            return from_slices;
        }
        self.endpoints
            .items
            .get(key)
            .map(convert::from_endpoints)
            .unwrap_or_default()
    }

    /// What changed since the last call, as the store takes it.
    fn changes(&mut self) -> Vec<KubeChange> {
        let mut changes = Vec::new();
        // The Pods of each namespace with dirty Services, read once.
        let mut pods_by_namespace: BTreeMap<String, BTreeMap<String, PodInfo>> = BTreeMap::new();
        for key in std::mem::take(&mut self.dirty_services) {
            let id = ObjectId {
                kind: Kind::ServiceEntry,
                namespace: key.0.clone(),
                name: convert::service_entry_name(&key.1),
            };
            let made = self.services.items.get(&key).and_then(|svc| {
                let pods = pods_by_namespace.entry(key.0.clone()).or_insert_with(|| {
                    in_namespace(&self.pods.items, &key.0)
                        .map(|(name, pod)| (name.clone(), PodInfo::of(pod)))
                        .collect()
                });
                convert::service_entry(
                    svc,
                    &self.endpoints_of(&key),
                    pods,
                    &self.options.cluster_domain,
                )
            });
            match made {
                Some(Ok(object)) => self.upsert(object, &mut changes),
                Some(Err(e)) => {
                    tracing::error!(service = %format!("{}/{}", key.0, key.1), "{e}");
                }
                None => self.remove(id, &mut changes),
            }
        }
        for (kind, key) in std::mem::take(&mut self.dirty_istio) {
            let id = ObjectId {
                kind,
                namespace: key.0.clone(),
                name: key.1.clone(),
            };
            let present = self
                .istio
                .get(&kind)
                .and_then(|s| s.items.get(&key))
                .cloned();
            match present {
                None => self.remove(id, &mut changes),
                Some(object) => {
                    let read = serde_json::to_value(&object)
                        .map_err(|e| strait_model::ValidationError {
                            origin: format!("Kubernetes {id}"),
                            object: Some(id.clone()),
                            path: String::new(),
                            message: e.to_string(),
                        })
                        .and_then(|v| convert::istio_object(&v));
                    match read {
                        Ok(object) => self.upsert(object, &mut changes),
                        // Malformed: refused alone; its last good version (if any) stays in
                        // force, and its status says why.
                        Err(e) => {
                            tracing::error!(object = %id, "refused: {e}");
                            // Remembered as sent-but-unreadable: a good version (even the
                            // last good one again) is sent anew, and a delete clears it.
                            self.sent.insert(id.clone(), serde_json::Value::Null);
                            changes.push(KubeChange::Malformed(id, e));
                        }
                    }
                }
            }
        }
        let classes = ingress::Classes::new(self.ingress_classes.items.values());
        for key in std::mem::take(&mut self.dirty_ingresses) {
            self.ingress_changes(key, &classes, &mut changes);
        }
        changes
    }

    /// Converts Ingress `key` again: what it makes now is upserted, what it made before and
    /// makes no more is removed. One that does not convert is refused whole (logged), and
    /// what it made before stays in force.
    fn ingress_changes(
        &mut self,
        key: Key,
        classes: &ingress::Classes,
        changes: &mut Vec<KubeChange>,
    ) {
        let label = format!("{}/{}", key.0, key.1);
        let (made, warnings) = match self.ingresses.items.get(&key) {
            Some(ing) if ingress::is_ours(ing, classes) => {
                let services = &self.services.items;
                let converted = ingress::convert(
                    ing,
                    |name| services.get(&(key.0.clone(), name.to_string())),
                    IngressOptions {
                        selector: &self.options.ingress_selector,
                        cluster_domain: &self.options.cluster_domain,
                    },
                );
                match converted {
                    Ok(c) => (
                        c.objects,
                        c.warnings.iter().map(ToString::to_string).collect(),
                    ),
                    Err(errors) => {
                        tracing::error!(ingress = %label, "refused: {errors}");
                        return;
                    }
                }
            }
            // Gone, or of another class.
            _ => (Vec::new(), Vec::new()),
        };
        let (before, warned) = self.from_ingress.remove(&key).unwrap_or_default();
        if warnings != warned {
            for w in &warnings {
                tracing::warn!(ingress = %label, "{w}");
            }
        }
        let now: BTreeSet<ObjectId> = made.iter().map(|o| o.id.clone()).collect();
        for id in before.difference(&now) {
            self.remove(id.clone(), changes);
        }
        for object in made {
            self.upsert(object, changes);
        }
        if !now.is_empty() || !warnings.is_empty() {
            self.from_ingress.insert(key, (now, warnings));
        }
    }

    fn upsert(&mut self, object: Object, changes: &mut Vec<KubeChange>) {
        if self.sent.get(&object.id) != Some(&object.raw) {
            self.sent.insert(object.id.clone(), object.raw.clone());
            changes.push(KubeChange::Upsert(object));
        }
    }

    fn remove(&mut self, id: ObjectId, changes: &mut Vec<KubeChange>) {
        if self.sent.remove(&id).is_some() {
            changes.push(KubeChange::Remove(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn ingress(class: &str) -> Ingress {
        serde_yaml_ng::from_str(&format!(
            "
metadata: {{name: shop, namespace: shop}}
spec:
  ingressClassName: {class}
  rules:
  - http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}
"
        ))
        .unwrap()
    }

    /// The changes, sorted.
    fn summary(changes: &[KubeChange]) -> Vec<String> {
        let mut out: Vec<String> = changes
            .iter()
            .map(|c| match c {
                KubeChange::Upsert(o) => format!("+{}", o.id),
                KubeChange::Remove(id) => format!("-{id}"),
                KubeChange::Malformed(id, _) => format!("!{id}"),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn an_ingress_class_change_decides_again_which_ingresses_are_ours() {
        let mut state = State::new(KubeSourceOptions::default());
        let web: Service = serde_yaml_ng::from_str(
            "metadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.5, ports: [{name: http, port: 80}]}",
        )
        .unwrap();
        state.update(Update::Service(Event::Apply(web)));
        state.update(Update::Ingress(Event::Apply(ingress("edge"))));
        assert_eq!(
            summary(&state.changes()),
            ["+ServiceEntry shop/k8s-svc-web"],
            "class edge is nobody's yet"
        );
        let edge: IngressClass = serde_yaml_ng::from_str(
            "metadata: {name: edge}\nspec: {controller: strait.io/ingress-controller}",
        )
        .unwrap();
        state.update(Update::IngressClass(Event::Apply(edge.clone())));
        assert_eq!(
            summary(&state.changes()),
            [
                "+Gateway shop/k8s-ingress-shop",
                "+VirtualService shop/k8s-ingress-shop-0",
            ]
        );
        state.update(Update::IngressClass(Event::Delete(edge)));
        assert_eq!(
            summary(&state.changes()),
            [
                "-Gateway shop/k8s-ingress-shop",
                "-VirtualService shop/k8s-ingress-shop-0",
            ]
        );
    }

    #[test]
    fn an_ingress_is_converted_again_when_it_or_its_services_change() {
        let mut state = State::new(KubeSourceOptions::default());
        // Its port is named: nothing until the Service says which number that is.
        state.update(Update::Ingress(Event::Apply(ingress("strait"))));
        assert_eq!(summary(&state.changes()), Vec::<String>::new());
        let web: Service = serde_yaml_ng::from_str(
            "metadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.5, ports: [{name: http, port: 80}]}",
        )
        .unwrap();
        state.update(Update::Service(Event::Apply(web)));
        assert_eq!(
            summary(&state.changes()),
            [
                "+Gateway shop/k8s-ingress-shop",
                "+ServiceEntry shop/k8s-svc-web",
                "+VirtualService shop/k8s-ingress-shop-0",
            ]
        );
        // Unchanged: nothing sent again.
        state.update(Update::Ingress(Event::Apply(ingress("strait"))));
        assert_eq!(summary(&state.changes()), Vec::<String>::new());
        // Another class: what it made goes.
        state.update(Update::Ingress(Event::Apply(ingress("nginx"))));
        assert_eq!(
            summary(&state.changes()),
            [
                "-Gateway shop/k8s-ingress-shop",
                "-VirtualService shop/k8s-ingress-shop-0",
            ]
        );
        state.update(Update::Ingress(Event::Apply(ingress("istio"))));
        assert_eq!(summary(&state.changes()).len(), 2);
        state.update(Update::Ingress(Event::Delete(ingress("istio"))));
        assert_eq!(
            summary(&state.changes()),
            [
                "-Gateway shop/k8s-ingress-shop",
                "-VirtualService shop/k8s-ingress-shop-0",
            ]
        );
    }

    fn tls_secret(name: &str, key_pem: &str, cert_pem: &str) -> Secret {
        let mut secret: Secret = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls"
        ))
        .unwrap();
        secret.data = Some(
            [("tls.crt", cert_pem), ("tls.key", key_pem)]
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::ByteString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
        );
        secret
    }

    #[test]
    fn a_malformed_secret_is_refused_and_its_last_good_version_stays() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bookinfo.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut state = State::new(KubeSourceOptions::default());
        let good = tls_secret("bookinfo", &key.serialize_pem(), &cert.pem());
        state.update(Update::Secret(Event::Apply(SecretData::of(good.clone()))));
        let changes = state.credential_changes();
        assert!(
            matches!(&changes[..], [CredentialChange::Upsert(c)] if c.id.to_string() == "istio-system/bookinfo"),
            "{changes:?}"
        );
        // The same again: nothing to send.
        state.update(Update::Secret(Event::Apply(SecretData::of(good.clone()))));
        assert!(state.credential_changes().is_empty());
        // A key that is no key: refused, and nothing sent (the last good one stays).
        let bad = tls_secret("bookinfo", "not a key", &cert.pem());
        state.update(Update::Secret(Event::Apply(SecretData::of(bad))));
        assert!(state.credential_changes().is_empty());
        // Another kind of Secret is not even held.
        let token: Secret = serde_yaml_ng::from_str(
            "metadata: {name: t, namespace: istio-system}\ntype: Opaque\ndata: {token: eA==}",
        )
        .unwrap();
        assert!(SecretData::of(token).credential.is_none());
        state.update(Update::Secret(Event::Delete(SecretData::of(good))));
        assert!(matches!(
            &state.credential_changes()[..],
            [CredentialChange::Remove(id)] if id.name == "bookinfo"
        ));
    }
}
