//! strait-proxy: a small sidecar and gateway that takes straitd's xDS and carries HTTP traffic.
//!
//! Rooms follow a connection's path: `accept` (listeners, filter-chain choice, TLS handshake),
//! then `http` (routing, authorization, forwarding) or `tcp`, reaching endpoints through
//! `upstream` (balancing, breakers, pools). Below them: the typed `config`, `authz` (RBAC
//! evaluation) and `tls`; beside them: `xds` (the client and protobuf conversion), `runtime`
//! (the snapshot the data path loads), `identity`, `admin` (with `app_health`, the app's probes), `stats` and `trace`; `lifecycle` is the app's side (`run-app`, `wait`), `run_apps` the proxy's (which
//! run-app containers must end before it stops).

pub mod accept;
pub mod admin;
pub mod app;
pub mod app_health;
pub mod authz;
pub mod body;
pub mod config;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod run_apps;
pub mod runtime;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod xds;
