//! The control plane's runtime: config sources and store, the push loop, the admin API, bootstrap.

pub mod admin;
pub mod auth;
pub mod bootstrap;
pub mod certs;
pub mod controller;
pub mod crds;
pub mod ctl;
pub mod envoy_json;
pub mod explain;
pub mod jwks;
pub mod kube;
pub mod proxy_config;
pub mod rejections;
pub mod store;
pub mod telemetry;
pub mod watch;
pub mod webhook;
