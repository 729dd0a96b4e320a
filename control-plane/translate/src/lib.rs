//! Pure translation: (validated model, proxy node) -> Envoy listeners, routes, clusters, endpoints.
