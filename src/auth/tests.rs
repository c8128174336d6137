//! Verification against every algorithm and every rejection, through the real config,
//! runtime and policy code, with keys from a JWKS file.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora::http::RequestHeader;
use serde_json::{json, Value};

use super::tools::{mint, public_jwk};
use super::AuthError;
use crate::runtime::Runtime;

const RSA: &str = include_str!("../../tests/keys/rsa2048.pem");
const RSA_SMALL_JWK: &str = include_str!("../../tests/keys/rsa1024.jwk.json");
const EC256: &str = include_str!("../../tests/keys/ec256.pem");
const EC384: &str = include_str!("../../tests/keys/ec384.pem");
const ED: &str = include_str!("../../tests/keys/ed25519.pem");
const ISS: &str = "https://id.example.com/";

struct Setup {
    runtime: Runtime,
    _dir: tempfile::TempDir,
}

/// A runtime with one issuer whose JWKS file holds `jwks`, and a route `r` with `policy`.
fn setup(jwks: Value, issuer_extra: &str, policy: &str) -> Setup {
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
    audiences: [api]
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
    let runtime = Runtime::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Setup { runtime, _dir: dir }
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
    let route = &s.runtime.routes[0];
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    s.runtime
        .auth
        .authenticate(route.policy.as_ref().unwrap(), &req)
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
        runtime: Runtime::from_yaml(yaml).unwrap(),
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
    let issuer = &s.runtime.auth.issuers[0];
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
    auth: { issuers: [nobody], token_from: [body], forward_claims: { sub: Authorization } }
";
    let err = Runtime::from_yaml(yaml).unwrap_err().to_string();
    for expected in [
        "issuers[0].issuer: discovery needs an issuer URL",
        "issuers[1].algorithms[0]: `HS256` needs `hmac_secret_env`",
        "issuers[1].algorithms[1]: unknown algorithm `XX1`",
        "issuers[2].hmac_secret_env: environment variable `PORTCULLIS_TEST_UNSET_VAR` is not set",
        "routes[0].auth: with issuers configured every route must say `auth:`",
        "routes[1].auth.issuers[0]: no issuer named `nobody`",
        "routes[1].auth.token_from[0]: unknown token source `body`",
        "routes[1].auth.forward_claims.sub: `Authorization` cannot carry a claim",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
