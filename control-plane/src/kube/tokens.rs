//! Kubernetes ServiceAccount tokens as proof of identity, as istiod takes them: an injected
//! sidecar presents its projected token (audience `strait-ca`) in `authorization: Bearer`, and
//! straitd asks the API server's TokenReview (`authentication.k8s.io/v1`) whether it is valid
//! for one of straitd's audiences. The identity is the ServiceAccount of the username
//! `system:serviceaccount:NAMESPACE:NAME`; any other user is refused.
//!
//! Answers are cached, keyed by the token's SHA-256 (never the token), so a reconnect storm
//! costs one review per token: a valid token for a minute (at most until its own `exp`), a
//! refused one for 10 s; a review that could not be made is not cached. A bound token of a pod
//! deleted meanwhile is thus honoured for up to a minute more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use strait_ca::{CallerAuth, ExternalTokenError, ExternalTokenVerifier, TokenIssuer};

/// The audience injected sidecars' projected tokens are requested for.
pub const DEFAULT_AUDIENCE: &str = "strait-ca";
/// How long a valid token's identity is remembered (at most until the token expires).
pub const VALID_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is remembered.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most; beyond that the soonest to expire go first.
pub const CACHE_CAPACITY: usize = 4096;
/// How long one TokenReview may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Far longer than any ServiceAccount token (about 1 KiB); longer ones are not sent on.
const MAX_TOKEN_LEN: usize = 16 * 1024;
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// `tokens` (straitd's bootstrap tokens) and ServiceAccount tokens for `audiences`, reviewed
/// by the API server behind `client`.
pub fn caller_auth(
    tokens: TokenIssuer,
    client: &kube::Client,
    audiences: &[String],
) -> anyhow::Result<CallerAuth> {
    let reviewer = TokenReviewer::new(ApiServerReview::new(client.clone()), audiences)?;
    tracing::info!(
        audiences = ?reviewer.audiences,
        "accepting Kubernetes ServiceAccount tokens (TokenReview) beside bootstrap tokens"
    );
    Ok(CallerAuth::from(tokens).with_external(Arc::new(reviewer)))
}

/// Makes one TokenReview: the API server's, or a fake in tests.
#[tonic::async_trait]
pub trait Review: Send + Sync + 'static {
    /// The review's status, or why there is none (always `Unavailable`).
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, ExternalTokenError>;
}

/// TokenReviews created in the API server.
pub struct ApiServerReview {
    client: kube::Client,
}

impl ApiServerReview {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[tonic::async_trait]
impl Review for ApiServerReview {
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, ExternalTokenError> {
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.to_vec()),
            },
            status: None,
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let unavailable = |why: String| {
            ExternalTokenError::Unavailable(format!("cannot check the ServiceAccount token: {why}"))
        };
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    unavailable(format!(
                        "the API server did not answer the TokenReview within {REVIEW_TIMEOUT:?}"
                    ))
                })?;
        match answer {
            Ok(review) => review
                .status
                .ok_or_else(|| unavailable("the API server's TokenReview has no status".into())),
            Err(kube::Error::Api(status)) if status.code == 403 => Err(unavailable(format!(
                "straitd may not create TokenReviews ({}); grant it `create` on \
                 tokenreviews.authentication.k8s.io (the system:auth-delegator ClusterRole)",
                status.message
            ))),
            Err(kube::Error::Api(status)) => Err(unavailable(format!(
                "the API server refused the TokenReview: {} ({})",
                status.message, status.code
            ))),
            Err(e) => Err(unavailable(format!(
                "the TokenReview did not reach the API server: {e}"
            ))),
        }
    }
}

/// Checks ServiceAccount tokens with a [`Review`], remembering the answers for a while.
pub struct TokenReviewer<R> {
    review: R,
    audiences: Vec<String>,
    cache: Mutex<Cache>,
}

