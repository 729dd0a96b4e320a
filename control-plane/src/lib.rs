//! The control plane's runtime: config sources and store, the push loop, the admin API, bootstrap.

pub mod bootstrap;
