//! Strait's policy model: Istio YAML in, one validator, a validated model out. No I/O, no protobufs.

pub mod node;

pub use node::{ProxyMode, ProxyNode};
