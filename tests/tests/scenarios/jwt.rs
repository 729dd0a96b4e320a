//! RequestAuthentication end to end: tokens signed in the test with keys made in the test (RS256
//! and ES256) reach the ratings app through its sidecar when they verify, and are refused with
//! 401 when they do not; a request without a token passes RequestAuthentication and is left to
//! AuthorizationPolicy (`requestPrincipals`, `request.auth.claims[...]`). One issuer's keys are
//! inline, the other's served by a key server on 127.0.0.1 that straitd fetches, refreshes, and
//! reports on when it cannot.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use strait_tests::client::{HttpClient, Req, Resp};
use strait_tests::{
    Backend, ConfigDir, Proxy, ProxySpec, Straitd, StraitdOptions, data_plane, eventually,
};

use crate::common::{CONVERGE, assert_no_nacks};

const HOST: &str = "ratings:9080";
const RSA_ISSUER: &str = "https://rsa.example";
const EC_ISSUER: &str = "https://ec.example";
/// How often straitd fetches the key server again (`--jwks-refresh`), short for the test.
const REFRESH: &str = "1s";
/// The filter's config type, as Envoy's `/config_dump` names it.
const JWT_AUTHN: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

// === keys and tokens ===

/// A signing key made for this test run, and its public half as a JWK.
struct Key {
    algorithm: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    /// A fresh 2048-bit RSA key (RS256).
    fn rsa(kid: &str) -> Key {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .expect("generating an RSA key");
        let der = private.to_pkcs1_der().expect("encoding the RSA key");
        let b64 = |n: &rsa::BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
        Key {
            algorithm: Algorithm::RS256,
            kid: kid.to_string(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                "n": b64(private.n()), "e": b64(private.e()),
            }),
        }
    }

    /// A fresh P-256 key (ES256).
    fn ec(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generating a P-256 key");
        // The uncompressed point: 0x04, then x and y.
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "a P-256 point");
        Key {
            algorithm: Algorithm::ES256,
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        }
    }

    /// A token over `claims`, signed with this key.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing a token")
    }

    /// The same header (`kid`, `alg`) as this key's tokens, signed with `other`: a bad signature.
    fn forged_by(&self, other: &Key, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &other.encoding).expect("signing a token")
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Claims valid for an hour.
fn claims(iss: &str, sub: &str, aud: &str, group: &str) -> Value {
    json!({
        "iss": iss, "sub": sub, "aud": aud, "group": group,
        "iat": now(), "exp": now() + 3600,
    })
}

/// The payload segment of a token, as jwt_authn forwards it.
fn payload_segment(token: &str) -> &str {
    token.split('.').nth(1).expect("a token has three parts")
}

// === the mesh ===

/// The ratings app behind its sidecar, a key server, and straitd refreshing keys every second.
struct Mesh {
    app: Backend,
    keys: Backend,
    config: ConfigDir,
    straitd: Straitd,
    server: Box<dyn Proxy>,
}

impl Mesh {
    fn start(files: &[(&str, &str)], keys: Backend) -> anyhow::Result<Mesh> {
        let app = Backend::start("ratings-app");
        let spec = ProxySpec::sidecar(
            "ratings-v1.default",
            "default",
            &[("app", "ratings"), ("version", "v1")],
        )
        .workload("bookinfo-ratings", app.port());
        let inbound = spec.inbound_port().expect("a workload has an inbound port");
        let config = ConfigDir::new()?;
        config.write(
            "ratings.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: ratings, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: bookinfo-ratings
"
            ),
        )?;
        for (name, yaml) in files {
            config.write(name, yaml)?;
        }
        let mut options = StraitdOptions::new(config.path());
        options.extra_args = vec!["--jwks-refresh".into(), REFRESH.into()];
        let straitd = Straitd::start(options)?;
        let server = data_plane().start(&straitd, &spec)?;
        Ok(Mesh {
            app,
            keys,
            config,
            straitd,
            server,
        })
    }

    fn inbound(&self) -> SocketAddr {
        let port = self
            .server
            .inbound_port()
            .expect("the sidecar has an inbound side");
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A request in plaintext to the sidecar's inbound side (PERMISSIVE, Istio's default);
    /// the app echoes what reached it.
    async fn send(&self, req: Req) -> anyhow::Result<Resp> {
        HttpClient::without_pooling()
            .request(self.inbound(), &req.echo())
            .await
    }

    async fn bearer(&self, path: &str, token: &str) -> anyhow::Result<Resp> {
        self.send(Req::get(HOST, path).header("authorization", format!("Bearer {token}")))
            .await
    }

    /// straitd's warnings about one RequestAuthentication.
    fn warnings_for(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.straitd.admin_get("/config/status")?;
        anyhow::ensure!(status == 200, "/config/status said {status}: {body}");
        let status: Value = serde_json::from_str(&body)?;
        Ok(status["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| {
                w["object"]["kind"] == "RequestAuthentication" && w["object"]["name"] == name
            })
            .cloned()
            .collect())
    }
}

