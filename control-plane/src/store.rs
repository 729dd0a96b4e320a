//! The config store: sources in layers, validated together, published as versioned models.
//!
//! Three layers feed the store: the file layer (the config directory, replaced whole on every
//! reload), the Kubernetes layer (objects watched from the API server, see [`kube`]) and the
//! API layer (objects applied through the admin API, keyed by id; an API object overrides a
//! file or Kubernetes object with the same id while it exists). Every change forms the union
//! of the layers and validates it with the one validator: `Model::derive` makes the new model
//! from the one in force where the change allows (a ServiceEntry whose endpoints alone
//! changed), `Model::build_with` builds the whole union otherwise, with the same result
//! either way. A file reload or an apply that fails is rejected whole: the last good
//! configuration stays in force and the failure becomes the store's status. Kubernetes objects
//! are accepted or refused one by one.
//!
//! Objects are shared, not copied: the layers hold each as an `Arc<Object>`, and the published
//! list of objects in force points at the same ones.

pub mod kube;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use strait_model::{
    Change, Credentials, JwksFetches, Kind, Model, Object, ObjectId, ValidationError,
    ValidationErrors,
};
use tokio::sync::watch;

/// One accepted configuration, as subscribers see it.
#[derive(Debug)]
pub struct Published {
    /// Increments with every accepted change; 0 is the empty model before the first load.
    pub generation: u64,
    pub model: Arc<Model>,
    /// The accepted union of the layers, sorted by id (shared with the layers).
    pub objects: Vec<Arc<Object>>,
}

impl Published {
    /// The object in force with this id.
    pub fn object(&self, id: &ObjectId) -> Option<&Arc<Object>> {
        self.objects
            .binary_search_by(|o| o.id.cmp(id))
            .ok()
            .map(|i| &self.objects[i])
    }
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config directory.
    Files,
    /// The admin API (`/apply`, `/delete`).
    Api,
    /// The Kubernetes API server.
    Kubernetes,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Files => "files",
            Source::Api => "api",
            Source::Kubernetes => "kubernetes",
        }
    }
}

/// A rejected change: what was wrong and when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorRecord {
    pub source: Source,
    pub errors: Vec<ValidationError>,
    pub at_unix_ms: u64,
}

/// The store's state for `/config/status` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreStatus {
    pub generation: u64,
    /// Objects in force.
    pub objects: usize,
    /// Whether a configuration from the config directory has been accepted.
    pub loaded: bool,
    /// The most recent rejection still outstanding; a later success from the same source
    /// clears it.
    pub last_error: Option<ErrorRecord>,
    /// Non-fatal findings about the configuration in force.
    pub warnings: Vec<ValidationError>,
}

/// What an apply did, object by object (kubectl's created/configured/unchanged).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ApplyOutcome {
    /// The generation in force afterwards (for a dry run: the current one).
    pub generation: u64,
    pub dry_run: bool,
    pub created: Vec<ObjectId>,
    pub configured: Vec<ObjectId>,
    pub unchanged: Vec<ObjectId>,
    /// Warnings about the resulting configuration.
    pub warnings: Vec<ValidationError>,
}

/// What a delete did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeleteOutcome {
    pub generation: u64,
    pub deleted: Vec<ObjectId>,
    /// Deleted API objects that had overridden a file object: the file's version is back in force.
    pub restored: Vec<ObjectId>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ObjectId),
    #[error(
        "{id} comes from {origin} in the config directory; edit or remove it there (the admin API can only delete objects it applied)"
    )]
    FileOwned { id: ObjectId, origin: String },
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

/// The layers behind the published configuration. Only accepted states are stored here.
#[derive(Default)]
struct Layers {
    files: Vec<Arc<Object>>,
    kube: kube::KubeLayer,
    api: BTreeMap<ObjectId, Arc<Object>>,
    /// Gateway credentials from Kubernetes Secrets; `None` without Kubernetes (then
    /// `credentialName` is refused).
    credentials: Option<strait_model::Credentials>,
    /// What the JWKS fetcher last brought for each `jwksUri` (`jwks.rs`).
    jwks: JwksFetches,
    loaded: bool,
    /// Outstanding rejections, one per source.
    errors: BTreeMap<Source, ErrorRecord>,
}

struct Inner {
    // Held across validate-and-publish so that publications happen in generation order.
    layers: Mutex<Layers>,
    tx: watch::Sender<Arc<Published>>,
    errors_total: Counter,
    generation: Gauge,
}

/// The config store. Clones share the same store.
#[derive(Clone)]
pub struct ConfigStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("generation", &self.current().generation)
            .finish_non_exhaustive()
    }
}

