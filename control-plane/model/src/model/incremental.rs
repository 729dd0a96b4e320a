//! Validating a change by what it touches: [`Model::derive`].
//!
//! `Model::build_with` validates a whole set of objects; a control plane under endpoint churn
//! (thousands of services, a ServiceEntry changing many times a second) would spend its time
//! validating what did not change. `derive` takes the model of the objects before a change
//! and the change itself. Where every changed object is a ServiceEntry whose endpoints alone
//! changed, and its new version is valid and draws no warning, the new model is the previous
//! one with those services' endpoints replaced: what else the validator checks (hosts, ports,
//! addresses, subsets, routes, gateways) reads no endpoint, so its verdict cannot change.
//! Anything else is `None`, for the caller to build whole with `build_with`; so a model is
//! always what `build_with` makes of the same objects (errors, warnings and their order
//! included). `tests/incremental.rs` checks that over random sequences of changes.
//!
//! Stages of `build_with` that read a service's endpoints must be accounted for here: today
//! that is the gateways' `credentialName` warnings (which namespaces a gateway's workloads run
//! in), checked by [`gateway_namespaces_unchanged`].

use std::collections::BTreeSet;

use super::{Model, ServerTls, Service, registry};
use crate::credential::Credentials;
use crate::error::ObjectId;
use crate::loader::Object;

/// One object added (`before` is `None`), replaced, or removed (`after` is `None`).
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    pub before: Option<&'a Object>,
    pub after: Option<&'a Object>,
}

impl Change<'_> {
    /// The object this change is about.
    pub fn id(&self) -> Option<&ObjectId> {
        self.after.or(self.before).map(|o| &o.id)
    }
}

impl Model {
    /// The model of `previous`'s objects with `changes` made, derived from `previous`, where
    /// every change is one whose effect stays within its own services and the result is
    /// known to be valid; `None` when a whole build must decide. `previous` must be what
    /// [`Model::build_with`] made of the objects before the changes, with these
    /// `credentials` (other credentials than `previous` holds are `None`). The result is
    /// what `build_with` makes of the objects after them.
    pub fn derive(
        previous: &Model,
        changes: &[Change<'_>],
        credentials: Option<&Credentials>,
    ) -> Option<Model> {
        let no_credentials = Credentials::default();
        if previous.credentials != *credentials.unwrap_or(&no_credentials) {
            return None;
        }
        let mut seen = BTreeSet::new();
        let mut replaced: Vec<Service> = Vec::new();
        for change in changes {
            let (Some(before), Some(after)) = (change.before, change.after) else {
                return None;
            };
            // An object given twice is an error only a whole build reports.
            if !seen.insert(&after.id) {
                return None;
            }
            // Whatever the validator said of the old version (a warning names it) would be
            // said again in its place in the whole build's order.
            if previous
                .warnings
                .iter()
                .any(|w| w.object.as_ref() == Some(&after.id))
            {
                return None;
            }
            let services = registry::endpoints_changed(before, after, &previous.services)?;
            for service in &services {
                let old = previous.services.get(&service.hostname)?;
                if !gateway_namespaces_unchanged(previous, old, service) {
                    return None;
                }
            }
            replaced.extend(services);
        }
        // Destructured so that a field added later must be placed: carried over (it reads no
        // endpoint) or rebuilt.
        let Model {
            services,
            destination_rules,
            virtual_services,
            gateways,
            peer_authentications,
            authorization_policies,
            request_authentications,
            rate_limit_policies,
            telemetries,
            jwks,
            sidecars,
            credentials,
            warnings,
        } = previous;
        let mut services = services.clone();
        for service in replaced {
            services.insert(service.hostname.clone(), service);
        }
        Some(Model {
            services,
            destination_rules: destination_rules.clone(),
            virtual_services: virtual_services.clone(),
            gateways: gateways.clone(),
            peer_authentications: peer_authentications.clone(),
            authorization_policies: authorization_policies.clone(),
            request_authentications: request_authentications.clone(),
            rate_limit_policies: rate_limit_policies.clone(),
            telemetries: telemetries.clone(),
            jwks: jwks.clone(),
            sidecars: sidecars.clone(),
            credentials: credentials.clone(),
            warnings: warnings.clone(),
        })
    }
}

/// Whether the namespaces that gateways with `credentialName` servers run in stay the same when
/// `old` becomes `new`: the validator warns of a credential missing there (`gateway.rs`), and
/// a service counts when one of its endpoints is a workload the gateway selects.
fn gateway_namespaces_unchanged(model: &Model, old: &Service, new: &Service) -> bool {
    model
        .gateways
        .values()
        .filter(|g| {
            g.servers
                .iter()
                .any(|s| matches!(s.tls, Some(ServerTls::Credential { .. })))
        })
        .all(|g| {
            let selected = |s: &Service| s.endpoints.iter().any(|e| g.selects(&e.labels));
            selected(old) == selected(new)
        })
}
