//! The Kubernetes source: Services, their endpoints and Pods, and Istio's kinds, watched from
//! the API server into the store's Kubernetes layer.

pub mod convert;
pub mod source;

pub use source::{ISTIO_KINDS, KubeSourceOptions, run};