impl ConfigStore {
    /// An empty store (generation 0); registers `strait_config_errors_total` and
    /// `strait_config_generation`.
    pub fn new(registry: &mut Registry) -> Self {
        let errors_total = Counter::default();
        let generation = Gauge::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "strait_config_errors",
            "Configuration changes rejected (from files or the admin API)",
            errors_total.clone(),
        );
        registry.register(
            "strait_config_generation",
            "Generation of the configuration in force",
            generation.clone(),
        );
        let (tx, _) = watch::channel(Arc::new(Published {
            generation: 0,
            model: Arc::new(Model::default()),
            objects: Vec::new(),
        }));
        Self {
            inner: Arc::new(Inner {
                layers: Mutex::new(Layers::default()),
                tx,
                errors_total,
                generation,
            }),
        }
    }

    /// The read path: the configuration in force now and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.inner.tx.subscribe()
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Published> {
        self.inner.tx.borrow().clone()
    }

    /// Whether a configuration from the config directory has been accepted.
    pub fn loaded(&self) -> bool {
        self.lock().loaded
    }

    /// Replaces the file layer with a freshly loaded directory.
    pub fn replace_files(&self, objects: Vec<Object>) -> Result<Arc<Published>, ValidationErrors> {
        let _span = tracing::info_span!("config.apply", source = "files", objects = objects.len())
            .entered();
        let objects: Vec<Arc<Object>> = objects.into_iter().map(Arc::new).collect();
        let mut layers = self.lock();
        let current = self.current();
        let accepted = sorted(union(&objects, &layers.kube.accepted, &layers.api, &[]));
        let validated = match validate(
            &current.basis(),
            accepted,
            layers.credentials.as_ref(),
            &layers.jwks,
        ) {
            Ok(validated) => validated,
            Err(errors) => {
                self.reject(&mut layers, Source::Files, &errors);
                return Err(errors);
            }
        };
        let first_load = !layers.loaded;
        layers.files = objects;
        layers.loaded = true;
        layers.errors.remove(&Source::Files);
        // A reload that changes nothing (an editor touching a file) is not a new generation,
        // except the first load, which subscribers wait for.
        let published = if first_load || !same_objects(&validated.objects, &current.objects) {
            self.publish(Source::Files, validated)
        } else {
            current
        };
        Ok(published)
    }

    /// Records a config directory that could not be read or parsed. Nothing changes: the last
    /// good configuration stays in force.
    pub fn record_file_error(&self, errors: Vec<ValidationError>) {
        let mut layers = self.lock();
        self.reject(&mut layers, Source::Files, &ValidationErrors(errors));
    }

    /// Applies objects through the API layer, as one batch.
    pub fn apply(&self, objects: Vec<Object>) -> Result<ApplyOutcome, ValidationErrors> {
        let _span =
            tracing::info_span!("config.apply", source = "api", objects = objects.len()).entered();
        self.apply_batch(objects, false)
    }

    /// Validates an apply without changing anything (`?dry_run=true`).
    pub fn dry_run(&self, objects: Vec<Object>) -> Result<ApplyOutcome, ValidationErrors> {
        self.apply_batch(objects, true)
    }

    fn apply_batch(
        &self,
        objects: Vec<Object>,
        dry_run: bool,
    ) -> Result<ApplyOutcome, ValidationErrors> {
        let objects: Vec<Arc<Object>> = objects.into_iter().map(Arc::new).collect();
        let mut layers = self.lock();
        let current = self.current();
        let mut outcome = ApplyOutcome {
            dry_run,
            generation: current.generation,
            ..ApplyOutcome::default()
        };
        let mut changed = Vec::new();
        for object in &objects {
            let in_force = current.object(&object.id);
            match in_force {
                None => outcome.created.push(object.id.clone()),
                Some(c) if c.raw == object.raw => outcome.unchanged.push(object.id.clone()),
                Some(_) => outcome.configured.push(object.id.clone()),
            }
            if in_force.is_none_or(|c| c.raw != object.raw) {
                changed.push(object.clone());
            }
        }
        // An object given twice is an error: validated with the whole batch, which reports it.
        // Otherwise what is validated is what gets stored: the changed objects over the rest
        // (an unchanged object is identical to the one in force).
        let ids: BTreeSet<&ObjectId> = objects.iter().map(|o| &o.id).collect();
        let batch = if ids.len() < objects.len() {
            &objects
        } else {
            &changed
        };
        if batch.is_empty() {
            outcome.warnings = current.model.warnings.clone();
            if !dry_run {
                layers.errors.remove(&Source::Api);
            }
            return Ok(outcome);
        }
        let accepted = sorted(union(
            &layers.files,
            &layers.kube.accepted,
            &layers.api,
            batch,
        ));
        let validated = match validate(
            &current.basis(),
            accepted,
            layers.credentials.as_ref(),
            &layers.jwks,
        ) {
            Ok(validated) => validated,
            Err(errors) => {
                if !dry_run {
                    self.reject(&mut layers, Source::Api, &errors);
                }
                return Err(errors);
            }
        };
        outcome.warnings = validated.model.warnings.clone();
        if dry_run {
            return Ok(outcome);
        }
        layers.errors.remove(&Source::Api);
        for object in changed {
            layers.api.insert(object.id.clone(), object);
        }
        outcome.generation = self.publish(Source::Api, validated).generation;
        Ok(outcome)
    }

    /// Deletes objects from the API layer, as one batch. Objects from the config directory
    /// cannot be deleted here; an API object that overrode one is deleted and the file's
    /// version comes back.
    pub fn delete(&self, ids: &[ObjectId]) -> Result<DeleteOutcome, StoreError> {
        let _span = tracing::info_span!("config.delete", objects = ids.len()).entered();
        let mut layers = self.lock();
        let current = self.current();
        let ids: BTreeSet<&ObjectId> = ids.iter().collect();
        for &id in &ids {
            if layers.api.contains_key(id) {
                continue;
            }
            return Err(match layers.files.iter().find(|f| &f.id == id) {
                Some(file) => StoreError::FileOwned {
                    id: id.clone(),
                    origin: file.origin.clone(),
                },
                None => StoreError::NotFound(id.clone()),
            });
        }
        let mut api = layers.api.clone();
        for &id in &ids {
            api.remove(id);
        }
        let accepted = sorted(union(&layers.files, &layers.kube.accepted, &api, &[]));
        let validated = match validate(
            &current.basis(),
            accepted,
            layers.credentials.as_ref(),
            &layers.jwks,
        ) {
            Ok(validated) => validated,
            Err(errors) => {
                self.reject(&mut layers, Source::Api, &errors);
                return Err(errors.into());
            }
        };
        let restored = ids
            .iter()
            .filter(|&&id| layers.files.iter().any(|f| &f.id == id))
            .map(|&id| id.clone())
            .collect();
        layers.api = api;
        layers.errors.remove(&Source::Api);
        let generation = self.publish(Source::Api, validated).generation;
        Ok(DeleteOutcome {
            generation,
            deleted: ids.into_iter().cloned().collect(),
            restored,
        })
    }

    /// Applies changes watched from the API server. Each object is accepted or refused alone
    /// (see [`kube`]); the result is published when what is in force changed. `Err` only when
    /// the other layers do not validate with what is in force here (nothing changes then).
    pub fn kube_apply(
        &self,
        changes: Vec<kube::KubeChange>,
    ) -> Result<Arc<Published>, ValidationErrors> {
        self.kube_apply_with(changes, Vec::new())
    }

    /// From now on `credentialName` names Kubernetes Secrets (the Kubernetes source runs).
    pub fn watch_credentials(&self) {
        self.lock().credentials.get_or_insert_with(Default::default);
    }

    /// [`ConfigStore::kube_apply`], with changed credentials (Secrets, already checked by
    /// the model's reader) put in place first.
    pub fn kube_apply_with(
        &self,
        changes: Vec<kube::KubeChange>,
        credentials: Vec<kube::CredentialChange>,
    ) -> Result<Arc<Published>, ValidationErrors> {
        let _span = tracing::info_span!(
            "config.apply",
            source = "kubernetes",
            changes = changes.len(),
            credentials = credentials.len()
        )
        .entered();
        let mut layers = self.lock();
        let before: BTreeSet<ObjectId> = layers.kube.refused.keys().cloned().collect();
        let known = layers.credentials.get_or_insert_with(Default::default);
        for change in credentials {
            match change {
                kube::CredentialChange::Upsert(c) => {
                    known.insert(c.id.clone(), Arc::new(c));
                }
                kube::CredentialChange::Remove(id) => {
                    known.remove(&id);
                }
            }
        }
        // The other layers are read in place while the Kubernetes layer changes.
        let Layers {
            files,
            api,
            kube,
            credentials,
            jwks,
            ..
        } = &mut *layers;
        let credentials = credentials.as_ref();
        let build = |kube: &BTreeMap<ObjectId, Arc<Object>>, basis: &Validated| {
            validate(
                basis,
                sorted(union(files, kube, api, &[])),
                credentials,
                jwks,
            )
        };
        let current = self.current();
        let applied = kube.apply(changes, current.basis(), &build);
        let validated = match applied {
            Ok(validated) => validated,
            Err(errors) => {
                self.reject(&mut layers, Source::Kubernetes, &errors);
                return Err(errors);
            }
        };
        for (id, (object, errors)) in &layers.kube.refused {
            if !before.contains(id) {
                self.inner.errors_total.inc();
                tracing::error!(
                    object = %id,
                    origin = %object.origin,
                    error = %ValidationErrors(errors.clone()),
                    "object refused; its last good version, if any, stays in force"
                );
            }
        }
        layers.errors.remove(&Source::Kubernetes);
        if same_objects(&validated.objects, &current.objects)
            && validated.model.credentials == current.model.credentials
        {
            return Ok(current);
        }
        Ok(self.publish(Source::Kubernetes, validated))
    }

    /// Puts what the JWKS fetcher brought in place: the model in force gets the keys (and a
    /// warning per rule whose `jwksUri` failed) as a new generation, when that changes it.
    pub fn set_jwks(&self, fetched: JwksFetches) {
        let mut layers = self.lock();
        layers.jwks = fetched;
        let current = self.current();
        let mut model = (*current.model).clone();
        model.set_jwks(&layers.jwks);
        if model == *current.model {
            return;
        }
        self.publish_as(
            "jwks",
            Validated {
                objects: current.objects.clone(),
                model: Arc::new(model),
                derived: true,
            },
        );
    }

    /// Where each object from the API server stands (for its `status`).
    pub fn kube_statuses(&self) -> BTreeMap<ObjectId, kube::KubeObjectStatus> {
        let warnings = self.current().model.warnings.clone();
        self.lock().kube.statuses(&warnings)
    }

    /// Objects in force, filtered by kind, namespace and name.
    pub fn get(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Vec<Arc<Object>> {
        self.current()
            .objects
            .iter()
            .filter(|o| kind.is_none_or(|k| o.id.kind == k))
            .filter(|o| namespace.is_none_or(|n| o.id.namespace == n))
            .filter(|o| name.is_none_or(|n| o.id.name == n))
            .cloned()
            .collect()
    }

    pub fn status(&self) -> StoreStatus {
        let layers = self.lock();
        let current = self.current();
        StoreStatus {
            generation: current.generation,
            objects: current.objects.len(),
            loaded: layers.loaded,
            last_error: layers.errors.values().max_by_key(|e| e.at_unix_ms).cloned(),
            warnings: current.model.warnings.clone(),
        }
    }

    /// The outstanding rejection of one source, if any.
    pub fn error(&self, source: Source) -> Option<ErrorRecord> {
        self.lock().errors.get(&source).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Layers> {
        // Layers are only written after validation succeeds, so a panic elsewhere cannot leave
        // them half-updated.
        self.inner
            .layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn reject(&self, layers: &mut Layers, source: Source, errors: &ValidationErrors) {
        self.inner.errors_total.inc();
        let repeated = layers
            .errors
            .get(&source)
            .is_some_and(|e| e.errors == errors.0);
        if repeated {
            // The watcher reloads on every touch of a broken file; say it once.
            tracing::debug!(source = source.as_str(), "configuration still rejected");
            return;
        }
        tracing::error!(
            source = source.as_str(),
            errors = errors.0.len(),
            error = %errors,
            "configuration rejected; the last good configuration stays in force"
        );
        layers.errors.insert(
            source,
            ErrorRecord {
                source,
                errors: errors.0.clone(),
                at_unix_ms: unix_ms_now(),
            },
        );
    }

    fn publish(&self, source: Source, validated: Validated) -> Arc<Published> {
        self.publish_as(source.as_str(), validated)
    }

    fn publish_as(&self, source: &'static str, validated: Validated) -> Arc<Published> {
        let previous = self.current();
        let published = Arc::new(Published {
            generation: previous.generation + 1,
            model: validated.model,
            objects: validated.objects,
        });
        if published.model.warnings != previous.model.warnings {
            for warning in &published.model.warnings {
                tracing::warn!(warning = %warning, "configuration warning");
            }
        }
        tracing::info!(
            source,
            generation = published.generation,
            objects = published.objects.len(),
            derived = validated.derived,
            "configuration accepted"
        );
        self.inner
            .generation
            .set(i64::try_from(published.generation).unwrap_or(i64::MAX));
        self.inner.tx.send_replace(published.clone());
        published
    }
}

/// A validated configuration: the objects in force, sorted by id, and their model.
#[derive(Clone, Debug)]
pub(crate) struct Validated {
    pub(crate) objects: Vec<Arc<Object>>,
    pub(crate) model: Arc<Model>,
    /// Whether the model was derived from the one before (what changed validated alone).
    pub(crate) derived: bool,
}

impl Published {
    /// What a change is validated against.
    fn basis(&self) -> Validated {
        Validated {
            objects: self.objects.clone(),
            model: self.model.clone(),
            derived: true,
        }
    }
}

/// Validates `accepted` (sorted by id, as [`sorted`] leaves it), a change from `basis`:
/// `Model::derive` where what changed allows it, else `Model::build_with` of the whole, the
/// same model either way. `basis.model` must be what `build_with` made of `basis.objects`
/// with these credentials; `Model::derive` refuses other credentials than it holds.
fn validate(
    basis: &Validated,
    accepted: Vec<Arc<Object>>,
    credentials: Option<&Credentials>,
    jwks: &JwksFetches,
) -> Result<Validated, ValidationErrors> {
    let no_credentials = Credentials::default();
    let same_credentials = basis.model.credentials == *credentials.unwrap_or(&no_credentials);
    if let Some(changes) = diff(&basis.objects, &accepted) {
        if changes.is_empty() && same_credentials {
            return Ok(Validated {
                objects: accepted,
                model: basis.model.clone(),
                derived: true,
            });
        }
        if let Some(model) = Model::derive(&basis.model, &changes, credentials) {
            return Ok(Validated {
                objects: accepted,
                model: Arc::new(model),
                derived: true,
            });
        }
    }
    let mut model = Model::build_with(accepted.iter().map(|o| &**o), credentials)?;
    // A derived model keeps the keys of the one it came from; a built one gets them here.
    model.set_jwks(jwks);
    Ok(Validated {
        objects: accepted,
        model: Arc::new(model),
        derived: false,
    })
}

/// What differs between two lists of objects sorted by id, as changes from `before` to
/// `after`; `None` when `after` holds an id twice (a whole build reports that).
fn diff<'a>(before: &'a [Arc<Object>], after: &'a [Arc<Object>]) -> Option<Vec<Change<'a>>> {
    let mut changes = Vec::new();
    let (mut b, mut a) = (before.iter().peekable(), after.iter().peekable());
    let mut last: Option<&ObjectId> = None;
    loop {
        let order = match (b.peek(), a.peek()) {
            (None, None) => return Some(changes),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.id.cmp(&y.id),
        };
        if order != std::cmp::Ordering::Less {
            let id = a.peek().map(|o| &o.id);
            if id.is_some() && id == last {
                return None;
            }
            last = id;
        }
        match order {
            std::cmp::Ordering::Less => {
                let before = b.next().map(|o| &**o);
                changes.push(Change {
                    before,
                    after: None,
                });
            }
            std::cmp::Ordering::Greater => {
                let after = a.next().map(|o| &**o);
                changes.push(Change {
                    before: None,
                    after,
                });
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (b.next()?, a.next()?);
                if !Arc::ptr_eq(x, y) && **x != **y {
                    changes.push(Change {
                        before: Some(x),
                        after: Some(y),
                    });
                }
            }
        }
    }
}

/// Whether two lists of objects are the same, element by element.
fn same_objects(a: &[Arc<Object>], b: &[Arc<Object>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| Arc::ptr_eq(x, y) || **x == **y)
}

/// The objects in force for a set of layers: files, overridden by Kubernetes objects,
/// overridden by the API layer, overridden by `batch` (kept whole, duplicates included, so
/// that `Model::build` can report them).
fn union<'a>(
    files: &'a [Arc<Object>],
    kube: &'a BTreeMap<ObjectId, Arc<Object>>,
    api: &'a BTreeMap<ObjectId, Arc<Object>>,
    batch: &'a [Arc<Object>],
) -> Vec<&'a Arc<Object>> {
    let in_batch: BTreeSet<&ObjectId> = batch.iter().map(|o| &o.id).collect();
    let above_kube = |id: &ObjectId| api.contains_key(id) || in_batch.contains(id);
    files
        .iter()
        .filter(|o| !kube.contains_key(&o.id) && !above_kube(&o.id))
        .chain(kube.values().filter(|o| !above_kube(&o.id)))
        .chain(api.values().filter(|o| !in_batch.contains(&o.id)))
        .chain(batch)
        .collect()
}

