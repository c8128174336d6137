//! Verification against every algorithm and every rejection, through the real config,
//! generation and policy code, with keys from a JWKS file.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora::http::RequestHeader;
use serde_json::{json, Value};

use super::tools::{mint, public_jwk};
use super::AuthError;
use crate::generation::Generation;

// The test keys (tests/keys/, public: for tests only), for every unit test under auth/.
pub(super) const RSA: &str = include_str!("../../tests/keys/rsa2048.pem");
/// A second RSA key.
pub(super) const RSA_B: &str = include_str!("../../tests/keys/rsa2048-b.pem");
/// The public JWK of `tests/keys/rsa1024.pem`, a key too small to be used.
pub(super) const RSA_SMALL_JWK: &str = include_str!("../../tests/keys/rsa1024.jwk.json");
pub(super) const EC256: &str = include_str!("../../tests/keys/ec256.pem");
pub(super) const EC384: &str = include_str!("../../tests/keys/ec384.pem");
pub(super) const ED: &str = include_str!("../../tests/keys/ed25519.pem");
const ISS: &str = "https://id.example.com/";

struct Setup {
    generation: Generation,
    revocations: crate::revocation::Revocations,
    _dir: tempfile::TempDir,
}

/// A generation with one issuer whose JWKS file holds `jwks`, and a route `r` with `policy`.
fn setup(jwks: Value, issuer_extra: &str, policy: &str) -> Setup {
    setup_for(jwks, "[api]", issuer_extra, policy)
}

/// [`setup`], the issuer naming `audiences` (YAML).
fn setup_for(jwks: Value, audiences: &str, issuer_extra: &str, policy: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let yaml = format!(
        "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
issuers:
  - name: corp
    issuer: \"{ISS}\"
    jwks_file: {file}
    audiences: {audiences}
    leeway: 30s
{issuer_extra}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: u
    auth: {policy}
",
        file = file.display()
    );
    let generation = Generation::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Setup {
        generation,
        revocations: Default::default(),
        _dir: dir,
    }
}

fn all_keys() -> Value {
    json!({"keys": [
        public_jwk(RSA, "rsa", false).unwrap(),
        public_jwk(EC256, "ec256", true).unwrap(),
        public_jwk(EC384, "ec384", true).unwrap(),
        public_jwk(ED, "ed", true).unwrap(),
    ]})
}

