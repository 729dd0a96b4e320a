//! The admin HTTP API: health, apply, objects, debug and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use strait_model::{Kind, Object, ObjectId, ValidationError, ValidationErrors, loader};

use crate::store::{ConfigStore, Source, StoreError};

/// The origin of objects sent to `/apply` and `/delete`; the loader adds `(document N)`.
pub const API_ORIGIN: &str = "admin API";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What each open stream of a node id has acknowledged, looked up by node id.
pub type HeldByNode = Arc<dyn Fn(&str) -> Vec<strait_xds::HeldConfig> + Send + Sync>;

/// Everything the handlers need.
#[derive(Clone)]
pub struct AdminState {
    pub store: ConfigStore,
    /// Every metric of the process; registration is finished before the router is built.
    pub registry: Arc<Registry>,
    /// The xDS server's per-stream status, as served at `/debug/proxies`.
    pub proxies: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// What each open stream of a node id has acknowledged (`AdsServer::held`).
    pub held: HeldByNode,
    /// Set once the xDS server is serving.
    pub ready: Arc<AtomicBool>,
    /// Configuration comes from elsewhere (the Kubernetes API server, through its RBAC):
    /// `/apply` and `/delete` are refused, everything else is read-only anyway.
    pub read_only: bool,
}

pub fn router(state: AdminState) -> Router {
    let writes = if state.read_only {
        Router::new()
            .route("/apply", post(refuse_writes))
            .route("/delete", post(refuse_writes))
    } else {
        Router::new()
            .route("/apply", post(apply))
            .route("/delete", post(delete_documents))
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(writes)
        .route("/config/kubernetes", get(kubernetes_status))
        .route("/objects", get(list_all))
        .route("/objects/{kind}", get(list_kind))
        .route("/objects/{kind}/{namespace}", get(list_namespace))
        .route(
            "/objects/{kind}/{namespace}/{name}",
            get(get_object).delete(delete_object),
        )
        .route("/config/status", get(config_status))
        .route("/debug/proxies", get(debug_proxies))
        .route("/debug/proxies/{node}/config", get(debug_proxy_config))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /healthz, /readyz, /apply, /delete, /objects, /config/status, /debug/proxies, /debug/proxies/NODE/config, /metrics".into(),
                Vec::new(),
            )
        })
        .with_state(state)
}

/// The body of every error answer.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ValidationError>,
}

fn error_response(status: StatusCode, error: String, errors: Vec<ValidationError>) -> Response {
    (status, Json(ErrorBody { error, errors })).into_response()
}

fn invalid(errors: ValidationErrors) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        errors.to_string().trim_end().to_string(),
        errors.0,
    )
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the xDS server is not serving yet\n",
        )
            .into_response();
    }
    if !state.store.loaded() {
        let reason = match state.store.error(Source::Files) {
            Some(record) => format!(
                "not ready: the config directory was rejected:\n{}",
                ValidationErrors(record.errors)
            ),
            None => "not ready: the config directory has not been loaded yet\n".to_string(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    "ready\n".into_response()
}

async fn refuse_writes() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "straitd reads its configuration from the Kubernetes API server: apply and delete objects there (kubectl), where its RBAC decides who may".into(),
        Vec::new(),
    )
}

/// Where each object from the API server stands: accepted (with warnings) or refused (why).
async fn kubernetes_status(State(state): State<AdminState>) -> Response {
    let statuses: BTreeMap<String, _> = state
        .store
        .kube_statuses()
        .into_iter()
        .map(|(id, status)| (id.to_string(), status))
        .collect();
    axum::Json(statuses).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ApplyQuery {
    dry_run: Option<String>,
}

async fn apply(
    State(state): State<AdminState>,
    Query(query): Query<ApplyQuery>,
    body: String,
) -> Response {
    let dry_run = match query.dry_run.as_deref() {
        None | Some("false" | "0") => false,
        Some("" | "true" | "1") => true,
        Some(other) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("dry_run: expected true or false, got {other:?}"),
                Vec::new(),
            );
        }
    };
    let objects = match parse_body(&body) {
        Ok(objects) => objects,
        Err(response) => return response,
    };
    let store = state.store.clone();
    let result = blocking(move || {
        if dry_run {
            store.dry_run(objects)
        } else {
            store.apply(objects)
        }
    })
    .await;
    match result {
        Ok(Ok(outcome)) => Json(outcome).into_response(),
        Ok(Err(errors)) => invalid(errors),
        Err(response) => response,
    }
}