/// Sorted by id, objects with the same id in their order (pointers copied, not objects).
fn sorted(objects: Vec<&Arc<Object>>) -> Vec<Arc<Object>> {
    let mut objects: Vec<Arc<Object>> = objects.into_iter().cloned().collect();
    objects.sort_by(|a, b| a.id.cmp(&b.id));
    objects
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use strait_model::loader;

    pub(crate) const SERVICES: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
";

    /// A VirtualService `name` routing to `host`.
    pub(crate) fn vs(name: &str, host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {host}}}\n"
        )
    }

    pub(crate) fn parse(text: &str, origin: &str) -> Vec<Object> {
        loader::parse(text, origin).expect("test YAML parses")
    }

    fn id(kind: Kind, name: &str) -> ObjectId {
        ObjectId {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn store() -> (ConfigStore, Registry) {
        let mut registry = Registry::default();
        (ConfigStore::new(&mut registry), registry)
    }

    fn names(store: &ConfigStore) -> Vec<String> {
        store
            .current()
            .objects
            .iter()
            .map(|o| o.id.to_string())
            .collect()
    }

    #[test]
    fn starts_empty_at_generation_zero() {
        let (store, _) = store();
        let status = store.status();
        assert_eq!(status.generation, 0);
        assert!(!status.loaded);
        assert_eq!(status.last_error, None);
        assert!(store.current().objects.is_empty());
    }

    #[test]
    fn accepts_files_and_publishes_sorted_objects() {
        let (store, _) = store();
        let mut rx = store.subscribe();
        let mut objects = parse(&vs("reviews", "reviews"), "vs.yaml");
        objects.extend(parse(SERVICES, "services.yaml"));
        let published = store.replace_files(objects).unwrap();
        assert_eq!(published.generation, 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().generation, 1);
        assert_eq!(
            names(&store),
            [
                "VirtualService default/reviews",
                "ServiceEntry default/ratings",
                "ServiceEntry default/reviews"
            ]
        );
        assert_eq!(published.model.virtual_services.len(), 1);
        assert!(store.loaded());
    }

    #[test]
    fn the_first_load_publishes_even_when_empty_and_identical_reloads_do_not() {
        let (store, _) = store();
        assert_eq!(store.replace_files(vec![]).unwrap().generation, 1);
        assert_eq!(store.replace_files(vec![]).unwrap().generation, 1);
        assert_eq!(
            store
                .replace_files(parse(SERVICES, "s.yaml"))
                .unwrap()
                .generation,
            2
        );
        assert_eq!(
            store
                .replace_files(parse(SERVICES, "s.yaml"))
                .unwrap()
                .generation,
            2
        );
    }

    #[test]
    fn a_bad_file_batch_is_rejected_whole_and_the_last_good_config_stays() {
        let (store, registry) = store();
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        let mut bad = parse(SERVICES, "services.yaml");
        bad.extend(parse(&vs("reviews", "nowhere"), "vs.yaml"));
        // A valid object in the same batch is not half-applied either.
        bad.extend(parse(&vs("ratings", "ratings"), "ok.yaml"));
        let errors = store.replace_files(bad).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].origin, "vs.yaml (document 1)");

        assert_eq!(store.current().generation, 1);
        assert_eq!(names(&store).len(), 2);
        let status = store.status();
        let record = status.last_error.expect("the rejection is recorded");
        assert_eq!(record.source, Source::Files);
        assert!(record.errors[0].message.contains("not a known service"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("strait_config_errors_total 1"), "{text}");
        assert!(text.contains("strait_config_generation 1"), "{text}");

        // A later success clears the error.
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        assert_eq!(store.status().last_error, None);
    }

    #[test]
    fn parse_errors_from_the_watcher_are_recorded_and_keep_the_store_unloaded() {
        let (store, _) = store();
        let errors = loader::parse("kind: [", "bad.yaml").unwrap_err();
        store.record_file_error(errors);
        let status = store.status();
        assert!(!status.loaded);
        assert_eq!(
            status.last_error.unwrap().errors[0].origin,
            "bad.yaml (document 1)"
        );
    }

    #[test]
    fn apply_reports_created_configured_and_unchanged() {
        let (store, _) = store();
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        let outcome = store
            .apply(parse(&vs("reviews", "reviews"), "admin API"))
            .unwrap();
        assert_eq!(outcome.created, [id(Kind::VirtualService, "reviews")]);
        assert_eq!(outcome.generation, 2);

        let mut batch = parse(&vs("reviews", "ratings"), "admin API");
        batch.extend(parse(&vs("ratings", "ratings"), "admin API"));
        let outcome = store.apply(batch).unwrap();
        assert_eq!(outcome.configured, [id(Kind::VirtualService, "reviews")]);
        assert_eq!(outcome.created, [id(Kind::VirtualService, "ratings")]);
        assert_eq!(outcome.generation, 3);

        let outcome = store
            .apply(parse(&vs("ratings", "ratings"), "admin API"))
            .unwrap();
        assert_eq!(outcome.unchanged, [id(Kind::VirtualService, "ratings")]);
        assert_eq!(
            outcome.generation, 3,
            "a no-op apply is not a new generation"
        );
    }

    #[test]
    fn an_endpoint_change_shares_the_other_objects_and_validates_as_a_whole_build() {
        let (store, _) = store();
        let mut files = parse(SERVICES, "services.yaml");
        files.extend(parse(&vs("reviews", "reviews"), "vs.yaml"));
        store.replace_files(files).unwrap();
        let before = store.current();
        let moved = SERVICES.replacen("127.0.0.1", "127.0.0.2", 1);
        let outcome = store.apply(parse(&moved, "admin API")).unwrap();
        assert_eq!(outcome.configured, [id(Kind::ServiceEntry, "reviews")]);
        let after = store.current();
        assert_eq!(after.generation, before.generation + 1);
        let reviews = id(Kind::ServiceEntry, "reviews");
        for (b, a) in before.objects.iter().zip(&after.objects) {
            assert_eq!(b.id, a.id);
            assert_eq!(Arc::ptr_eq(b, a), a.id != reviews, "{}", a.id);
        }
        assert_eq!(
            after.model.services["reviews.default.svc.cluster.local"].endpoints[0].address,
            "127.0.0.2"
        );
        let whole = Model::build(after.objects.iter().map(|o| &**o)).unwrap();
        assert_eq!(*after.model, whole);
        // A bad endpoint is refused as before, naming the field.
        let bad = SERVICES.replacen("127.0.0.1", "not-an-ip", 1);
        let errors = store.apply(parse(&bad, "admin API")).unwrap_err();
        assert!(errors.to_string().contains("spec.endpoints[0]"), "{errors}");
        assert_eq!(store.current().generation, after.generation);
    }

    #[test]
    fn a_rejected_apply_keeps_the_previous_api_layer() {
        let (store, _) = store();
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        store
            .apply(parse(&vs("reviews", "reviews"), "admin API"))
            .unwrap();
        let mut batch = parse(&vs("ratings", "ratings"), "admin API");
        batch.extend(parse(&vs("reviews", "nowhere"), "admin API"));
        let errors = store.apply(batch).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(
            errors.0[0].object,
            Some(id(Kind::VirtualService, "reviews"))
        );
        assert_eq!(store.current().generation, 2);
        assert_eq!(store.get(Some(Kind::VirtualService), None, None).len(), 1);
        assert_eq!(store.status().last_error.unwrap().source, Source::Api);
        // The next good apply clears it.
        store
            .apply(parse(&vs("ratings", "ratings"), "admin API"))
            .unwrap();
        assert_eq!(store.status().last_error, None);
    }

    #[test]
    fn an_object_given_twice_in_one_apply_is_an_error() {
        let (store, _) = store();
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        let text = format!(
            "{}---\n{}",
            vs("reviews", "reviews"),
            vs("reviews", "reviews")
        );
        let errors = store.apply(parse(&text, "admin API")).unwrap_err();
        assert!(errors.0[0].message.contains("defined twice"), "{errors}");
    }

    #[test]
    fn dry_run_changes_nothing() {
        let (store, _) = store();
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        let outcome = store
            .dry_run(parse(&vs("reviews", "reviews"), "admin API"))
            .unwrap();
        assert!(outcome.dry_run);
        assert_eq!(outcome.created.len(), 1);
        assert_eq!(store.current().generation, 1);
        assert!(
            store
                .dry_run(parse(&vs("reviews", "nowhere"), "admin API"))
                .is_err()
        );
        assert_eq!(store.status().last_error, None);
    }

    #[test]
    fn api_objects_override_file_objects_until_deleted() {
        let (store, _) = store();
        let mut files = parse(SERVICES, "services.yaml");
        files.extend(parse(&vs("reviews", "reviews"), "vs.yaml"));
        store.replace_files(files.clone()).unwrap();

        let outcome = store
            .apply(parse(&vs("reviews", "ratings"), "admin API"))
            .unwrap();
        assert_eq!(outcome.configured, [id(Kind::VirtualService, "reviews")]);
        let get = |s: &ConfigStore| {
            s.get(Some(Kind::VirtualService), Some("default"), Some("reviews"))[0]
                .origin
                .clone()
        };
        assert_eq!(get(&store), "admin API (document 1)");
        // A file reload keeps the override in force.
        store.replace_files(files).unwrap();
        assert_eq!(get(&store), "admin API (document 1)");

        let outcome = store
            .delete(&[id(Kind::VirtualService, "reviews")])
            .unwrap();
        assert_eq!(outcome.restored, [id(Kind::VirtualService, "reviews")]);
        assert_eq!(get(&store), "vs.yaml (document 1)");
    }

    #[test]
    fn deleting_file_objects_or_unknown_objects_is_an_error() {
        let (store, _) = store();
        store
            .replace_files(parse(SERVICES, "services.yaml"))
            .unwrap();
        let err = store
            .delete(&[id(Kind::ServiceEntry, "reviews")])
            .unwrap_err();
        assert!(matches!(err, StoreError::FileOwned { .. }));
        assert!(
            err.to_string().contains("services.yaml (document 1)"),
            "{err}"
        );
        let err = store.delete(&[id(Kind::Gateway, "nope")]).unwrap_err();
        assert_eq!(err.to_string(), "Gateway default/nope not found");
        assert_eq!(store.current().generation, 1);
    }

    #[test]
    fn a_delete_that_breaks_a_reference_is_rejected() {
        let (store, _) = store();
        store.apply(parse(SERVICES, "admin API")).unwrap();
        store
            .apply(parse(&vs("reviews", "reviews"), "admin API"))
            .unwrap();
        let err = store
            .delete(&[id(Kind::ServiceEntry, "reviews")])
            .unwrap_err();
        let StoreError::Invalid(errors) = err else {
            panic!("expected a validation error, got {err}")
        };
        assert!(
            errors.0[0].message.contains("not a known service"),
            "{errors}"
        );
        assert_eq!(store.get(Some(Kind::ServiceEntry), None, None).len(), 2);

        let outcome = store
            .delete(&[
                id(Kind::ServiceEntry, "reviews"),
                id(Kind::VirtualService, "reviews"),
            ])
            .unwrap();
        assert_eq!(outcome.deleted.len(), 2);
        assert!(outcome.restored.is_empty());
        assert_eq!(names(&store), ["ServiceEntry default/ratings"]);
    }

    #[test]
    fn status_serializes_for_the_admin_api() {
        let (store, _) = store();
        store.record_file_error(vec![ValidationError {
            origin: "x.yaml (document 1)".into(),
            object: None,
            path: "kind".into(),
            message: "required field is missing".into(),
        }]);
        let json = serde_json::to_value(store.status()).unwrap();
        assert_eq!(json["last_error"]["source"], "files");
        assert_eq!(json["last_error"]["errors"][0]["path"], "kind");
        assert_eq!(json["loaded"], false);
    }

    mod kube_layer {
        use super::*;
        use crate::store::kube::{KubeChange, KubeObjectStatus};
        use pretty_assertions::assert_eq;

        const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
";

        fn vs_subset(subset: &str) -> String {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http:\n  - route:\n    - destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}\n"
            )
        }

        fn upserts(text: &str) -> Vec<KubeChange> {
            parse(text, "kubernetes")
                .into_iter()
                .map(KubeChange::Upsert)
                .collect()
        }

        fn status(store: &ConfigStore, kind: Kind, name: &str) -> Option<KubeObjectStatus> {
            store.kube_statuses().get(&id(kind, name)).cloned()
        }

        fn refused(store: &ConfigStore, kind: Kind, name: &str) -> (String, bool) {
            match status(store, kind, name) {
                Some(KubeObjectStatus::Refused {
                    errors,
                    last_good_in_force,
                }) => (ValidationErrors(errors).to_string(), last_good_in_force),
                other => panic!("{kind} {name} should be refused: {other:?}"),
            }
        }

        #[test]
        fn an_object_waits_for_what_it_names_without_holding_the_rest_back() {
            let (store, _) = store();
            store.kube_apply(upserts(SERVICES)).unwrap();
            // The VirtualService comes before the DestinationRule that defines its subset.
            let published = store.kube_apply(upserts(&vs_subset("v1"))).unwrap();
            assert!(published.model.virtual_services.is_empty());
            let (errors, in_force) = refused(&store, Kind::VirtualService, "reviews");
            assert!(errors.contains("v1"), "{errors}");
            assert!(!in_force);
            // Others still go into force meanwhile.
            let published = store
                .kube_apply(upserts(&vs("ratings", "ratings")))
                .unwrap();
            assert_eq!(published.model.virtual_services.len(), 1);
            // The DestinationRule arrives: the waiting VirtualService is tried again and fits.
            let published = store.kube_apply(upserts(DR)).unwrap();
            assert_eq!(published.model.virtual_services.len(), 2);
            assert!(matches!(
                status(&store, Kind::VirtualService, "reviews"),
                Some(KubeObjectStatus::Accepted { .. })
            ));
        }

        #[test]
        fn a_bad_new_version_leaves_the_last_good_one_in_force() {
            let (store, _) = store();
            let mut changes = upserts(SERVICES);
            changes.extend(upserts(DR));
            changes.extend(upserts(&vs_subset("v1")));
            let good = store.kube_apply(changes).unwrap();
            assert_eq!(good.model.virtual_services.len(), 1);
            let after = store.kube_apply(upserts(&vs_subset("v9"))).unwrap();
            assert_eq!(
                after.generation, good.generation,
                "nothing in force changed"
            );
            let (errors, in_force) = refused(&store, Kind::VirtualService, "reviews");
            assert!(errors.contains("v9"), "{errors}");
            assert!(in_force, "the last good version stays in force");
            let in_force = store.get(Some(Kind::VirtualService), None, Some("reviews"));
            assert!(in_force[0].raw.to_string().contains("\"v1\""));
            // A good change to something else still goes through.
            let later = store
                .kube_apply(upserts(&vs("ratings", "ratings")))
                .unwrap();
            assert!(later.generation > good.generation);
            assert_eq!(later.model.virtual_services.len(), 2);
        }

        #[test]
        fn removing_what_an_object_needs_sets_it_aside_until_it_returns() {
            let (store, _) = store();
            let mut changes = upserts(SERVICES);
            changes.extend(upserts(DR));
            changes.extend(upserts(&vs_subset("v1")));
            store.kube_apply(changes).unwrap();
            let dr = id(Kind::DestinationRule, "reviews");
            let published = store.kube_apply(vec![KubeChange::Remove(dr)]).unwrap();
            assert!(published.model.virtual_services.is_empty());
            assert!(published.model.destination_rules.is_empty());
            let (_, in_force) = refused(&store, Kind::VirtualService, "reviews");
            assert!(!in_force);
            let published = store.kube_apply(upserts(DR)).unwrap();
            assert_eq!(published.model.virtual_services.len(), 1);
        }

        #[test]
        fn an_endpoint_change_leaves_refused_objects_as_they_were() {
            let (store, _) = store();
            store.kube_apply(upserts(SERVICES)).unwrap();
            store.kube_apply(upserts(&vs_subset("v1"))).unwrap();
            let waiting = refused(&store, Kind::VirtualService, "reviews");
            let moved = SERVICES.replacen("127.0.0.1", "127.0.0.2", 1);
            let published = store.kube_apply(upserts(&moved)).unwrap();
            let host = "reviews.default.svc.cluster.local";
            assert_eq!(
                published.model.services[host].endpoints[0].address,
                "127.0.0.2"
            );
            assert_eq!(refused(&store, Kind::VirtualService, "reviews"), waiting);
            let whole = Model::build(published.objects.iter().map(|o| &**o)).unwrap();
            assert_eq!(*published.model, whole);
            // What it waits for still brings it in.
            let published = store.kube_apply(upserts(DR)).unwrap();
            assert_eq!(published.model.virtual_services.len(), 1);
        }

        #[test]
        fn a_broken_file_is_not_blamed_on_kubernetes_objects() {
            let (store, _) = store();
            store.kube_apply(upserts(SERVICES)).unwrap();
            store
                .replace_files(parse(&vs("files-vs", "reviews"), "vs.yaml"))
                .unwrap();
            // Deleting the services the file's VirtualService routes to is refused as a whole:
            // the file is the one in error, and nothing changes.
            let ids: Vec<KubeChange> = parse(SERVICES, "k")
                .into_iter()
                .map(|o| KubeChange::Remove(o.id))
                .collect();
            let before = store.current().generation;
            assert!(store.kube_apply(ids).is_err());
            assert_eq!(store.current().generation, before);
            assert_eq!(store.current().model.virtual_services.len(), 1);
        }
    }
}
