//! strait-proxy: a small sidecar and gateway that takes straitd's xDS and carries HTTP traffic.

pub mod admin;
pub mod app;
pub mod balance;
pub mod breaker;
pub mod config;
pub mod convert;
pub mod identity;
pub mod pool;
pub mod proxy;
pub mod rbac;
pub mod routing;
pub mod sockets;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod xds;
