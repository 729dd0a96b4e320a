//! The Kubernetes source: Services, their endpoints and Pods, Istio's kinds, and Ingresses,
//! watched from the API server into the store's Kubernetes layer.

pub mod convert;
pub mod ingress;
pub mod source;

pub use source::{ISTIO_KINDS, KubeSourceOptions, run};
