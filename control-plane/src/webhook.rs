//! The admission webhooks the API server calls, over HTTPS with a certificate from the mesh
//! CA: `/inject` (mutating: sidecar injection, `strait_inject::review`) and `/validate`
//! (validating: Istio's kinds through the one validator, as `straitctl analyze` runs it).

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use strait_inject::InjectSettings;
use strait_model::Model;

use crate::store::ConfigStore;

#[derive(Clone)]
pub struct WebhookState {
    pub store: ConfigStore,
    pub injection: Arc<InjectSettings>,
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate))
        .with_state(state)
}

fn json_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn inject(State(state): State<WebhookState>, body: Bytes) -> Response {
    // The webhook's namespace selector has chosen the namespace: every pod that does not opt
    // out gets the sidecar.
    json_response(strait_inject::review(&body, None, &state.injection))
}

async fn validate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(admission(
                "",
                false,
                Some(format!("the AdmissionReview is not JSON: {e}")),
                &[],
            ));
        }
    };
    let request = &review["request"];
    let uid = request["uid"].as_str().unwrap_or_default();
    let (allowed, message, warnings) = validate_object(&state.store, request);
    json_response(admission(uid, allowed, message, &warnings))
}

/// The answer for one admission request: whether it is allowed, why not, and warnings.
pub fn validate_object(
    store: &ConfigStore,
    request: &Value,
) -> (bool, Option<String>, Vec<String>) {
    if request["operation"] == "DELETE" || request["object"].is_null() {
        return (true, None, Vec::new());
    }
    let object = match crate::kube::convert::istio_object(&request["object"]) {
        Ok(o) => o,
        Err(e) => return (false, Some(e.to_string()), Vec::new()),
    };
    // Meaning is checked with what is in force: errors of this object that come from what it
    // names (a host or subset not there yet) are warnings, since objects reach the API server
    // in any order; the store sets such an object aside until what it needs arrives.
    let current = store.current();
    let others = current
        .objects
        .iter()
        .map(|o| &**o)
        .filter(|o| o.id != object.id);
    let warnings = match Model::build(others.chain(std::iter::once(&object))) {
        Ok(model) => model
            .warnings
            .iter()
            .filter(|w| w.object.as_ref() == Some(&object.id))
            .map(ToString::to_string)
            .collect(),
        Err(errors) => errors
            .0
            .iter()
            .filter(|e| e.object.as_ref() == Some(&object.id))
            .map(ToString::to_string)
            .collect(),
    };
    (true, None, warnings)
}

fn admission(uid: &str, allowed: bool, message: Option<String>, warnings: &[String]) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": allowed});
    if let Some(message) = message {
        response["status"] = json!({"code": 400, "message": message});
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .unwrap_or_default()
}

/// Serves `app` over TLS with `cert_pem` (chain) and `key_pem` on `listener` until `stop`.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    cert_pem: &str,
    key_pem: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the webhook certificate")?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("the webhook key")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the webhook TLS config")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("webhook accept: {e}");
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, "webhook TLS handshake: {e}");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
            {
                tracing::debug!(%peer, "webhook connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ConfigStore {
        ConfigStore::new(&mut prometheus_client::registry::Registry::default())
    }

    fn request(spec: Value) -> Value {
        json!({
            "uid": "u-1",
            "operation": "CREATE",
            "object": {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "reviews", "namespace": "shop"},
                "spec": spec,
            },
        })
    }

    #[test]
    fn a_bad_field_is_refused_with_the_validators_message() {
        let (allowed, message, _) =
            validate_object(&store(), &request(json!({"hosts": ["reviews"], "htp": []})));
        assert!(!allowed);
        let message = message.unwrap();
        assert!(
            message.contains("Kubernetes VirtualService shop/reviews") && message.contains("htp"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_destination_is_a_warning_not_a_refusal() {
        let (allowed, message, warnings) = validate_object(
            &store(),
            &request(
                json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
            ),
        );
        assert!(allowed, "{message:?}");
        assert!(!warnings.is_empty(), "the unknown host is reported");
    }

    #[test]
    fn the_review_answer_echoes_the_uid() {
        let body = admission("u-9", false, Some("no".into()), &[]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "u-9");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["message"], "no");
    }
}
