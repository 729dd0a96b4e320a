//! Strait's policy model: Istio YAML in, one validator, a validated model out. No I/O, no protobufs.

pub mod credential;
pub mod duration;
pub mod error;
pub mod host;
pub mod istio;
pub mod loader;
pub mod mesh;
pub mod model;
pub mod node;
pub mod policy;
pub mod re2;

pub use credential::{Credential, CredentialError, CredentialId, Credentials};
pub use error::{ObjectId, ValidationError, ValidationErrors};
pub use istio::Kind;
pub use loader::{Object, Spec};
pub use model::*;
pub use node::{ProxyMode, ProxyNode};
