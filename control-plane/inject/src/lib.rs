//! Sidecar injection as a pure function: no I/O, no clock, no cluster.
//!
//! - [`inject_pod`] decides whether a pod gets a sidecar (Istio's controls: namespace labels,
//!   `sidecar.istio.io/inject`, hostNetwork, already injected) and builds the injected spec:
//!   `strait-init` (`strait-proxy iptables`, the capture) and `strait-proxy` (a native sidecar,
//!   or a first container that holds the app until it is ready), the projected token and the
//!   mesh root; the app's httpGet and tcpSocket probes go through the proxy (`probes`), and
//!   without native sidecars a Job's containers run under `strait-proxy run-app`.
//! - [`inject_manifest`] does it to workload YAML (`straitctl kube-inject`), writing back
//!   everything it leaves alone byte for byte.
//! - [`review`] answers an admission webhook's AdmissionReview with a JSONPatch.
//!
//! The settings ([`InjectSettings`]) are the chart's injection ConfigMap.

mod capture;
mod controls;
mod documents;
mod error;
pub mod keys;
mod manifest;
mod merge;
mod pod;
mod policy;
mod probes;
mod quantity;
mod review;
mod settings;
pub mod sidecar;

pub use capture::{Capture, CidrList, ListError, PortList, Selection};
pub use controls::Interception;
pub use error::{FieldError, InjectError, SettingsError};
pub use manifest::inject_manifest;
pub use pod::{Decision, Injection, Status, inject_pod};
pub use policy::SkipReason;
pub use probes::{APP_HEALTH, PROBERS_ENV};
pub use quantity::{Quantity, QuantityError};
pub use review::{API_VERSION, review};
pub use settings::{
    CaptureSettings, CpuMemory, DEFAULT_IMAGE, InjectSettings, ProxyPorts, ProxyResources,
};
