//! Envoy bootstrap generation.
