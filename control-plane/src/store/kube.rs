//! The Kubernetes layer: objects watched from the API server arrive one by one, in any order,
//! and each is accepted or refused alone.
//!
//! A file or an `apply` batch is one author's change, rejected whole. Objects from the API
//! server have many authors and no order: a VirtualService may come before the
//! DestinationRule whose subset it names. So here an object that does not validate with the
//! rest is set aside (refused, with the errors that name it) instead of holding the others
//! back; its last good version stays in force; and refused versions are tried again after
//! every change, so the VirtualService goes into force when its DestinationRule arrives.
//! A change that moved only endpoints (its model derived from the one before) cannot change
//! whether a refused version fits, so nothing is retried then, unless something else changed
//! since the refused versions were last tried (a file, say).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use strait_model::{Model, Object, ObjectId, ValidationError, ValidationErrors};

use super::Validated;

/// Validates the other layers together with a version of this one, as a change from a
/// configuration validated before.
pub(super) type Build<'a> =
    &'a dyn Fn(&BTreeMap<ObjectId, Arc<Object>>, &Validated) -> Result<Validated, ValidationErrors>;

/// One change from a watcher.
#[derive(Clone, Debug)]
pub enum KubeChange {
    Upsert(Object),
    Remove(ObjectId),
    /// A version that could not even be read (a misspelt field): refused; the last good one,
    /// if any, stays in force.
    Malformed(ObjectId, ValidationError),
}

/// A gateway credential (a Kubernetes Secret) that changed. A Secret that does not read as
/// one is not sent (its last good version stays), see `kube/source.rs`.
#[derive(Clone, Debug)]
pub enum CredentialChange {
    Upsert(strait_model::Credential),
    Remove(strait_model::CredentialId),
}

/// What the API server holds, split by whether it is in force.
#[derive(Clone, Debug, Default)]
pub(super) struct KubeLayer {
    /// In force.
    pub(super) accepted: BTreeMap<ObjectId, Arc<Object>>,
    /// The latest version of each object that is not in force, and why. An object may be here
    /// and in `accepted` at once: its new version refused, its last good one in force.
    pub(super) refused: BTreeMap<ObjectId, (Arc<Object>, Vec<ValidationError>)>,
    /// Versions that could not be read, and why (nothing to retry until a new version comes).
    pub(super) malformed: BTreeMap<ObjectId, ValidationError>,
    /// The model the refused versions were last tried against.
    tried_against: Weak<Model>,
}

/// Where an object from the API server stands, for its `status`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum KubeObjectStatus {
    /// In force, with the model's warnings about it.
    Accepted { warnings: Vec<ValidationError> },
    /// Not in force as it is now; `last_good_in_force` says whether an earlier version is.
    Refused {
        errors: Vec<ValidationError>,
        last_good_in_force: bool,
    },
}

impl KubeLayer {
    /// Applies `changes`, then settles: every version that validates with the rest is in
    /// force, every one that does not is refused. `basis` is the configuration in force, which
    /// this layer as it is now is part of. Errors that name no object of this layer (a broken
    /// file) come back as `Err`, and nothing changes.
    pub(super) fn apply(
        &mut self,
        changes: Vec<KubeChange>,
        basis: Validated,
        build: Build<'_>,
    ) -> Result<Validated, ValidationErrors> {
        let tried_against_basis = Weak::ptr_eq(&self.tried_against, &Arc::downgrade(&basis.model));
        let mut next = self.clone();
        let mut previous = BTreeMap::new();
        for change in changes {
            match change {
                KubeChange::Upsert(object) => {
                    let object = Arc::new(object);
                    let id = object.id.clone();
                    next.refused.remove(&id);
                    next.malformed.remove(&id);
                    if let Some(old) = next.accepted.insert(id.clone(), object) {
                        previous.entry(id).or_insert(old);
                    }
                }
                KubeChange::Remove(id) => {
                    next.accepted.remove(&id);
                    next.refused.remove(&id);
                    next.malformed.remove(&id);
                    previous.remove(&id);
                }
                KubeChange::Malformed(id, error) => {
                    // A refused earlier version is not retried: this one supersedes it.
                    next.refused.remove(&id);
                    next.malformed.insert(id, error);
                }
            }
        }
        let (mut validated, settled_at_once) = next.settle(build, &basis)?;
        // A refused new version: its last good version goes back into force, if it still fits.
        for (id, old) in previous {
            if next.refused.contains_key(&id) && !next.accepted.contains_key(&id) {
                let mut trial = next.accepted.clone();
                trial.insert(id.clone(), old);
                if let Ok(v) = build(&trial, &validated) {
                    next.accepted = trial;
                    validated = v;
                }
            }
        }
        // Only endpoints moved since the refused versions were tried, and nothing was set aside:
        // none fits now that did not then (what validates them reads no endpoint).
        if !(tried_against_basis && settled_at_once && validated.derived) {
            validated = next.retry_refused(build, validated);
        }
        next.tried_against = Arc::downgrade(&validated.model);
        *self = next;
        Ok(validated)
    }