/// Runs a change of the store on a blocking thread: it waits for the store's lock and may
/// validate every object in force, which must not hold up the runtime's workers (the xDS
/// streams run on them).
async fn blocking<T: Send + 'static>(
    change: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(change).await.map_err(|e| {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the change did not finish: {e}"),
            Vec::new(),
        )
    })
}

/// Parses a request body of YAML or JSON documents; an empty batch is an error.
fn parse_body(body: &str) -> Result<Vec<Object>, Response> {
    let objects = loader::parse(body, API_ORIGIN).map_err(|e| invalid(ValidationErrors(e)))?;
    if objects.is_empty() {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "the request body holds no objects; send YAML or JSON documents".into(),
            Vec::new(),
        ));
    }
    Ok(objects)
}

async fn delete_documents(State(state): State<AdminState>, body: String) -> Response {
    let objects = match parse_body(&body) {
        Ok(objects) => objects,
        Err(response) => return response,
    };
    let ids: Vec<ObjectId> = objects.into_iter().map(|o| o.id).collect();
    delete(&state, ids).await
}

async fn delete_object(
    State(state): State<AdminState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Response {
    let kind = match parse_kind(&kind) {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    delete(
        &state,
        vec![ObjectId {
            kind,
            namespace,
            name,
        }],
    )
    .await
}

async fn delete(state: &AdminState, ids: Vec<ObjectId>) -> Response {
    let store = state.store.clone();
    let result = match blocking(move || store.delete(&ids)).await {
        Ok(result) => result,
        Err(response) => return response,
    };
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e @ StoreError::NotFound(_)) => {
            error_response(StatusCode::NOT_FOUND, e.to_string(), Vec::new())
        }
        Err(e @ StoreError::FileOwned { .. }) => {
            error_response(StatusCode::CONFLICT, e.to_string(), Vec::new())
        }
        Err(StoreError::Invalid(errors)) => invalid(errors),
    }
}

fn parse_kind(kind: &str) -> Result<Kind, Response> {
    Kind::parse_loose(kind).ok_or_else(|| {
        error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown kind {kind:?}; expected one of VirtualService (vs), DestinationRule (dr), Gateway (gw), ServiceEntry (se), WorkloadEntry (we), PeerAuthentication (pa), AuthorizationPolicy (ap), RequestAuthentication (ra), Sidecar (sc)"
            ),
            Vec::new(),
        )
    })
}

/// One object as `/objects` shows it: its id, where it came from and the document as given.
#[derive(Serialize)]
struct ObjectEntry<'a> {
    kind: Kind,
    namespace: &'a str,
    name: &'a str,
    origin: &'a str,
    object: &'a serde_json::Value,
}

impl<'a> From<&'a Object> for ObjectEntry<'a> {
    fn from(o: &'a Object) -> Self {
        ObjectEntry {
            kind: o.id.kind,
            namespace: &o.id.namespace,
            name: &o.id.name,
            origin: &o.origin,
            object: &o.raw,
        }
    }
}

