//! The end-to-end harness: processes, ports, backends, data planes.
//!
//! Scenario tests in `tests/tests/` start real processes on 127.0.0.1 (straitd, a data plane,
//! in-process HTTP backends), send real requests and assert on the answers. The data plane is
//! chosen by [`dataplane::data_plane`], so the same scenarios run against stock Envoy and,
//! later, Strait's own proxy.

pub mod backend;
pub mod bins;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod envoy;
pub mod eventually;
pub mod golden;
pub mod kube;
pub mod netns;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod strait_proxy;
pub mod straitd;

pub use backend::Backend;
pub use client::{Req, Resp};
pub use config::ConfigDir;
pub use dataplane::{DataPlane, Proxy, ProxySpec, XdsProtocol, data_plane};
pub use eventually::{eventually, eventually_blocking};
pub use straitd::{Straitd, StraitdOptions};
