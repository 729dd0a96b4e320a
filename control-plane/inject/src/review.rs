//! The mutating admission webhook's logic, without the server: an AdmissionReview
//! (`admission.k8s.io/v1`) in, the AdmissionReview answer out.
//!
//! - A pod being created is injected as [`inject_pod`](crate::inject_pod) decides; the answer
//!   allows it with a JSONPatch from the pod as sent to the pod as injected. A pod left out
//!   is allowed unchanged.
//! - Anything else (another kind, a subresource, an operation other than CREATE) is allowed
//!   unchanged: a webhook registered too widely must not block the cluster.
//! - A pod that cannot be injected (a malformed annotation) is refused, with the error, so
//!   the user sees it from `kubectl apply` or in the workload's events.
//! - A review that is not one (not JSON, not AdmissionReview v1, no uid) is refused too: the
//!   answer is still an AdmissionReview, with the request's uid when one could be read, so the
//!   server can always send it back as it is.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use crate::error::{InjectError, typed};
use crate::merge;
use crate::pod::{Decision, inject_pod};
use crate::settings::InjectSettings;

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: &'static str,
    kind: &'static str,
    response: Response,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// The JSONPatch, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// Answers one AdmissionReview. `namespace_labels`: the labels of the pod's namespace, or
/// `None` when the webhook's namespace selector has already chosen it (then every pod that
/// does not opt out is injected).
pub fn review(
    admission_review_json: &[u8],
    namespace_labels: Option<&BTreeMap<String, String>>,
    settings: &InjectSettings,
) -> Vec<u8> {
    let response = match serde_json::from_slice::<Value>(admission_review_json) {
        Ok(review) => answer(&review, namespace_labels, settings),
        Err(e) => refuse(
            String::new(),
            format!("the AdmissionReview is not JSON: {e}"),
        ),
    };
    let review = Review {
        api_version: API_VERSION,
        kind: "AdmissionReview",
        response,
    };
    serde_json::to_vec(&review).unwrap_or_else(|e| {
        // Strings and booleans always serialize; this is for the type checker.
        format!(
            r#"{{"apiVersion":"{API_VERSION}","kind":"AdmissionReview","response":{{"uid":"","allowed":false,"status":{{"code":500,"message":{:?}}}}}}}"#,
            e.to_string()
        )
        .into_bytes()
    })
}

fn allow(uid: &str) -> Response {
    Response {
        uid: uid.to_string(),
        allowed: true,
        status: None,
        patch_type: None,
        patch: None,
    }
}

fn refuse(uid: String, message: String) -> Response {
    Response {
        uid,
        allowed: false,
        status: Some(Status { code: 400, message }),
        patch_type: None,
        patch: None,
    }
}

fn answer(
    review: &Value,
    namespace_labels: Option<&BTreeMap<String, String>>,
    settings: &InjectSettings,
) -> Response {
    let request = &review["request"];
    let uid = request["uid"].as_str().unwrap_or_default().to_string();
    let deny = |message: String| refuse(uid.clone(), message);
    if review["apiVersion"] != API_VERSION || review["kind"] != "AdmissionReview" {
        return deny(format!(
            "expected an AdmissionReview of {API_VERSION}, got kind {} of {}",
            review["kind"], review["apiVersion"]
        ));
    }
    if !request.is_object() {
        return deny("request: required field is missing".into());
    }
    if uid.is_empty() {
        return deny("request.uid: required field is missing".into());
    }
    let kind = &request["kind"];
    let is_pod = kind["group"].as_str().unwrap_or_default().is_empty()
        && kind["kind"] == "Pod"
        && request["subResource"]
            .as_str()
            .unwrap_or_default()
            .is_empty();
    if !is_pod || request["operation"] != "CREATE" {
        return allow(&uid);
    }
    let pod = &request["object"];
    if !pod.is_object() {
        return deny("request.object: expected the pod".into());
    }
    match inject(
        pod,
        request["namespace"].as_str(),
        namespace_labels,
        settings,
    ) {
        Ok(None) => allow(&uid),
        Ok(Some(patch)) => Response {
            patch_type: Some("JSONPatch"),
            patch: Some(STANDARD.encode(patch)),
            ..allow(&uid)
        },
        Err(e) => deny(e.to_string()),
    }
}

/// The JSONPatch (as JSON) that injects `pod`, or `None` when it is left as it is.
fn inject(
    pod: &Value,
    namespace: Option<&str>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    settings: &InjectSettings,
) -> Result<Option<Vec<u8>>, InjectError> {
    let meta: ObjectMeta = match &pod["metadata"] {
        Value::Null => ObjectMeta::default(),
        m => typed(m, "metadata")?,
    };
    let spec: PodSpec = match &pod["spec"] {
        Value::Null => return Err(InjectError::field("spec", "required field is missing")),
        s => typed(s, "spec")?,
    };
    // Pods made by controllers come without a namespace; the request has it.
    let mut decided_meta = meta;
    if decided_meta.namespace.is_none() {
        decided_meta.namespace = namespace.map(str::to_string);
    }
    let injection = match inject_pod(&decided_meta, &spec, namespace_labels, settings)? {
        Decision::Skipped(_) => return Ok(None),
        Decision::Injected(injection) => injection,
    };
    let internal = |e: String| InjectError::field("", e);
    let mut raw: serde_yaml_ng::Value =
        serde_json::from_value(pod.clone()).map_err(|e| internal(e.to_string()))?;
    let Some(raw_pod) = raw.as_mapping_mut() else {
        return Err(internal("the pod is not an object".into()));
    };
    merge::apply(raw_pod, &spec, &injection)?;
    let injected = serde_json::to_value(&raw).map_err(|e| internal(e.to_string()))?;
    let patch = json_patch::diff(pod, &injected);
    serde_json::to_vec(&patch)
        .map(Some)
        .map_err(|e| internal(e.to_string()))
}