fn list(state: &AdminState, kind: Option<&str>, namespace: Option<&str>) -> Response {
    let kind = match kind.map(parse_kind).transpose() {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    let objects = state.store.get(kind, namespace, None);
    Json(
        objects
            .iter()
            .map(|o| ObjectEntry::from(&**o))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn list_all(State(state): State<AdminState>) -> Response {
    list(&state, None, None)
}

async fn list_kind(State(state): State<AdminState>, Path(kind): Path<String>) -> Response {
    list(&state, Some(&kind), None)
}

async fn list_namespace(
    State(state): State<AdminState>,
    Path((kind, namespace)): Path<(String, String)>,
) -> Response {
    list(&state, Some(&kind), Some(&namespace))
}

async fn get_object(
    State(state): State<AdminState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Response {
    let kind = match parse_kind(&kind) {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    match state
        .store
        .get(Some(kind), Some(&namespace), Some(&name))
        .first()
    {
        Some(object) => Json(ObjectEntry::from(&**object)).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            format!("{kind} {namespace}/{name} not found"),
            Vec::new(),
        ),
    }
}

async fn config_status(State(state): State<AdminState>) -> Response {
    Json(state.store.status()).into_response()
}

async fn debug_proxies(State(state): State<AdminState>) -> Response {
    Json((state.proxies)()).into_response()
}

#[derive(Deserialize)]
struct ConfigQuery {
    /// One of clusters, endpoints, secrets, listeners, routes (default: all of them).
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// What a proxy has acknowledged (its latest stream, when it has several), each resource in
/// Envoy's JSON form, secrets redacted: the ACKed configuration, not what straitd would send
/// now.
async fn debug_proxy_config(
    State(state): State<AdminState>,
    Path(node): Path<String>,
    Query(query): Query<ConfigQuery>,
) -> Response {
    let type_url = match query.kind.as_deref() {
        None => None,
        Some(kind) => match crate::proxy_config::type_url(kind) {
            Some(url) => Some(url),
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown type {kind:?}; expected one of {}",
                        crate::proxy_config::TYPES.map(|(name, _)| name).join(", ")
                    ),
                    Vec::new(),
                );
            }
        },
    };
    let streams = (state.held)(&node);
    let count = streams.len();
    let Some(latest) = streams.into_iter().max_by_key(|s| s.status.stream_id) else {
        return error_response(
            StatusCode::NOT_FOUND,
            format!("no proxy with node id {node:?} is connected; see /debug/proxies"),
            Vec::new(),
        );
    };
    // Decoding Envoy's descriptors and the resources is CPU work, off the async threads.
    match blocking(move || crate::proxy_config::held_json(&latest, count, type_url)).await {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(error)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
            Vec::new(),
        ),
        Err(response) => response,
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{SERVICES, vs};
    use axum::body::Body;
    use axum::http::{Method, Request};
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    struct Admin {
        router: Router,
        store: ConfigStore,
        ready: Arc<AtomicBool>,
    }

    fn admin() -> Admin {
        let mut registry = Registry::default();
        let store = ConfigStore::new(&mut registry);
        let ready = Arc::new(AtomicBool::new(true));
        let router = router(AdminState {
            store: store.clone(),
            registry: Arc::new(registry),
            proxies: Arc::new(|| json!([{"node_id": "web-1"}])),
            held: Arc::new(|_| Vec::new()),
            ready: ready.clone(),
            read_only: false,
        });
        Admin {
            router,
            store,
            ready,
        }
    }

    impl Admin {
        async fn call(
            &self,
            method: Method,
            uri: &str,
            body: &str,
        ) -> (StatusCode, String, String) {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/yaml")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                String::from_utf8(bytes.to_vec()).unwrap(),
                content_type,
            )
        }

        async fn get(&self, uri: &str) -> (StatusCode, String) {
            let (status, body, _) = self.call(Method::GET, uri, "").await;
            (status, body)
        }

        async fn json(&self, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
            let (status, body, _) = self.call(method, uri, body).await;
            let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            (status, value)
        }
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let admin = admin();
        assert_eq!(admin.get("/healthz").await, (StatusCode::OK, "ok\n".into()));
        let (status, body) = admin.get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("has not been loaded"), "{body}");

        admin
            .store
            .record_file_error(loader::parse("kind: [", "bad.yaml").unwrap_err());
        let (status, body) = admin.get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("bad.yaml (document 1)"), "{body}");

        admin.store.replace_files(vec![]).unwrap();
        assert_eq!(admin.get("/readyz").await.0, StatusCode::OK);
        admin.ready.store(false, Ordering::Release);
        let (status, body) = admin.get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("xDS"), "{body}");
    }

    #[tokio::test]
    async fn apply_get_and_delete() {
        let admin = admin();
        let (status, outcome) = admin.json(Method::POST, "/apply", SERVICES).await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        assert_eq!(outcome["generation"], 1);
        assert_eq!(outcome["created"].as_array().unwrap().len(), 2);
        assert_eq!(
            outcome["created"][0],
            json!({"kind": "ServiceEntry", "namespace": "default", "name": "reviews"})
        );

        let (status, outcome) = admin
            .json(
                Method::POST,
                "/apply?dry_run=true",
                &vs("reviews", "reviews"),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(outcome["dry_run"], true);
        assert_eq!(admin.store.current().generation, 1);

        let (_, objects) = admin.json(Method::GET, "/objects", "").await;
        assert_eq!(objects.as_array().unwrap().len(), 2);
        let (_, objects) = admin.json(Method::GET, "/objects/vs", "").await;
        assert_eq!(objects, json!([]));
        let (status, object) = admin
            .json(Method::GET, "/objects/se/default/reviews", "")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(object["origin"], "admin API (document 1)");
        assert_eq!(object["object"]["spec"]["resolution"], "STATIC");
        let (status, body) = admin
            .json(Method::GET, "/objects/ServiceEntry/default/nope", "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "ServiceEntry default/nope not found");
        let (status, body) = admin.json(Method::GET, "/objects/envoyfilter", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("unknown kind"));

        let (status, outcome) = admin
            .json(Method::DELETE, "/objects/se/default/ratings", "")
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        assert_eq!(outcome["deleted"][0]["name"], "ratings");
        let (status, _) = admin
            .json(Method::DELETE, "/objects/se/default/ratings", "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, outcome) = admin.json(Method::POST, "/delete", SERVICES).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{outcome}");
        let (status, outcome) = admin
            .json(
                Method::POST,
                "/delete",
                SERVICES.split("---").next().unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        assert_eq!(admin.store.current().objects.len(), 0);
    }

    #[tokio::test]
    async fn a_rejected_apply_names_the_problem_and_keeps_the_old_config() {
        let admin = admin();
        admin.json(Method::POST, "/apply", SERVICES).await;
        admin
            .json(Method::POST, "/apply", &vs("reviews", "reviews"))
            .await;

        let batch = format!(
            "{}---\n{}",
            vs("ratings", "ratings"),
            vs("reviews", "nowhere")
        );
        let (status, body) = admin.json(Method::POST, "/apply", &batch).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = &body["errors"][0];
        assert_eq!(error["origin"], "admin API (document 2)");
        assert_eq!(error["path"], "spec.http[0].route[0].destination.host");
        assert_eq!(error["object"]["name"], "reviews");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("admin API (document 2): VirtualService default/reviews: spec.http[0].route[0].destination.host"),
            "{body}"
        );

        // The old config is still served.
        let (_, objects) = admin.json(Method::GET, "/objects/vs", "").await;
        let names: Vec<&str> = objects
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["reviews"]);
        let (_, object) = admin
            .json(Method::GET, "/objects/vs/default/reviews", "")
            .await;
        assert_eq!(
            object["object"]["spec"]["http"][0]["route"][0]["destination"]["host"],
            "reviews"
        );

        // ...and the rejection is visible in the status.
        let (_, status) = admin.json(Method::GET, "/config/status", "").await;
        assert_eq!(status["generation"], 2);
        assert_eq!(status["last_error"]["source"], "api");
        assert_eq!(
            status["last_error"]["errors"][0]["path"],
            "spec.http[0].route[0].destination.host"
        );
    }

    #[tokio::test]
    async fn shape_errors_and_empty_bodies_are_bad_requests() {
        let admin = admin();
        let (status, body) = admin
            .json(
                Method::POST,
                "/apply",
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selectr: {}}\n",
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["origin"], "admin API (document 1)");
        assert_eq!(body["errors"][0]["path"], "spec.selectr");
        let (status, body) = admin.json(Method::POST, "/apply", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("no objects"));
        let (status, _) = admin
            .json(Method::POST, "/apply?dry_run=maybe", SERVICES)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn file_objects_cannot_be_deleted_through_the_api() {
        let admin = admin();
        admin
            .store
            .replace_files(crate::store::tests::parse(SERVICES, "conf/services.yaml"))
            .unwrap();
        let (status, body) = admin
            .json(Method::DELETE, "/objects/se/default/reviews", "")
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("conf/services.yaml (document 1)"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn debug_proxies_metrics_and_unknown_paths() {
        let admin = admin();
        let (status, proxies) = admin.json(Method::GET, "/debug/proxies", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(proxies[0]["node_id"], "web-1");

        admin.json(Method::POST, "/apply", SERVICES).await;
        let (status, text, content_type) = admin.call(Method::GET, "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, OPENMETRICS);
        assert!(text.contains("strait_config_generation 1"), "{text}");
        assert!(text.contains("strait_config_errors_total 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        let (status, body) = admin
            .json(Method::GET, "/debug/proxies/web-2/config", "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("web-2"), "{body}");
        let (status, body) = admin
            .json(Method::GET, "/debug/proxies/web-1/config?type=pods", "")
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("clusters"),
            "{body}"
        );

        let (status, body) = admin.json(Method::GET, "/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("/objects"));
    }
}
