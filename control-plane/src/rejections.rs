//! Configuration proxies rejected, told to the objects it came from.
//!
//! A NACK names a node, a type and (in Envoy's message) usually the resources it could not
//! take. The resources' encodings name their Istio objects (`strait_translate::origins`), so
//! a rejection is traced to the VirtualService, DestinationRule, ServiceEntry or Gateway
//! behind it; the status writer puts it into those objects' `status`. A rejection lasts until
//! the node accepts a later version of that type, or goes away.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use strait_model::ObjectId;
use strait_translate::Encoded;
use strait_xds::Snapshot;
use strait_xds::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// One node's rejection of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub node_id: String,
    pub type_url: String,
    pub version: String,
    pub error: String,
    /// The rejected resources the objects were traced through.
    pub resources: Vec<String>,
    pub objects: Vec<ObjectId>,
}

impl Rejection {
    /// How an object's status tells it.
    pub fn describe(&self) -> String {
        let kind = self.type_url.rsplit('.').next().unwrap_or(&self.type_url);
        format!(
            "proxy {} rejected {kind} {} (version {}): {}",
            self.node_id,
            self.resources.join(", "),
            self.version,
            self.error
        )
    }
}

/// The rejections in force, shared by the controller (which records them) and the status
/// writer (which reads them). Cheap to clone.
#[derive(Clone, Default)]
pub struct Rejections {
    inner: Arc<Mutex<BTreeMap<(String, String), Rejection>>>,
}

impl Rejections {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Rejection>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a rejection, traced through the snapshot the node is served.
    pub fn rejected(
        &self,
        snapshot: Option<&Snapshot>,
        node_id: &str,
        type_url: &str,
        version: &str,
        error: &str,
        names: &[String],
    ) -> Rejection {
        let (resources, objects) = match snapshot {
            Some(snapshot) => trace(snapshot, type_url, names, error),
            None => (names.to_vec(), Vec::new()),
        };
        if objects.is_empty() {
            tracing::warn!(node = node_id, type_url, %error, "a proxy's rejection could not be traced to any object");
        }
        let rejection = Rejection {
            node_id: node_id.to_string(),
            type_url: type_url.to_string(),
            version: version.to_string(),
            error: error.to_string(),
            resources,
            objects,
        };
        self.lock().insert(
            (node_id.to_string(), type_url.to_string()),
            rejection.clone(),
        );
        rejection
    }

    /// The node accepted a later version of the type.
    pub fn recovered(&self, node_id: &str, type_url: &str) {
        self.lock()
            .remove(&(node_id.to_string(), type_url.to_string()));
    }

    /// The node went away.
    pub fn forget_node(&self, node_id: &str) {
        self.lock().retain(|(node, _), _| node != node_id);
    }

    /// Rejections by the objects they were traced to.
    pub fn by_object(&self) -> BTreeMap<ObjectId, Vec<Rejection>> {
        let mut out: BTreeMap<ObjectId, Vec<Rejection>> = BTreeMap::new();
        for rejection in self.lock().values() {
            for id in &rejection.objects {
                out.entry(id.clone()).or_default().push(rejection.clone());
            }
        }
        out
    }
}

/// The resources a rejection is about and the objects they come from. Of the resources the
/// response carried (all of the type when `names` is empty), those the message names, else
/// all of them.
fn trace(
    snapshot: &Snapshot,
    type_url: &str,
    names: &[String],
    error: &str,
) -> (Vec<String>, Vec<ObjectId>) {
    let carried: Vec<String> = if names.is_empty() {
        snapshot.resource_names(type_url)
    } else {
        names.to_vec()
    };
    let named: Vec<String> = carried
        .iter()
        .filter(|name| mentions(error, name))
        .cloned()
        .collect();
    let resources = if named.is_empty() { carried } else { named };
    let mut objects = Vec::new();
    for name in &resources {
        // An assignment's objects are its cluster's.
        let (encoded_type, kind) = match type_url {
            CLUSTER_TYPE | ENDPOINT_TYPE => (CLUSTER_TYPE, Encoded::Cluster),
            LISTENER_TYPE => (LISTENER_TYPE, Encoded::Listener),
            ROUTE_TYPE => (ROUTE_TYPE, Encoded::RouteConfiguration),
            _ => continue,
        };
        let Some(resource) = snapshot.get(encoded_type, name) else {
            continue;
        };
        for id in strait_translate::origins(kind, &resource.bytes) {
            if !objects.contains(&id) {
                objects.push(id);
            }
        }
    }
    (resources, objects)
}

/// Whether `message` names `name` as a whole word: resource names are made of letters,
/// digits and `.|_-`, so a name inside a longer one does not count.
fn mentions(message: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || ".|_-".contains(c);
    message.match_indices(name).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + name.len()..].chars().next();
        // A sentence's full stop right after a name still ends it.
        let after_ends = match after {
            None => true,
            Some('.') => message[at + name.len() + 1..]
                .chars()
                .next()
                .is_none_or(|c| !part_of_name(c)),
            Some(c) => !part_of_name(c),
        };
        before.is_none_or(|c| !part_of_name(c)) && after_ends
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_counts_only_as_a_whole_word() {
        let message = "Error adding/updating cluster(s) outbound|9080|v1|reviews.default.svc.cluster.local: bad. Also 80.";
        assert!(mentions(
            message,
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        ));
        assert!(!mentions(message, "reviews.default.svc.cluster.local"));
        assert!(!mentions(message, "9080"));
        assert!(mentions(message, "80"));
        assert!(!mentions(message, "8"));
        assert!(!mentions(message, ""));
    }
}
