//! The labels and annotations injection reads and writes: Istio's, so manifests written for
//! Istio work as they are, plus `sidecar.strait.io/*` equivalents.

/// Namespace labels: `enabled` injects every pod of the namespace that does not opt out,
/// `disabled` none.
pub const NAMESPACE_STRAIT: &str = "strait-injection";
pub const NAMESPACE_ISTIO: &str = "istio-injection";

/// Pod label or annotation, `"true"` or `"false"`. The label wins over the annotation, and
/// Strait's key over Istio's.
pub const INJECT_STRAIT: &str = "sidecar.strait.io/inject";
pub const INJECT_ISTIO: &str = "sidecar.istio.io/inject";

/// Written on an injected pod: what was added. A pod that has it is not injected again.
pub const STATUS: &str = "sidecar.strait.io/status";
/// Istio's equivalent: a pod Istio injected is left alone.
pub const ISTIO_STATUS: &str = "sidecar.istio.io/status";

/// `REDIRECT` (the default) or `NONE` (no capture: the app talks to the proxy explicitly).
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";

pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

/// Added (unless set) so `kubectl logs` and `kubectl exec` pick the app, not the proxy.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Added (unless set) to a captured pod: clients use mesh mTLS to it (auto mTLS).
pub const TLS_MODE: &str = "security.istio.io/tlsMode";

/// `"false"` keeps the app's httpGet and tcpSocket probes as they are (not through the proxy's
/// `/app-health`). Strait's key wins over Istio's.
pub const REWRITE_PROBES_STRAIT: &str = "sidecar.strait.io/rewriteAppHTTPProbers";
pub const REWRITE_PROBES_ISTIO: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
