//! The token front end, before and after the signature check.
//!
//! The first byte picks the mode. Even: the rest is a token as a client sends it, checked
//! by `Auth::authenticate` (extraction, the cache, the well-formedness filter) and by
//! `token::verify` directly (split, header and claims decoding, issuer and key choice,
//! signature check against HMAC, RSA, EC and Ed25519 keys). Odd: the rest is a JOSE header
//! and a claims document (split at the first NUL; without one, the header is
//! `{"alg":"HS256"}`), signed here with the issuers' HMAC secret so that the checks after
//! the signature (`exp`, `nbf`, `iat`, `aud`, scopes, required and forwarded claims) run on
//! arbitrary claims. One issuer has the largest leeway the config accepts.
#![no_main]

use std::future::Future;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use portcullis::auth::{token, AuthError, Identity};
use portcullis::generation::Generation;
use serde_json::Value;

const SECRET: &str = "fuzz-secret-0123456789abcdef-0123456789";
const RSA: &str = include_str!("../../tests/keys/rsa2048.pem");
const EC256: &str = include_str!("../../tests/keys/ec256.pem");
const ED: &str = include_str!("../../tests/keys/ed25519.pem");
const LEEWAY: u64 = 30;

struct Fixture {
    generation: Generation,
    tokio: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    std::env::set_var("PORTCULLIS_FUZZ_SECRET", SECRET);
    let dir = std::env::temp_dir().join(format!("portcullis-fuzz-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = serde_json::json!({"keys": [
        portcullis::auth::tools::public_jwk(RSA, "rsa", false).unwrap(),
        portcullis::auth::tools::public_jwk(EC256, "ec256", true).unwrap(),
        portcullis::auth::tools::public_jwk(ED, "ed", true).unwrap(),
    ]});
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let yaml = format!(
        r#"
upstreams:
  - name: u
    targets: ["127.0.0.1:9"]
issuers:
  - name: hs
    issuer: hs
    hmac_secret_env: PORTCULLIS_FUZZ_SECRET
    audiences: [api, web]
    leeway: {LEEWAY}s
  - name: hs-any
    issuer: hs-any
    hmac_secret_env: PORTCULLIS_FUZZ_SECRET
    leeway: {LEEWAY}s
  - name: hs-wide
    issuer: hs-wide
    hmac_secret_env: PORTCULLIS_FUZZ_SECRET
    leeway: 18446744073709551615s
  - name: corp
    issuer: "https://id.example.com/"
    jwks_file: {file}
    audiences: [api]
    leeway: {LEEWAY}s
routes:
  - name: strict
    match: {{ path_prefix: /strict }}
    upstream: u
    auth:
      issuers: [hs, hs-any, hs-wide, corp]
      require_scopes: ["orders:read"]
      require_claims: {{ tenant: acme, "org.tier": [gold, silver] }}
      forward_claims: {{ sub: x-user, "org.tier": x-tier, tenant: x-tenant }}
  - name: open
    match: {{ path_prefix: / }}
    upstream: u
    auth: {{ issuers: [hs, hs-any, hs-wide, corp], forward_claims: {{ sub: x-user }} }}
"#,
        file = file.display()
    );
    let generation = Generation::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    Fixture { generation, tokio }
});

/// Poll a check once. A token naming an unknown `kid` of a JWKS issuer waits for a key
/// fetch that no refresher serves here: that is `None`, the decode before it done.
fn once<F: Future>(f: F) -> Option<F::Output> {
    let _guard = FIXTURE.tokio.enter();
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &[u8], claims: &[u8], which: u8) -> String {
    let alg = match which % 3 {
        0 => ring::hmac::HMAC_SHA256,
        1 => ring::hmac::HMAC_SHA384,
        _ => ring::hmac::HMAC_SHA512,
    };
    let signed = format!("{}.{}", b64(header), b64(claims));
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(alg, SECRET.as_bytes()),
        signed.as_bytes(),
    );
    format!("{signed}.{}", b64(tag.as_ref()))
}

/// What any accepted token must satisfy, whatever its claims.
fn check_accepted(claims: &[u8], identity: &Identity, strict: bool) {
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    let now = portcullis::auth::cache::unix_now();
    let iss = claims["iss"]
        .as_str()
        .expect("accepted claims name the issuer");
    assert!(
        ["hs", "hs-any", "hs-wide"].contains(&iss),
        "an HMAC token of issuer {iss:?} passed"
    );
    assert!(
        claims.get("exp").is_some_and(Value::is_number),
        "no numeric exp"
    );
    // `hs-wide` has the largest leeway the config accepts: any time is within it.
    if iss != "hs-wide" {
        assert!(identity.until() + LEEWAY + 2 >= now, "expired token passed");
    }
    if iss == "hs" {
        let aud = &claims["aud"];
        let ok = |a: &Value| a == "api" || a == "web";
        assert!(
            ok(aud) || aud.as_array().is_some_and(|all| all.iter().any(ok)),
            "a token for another audience passed: {aud}"
        );
    }
    if strict {
        assert_eq!(claims["tenant"], "acme");
    }
}

fn authenticate(route: usize, header_value: &[u8]) -> Option<Result<Identity, AuthError>> {
    let fixture = &*FIXTURE;
    let generation = &fixture.generation;
    let policy = generation.routes[route].policy.as_ref()?;
    let mut req = RequestHeader::build("GET", b"/", None).ok()?;
    req.insert_header("authorization", header_value).ok()?;
    // An empty revocation list: what every node has until something is revoked.
    let revocations = portcullis::revocation::Revocations::default();
    let result = once(generation.auth.authenticate(policy, &req, &revocations))?;
    // The cache must agree with the first check while the identity is fresh.
    if let Ok(identity) = &result {
        if identity.until() > portcullis::auth::cache::unix_now() + LEEWAY + 5 {
            let again = once(generation.auth.authenticate(policy, &req, &revocations));
            assert!(matches!(again, Some(Ok(_))), "a cached token was refused");
        }
        for (slot, _) in &policy.forward {
            // A forwarded claim is always a valid header value, or absent.
            let _ = identity.claim_header(*slot);
        }
    }
    Some(result)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let generation = &FIXTURE.generation;
    let strict = mode & 0x10 != 0;
    let route = if strict { 0 } else { 1 };
    if mode & 1 == 0 {
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(rest);
        if let Some(Ok(identity)) = authenticate(route, &value) {
            // Only HMAC tokens can be forged here, and only by knowing the secret.
            panic!("a token the fuzzer wrote passed: {:?}", identity.until());
        }
        if let Ok(text) = std::str::from_utf8(rest) {
            let policy = generation.routes[route].policy.as_ref().unwrap();
            let result = once(token::verify(
                text,
                &policy.issuers,
                &generation.auth.projection,
            ));
            assert!(!matches!(result, Some(Ok(_))), "an unsigned token verified");
        }
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (&br#"{"alg":"HS256"}"#[..], rest),
        };
        let token = sign(header, claims, mode >> 1);
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(token.as_bytes());
        if let Some(Ok(identity)) = authenticate(route, &value) {
            check_accepted(claims, &identity, strict);
        }
    }
});