    /// Builds; while the errors name objects of this layer, sets them aside and builds again.
    /// Also says whether the first build fitted.
    fn settle(
        &mut self,
        build: Build<'_>,
        basis: &Validated,
    ) -> Result<(Validated, bool), ValidationErrors> {
        let mut at_once = true;
        loop {
            let errors = match build(&self.accepted, basis) {
                Ok(validated) => return Ok((validated, at_once)),
                Err(errors) => errors,
            };
            at_once = false;
            let mut named: BTreeMap<ObjectId, Vec<ValidationError>> = BTreeMap::new();
            for e in &errors.0 {
                if let Some(id) = e
                    .object
                    .as_ref()
                    .filter(|id| self.accepted.contains_key(id))
                {
                    named.entry(id.clone()).or_default().push(e.clone());
                }
            }
            if named.is_empty() {
                return Err(errors);
            }
            for (id, errors) in named {
                if let Some(object) = self.accepted.remove(&id) {
                    // A newer refused version, if any, stays the one to retry.
                    self.refused.entry(id).or_insert((object, errors));
                }
            }
        }
    }

    /// Tries each refused version again, one at a time, keeping those that now fit.
    fn retry_refused(&mut self, build: Build<'_>, mut validated: Validated) -> Validated {
        loop {
            let mut progress = false;
            let ids: Vec<ObjectId> = self.refused.keys().cloned().collect();
            for id in ids {
                let Some((object, _)) = self.refused.get(&id) else {
                    continue;
                };
                let mut trial = self.accepted.clone();
                trial.insert(id.clone(), object.clone());
                match build(&trial, &validated) {
                    Ok(v) => {
                        validated = v;
                        self.accepted = trial;
                        self.refused.remove(&id);
                        progress = true;
                    }
                    Err(errors) => {
                        let mine: Vec<ValidationError> = errors
                            .0
                            .iter()
                            .filter(|e| e.object.as_ref() == Some(&id))
                            .cloned()
                            .collect();
                        let why = if mine.is_empty() { errors.0 } else { mine };
                        if let Some(entry) = self.refused.get_mut(&id) {
                            entry.1 = why;
                        }
                    }
                }
            }
            if !progress {
                return validated;
            }
        }
    }

    /// Every object's standing; `warnings` are the model's.
    pub(super) fn statuses(
        &self,
        warnings: &[ValidationError],
    ) -> BTreeMap<ObjectId, KubeObjectStatus> {
        let mut out = BTreeMap::new();
        for id in self.accepted.keys() {
            let warnings = warnings
                .iter()
                .filter(|w| w.object.as_ref() == Some(id))
                .cloned()
                .collect();
            out.insert(id.clone(), KubeObjectStatus::Accepted { warnings });
        }
        for (id, error) in &self.malformed {
            out.insert(
                id.clone(),
                KubeObjectStatus::Refused {
                    errors: vec![error.clone()],
                    last_good_in_force: self.accepted.contains_key(id),
                },
            );
        }
        for (id, (_, errors)) in &self.refused {
            out.insert(
                id.clone(),
                KubeObjectStatus::Refused {
                    errors: errors.clone(),
                    last_good_in_force: self.accepted.contains_key(id),
                },
            );
        }
        out
    }
}