fn claims(extra: Value) -> String {
    let now = super::cache::unix_now();
    let mut c = json!({"iss": ISS, "aud": "api", "sub": "alice", "iat": now, "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c.to_string()
}

async fn check(s: &Setup, token: &str) -> Result<super::Identity, AuthError> {
    let route = &s.generation.routes[0];
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    s.generation
        .auth
        .authenticate(route.policy.as_ref().unwrap(), &req, &s.revocations)
        .await
}

const ANY: &str = "{ issuers: [corp] }";

#[tokio::test]
async fn every_asymmetric_algorithm_verifies() {
    let s = setup(all_keys(), "", ANY);
    let cases = [
        (RSA, "rsa", Algorithm::RS256),
        (RSA, "rsa", Algorithm::RS384),
        (RSA, "rsa", Algorithm::RS512),
        (RSA, "rsa", Algorithm::PS256),
        (RSA, "rsa", Algorithm::PS384),
        (RSA, "rsa", Algorithm::PS512),
        (EC256, "ec256", Algorithm::ES256),
        (EC384, "ec384", Algorithm::ES384),
        (ED, "ed", Algorithm::EdDSA),
    ];
    for (pem, kid, alg) in cases {
        let token = mint(pem, &claims(json!({})), Some(alg), Some(kid)).unwrap();
        let id = check(&s, &token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert!(id.until() > 0);
    }
}

#[tokio::test]
async fn hmac_only_with_a_secret() {
    std::env::set_var(
        "PORTCULLIS_TEST_HS",
        "0123456789abcdef0123456789abcdef-secret",
    );
    let dir = tempfile::tempdir().unwrap();
    let yaml = "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
issuers:
  - name: legacy
    issuer: legacy
    hmac_secret_env: PORTCULLIS_TEST_HS
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    auth: { issuers: [legacy] }
";
    let s = Setup {
        generation: Generation::from_yaml(yaml).unwrap(),
        revocations: Default::default(),
        _dir: dir,
    };
    let now = super::cache::unix_now();
    let body = json!({"iss": "legacy", "exp": now + 60}).to_string();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token =
            super::tools::mint_hmac(b"0123456789abcdef0123456789abcdef-secret", &body, alg, None)
                .unwrap();
        check(&s, &token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
    }
    let wrong = super::tools::mint_hmac(
        b"another secret that is long enough!!",
        &body,
        Algorithm::HS256,
        None,
    )
    .unwrap();
    assert_eq!(
        check(&s, &wrong).await.unwrap_err().reason(),
        "bad_signature"
    );
    // An asymmetric token for an HMAC issuer is refused before any key is used.
    let rsa = mint(RSA, &body, None, None).unwrap();
    assert_eq!(check(&s, &rsa).await.unwrap_err().reason(), "bad_algorithm");
}

/// The largest leeway the config accepts made `now + leeway` overflow in the `nbf` and `iat`
/// checks: a panic with overflow checks on, and in a release build a sum that wrapped to the
/// past, refusing good tokens as "not valid yet". Seen while writing the `token` fuzz target,
/// whose issuer `hs-wide` now covers it.
#[tokio::test]
async fn the_largest_leeway_does_not_overflow() {
    std::env::set_var(
        "PORTCULLIS_TEST_HS_WIDE",
        "0123456789abcdef0123456789abcdef-wide",
    );
    let yaml = "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
issuers:
  - name: wide
    issuer: wide
    hmac_secret_env: PORTCULLIS_TEST_HS_WIDE
    leeway: 18446744073709551615s
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    auth: { issuers: [wide] }
";
    let s = Setup {
        generation: Generation::from_yaml(yaml).unwrap(),
        revocations: Default::default(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let now = super::cache::unix_now();
    for extra in [json!({"nbf": now}), json!({"iat": now})] {
        let mut body = json!({"iss": "wide", "exp": now + 60});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let token = super::tools::mint_hmac(
            b"0123456789abcdef0123456789abcdef-wide",
            &body.to_string(),
            Algorithm::HS256,
            None,
        )
        .unwrap();
        check(&s, &token)
            .await
            .unwrap_or_else(|e| panic!("{body}: {e:?}"));
    }
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let s = setup(all_keys(), "", ANY);
    // `alg: none`.
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_url(claims(json!({})).as_bytes());
    let unsigned = format!("{none_header}.{payload}.");
    assert_eq!(
        check(&s, &unsigned).await.unwrap_err().reason(),
        "bad_algorithm"
    );
    // HS256 signed with the RSA public key as the secret, naming the RSA key.
    let jwk = public_jwk(RSA, "rsa", false).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa".into());
    let secret = jwk["n"].as_str().unwrap().as_bytes().to_vec();
    let forged = jsonwebtoken::encode(
        &h,
        &serde_json::from_str::<Value>(&claims(json!({}))).unwrap(),
        &EncodingKey::from_secret(&secret).unwrap(),
    )
    .unwrap();
    assert_eq!(
        check(&s, &forged).await.unwrap_err().reason(),
        "bad_algorithm"
    );
}

#[tokio::test]
async fn key_alg_and_allow_list_bind_the_algorithm() {
    // The key says RS256: a PS256 token from the same key is refused.
    let mut jwk = public_jwk(RSA, "rsa", false).unwrap();
    jwk["alg"] = "RS256".into();
    let s = setup(json!({"keys": [jwk]}), "", ANY);
    let ps = mint(RSA, &claims(json!({})), Some(Algorithm::PS256), Some("rsa")).unwrap();
    assert_eq!(check(&s, &ps).await.unwrap_err().reason(), "bad_algorithm");
    let rs = mint(RSA, &claims(json!({})), Some(Algorithm::RS256), Some("rsa")).unwrap();
    check(&s, &rs).await.unwrap();
    // The issuer allows only ES256: an RS256 token is refused even with a good key.
    let s = setup(all_keys(), "    algorithms: [ES256]", ANY);
    assert_eq!(check(&s, &rs).await.unwrap_err().reason(), "bad_algorithm");
}

#[tokio::test]
async fn small_rsa_keys_are_not_loaded() {
    let mut keys = all_keys();
    let small: Value = serde_json::from_str(RSA_SMALL_JWK).unwrap();
    keys["keys"].as_array_mut().unwrap().push(small.clone());
    // No key refresher runs here: keep the wait for one short.
    let s = setup(keys, "    fetch_timeout: 50ms", ANY);
    let issuer = &s.generation.auth.issuers[0];
    assert_eq!(
        issuer.keys().unwrap().len(),
        4,
        "the 1024-bit key was loaded"
    );
    // ring will not even sign with such a key; a token naming it finds no key.
    let token = mint(RSA, &claims(json!({})), None, Some("small")).unwrap();
    assert_eq!(check(&s, &token).await.unwrap_err().reason(), "unknown_key");
    let (_, skipped) = super::keys::KeySet::from_jwks(
        json!({"keys": [small, public_jwk(RSA, "rsa", false).unwrap()]})
            .to_string()
            .as_bytes(),
        &super::issuer::ASYMMETRIC,
    )
    .unwrap();
    assert!(
        skipped[0].contains("1024 bits is under 2048"),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn crit_and_embedded_keys_are_refused() {
    let s = setup(all_keys(), "", ANY);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec256".into());
    h.crit = Some(vec!["exp".into()]);
    let key = EncodingKey::from_ec_pem(EC256.as_bytes()).unwrap();
    let body: Value = serde_json::from_str(&claims(json!({}))).unwrap();
    let token = jsonwebtoken::encode(&h, &body, &key).unwrap();
    assert!(matches!(
        check(&s, &token).await,
        Err(AuthError::InvalidToken(_))
    ));
    // A token signed by the attacker's key, carrying that key in `jwk` and pointing `jku`
    // elsewhere, under our key's kid: the embedded key is never used.
    let (attacker, attacker_jwk) = super::tools::generate_es256("ec256").unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec256".into());
    h.jwk = serde_json::from_value(attacker_jwk).ok();
    h.jku = Some("http://127.0.0.1:1/evil.json".into());
    let key = EncodingKey::from_ec_pem(attacker.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&h, &body, &key).unwrap();
    assert_eq!(
        check(&s, &token).await.unwrap_err().reason(),
        "bad_signature"
    );
}

#[tokio::test]
async fn time_claims() {
    let s = setup(all_keys(), "", ANY);
    let now = super::cache::unix_now();
    let t = |extra: Value| mint(EC256, &claims(extra), None, Some("ec256")).unwrap();
    assert_eq!(
        check(&s, &t(json!({"exp": now - 120})))
            .await
            .unwrap_err()
            .reason(),
        "expired"
    );
    check(&s, &t(json!({"exp": now - 10}))).await.unwrap();
    let key = EncodingKey::from_ec_pem(EC256.as_bytes()).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec256".into());
    let mut no_exp: Value = serde_json::from_str(&claims(json!({}))).unwrap();
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = jsonwebtoken::encode(&h, &no_exp, &key).unwrap();
    assert!(matches!(
        check(&s, &no_exp).await,
        Err(AuthError::InvalidToken(_))
    ));
    assert!(check(&s, &t(json!({"nbf": now + 120}))).await.is_err());
    check(&s, &t(json!({"nbf": now + 10}))).await.unwrap();
    assert!(check(&s, &t(json!({"iat": now + 120}))).await.is_err());
    check(&s, &t(json!({"iat": now + 10}))).await.unwrap();
}

#[tokio::test]
async fn issuer_and_audience() {
    let s = setup(all_keys(), "", ANY);
    let t = |extra: Value| mint(EC256, &claims(extra), None, Some("ec256")).unwrap();
    assert_eq!(
        check(&s, &t(json!({"iss": "https://evil.example/"})))
            .await
            .unwrap_err()
            .reason(),
        "untrusted_issuer"
    );
    assert!(check(&s, &t(json!({"iss": null}))).await.is_err());
    assert_eq!(
        check(&s, &t(json!({"aud": "other"})))
            .await
            .unwrap_err()
            .reason(),
        "bad_audience"
    );
    assert!(check(&s, &t(json!({"aud": null}))).await.is_err());
    check(&s, &t(json!({"aud": ["other", "api"]})))
        .await
        .unwrap();
}

#[tokio::test]
async fn scopes_and_claims() {
    let policy = r#"{ issuers: [corp], require_scopes: ["orders:read"], require_claims: { tenant: acme, "org.tier": [gold, silver] } }"#;
    let s = setup(all_keys(), "", policy);
    let t = |extra: Value| mint(EC256, &claims(extra), None, Some("ec256")).unwrap();
    let good = json!({"scope": "orders:read x", "tenant": "acme", "org": {"tier": "silver"}});
    check(&s, &t(good.clone())).await.unwrap();
    let mut scp = good.clone();
    scp["scope"] = Value::Null;
    scp["scp"] = json!(["orders:read"]);
    check(&s, &t(scp)).await.unwrap();
    let mut no_scope = good.clone();
    no_scope["scope"] = "orders:write".into();
    assert_eq!(
        check(&s, &t(no_scope)).await.unwrap_err(),
        AuthError::InsufficientScope
    );
    let mut wrong_tenant = good.clone();
    wrong_tenant["tenant"] = "evil".into();
    assert_eq!(
        check(&s, &t(wrong_tenant)).await.unwrap_err(),
        AuthError::ClaimsMismatch
    );
    let mut bronze = good;
    bronze["org"] = json!({"tier": "bronze"});
    assert_eq!(
        check(&s, &t(bronze)).await.unwrap_err(),
        AuthError::ClaimsMismatch
    );
}

#[tokio::test]
async fn a_malformed_bearer_credential_is_a_bad_request() {
    let s = setup(all_keys(), "", ANY);
    // Characters a bearer token (RFC 6750 b64token) cannot have.
    for bad in ["a b", "a.b.c d", "a.b.c\u{e9}"] {
        assert_eq!(
            check(&s, bad).await.unwrap_err(),
            AuthError::InvalidRequest,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_repeated_token_is_served_from_the_cache() {
    let s = setup(all_keys(), "", ANY);
    let token = mint(RSA, &claims(json!({})), None, Some("rsa")).unwrap();
    let first = check(&s, &token).await.unwrap();
    let second = check(&s, &token).await.unwrap();
    assert!(
        first.is_same(&second),
        "second check did not come from the cache"
    );
    // A tampered copy is a different token and is verified (and refused).
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert!(check(&s, &tampered).await.is_err());
}

#[tokio::test]
async fn a_revoked_token_is_refused_cached_or_not_and_one_issued_after_passes() {
    use crate::revocation::Revocation;
    const REVOKED: AuthError = AuthError::InvalidToken(super::TokenFault::Revoked);
    let s = setup(all_keys(), "", ANY);
    let now = super::cache::unix_now();
    let token = |extra: Value| mint(RSA, &claims(extra), None, Some("rsa")).unwrap();
    let cached = token(json!({"iat": now - 10, "jti": "t-1"}));
    check(&s, &cached).await.unwrap();
    let at = s
        .revocations
        .revoke(Revocation::Sub("alice".into()))
        .unwrap();
    assert_eq!(
        check(&s, &cached).await.unwrap_err(),
        REVOKED,
        "from the cache"
    );
    let unseen = token(json!({"iat": now - 5, "jti": "t-2"}));
    assert_eq!(check(&s, &unseen).await.unwrap_err(), REVOKED, "verified");
    assert_eq!(
        check(&s, &unseen).await.unwrap_err(),
        REVOKED,
        "then cached"
    );
    let no_iat = token(json!({"iat": null, "jti": "t-3"}));
    assert_eq!(check(&s, &no_iat).await.unwrap_err(), REVOKED);
    // Logged in again after the revocation: passes; so does another user.
    check(&s, &token(json!({"iat": at + 1}))).await.unwrap();
    check(&s, &token(json!({"sub": "bob", "iat": now - 10})))
        .await
        .unwrap();
    // By session and by token id, numbers as their text.
    let of_session = token(json!({"sub": "carol", "sid": "s-1", "iat": now - 10}));
    let by_id = token(json!({"sub": "dave", "jti": 42, "iat": now - 10}));
    check(&s, &of_session).await.unwrap();
    check(&s, &by_id).await.unwrap();
    s.revocations.revoke(Revocation::Sid("s-1".into())).unwrap();
    s.revocations.revoke(Revocation::Jti("42".into())).unwrap();
    assert_eq!(check(&s, &of_session).await.unwrap_err(), REVOKED);
    assert_eq!(check(&s, &by_id).await.unwrap_err(), REVOKED);
}

#[test]
fn config_errors_for_auth() {
    let yaml = "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
issuers:
  - name: a
    issuer: \"http://id.example.com\"
    discovery: true
  - name: b
    issuer: b
    jwks_uri: \"https://b.example/keys\"
    algorithms: [HS256, XX1]
  - name: c
    issuer: c
    hmac_secret_env: PORTCULLIS_TEST_UNSET_VAR
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
  - name: s
    match: { path_prefix: /s }
    upstream: u
    auth: { issuers: [nobody], token_from: [body], forward_claims: { sub: Authorization, name: X_User } }
";
    let err = Generation::from_yaml(yaml).unwrap_err().to_string();
    for expected in [
        "issuers[0].issuer: discovery needs an issuer URL",
        "issuers[1].algorithms[0]: `HS256` needs `hmac_secret_env`",
        "issuers[1].algorithms[1]: unknown algorithm `XX1`",
        "issuers[2].hmac_secret_env: environment variable `PORTCULLIS_TEST_UNSET_VAR` is not set",
        "routes[0].auth: with issuers configured every route must say `auth:`",
        "routes[1].auth.issuers[0]: no issuer named `nobody`",
        "routes[1].auth.token_from[0]: unknown token source `body`",
        "routes[1].auth.forward_claims.sub: `Authorization` cannot carry a claim",
        "routes[1].auth.forward_claims.name: `X_User` cannot carry a claim: write it with `-`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn config_errors_for_introspection() {
    std::env::set_var("PORTCULLIS_TEST_INTROSPECTION_SECRET", "s");
    let yaml = "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
issuers:
  - name: a
    issuer: a
    jwks_uri: \"https://a.example/keys\"
    introspection: { client_id: edge, client_secret_env: PORTCULLIS_TEST_INTROSPECTION_SECRET }
  - name: b
    issuer: b
    jwks_uri: \"https://b.example/keys\"
    introspection: { endpoint: \"http://b.example/introspect\", client_id: \"\", client_secret_env: PORTCULLIS_TEST_UNSET_VAR, cache_ttl: 500ms, timeout: 0s, max_tokens: 0 }
  - name: c
    issuer: \"https://c.example\"
    discovery: true
    introspection: { client_id: edge, client_secret_env: PORTCULLIS_TEST_INTROSPECTION_SECRET }
  - name: d
    issuer: d
    jwks_uri: \"https://d.example/keys\"
    introspection: { endpoint: \"https://d.example/introspect\", client_id: edge, client_secret_env: PORTCULLIS_TEST_INTROSPECTION_SECRET }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    auth: { issuers: [c, d] }
";
    let err = Generation::from_yaml(yaml).unwrap_err().to_string();
    for expected in [
        "issuers[0].introspection.endpoint: required when the issuer has no `discovery: true`",
        "issuers[1].introspection.endpoint: `http://b.example/introspect` must use https",
        "issuers[1].introspection.client_id: must not be empty",
        "issuers[1].introspection.client_secret_env: environment variable \
         `PORTCULLIS_TEST_UNSET_VAR` is not set",
        "issuers[1].introspection.cache_ttl: must be at least 1s",
        "issuers[1].introspection.timeout: must be more than zero",
        "issuers[1].introspection.max_tokens: must be at least 1",
        "routes[0].auth.issuers: at most one of a route's issuers may have `introspection:`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    // Discovery alone names the endpoint; a configured one needs no discovery.
    let fine = yaml.replace("auth: { issuers: [c, d] }", "auth: { issuers: [c] }");
    let fine = fine.split("  - name: a\n").next().unwrap().to_string()
        + &fine[fine.find("  - name: c\n").unwrap()..];
    let generation = Generation::from_yaml(&fine).unwrap_or_else(|e| panic!("{e}\n{fine}"));
    assert_eq!(generation.auth.introspectors.len(), 2);
    let policy = generation.routes[0].policy.as_ref().unwrap();
    assert_eq!(policy.introspector.as_ref().unwrap().issuer.name, "c");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Sign the claims text `claims` exactly as written (repeated names, fractions, nulls) with
/// the ES256 key under kid `ec256`.
fn sign_raw(claims: &str) -> String {
    super::crypto::install();
    let header = base64_url(br#"{"alg":"ES256","kid":"ec256"}"#);
    let message = format!("{header}.{}", base64_url(claims.as_bytes()));
    let key = EncodingKey::from_ec_pem(EC256.as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

/// What verification said before it did its own claim checks: jsonwebtoken's `decode` with
/// the `Validation` the issuer built (required `exp`, `iss` and, with audiences, `aud`;
/// `exp` and `nbf` within the leeway), after the `iss` peek that picked the issuer, then
/// the `iat` check.
fn jsonwebtoken_says(token: &str, audiences: &[&str]) -> Result<(), &'static str> {
    use jsonwebtoken::errors::ErrorKind;
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1).unwrap();
    let peeked = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<Peek>(&b).ok())
        .and_then(|p| p.iss);
    match peeked {
        None => return Err("the token is malformed"),
        Some(iss) if iss != ISS => return Err("the token issuer is not accepted"),
        Some(_) => {}
    }
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.leeway = 30;
    v.validate_nbf = true;
    v.set_issuer(&[ISS]);
    let mut required = vec!["exp", "iss"];
    if audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    let public = public_jwk(EC256, "ec256", true).unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(public).unwrap()).unwrap();
    let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired",
            ErrorKind::ImmatureSignature => "the token is not valid yet",
            ErrorKind::InvalidAudience => "the token is not for this audience",
            ErrorKind::InvalidIssuer => "the token issuer is not accepted",
            ErrorKind::InvalidSignature => "the token signature is invalid",
            ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
            _ => "the token is malformed",
        })?
        .claims;
    let now = super::cache::unix_now();
    match claims.get("iat").map(Value::as_f64) {
        None => Ok(()),
        Some(Some(iat)) if iat <= (now + 30) as f64 => Ok(()),
        Some(Some(_)) => Err("the token was issued in the future"),
        Some(None) => Err("the token is malformed"),
    }
}

/// The claim checks are Portcullis's own (one parse of the claims, not jsonwebtoken's
/// three); they must say what jsonwebtoken's `Validation` said, token for token.
#[tokio::test]
async fn claims_are_checked_as_jsonwebtoken_checks_them() {
    let now = super::cache::unix_now();
    let (soon, past, late, early) = (now + 600, now - 3600, now + 3600, now - 10);
    let cases: Vec<String> = [
        format!(r#""exp":{soon}"#),
        String::new(),
        r#""exp":null"#.into(),
        format!(r#""exp":"{soon}""#),
        format!(r#""exp":{soon}.4"#),
        format!(r#""exp":{soon}e0"#),
        "\"exp\":-5".into(),
        r#""exp":1e300"#.into(),
        r#""exp":18446744073709551615"#.into(),
        format!(r#""exp":{past}"#),
        format!(r#""exp":{}"#, now - 20),
        format!(r#""exp":{}"#, now - 45),
        format!(r#""exp":{soon},"nbf":{late}"#),
        format!(r#""exp":{soon},"nbf":{}"#, now + 15),
        format!(r#""exp":{soon},"nbf":null"#),
        format!(r#""exp":{soon},"nbf":"{early}""#),
        format!(r#""exp":{soon},"nbf":{early}.7"#),
        format!(r#""exp":{past},"nbf":null"#),
        format!(r#""exp":{past},"nbf":{late}"#),
        format!(r#""exp":{soon},"iat":{late}"#),
        format!(r#""exp":{soon},"iat":{early}"#),
        format!(r#""exp":{soon},"iat":"{early}""#),
        format!(r#""exp":{soon},"sub":42"#),
        format!(r#""exp":{soon},"iss":"https://evil.example/""#),
        format!(r#""exp":{soon},"iss":["{ISS}"]"#),
        format!(r#""exp":{soon},"iss":null"#),
    ]
    .iter()
    .map(|extra| {
        let iss = if extra.contains(r#""iss""#) {
            String::new()
        } else {
            format!(r#","iss":"{ISS}""#)
        };
        let sep = if extra.is_empty() { "" } else { "," };
        format!(r#"{{"sub":"alice"{iss}{sep}{extra}}}"#)
    })
    .collect();
    let audiences = [
        r#","aud":"api""#,
        "",
        r#","aud":null"#,
        r#","aud":"billing""#,
        r#","aud":["billing","api"]"#,
        r#","aud":[]"#,
        r#","aud":["api",1]"#,
        r#","aud":5"#,
        r#","aud":{"api":true}"#,
    ];
    let with_audiences = setup_for(all_keys(), "[api]", "", ANY);
    let without = setup_for(all_keys(), "[]", "", ANY);
    let mut compared = 0;
    for claims in &cases {
        for aud in audiences {
            let text = format!("{}{aud}}}", &claims[..claims.len() - 1]);
            let token = sign_raw(&text);
            for (s, audiences) in [(&with_audiences, &["api"][..]), (&without, &[][..])] {
                let ours = match check(s, &token).await {
                    Ok(_) => Ok(()),
                    Err(AuthError::InvalidToken(fault)) => Err(fault.message()),
                    Err(e) => panic!("{text}: {e:?}"),
                };
                assert_eq!(
                    ours,
                    jsonwebtoken_says(&token, audiences),
                    "{text} {audiences:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, cases.len() * audiences.len() * 2);
    // Payloads that are not one JSON object.
    for text in ["[1]", "null", r#"{"exp":1"#, "{}x"] {
        let token = sign_raw(text);
        assert_eq!(
            check(&with_audiences, &token).await.unwrap_err(),
            AuthError::InvalidToken(super::TokenFault::Malformed),
            "{text}"
        );
        assert_eq!(
            jsonwebtoken_says(&token, &["api"]),
            Err("the token is malformed")
        );
    }
}

/// A claim named twice is refused, whichever claim it is (jsonwebtoken refused only its own
/// five): two parsers must not read two different values from one token.
#[tokio::test]
async fn a_repeated_claim_is_refused() {
    let s = setup(all_keys(), "", ANY);
    let soon = super::cache::unix_now() + 600;
    let good = format!(r#"{{"iss":"{ISS}","aud":"api","exp":{soon},"tenant":"acme""#);
    check(&s, &sign_raw(&format!("{good}}}"))).await.unwrap();
    for twice in [
        r#","tenant":"globex""#.to_string(),
        format!(r#","iss":"{ISS}""#),
        r#","aud":"api""#.into(),
        format!(r#","exp":{soon}"#),
    ] {
        let text = format!("{good}{twice}}}");
        assert_eq!(
            check(&s, &sign_raw(&text)).await.unwrap_err(),
            AuthError::InvalidToken(super::TokenFault::Malformed),
            "{text}"
        );
    }
}

/// An issuer's `ca_file` must be a readable CA bundle, and only for keys fetched over HTTPS;
/// the same content keeps the issuer, a changed one makes a new issuer.
#[test]
fn issuer_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let yaml = |source: &str, ca_file: &str| {
        format!(
            "issuers:\n  - name: a\n    issuer: https://a.test/\n    {source}\n    ca_file: \"{ca_file}\"\nupstreams:\n  - name: u\n    targets: [\"127.0.0.1:9\"]\nroutes:\n  - name: r\n    upstream: u\n    auth: {{ issuers: [a] }}\n"
        )
    };
    let uri = "jwks_uri: https://a.test/jwks";
    let ca = ca_path.to_str().unwrap();
    let first = Generation::from_yaml(&yaml(uri, ca)).unwrap();
    let file = format!(
        "jwks_file: {}/config/keys/example-jwks.json",
        env!("CARGO_MANIFEST_DIR")
    );
    for (source, ca_file, says) in [
        (file.as_str(), ca, "only for keys fetched"),
        (uri, "/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        (uri, "/dev/null", "no PEM certificate"),
    ] {
        let err = Generation::from_yaml(&yaml(source, ca_file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("issuers[0].ca_file") && err.contains(says),
            "{err}"
        );
    }
    // Same content: the issuer is kept. New content: a new issuer, with the keys it had.
    let parsed = crate::config::Config::parse(&yaml(uri, ca)).unwrap();
    let same = Generation::build(&parsed, Some(&first), 2).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &first.auth.issuers[0],
        &same.auth.issuers[0]
    ));
    let other = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).unwrap();
    std::fs::write(&ca_path, other.cert.pem()).unwrap();
    let changed = Generation::build(&parsed, Some(&same), 3).unwrap();
    assert!(!std::sync::Arc::ptr_eq(
        &same.auth.issuers[0],
        &changed.auth.issuers[0]
    ));
}
