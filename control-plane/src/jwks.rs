//! Fetches the `jwksUri`s RequestAuthentications name, as istiod does, and hands the documents to
//! the store, which inlines them into the model (translation does no I/O). Each URI is fetched
//! when it first appears and again every refresh interval; a failed fetch keeps the last good
//! document and becomes a warning naming the object and field, retried sooner.

use std::collections::BTreeMap;
use std::time::Duration;

use strait_model::{FetchedJwks, JwksFetches, check_jwks};
use tokio::time::Instant;

use crate::store::ConfigStore;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a failed fetch is tried again (at most the refresh interval).
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Runs until the store is dropped: fetches what the model in force names, refreshes it every
/// `refresh` (Istio's default is 20 minutes), and tells the store whenever a result changes.
pub async fn run(store: ConfigStore, refresh: Duration) {
    let mut models = store.subscribe();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .into();
    let mut fetched = JwksFetches::new();
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let uris = models.borrow_and_update().model.jwks_uris();
        let before = fetched.clone();
        fetched.retain(|uri, _| uris.contains(uri));
        due.retain(|uri, _| uris.contains(uri));
        let now = Instant::now();
        for uri in &uris {
            if due.get(uri).is_some_and(|at| *at > now) {
                continue;
            }
            let result = fetch(&agent, uri).await;
            let entry = fetched.entry(uri.clone()).or_default();
            let next = match result {
                Ok(text) => {
                    tracing::debug!(%uri, "fetched a JWKS");
                    *entry = FetchedJwks {
                        keys: Some(text.into()),
                        error: None,
                    };
                    refresh
                }
                Err(error) => {
                    tracing::warn!(%uri, %error, "fetching a JWKS failed; the last good keys, if any, stay in force");
                    entry.error = Some(error);
                    RETRY_AFTER.min(refresh)
                }
            };
            due.insert(uri.clone(), Instant::now() + next);
        }
        if fetched != before {
            store.set_jwks(fetched.clone());
        }
        let next = due.values().min().copied();
        tokio::select! {
            changed = models.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One GET, on a blocking thread (ureq); the body must be a JWKS document.
async fn fetch(agent: &ureq::Agent, uri: &str) -> Result<String, String> {
    let agent = agent.clone();
    let uri = uri.to_string();
    tokio::task::spawn_blocking(move || {
        let mut response = agent.get(&uri).call().map_err(|e| e.to_string())?;
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("reading the body: {e}"))?;
        check_jwks(&text).map_err(|e| format!("not a JWKS: {e}"))?;
        Ok(text)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the fetch did not finish: {e}")))
}