/// An answer with this status (and, for a refusal, Envoy's words for it).
fn expect(resp: &Resp, status: u16, body: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        resp.status == status && (status == 200 || resp.body == body),
        "expected {status} {body:?}, got {resp:?}"
    );
    Ok(())
}

/// The headers that reached the app.
fn seen(resp: &Resp) -> anyhow::Result<Value> {
    anyhow::ensure!(resp.status == 200, "{resp:?}");
    Ok(resp.json()?["headers"].clone())
}

fn request_authentication(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  jwtRules:
{rules}"
    )
}

/// The JwtAuthentication configs in an Envoy `/config_dump`.
fn jwt_configs(dump: &Value) -> Vec<Value> {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(map) => {
                if map.get("@type").and_then(Value::as_str) == Some(JWT_AUTHN) {
                    out.push(v.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dump, &mut out);
    out
}

/// The inline JWKS of the provider for `issuer` in each jwt_authn config of the dump (one per
/// inbound filter chain that speaks HTTP).
fn inline_jwks(dump: &Value, issuer: &str) -> Vec<Value> {
    jwt_configs(dump)
        .iter()
        .flat_map(|c| {
            c["providers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, p)| p.clone())
                .collect::<Vec<_>>()
        })
        .filter(|p| p["issuer"] == issuer)
        .filter_map(|p| {
            p["local_jwks"]["inline_string"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
        })
        .collect()
}

// === the scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_authorization_reads_their_claims() -> anyhow::Result<()> {
    let rsa = Key::rsa("rsa-1");
    let ec = Key::ec("ec-1");
    let key_server = Backend::start("jwks");
    key_server.set_document(Some(&jwks(&[&ec])));
    let rules = format!(
        "  - issuer: {RSA_ISSUER}
    audiences: [ratings]
    jwks: '{inline}'
    outputPayloadToHeader: x-jwt-payload
  - issuer: {EC_ISSUER}
    jwksUri: http://{keys}/keys.json
    fromHeaders: [{{name: x-ec-token, prefix: 'Token '}}]
    fromParams: [ec_token]
    forwardOriginalToken: true
",
        inline = jwks(&[&rsa]),
        keys = key_server.addr(),
    );
    let mesh = Mesh::start(
        &[("jwt.yaml", &request_authentication("ratings-jwt", &rules))],
        key_server,
    )?;

    // An RS256 token in `Authorization: Bearer`, checked against the inline keys.
    let alice = rsa.sign(&claims(RSA_ISSUER, "alice", "ratings", "users"));
    let resp = eventually(CONVERGE, || async {
        let resp = mesh.bearer("/ratings/1", &alice).await?;
        seen(&resp)?;
        Ok(resp)
    })
    .await?;
    let headers = seen(&resp)?;
    anyhow::ensure!(
        headers["x-jwt-payload"] == payload_segment(&alice),
        "outputPayloadToHeader carries the payload: {headers}"
    );
    anyhow::ensure!(
        headers.get("authorization").is_none(),
        "forwardOriginalToken false: the token is removed before the app: {headers}"
    );

    // An ES256 token in a header of its own (after its prefix), checked against the keys straitd
    // fetched from the key server; this provider forwards it.
    let eve = ec.sign(&claims(EC_ISSUER, "eve", "anyone", "users"));
    let resp = eventually(CONVERGE, || async {
        let resp = mesh
            .send(Req::get(HOST, "/ratings/1").header("x-ec-token", format!("Token {eve}")))
            .await?;
        seen(&resp)?;
        Ok(resp)
    })
    .await?;
    let headers = seen(&resp)?;
    anyhow::ensure!(
        headers["x-ec-token"] == format!("Token {eve}") && headers.get("x-jwt-payload").is_none(),
        "forwardOriginalToken true keeps the header; only the RSA rule outputs its payload: {headers}"
    );
    anyhow::ensure!(mesh.keys.requests() >= 1, "straitd fetched the key server");
    // And in the query parameter the rule names.
    let resp = mesh
        .send(Req::get(HOST, format!("/ratings/1?ec_token={eve}")))
        .await?;
    seen(&resp)?;
    // Its location is its own: in `Authorization` the RSA rule reads it, and refuses its issuer.
    expect(
        &mesh.bearer("/ratings/1", &eve).await?,
        401,
        "Jwt issuer is not configured",
    )?;
    // The same token behind the wrong prefix is not found at all: no token, which passes.
    seen(
        &mesh
            .send(Req::get(HOST, "/").header("x-ec-token", format!("Bearer {eve}")))
            .await?,
    )?;

    // Tokens that do not verify are refused before the app sees them.
    let other_rsa = Key::rsa("rsa-1");
    let before = mesh.app.requests();
    let bad = [
        (
            "a bad signature",
            rsa.forged_by(&other_rsa, &claims(RSA_ISSUER, "alice", "ratings", "users")),
            401,
            "Jwt verification fails",
        ),
        (
            "the wrong issuer",
            rsa.sign(&claims(
                "https://other.example",
                "alice",
                "ratings",
                "users",
            )),
            401,
            "Jwt issuer is not configured",
        ),
        (
            "an expired token",
            rsa.sign(&json!({
                "iss": RSA_ISSUER, "sub": "alice", "aud": "ratings",
                "iat": now() - 7200, "exp": now() - 3600,
            })),
            401,
            "Jwt is expired",
        ),
        (
            "a key the issuer does not have",
            Key::ec("ec-2").sign(&claims(EC_ISSUER, "eve", "anyone", "users")),
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (
            "not a token",
            "not.a-token".to_string(),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        // Envoy answers 403 for an audience the provider does not allow, 401 for the rest.
        (
            "the wrong audience",
            rsa.sign(&claims(RSA_ISSUER, "alice", "billing", "users")),
            403,
            "Audiences in Jwt are not allowed",
        ),
    ];
    for (what, token, status, body) in &bad {
        let resp = if what.contains("key the issuer") {
            mesh.send(Req::get(HOST, "/").header("x-ec-token", format!("Token {token}")))
                .await?
        } else {
            mesh.bearer("/", token).await?
        };
        expect(&resp, *status, body).map_err(|e| e.context(*what))?;
        if *status == 401 {
            anyhow::ensure!(
                resp.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer realm=")),
                "{what}: a 401 says how to authenticate: {resp:?}"
            );
        }
    }
    anyhow::ensure!(
        mesh.app.requests() == before,
        "a refused token reached the app"
    );
    // Without a token and without an AuthorizationPolicy, the request passes.
    seen(&mesh.send(Req::get(HOST, "/ratings/1")).await?)?;

    // Envoy holds both providers' keys inline, the fetched ones too.
    if data_plane().name() == "envoy" {
        let dump = mesh.server.config_dump()?;
        anyhow::ensure!(
            !jwt_configs(&dump).is_empty(),
            "no jwt_authn filter in the config dump"
        );
        anyhow::ensure!(
            inline_jwks(&dump, RSA_ISSUER)
                .iter()
                .all(|k| *k == json!({"keys": [rsa.jwk]}))
                && !inline_jwks(&dump, RSA_ISSUER).is_empty(),
            "the inline keys: {:?}",
            inline_jwks(&dump, RSA_ISSUER)
        );
        anyhow::ensure!(
            inline_jwks(&dump, EC_ISSUER)
                .iter()
                .all(|k| *k == json!({"keys": [ec.jwk]}))
                && !inline_jwks(&dump, EC_ISSUER).is_empty(),
            "the fetched keys, inlined: {:?}",
            inline_jwks(&dump, EC_ISSUER)
        );
    }

    // AuthorizationPolicy decides on the verified token: any principal but a banned one
    // outside /admin, and in /admin only the RSA issuer's admins.
    mesh.config.write(
        "authz.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ['*'], notRequestPrincipals: ['{EC_ISSUER}/banned']}}}}]
    to: [{{operation: {{notPaths: ['/admin*']}}}}]
  - from: [{{source: {{requestPrincipals: ['{RSA_ISSUER}/*']}}}}]
    to: [{{operation: {{paths: ['/admin*']}}}}]
    when: [{{key: 'request.auth.claims[group]', values: [admins]}}]
"
        ),
    )?;
    eventually(CONVERGE, || async {
        expect(
            &mesh.send(Req::get(HOST, "/ratings/1")).await?,
            403,
            "RBAC: access denied",
        )
    })
    .await?;
    seen(&mesh.bearer("/ratings/1", &alice).await?)?;
    expect(
        &mesh.bearer("/admin/x", &alice).await?,
        403,
        "RBAC: access denied",
    )
    .map_err(|e| e.context("group users in /admin"))?;
    let root = rsa.sign(&claims(RSA_ISSUER, "root", "ratings", "admins"));
    seen(&mesh.bearer("/admin/x", &root).await?)?;
    let ec_admin = ec.sign(&claims(EC_ISSUER, "mallory", "x", "admins"));
    let via_header = |path: &str, token: &str| {
        Req::get(HOST, path).header("x-ec-token", format!("Token {token}"))
    };
    seen(&mesh.send(via_header("/ratings/1", &ec_admin)).await?)?;
    expect(
        &mesh.send(via_header("/admin/x", &ec_admin)).await?,
        403,
        "RBAC: access denied",
    )
    .map_err(|e| e.context("another issuer's admins in /admin"))?;
    let banned = ec.sign(&claims(EC_ISSUER, "banned", "x", "users"));
    expect(
        &mesh.send(via_header("/ratings/1", &banned)).await?,
        403,
        "RBAC: access denied",
    )
    .map_err(|e| e.context("notRequestPrincipals"))?;
    // A bad token is still RequestAuthentication's to refuse, with 401.
    expect(
        &mesh.bearer("/ratings/1", &bad[0].1).await?,
        401,
        "Jwt verification fails",
    )?;
    assert_no_nacks(&mesh.straitd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_keys_are_refreshed_and_a_failed_fetch_is_reported() -> anyhow::Result<()> {
    let old = Key::ec("ec-old");
    let new = Key::ec("ec-new");
    let key_server = Backend::start("jwks");
    key_server.set_document(Some(&jwks(&[&old])));
    let rules = format!(
        "  - issuer: {EC_ISSUER}\n    jwksUri: http://{}/keys.json\n",
        key_server.addr()
    );
    let mesh = Mesh::start(
        &[("jwt.yaml", &request_authentication("ratings-jwt", &rules))],
        key_server,
    )?;
    let token = |key: &Key| key.sign(&claims(EC_ISSUER, "eve", "ratings", "users"));
    eventually(CONVERGE, || async {
        seen(&mesh.bearer("/", &token(&old)).await?).map(drop)
    })
    .await?;

    // The key server rotates its key; after straitd's next fetch the new key's tokens pass and
    // the old one's fail.
    mesh.keys.set_document(Some(&jwks(&[&new])));
    eventually(CONVERGE, || async {
        seen(&mesh.bearer("/", &token(&new)).await?).map(drop)
    })
    .await?;
    expect(
        &mesh.bearer("/", &token(&old)).await?,
        401,
        "Jwks doesn't have key to match kid or alg from Jwt",
    )?;
    anyhow::ensure!(mesh.warnings_for("ratings-jwt")?.is_empty());

    // The key server fails: a warning names the object and field, and the last keys fetched stay.
    mesh.keys.set_status(Some(503));
    let keys_uri = format!("http://{}/keys.json", mesh.keys.addr());
    eventually(CONVERGE, || async {
        let warnings = mesh.warnings_for("ratings-jwt")?;
        anyhow::ensure!(
            warnings.len() == 1
                && warnings[0]["path"] == "spec.jwtRules[0].jwksUri"
                && warnings[0]["message"].as_str().is_some_and(|m| {
                    m.starts_with(&format!("fetching {keys_uri}: "))
                        && m.contains("503")
                        && m.ends_with("the last keys fetched stay in force")
                }),
            "{warnings:?}"
        );
        Ok(())
    })
    .await?;
    seen(&mesh.bearer("/", &token(&new)).await?)?;

    // A jwksUri that cannot be fetched at all, written together with an AuthorizationPolicy:
    // the policy takes effect, the other issuer's tokens still pass, and this issuer's tokens
    // are refused until its keys come.
    mesh.keys.set_status(None);
    let down = format!("127.0.0.1:{}", strait_tests::ports::free_port());
    mesh.config.write(
        "down.yaml",
        &format!(
            "{}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-blocked, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/blocked]}}}}]}}]
",
            request_authentication(
                "down-jwt",
                &format!(
                    "  - issuer: https://down.example\n    jwksUri: http://{down}/keys.json\n"
                ),
            )
        ),
    )?;
    eventually(CONVERGE, || async {
        let warnings = mesh.warnings_for("down-jwt")?;
        anyhow::ensure!(
            warnings.len() == 1
                && warnings[0]["path"] == "spec.jwtRules[0].jwksUri"
                && warnings[0]["message"].as_str().is_some_and(|m| {
                    m.starts_with(&format!("fetching http://{down}/keys.json: "))
                        && m.ends_with("tokens from this issuer are refused until a fetch succeeds")
                }),
            "{warnings:?}"
        );
        expect(
            &mesh.bearer("/blocked", &token(&new)).await?,
            403,
            "RBAC: access denied",
        )
    })
    .await?;
    // The key server answers again: its warning goes, the other stays.
    eventually(CONVERGE, || async {
        anyhow::ensure!(mesh.warnings_for("ratings-jwt")?.is_empty());
        Ok(())
    })
    .await?;
    anyhow::ensure!(mesh.warnings_for("down-jwt")?.len() == 1);
    seen(&mesh.bearer("/", &token(&new)).await?)?;
    let down_token = new.sign(&claims("https://down.example", "eve", "ratings", "users"));
    expect(
        &mesh.bearer("/", &down_token).await?,
        401,
        "Jwks doesn't have key to match kid or alg from Jwt",
    )?;
    assert_no_nacks(&mesh.straitd).await
}
