//! The Kubernetes source: Services, their endpoints and Pods, Istio's kinds, and Ingresses,
//! watched from the API server into the store's Kubernetes layer; each object's standing
//! written back into its `status` by the replica that holds the Lease; ServiceAccount tokens as
//! proof of identity, checked with the API server's TokenReview (`tokens`).

pub mod convert;
pub mod ingress;
pub mod ingress_status;
pub mod lease;
pub mod root_cert;
pub mod source;
pub mod status;
pub mod tokens;

pub use source::{CONFIG_KINDS, KubeSourceOptions, run};
