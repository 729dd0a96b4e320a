//! The Kubernetes source: Services, their endpoints and Pods, and Istio's kinds, watched from
//! the API server into the store's Kubernetes layer; and ServiceAccount tokens as proof of
//! identity, checked with the API server's TokenReview (`tokens`).

pub mod convert;
pub mod source;
pub mod tokens;

pub use source::{ISTIO_KINDS, KubeSourceOptions, run};