impl<R: Review> TokenReviewer<R> {
    /// `audiences`: the token must be for one of them (empty entries are dropped; at least
    /// one must remain).
    pub fn new(review: R, audiences: &[String]) -> anyhow::Result<Self> {
        let audiences: Vec<String> = audiences
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        anyhow::ensure!(
            !audiences.is_empty(),
            "ServiceAccount tokens need at least one audience (--token-audience)"
        );
        Ok(Self {
            review,
            audiences,
            cache: Mutex::new(Cache::new(CACHE_CAPACITY)),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tonic::async_trait]
impl<R: Review> ExternalTokenVerifier for TokenReviewer<R> {
    async fn verify(&self, token: &str) -> Result<(String, String), ExternalTokenError> {
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(ExternalTokenError::Refused(
                "the bearer token is neither a bootstrap token nor a ServiceAccount token (a JWT)"
                    .into(),
            ));
        }
        let key = cache_key(token);
        if let Some(answer) = self.cache().get(&key, Instant::now()) {
            return answer;
        }
        let answer = self
            .review
            .review(token, &self.audiences)
            .await
            .and_then(|status| identity_from_status(&status, &self.audiences));
        let ttl = match &answer {
            Ok(_) => VALID_TTL.min(lifetime(token, SystemTime::now()).unwrap_or(VALID_TTL)),
            Err(ExternalTokenError::Refused(_)) => REFUSED_TTL,
            Err(ExternalTokenError::Unavailable(_)) => Duration::ZERO,
        };
        let now = Instant::now();
        self.cache().insert(key, answer.clone(), now + ttl, now);
        answer
    }
}

/// The namespace and service account a TokenReview's status vouches for, if it is
/// authenticated, for one of `audiences`, and a ServiceAccount's.
pub fn identity_from_status(
    status: &TokenReviewStatus,
    audiences: &[String],
) -> Result<(String, String), ExternalTokenError> {
    let refused = |why: String| {
        ExternalTokenError::Refused(format!(
            "ServiceAccount token refused by the API server's TokenReview: {why}"
        ))
    };
    if status.authenticated != Some(true) {
        return Err(refused(
            status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned()),
        ));
    }
    // An authenticated review without audiences means a token for the API server itself.
    let granted = status.audiences.as_deref().unwrap_or_default();
    if !granted.iter().any(|a| audiences.contains(a)) {
        return Err(refused(format!(
            "the token is not for audience {} (the review confirms {granted:?})",
            audiences.join(" or ")
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    service_account(username).ok_or_else(|| {
        refused(format!(
            "it authenticates {username:?}, not a ServiceAccount \
             (system:serviceaccount:NAMESPACE:NAME)"
        ))
    })
}

/// `system:serviceaccount:NS:SA` -> (NS, SA).
pub fn service_account(username: &str) -> Option<(String, String)> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| (namespace.to_owned(), name.to_owned()))
}

/// How long a JWT has left by its (unverified) `exp` claim; `None` without one. Only used to
/// cache a token the API server accepted no longer than it is valid.
fn lifetime(token: &str, now: SystemTime) -> Option<Duration> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    let exp = UNIX_EPOCH + Duration::from_secs(claims.get("exp")?.as_u64()?);
    Some(exp.duration_since(now).unwrap_or(Duration::ZERO))
}

type CacheKey = [u8; 32];

fn cache_key(token: &str) -> CacheKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Answers by token hash, each until its own deadline, at most `capacity` of them.
struct Cache {
    entries: HashMap<CacheKey, Entry>,
    capacity: usize,
}

struct Entry {
    answer: Result<(String, String), ExternalTokenError>,
    until: Instant,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    fn get(
        &mut self,
        key: &CacheKey,
        now: Instant,
    ) -> Option<Result<(String, String), ExternalTokenError>> {
        let entry = self.entries.get(key)?;
        if entry.until > now {
            return Some(entry.answer.clone());
        }
        self.entries.remove(key);
        None
    }

    fn insert(
        &mut self,
        key: CacheKey,
        answer: Result<(String, String), ExternalTokenError>,
        until: Instant,
        now: Instant,
    ) {
        if until <= now || self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.until > now);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.until)
                    .map(|(k, _)| *k)
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, Entry { answer, until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status(authenticated: bool, audiences: &[&str], username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                ..Default::default()
            }),
            error: None,
        }
    }

    fn ours() -> Vec<String> {
        vec!["strait-ca".to_owned(), "istio-ca".to_owned()]
    }

    fn refusal(result: Result<(String, String), ExternalTokenError>) -> String {
        match result {
            Err(ExternalTokenError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn service_account_usernames_and_nothing_else() {
        assert_eq!(
            service_account("system:serviceaccount:shop:reviews"),
            Some(("shop".to_owned(), "reviews".to_owned()))
        );
        for other in [
            "",
            "alice",
            "system:node:worker-1",
            "system:serviceaccount:shop",
            "system:serviceaccount::reviews",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:reviews:extra",
            "system:serviceaccounts:shop:reviews",
            "System:serviceaccount:shop:reviews",
        ] {
            assert_eq!(service_account(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_review_must_be_authenticated_for_our_audience_and_a_service_account() {
        let ok = identity_from_status(
            &status(true, &["istio-ca"], "system:serviceaccount:shop:reviews"),
            &ours(),
        );
        assert_eq!(ok, Ok(("shop".to_owned(), "reviews".to_owned())));

        let mut unauthenticated = status(false, &[], "");
        unauthenticated.error = Some("token audiences [\"x\"] is invalid".to_owned());
        let why = refusal(identity_from_status(&unauthenticated, &ours()));
        assert!(why.contains("is invalid"), "{why}");
        let why = refusal(identity_from_status(&TokenReviewStatus::default(), &ours()));
        assert!(why.contains("not authenticated"), "{why}");

        // Authenticated, but for the API server (no audiences) or someone else.
        for audiences in [&[][..], &["https://kubernetes.default.svc"]] {
            let why = refusal(identity_from_status(
                &status(true, audiences, "system:serviceaccount:shop:reviews"),
                &ours(),
            ));
            assert!(
                why.contains("not for audience strait-ca or istio-ca"),
                "{why}"
            );
        }
        let mut no_audiences = status(true, &[], "system:serviceaccount:shop:reviews");
        no_audiences.audiences = None;
        assert!(identity_from_status(&no_audiences, &ours()).is_err());

        let why = refusal(identity_from_status(
            &status(true, &["strait-ca"], "system:node:worker-1"),
            &ours(),
        ));
        assert!(
            why.contains("\"system:node:worker-1\", not a ServiceAccount"),
            "{why}"
        );
    }

    /// A review that answers from a script and counts its calls.
    struct FakeReview {
        answer: Mutex<Result<TokenReviewStatus, ExternalTokenError>>,
        calls: AtomicUsize,
        audiences: Mutex<Vec<String>>,
    }

    impl FakeReview {
        fn new(answer: Result<TokenReviewStatus, ExternalTokenError>) -> Arc<Self> {
            Arc::new(Self {
                answer: Mutex::new(answer),
                calls: AtomicUsize::new(0),
                audiences: Mutex::new(Vec::new()),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn answer(&self, answer: Result<TokenReviewStatus, ExternalTokenError>) {
            *self.answer.lock().unwrap() = answer;
        }
    }

    #[tonic::async_trait]
    impl Review for Arc<FakeReview> {
        async fn review(
            &self,
            _token: &str,
            audiences: &[String],
        ) -> Result<TokenReviewStatus, ExternalTokenError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            *self.audiences.lock().unwrap() = audiences.to_vec();
            self.answer.lock().unwrap().clone()
        }
    }

    /// A JWT-shaped token (the signature is the API server's business) with `exp`.
    fn jwt(name: &str, exp: Option<u64>) -> String {
        let mut claims = serde_json::json!({ "sub": name });
        if let Some(exp) = exp {
            claims["exp"] = exp.into();
        }
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn in_secs(secs: u64) -> u64 {
        (SystemTime::now() + Duration::from_secs(secs))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test]
    async fn answers_are_cached_by_token_and_outages_are_not() {
        let review = FakeReview::new(Ok(status(
            true,
            &["strait-ca"],
            "system:serviceaccount:shop:reviews",
        )));
        let reviewer =
            TokenReviewer::new(review.clone(), &["strait-ca".into(), " ".into()]).unwrap();
        let token = jwt("reviews", Some(in_secs(3600)));
        let expected = Ok(("shop".to_owned(), "reviews".to_owned()));
        for _ in 0..5 {
            assert_eq!(reviewer.verify(&token).await, expected);
        }
        assert_eq!(review.calls(), 1, "a reconnect storm costs one review");
        assert_eq!(*review.audiences.lock().unwrap(), ["strait-ca"]);
        // Keyed by a hash, never the token itself.
        assert_eq!(reviewer.cache().len(), 1);
        assert!(reviewer.cache().entries.contains_key(&cache_key(&token)));

        // Another token is another review; refusals are remembered too.
        review.answer(Ok(status(false, &[], "")));
        let other = jwt("other", None);
        assert!(reviewer.verify(&other).await.is_err());
        assert!(reviewer.verify(&other).await.is_err());
        assert_eq!(review.calls(), 2);

        // An API server that cannot be reached is asked again next time.
        review.answer(Err(ExternalTokenError::Unavailable("down".into())));
        let third = jwt("third", None);
        for _ in 0..2 {
            assert_eq!(
                reviewer.verify(&third).await,
                Err(ExternalTokenError::Unavailable("down".into()))
            );
        }
        assert_eq!(review.calls(), 4);

        // What is not a JWT never reaches the API server.
        for junk in ["opaque", "a.b", "a.b.c.d", &"x.".repeat(9000)] {
            let why = refusal(reviewer.verify(junk).await);
            assert!(why.contains("neither a bootstrap token nor"), "{why}");
        }
        assert_eq!(review.calls(), 4);
    }

    #[tokio::test]
    async fn a_token_about_to_expire_is_not_cached_beyond_its_expiry() {
        let review = FakeReview::new(Ok(status(
            true,
            &["strait-ca"],
            "system:serviceaccount:shop:reviews",
        )));
        let reviewer = TokenReviewer::new(review.clone(), &["strait-ca".into()]).unwrap();
        // Expired by its own claim (the API server says yes here; a real one would not).
        let expired = jwt("reviews", Some(in_secs(0).saturating_sub(5)));
        reviewer.verify(&expired).await.unwrap();
        reviewer.verify(&expired).await.unwrap();
        assert_eq!(review.calls(), 2);

        let now = SystemTime::now();
        let soon = jwt("reviews", Some(in_secs(20)));
        let left = lifetime(&soon, now).unwrap();
        assert!(left <= Duration::from_secs(21) && left >= Duration::from_secs(18));
        assert_eq!(lifetime(&jwt("reviews", None), now), None);
        assert_eq!(lifetime("a.!!.c", now), None);
    }

    #[test]
    fn audiences_are_required() {
        let review = FakeReview::new(Err(ExternalTokenError::Unavailable("unused".into())));
        let err = TokenReviewer::new(review.clone(), &[]).err().unwrap();
        assert!(err.to_string().contains("--token-audience"), "{err}");
        assert!(TokenReviewer::new(review, &["".into()]).is_err());
    }

    #[test]
    fn the_cache_expires_entries_and_stays_bounded() {
        let now = Instant::now();
        let secs = |s: u64| now + Duration::from_secs(s);
        let ok = |sa: &str| Ok(("ns".to_owned(), sa.to_owned()));
        let mut cache = Cache::new(3);
        cache.insert(cache_key("a"), ok("a"), secs(60), now);
        assert_eq!(cache.get(&cache_key("a"), secs(59)), Some(ok("a")));
        assert_eq!(cache.get(&cache_key("a"), secs(60)), None);
        assert_eq!(cache.len(), 0, "an expired entry is dropped when met");

        // Nothing is kept for no time at all.
        cache.insert(cache_key("z"), ok("z"), now, now);
        assert_eq!(cache.len(), 0);

        // Full: the expired go first, then the soonest to expire.
        cache.insert(cache_key("a"), ok("a"), secs(10), now);
        cache.insert(cache_key("b"), ok("b"), secs(30), now);
        cache.insert(cache_key("c"), ok("c"), secs(20), now);
        cache.insert(cache_key("d"), ok("d"), secs(40), secs(15));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&cache_key("a"), secs(15)), None);
        cache.insert(cache_key("e"), ok("e"), secs(50), secs(15));
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.get(&cache_key("c"), secs(15)),
            None,
            "soonest evicted"
        );
        for kept in ["b", "d", "e"] {
            assert_eq!(cache.get(&cache_key(kept), secs(16)), Some(ok(kept)));
        }
        // Replacing a key does not evict another.
        cache.insert(cache_key("b"), ok("b2"), secs(45), secs(16));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&cache_key("b"), secs(16)), Some(ok("b2")));
    }
}
