//! The request-path token check: a cached token, and the first sight of a token per
//! algorithm next to ring's own signature check on the same bytes.
//!
//! `cargo bench --bench auth`. The cached figure is what a repeated token costs (extract,
//! hash, cache lookup, revocation check, policy) while nothing is revoked;
//! `token/cached_with_revocations` the same with 10,000 revocations of other users held.
//! The uncached ones add header and claims parsing to ring.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use portcullis::auth::tools::{mint, public_jwk};
use portcullis::auth::{token, Cached};
use portcullis::generation::Generation;
use portcullis::revocation::{Kind, Revocations};
use serde_json::json;

/// The allocator the `portcullis` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ISS: &str = "https://id.example.com/";

fn keys() -> [(&'static str, &'static str, &'static str); 3] {
    [
        ("RS256", "rsa", include_str!("../tests/keys/rsa2048.pem")),
        ("ES256", "ec256", include_str!("../tests/keys/ec256.pem")),
        ("EdDSA", "ed", include_str!("../tests/keys/ed25519.pem")),
    ]
}

fn generation(dir: &std::path::Path) -> Generation {
    let jwks = json!({"keys": keys().iter().map(|(_, kid, pem)| public_jwk(pem, kid, true).unwrap()).collect::<Vec<_>>()});
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    Generation::from_yaml(&format!(
        "
upstreams: [{{ name: u, targets: [\"127.0.0.1:9\"] }}]
issuers:
  - name: corp
    issuer: \"{ISS}\"
    jwks_file: {}
    audiences: [api]
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: u
    auth:
      issuers: [corp]
      require_scopes: [\"orders:read\"]
      forward_claims: {{ sub: X-User-Id, scope: X-User-Scopes }}
",
        file.display()
    ))
    .unwrap()
}

fn claims(n: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"iss": ISS, "aud": "api", "sub": format!("user-{n}"), "scope": "orders:read orders:write",
           "iat": now, "exp": now + 3600, "tenant": "acme"})
    .to_string()
}

/// A token's signed bytes and signature, and the public JWK of the key that signed it.
struct Signed {
    message: Vec<u8>,
    signature: Vec<u8>,
    jwk: serde_json::Value,
}

impl Signed {
    fn new(pem: &str, token: &str) -> Signed {
        let (message, signature) = token.rsplit_once('.').unwrap();
        Signed {
            message: message.as_bytes().to_vec(),
            signature: B64.decode(signature).unwrap(),
            jwk: public_jwk(pem, "k", true).unwrap(),
        }
    }

    fn field(&self, f: &str) -> Vec<u8> {
        B64.decode(self.jwk[f].as_str().unwrap()).unwrap()
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn ring_verify(alg: &str, pem: &str, token: &str) -> impl Fn() -> bool {
    let signed = Signed::new(pem, token);
    let field = |f: &str| signed.field(f);
    let (n, e, point) = match alg {
        "RS256" => (field("n"), field("e"), Vec::new()),
        "ES256" => (
            Vec::new(),
            Vec::new(),
            [vec![4u8], field("x"), field("y")].concat(),
        ),
        _ => (Vec::new(), Vec::new(), field("x")),
    };
    let alg = alg.to_string();
    let Signed {
        message, signature, ..
    } = signed;
    move || {
        use ring::signature as sig;
        match alg.as_str() {
            "RS256" => sig::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&sig::RSA_PKCS1_2048_8192_SHA256, &message, &signature)
                .is_ok(),
            "ES256" => sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &point)
                .verify(&message, &signature)
                .is_ok(),
            _ => sig::UnparsedPublicKey::new(&sig::ED25519, &point)
                .verify(&message, &signature)
                .is_ok(),
        }
    }
}

/// ring's RSA verification with the key prepared once, outside the loop.
fn ring_prepared(pem: &str, token: &str) -> impl Fn() -> bool {
    let signed = Signed::new(pem, token);
    let key =
        ring::signature::RsaPreparedPublicKey::new(&signed.field("n"), &signed.field("e")).unwrap();
    move || {
        key.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &signed.message,
            &signed.signature,
        )
        .is_ok()
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = generation(dir.path());
    let auth = &rt.auth;
    let policy = rt.routes[0].policy.as_ref().unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let none_revoked = Revocations::default();

    // A cached token: fill the cache with many tokens so the lookup is not a toy.
    let (_, kid, pem) = keys()[1];
    let mut req = RequestHeader::build("GET", b"/v1/orders/42", None).unwrap();
    let token = mint(pem, &claims(0), None, Some(kid)).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    req.insert_header("host", "api.example.com").unwrap();
    req.insert_header("user-agent", "bench").unwrap();
    // Ten thousand tokens under `cargo bench`; a few in the smoke run of `cargo test`.
    let fill = if std::env::args().any(|a| a == "--bench") {
        10_000u64
    } else {
        10
    };
    for i in 0..fill {
        let t = mint(pem, &claims(i + 1), None, Some(kid)).unwrap();
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("authorization", format!("Bearer {t}"))
            .unwrap();
        tokio
            .block_on(auth.authenticate(policy, &r, &none_revoked))
            .unwrap();
    }
    tokio
        .block_on(auth.authenticate(policy, &req, &none_revoked))
        .unwrap();
    let cached = |req: &RequestHeader, revocations: &Revocations| {
        let t = token::extract(black_box(req), &policy.sources).unwrap();
        match auth.check_cached(policy, t, revocations) {
            Cached::Hit(r) => r.unwrap(),
            Cached::Miss(_) => panic!("not cached"),
        }
    };
    c.bench_function("token/cached", |b| b.iter(|| cached(&req, &none_revoked)));
    // Other users revoked, by each kind: a token with all three ids, each looked up.
    let mut with_ids: serde_json::Value = serde_json::from_str(&claims(0)).unwrap();
    with_ids["jti"] = json!("token-0");
    with_ids["sid"] = json!("session-0");
    let mut req_ids = RequestHeader::build("GET", b"/v1/orders/42", None).unwrap();
    let token_ids = mint(pem, &with_ids.to_string(), None, Some(kid)).unwrap();
    req_ids
        .insert_header("authorization", format!("Bearer {token_ids}"))
        .unwrap();
    tokio
        .block_on(auth.authenticate(policy, &req_ids, &none_revoked))
        .unwrap();
    let some_revoked = Revocations::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    some_revoked.apply((0..10_000u64).map(|i| {
        let kind = [Kind::Sub, Kind::Sid, Kind::Jti][(i % 3) as usize];
        (kind, std::sync::Arc::from(format!("other-{i}")), now)
    }));
    assert_eq!(some_revoked.len(), 10_000);
    c.bench_function("token/cached_with_revocations", |b| {
        b.iter(|| cached(&req_ids, &some_revoked))
    });

    let mut group = c.benchmark_group("token/first_sight");
    for (alg, kid, pem) in keys() {
        let token = mint(pem, &claims(1), None, Some(kid)).unwrap();
        group.bench_function(format!("{alg}/portcullis"), |b| {
            b.iter(|| {
                tokio
                    .block_on(token::verify(
                        black_box(&token),
                        &policy.issuers,
                        &auth.projection,
                    ))
                    .unwrap()
            })
        });
        let ring = ring_verify(alg, pem, &token);
        group.bench_function(format!("{alg}/ring"), |b| b.iter(|| assert!(ring())));
        if alg == "RS256" {
            // What Portcullis runs: the key prepared once (vendor/README.md).
            let prepared = ring_prepared(pem, &token);
            group.bench_function(format!("{alg}/ring_prepared_key"), |b| {
                b.iter(|| assert!(prepared()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
