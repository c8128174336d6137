//! Authentication at the edge, end to end: the real binary, a real key server
//! ([`JwksServer`]), real upstreams and tokens minted here for every algorithm.
//!
//! Each test owns its proxy, its upstreams and its key servers, so metric values and fetch
//! counts are exact. The in-process unit tests (`src/auth/tests.rs`) cover each verification
//! rule; these prove what a client, an upstream and an operator see.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::Algorithm;
use portcullis::auth::tools::{mint, mint_hmac};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::support::jwks::{jwk, key_set, JwksServer, DISCOVERY_PATH, JWKS_PATH};
use crate::support::keys::{AUD, EC256, EC256_PATH, EC384, ED, ISS, RSA, RSA_B, RSA_SMALL_JWK};
use crate::support::{client, eventually, pool, Echo, Proxy, Upstream, BIN};

const DECISIONS: &str = "portcullis_auth_decisions_total";
const FETCHES: &str = "portcullis_jwks_fetches_total";
const STALE: &str = "portcullis_jwks_stale";
const CACHE: &str = "portcullis_token_cache_requests_total";
const GENERATION: &str = "portcullis_config_generation";
/// The challenge of a request without a token: no error code (RFC 6750 section 3.1).
const BARE_CHALLENGE: &str = "Bearer realm=\"portcullis\"";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a good token for [`ISS`] and [`AUD`], changed by `extra` (`null` removes one).
fn claims(extra: Value) -> String {
    let now = now();
    let mut c = json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "scope": "orders:read",
        "iat": now, "exp": now + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c.to_string()
}

/// A token signed by `pem` (its default algorithm), naming `kid`.
fn token(pem: &str, kid: &str, extra: Value) -> String {
    mint(pem, &claims(extra), None, Some(kid)).unwrap()
}

/// The YAML of issuer `name` for [`ISS`] whose keys `jwks` serves, with these intervals.
fn issuer(name: &str, jwks: &JwksServer, refresh: &str, min_refresh: &str) -> String {
    issuer_for(name, ISS, jwks, refresh, min_refresh)
}

/// [`issuer`] for tokens whose `iss` is `iss`.
fn issuer_for(
    name: &str,
    iss: &str,
    jwks: &JwksServer,
    refresh: &str,
    min_refresh: &str,
) -> String {
    format!(
        "  - name: {name}\n    issuer: \"{iss}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\n    leeway: 5s\n    fetch_timeout: 500ms\n    jwks_refresh: {refresh}\n    jwks_min_refresh: {min_refresh}\n",
        jwks.jwks_url()
    )
}

/// The YAML of a route; `auth` is `none` or a flow mapping.
fn route(name: &str, prefix: &str, upstream: &str, auth: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: {upstream}\n    auth: {auth}\n"
    )
}

/// A whole config body: pool `app` on `up`, then `issuers` and `routes`.
fn config(up: &Upstream, issuers: &str, routes: &str) -> String {
    format!(
        "upstreams:\n{}issuers:\n{issuers}routes:\n{routes}",
        pool("app", &[up.addr().to_string()], &[])
    )
}

/// A response, read whole.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.status, self.body))
    }

    /// The one `WWW-Authenticate` header.
    fn challenge(&self) -> String {
        let all: Vec<_> = self.headers.get_all("www-authenticate").iter().collect();
        assert_eq!(all.len(), 1, "{}: {:?}", self.status, self.headers);
        all[0].to_str().unwrap().to_string()
    }

    /// What the upstream received; the answer must be a 200 from it.
    fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }

    /// Panic unless this is a JSON refusal with `status`, `error` in the body and nothing
    /// of `token` anywhere in headers or body.
    fn refused(&self, status: u16, error: &str, token: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.headers["content-type"], "application/json",
            "{:?}",
            self.headers
        );
        assert_eq!(self.json()["error"], error, "{}", self.body);
        let everything = format!("{:?} {}", self.headers, self.body);
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(
                !everything.contains(part),
                "the answer echoes the token: {everything}"
            );
        }
    }
}

/// GET `url` with `Authorization: Bearer {token}` when given, and more headers.
async fn get(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// Wait until `/readyz` shows keys for issuer `name`.
async fn wait_for_keys(proxy: &Proxy, name: &str) {
    eventually(
        &format!("keys of issuer `{name}`"),
        Duration::from_secs(10),
        || async {
            let (_, body) = proxy.readyz(true).await;
            match body["issuers"][name]["keys"].as_u64() {
                Some(n) if n > 0 => Ok(()),
                _ => Err(body.to_string()),
            }
        },
    )
    .await;
}

/// Wait until metric `name{labels}` reads at least `n`.
async fn wait_metric_at_least(proxy: &Proxy, name: &str, labels: &[(&str, &str)], n: f64) {
    eventually(
        &format!("{name}{labels:?} >= {n}"),
        Duration::from_secs(10),
        || async {
            let got = proxy.metric(name, labels).await;
            if got >= n {
                Ok(())
            } else {
                Err(format!("reads {got}"))
            }
        },
    )
    .await;
}

/// Wait until `jwks` has served `path` at least `n` times.
async fn wait_for_fetches(jwks: &JwksServer, path: &str, n: usize) {
    eventually(
        &format!("{n} fetches of {path}"),
        Duration::from_secs(10),
        || async {
            let got = jwks.fetches(path);
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} so far"))
            }
        },
    )
    .await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

const FORWARD: &str = "forward_claims: { sub: X-User-Id, scope: X-User-Scopes }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_gets_through_with_identity_headers() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[
        (RSA, "rsa"),
        (EC256, "ec256"),
        (EC384, "ec384"),
        (ED, "ed"),
    ]))
    .await;
    let secret = "it-hmac-secret-0123456789abcdef-0123456789";
    let issuers = format!(
        "{}  - name: legacy\n    issuer: legacy\n    hmac_secret_env: PORTCULLIS_IT_HS_SECRET\n",
        issuer("corp", &jwks, "60s", "2s")
    );
    let routes = route(
        "api",
        "/api",
        "app",
        &format!("{{ issuers: [corp, legacy], {FORWARD} }}"),
    );
    // The secret is in the proxy's environment only, never in its config file.
    let proxy = Proxy::builder(&config(&up, &issuers, &routes))
        .env("PORTCULLIS_IT_HS_SECRET", secret)
        .start()
        .await;
    assert!(!std::fs::read_to_string(proxy.config_path())
        .unwrap()
        .contains(secret));
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let scopes = "orders:read orders:write";
    let mut tokens: Vec<(String, String)> = [
        (RSA, "rsa", Algorithm::RS256),
        (RSA, "rsa", Algorithm::PS256),
        (EC256, "ec256", Algorithm::ES256),
        (EC384, "ec384", Algorithm::ES384),
        (ED, "ed", Algorithm::EdDSA),
    ]
    .iter()
    .map(|(pem, kid, alg)| {
        let sub = format!("user-{alg:?}");
        let c = claims(json!({"sub": sub, "scope": scopes}));
        (sub, mint(pem, &c, Some(*alg), Some(kid)).unwrap())
    })
    .collect();
    let hs = json!({"iss": "legacy", "sub": "user-HS256", "scope": scopes, "exp": now() + 600});
    tokens.push((
        "user-HS256".into(),
        mint_hmac(secret.as_bytes(), &hs.to_string(), Algorithm::HS256, None).unwrap(),
    ));
    for (sub, token) in &tokens {
        let seen = get(&http, &proxy.url("/api/orders"), Some(token), &[])
            .await
            .echo();
        assert_eq!(seen.header("x-user-id").as_deref(), Some(sub.as_str()));
        assert_eq!(seen.header("x-user-scopes").as_deref(), Some(scopes));
        // strip_authorization defaults to false: the upstream gets the token too.
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {token}"))
        );
    }
    assert_eq!(up.hits(), tokens.len());
    // The header of each token said which algorithm; make sure they really differ.
    let algs: std::collections::HashSet<String> = tokens
        .iter()
        .map(|(_, t)| {
            portcullis::auth::tools::inspect(t).unwrap()["header"]["alg"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(algs.len(), 6, "{algs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_follow_rfc_6750_and_never_reach_the_upstream() {
    let up = Upstream::start("guarded").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "rsa"), (EC256, "ec256")])).await;
    let routes = route(
        "orders",
        "/v1/orders",
        "app",
        "{ issuers: [corp], require_scopes: [\"orders:read\"], require_claims: { tenant: acme, \"org.tier\": [gold, silver] } }",
    );
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let url = proxy.url("/v1/orders/42");
    let good = json!({"tenant": "acme", "org": {"tier": "gold"}});
    let with = |extra: Value| {
        let mut c = good.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    // No token: the bare challenge, without an error code.
    let a = get(&http, &url, None, &[]).await;
    a.refused(401, "unauthorized", "");
    assert_eq!(a.challenge(), BARE_CHALLENGE);
    // Another scheme is no bearer token either.
    let a = get(
        &http,
        &url,
        None,
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    a.refused(401, "unauthorized", "");
    assert_eq!(a.challenge(), BARE_CHALLENGE);

    // Bad tokens: 401 invalid_token with a description that says why, and nothing more.
    let jwk_text = jwk(RSA, "rsa").to_string();
    let header = b64(br#"{"alg":"none","typ":"JWT","kid":"rsa"}"#);
    let unsigned = format!("{header}.{}.", b64(claims(good.clone()).as_bytes()));
    let bad = [
        (
            "signed by another key under the right kid",
            token(RSA_B, "rsa", good.clone()),
            "the token signature is invalid",
        ),
        (
            "expired",
            token(
                RSA,
                "rsa",
                with(json!({"exp": now() - 3600, "iat": now() - 7200})),
            ),
            "the token has expired",
        ),
        (
            "another issuer",
            token(
                RSA,
                "rsa",
                with(json!({"iss": "https://evil.example.com/"})),
            ),
            "the token issuer is not accepted",
        ),
        (
            "another audience",
            token(EC256, "ec256", with(json!({"aud": "billing-api"}))),
            "the token is not for this audience",
        ),
        ("alg none", unsigned, "the token algorithm is not allowed"),
        (
            "HS256 with the public key as the secret",
            mint_hmac(
                jwk_text.as_bytes(),
                &claims(good.clone()),
                Algorithm::HS256,
                Some("rsa"),
            )
            .unwrap(),
            "the token algorithm is not allowed",
        ),
        (
            "not a JWT",
            "abc.def.ghi".to_string(),
            "the token is malformed",
        ),
    ];
    for (what, token, why) in &bad {
        let a = get(&http, &url, Some(token), &[]).await;
        a.refused(401, "invalid_token", token);
        assert_eq!(
            a.challenge(),
            format!("{BARE_CHALLENGE}, error=\"invalid_token\", error_description=\"{why}\""),
            "{what}"
        );
        assert_eq!(a.json()["message"], *why, "{what}");
    }

    // Missing scope: 403 insufficient_scope naming the scope the route needs.
    let t = token(RSA, "rsa", with(json!({"scope": "orders:write profile"})));
    let a = get(&http, &url, Some(&t), &[]).await;
    a.refused(403, "insufficient_scope", &t);
    let challenge = a.challenge();
    assert!(
        challenge.starts_with(&format!("{BARE_CHALLENGE}, error=\"insufficient_scope\"")),
        "{challenge}"
    );
    assert!(
        challenge.ends_with(", scope=\"orders:read\""),
        "{challenge}"
    );
    assert_eq!(a.json()["scope"], "orders:read");
    // Scopes from `scp` count too; here it lacks the one needed.
    let t = token(
        EC256,
        "ec256",
        with(json!({"scope": null, "scp": ["orders:write"]})),
    );
    get(&http, &url, Some(&t), &[])
        .await
        .refused(403, "insufficient_scope", &t);

    // Claims that do not match: 403, exact values and any-of over a dotted path.
    for extra in [
        json!({"tenant": "globex"}),
        json!({"tenant": null}),
        json!({"org": {"tier": "bronze"}}),
        json!({"org": null}),
    ] {
        let t = token(RSA, "rsa", with(extra.clone()));
        let a = get(&http, &url, Some(&t), &[]).await;
        a.refused(403, "forbidden", &t);
        assert!(!a.challenge().contains("scope=\""), "{extra}");
    }

    // Nothing refused reached the upstream; a good token does.
    assert_eq!(up.arrivals(), 0);
    let t = token(RSA, "rsa", with(json!({"org": {"tier": "silver"}})));
    get(&http, &url, Some(&t), &[]).await.echo();
    let t = token(
        EC256,
        "ec256",
        with(json!({"scope": null, "scp": ["orders:read"]})),
    );
    get(&http, &url, Some(&t), &[]).await.echo();
    assert_eq!(up.arrivals(), 2);

    // No token reached a log either (once the refusals' lines are in the file: the writer
    // takes them within 100 ms).
    proxy.wait_access_lines(bad.len()).await;
    let logs = format!("{}\n{}", proxy.access_log(), proxy.stderr());
    for (_, token, _) in &bad {
        if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() >= 8) {
            assert!(!logs.contains(sig), "a token is in the logs");
        }
    }
}

/// Sign `claims` with the RSA key `pem` under a header of our making.
fn sign_with_header(header: &jsonwebtoken::Header, pem: &str, claims: &str) -> String {
    portcullis::auth::crypto::install();
    let claims: Value = serde_json::from_str(claims).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(header, &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_headers_cannot_widen_what_verifies() {
    let up = Upstream::start("app").await;
    let small: Value = serde_json::from_str(RSA_SMALL_JWK).unwrap();
    let mut rs256_only = jwk(RSA, "rs256-only");
    rs256_only["alg"] = "RS256".into();
    let jwks = JwksServer::start(json!({"keys": [jwk(RSA, "rsa"), rs256_only, small]})).await;
    // Another server, holding the attacker's key: nothing may make the proxy fetch from it.
    let attacker = JwksServer::start(key_set(&[(RSA_B, "rsa")])).await;
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    // The 1024-bit RSA key is left out of the set.
    let (_, body) = proxy.readyz(true).await;
    assert_eq!(body["issuers"]["corp"]["keys"], 2, "{body}");
    let http = client();
    let url = proxy.url("/api");

    let header = |kid: &str, change: &dyn Fn(&mut jsonwebtoken::Header)| {
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_string());
        change(&mut h);
        h
    };
    let later = now() + 120;
    let cases = [
        (
            "a key under 2048 bits",
            token(RSA, "small", json!({})),
            "the token signing key is unknown",
        ),
        (
            "PS256 from a key whose JWK says RS256",
            mint(
                RSA,
                &claims(json!({})),
                Some(Algorithm::PS256),
                Some("rs256-only"),
            )
            .unwrap(),
            "the token algorithm is not allowed",
        ),
        (
            "a crit header",
            sign_with_header(
                &header("rsa", &|h| h.crit = Some(vec!["urn:example:ext".into()])),
                RSA,
                &claims(json!({})),
            ),
            "the token has an unsupported critical header",
        ),
        (
            "jku and x5u naming the attacker's key set",
            sign_with_header(
                &header("attacker-kid", &|h| {
                    h.jku = Some(attacker.jwks_url());
                    h.x5u = Some(attacker.jwks_url());
                }),
                RSA_B,
                &claims(json!({})),
            ),
            "the token signing key is unknown",
        ),
        (
            "an embedded jwk of the attacker's key",
            sign_with_header(
                &header("rsa", &|h| {
                    h.jwk = Some(serde_json::from_value(jwk(RSA_B, "rsa")).unwrap())
                }),
                RSA_B,
                &claims(json!({})),
            ),
            "the token signature is invalid",
        ),
        (
            "nbf in the future",
            token(RSA, "rsa", json!({"nbf": later})),
            "the token is not valid yet",
        ),
        (
            "iat in the future",
            token(RSA, "rsa", json!({"iat": later})),
            "the token was issued in the future",
        ),
        (
            "no exp",
            sign_with_header(&header("rsa", &|_| {}), RSA, &claims(json!({"exp": null}))),
            "the token lacks a required claim",
        ),
    ];
    for (what, token, why) in &cases {
        let a = get(&http, &url, Some(token), &[]).await;
        a.refused(401, "invalid_token", token);
        assert_eq!(a.json()["message"], *why, "{what}");
    }
    assert_eq!(attacker.jwks_fetches(), 0);
    assert_eq!(up.arrivals(), 0);
    // Within the leeway (5s) a slightly early nbf is fine.
    let t = token(RSA, "rsa", json!({"nbf": now() + 2}));
    get(&http, &url, Some(&t), &[]).await.echo();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sources_header_any_case_cookie_and_query_only_when_listed() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(EC256, "ec")])).await;
    let routes = [
        route("header", "/h", "app", "{ issuers: [corp] }"),
        route(
            "cookie",
            "/c",
            "app",
            "{ issuers: [corp], token_from: [header, \"cookie:access_token\"] }",
        ),
        route(
            "query",
            "/q",
            "app",
            "{ issuers: [corp], token_from: [\"query:access_token\"] }",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let t = token(EC256, "ec", json!({}));
    let cookie = format!("theme=dark; access_token={t}");
    let query = format!("?access_token={t}");

    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {t}");
        get(&http, &proxy.url("/h"), None, &[("authorization", &auth)])
            .await
            .echo();
    }
    // The default source is the header alone: a cookie or a query token is no token.
    for (path, headers) in [
        ("/h".to_string(), vec![("cookie", cookie.as_str())]),
        (format!("/h{query}"), vec![]),
        // A query token is ignored unless `query:` is listed.
        (format!("/c{query}"), vec![]),
    ] {
        let a = get(&http, &proxy.url(&path), None, &headers).await;
        a.refused(401, "unauthorized", "");
        assert_eq!(a.challenge(), BARE_CHALLENGE, "{path}");
    }
    let hits = up.hits();
    assert_eq!(hits, 4);
    // `cookie:access_token` listed: the cookie is taken, among other cookies.
    get(&http, &proxy.url("/c"), None, &[("cookie", &cookie)])
        .await
        .echo();
    // The header still comes first on that route: a bad header token is not overridden.
    let a = get(
        &http,
        &proxy.url("/c"),
        Some("abc.def.ghi"),
        &[("cookie", &cookie)],
    )
    .await;
    a.refused(401, "invalid_token", &t);
    // `query:access_token` listed: taken.
    get(&http, &proxy.url(&format!("/q{query}")), None, &[])
        .await
        .echo();
    assert_eq!(up.hits(), hits + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_cannot_be_forged() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(ED, "ed")])).await;
    let routes = [
        route("open", "/open", "app", "none"),
        route(
            "api",
            "/api",
            "app",
            &format!("{{ issuers: [corp], {FORWARD} }}"),
        ),
        route(
            "strip",
            "/strip",
            "app",
            "{ issuers: [corp], forward_claims: { sub: X-User-Id }, strip_authorization: true }",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let forged = [
        ("X-User-Id", "admin"),
        ("x-user-id", "root"),
        ("X-User-Scopes", "admin:all"),
        ("X-Other", "kept"),
    ];

    // `auth: none`: the identity headers are removed, others pass.
    let seen = get(&http, &proxy.url("/open"), None, &forged).await.echo();
    assert!(!seen.has("x-user-id"), "{:?}", seen.headers);
    assert!(!seen.has("x-user-scopes"), "{:?}", seen.headers);
    assert_eq!(seen.header("x-other").as_deref(), Some("kept"));

    // A protected route: replaced by the verified values, exactly one of each.
    let t = token(ED, "ed", json!({"sub": "alice", "scope": "orders:read"}));
    let seen = get(&http, &proxy.url("/api"), Some(&t), &forged)
        .await
        .echo();
    assert_eq!(seen.header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-user-scopes").as_deref(), Some("orders:read"));
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {t}")));

    // A token without the claim: the forged header is gone, not kept.
    let t = token(ED, "ed", json!({"sub": "bob", "scope": null}));
    let seen = get(&http, &proxy.url("/api"), Some(&t), &forged)
        .await
        .echo();
    assert_eq!(seen.header("x-user-id").as_deref(), Some("bob"));
    assert!(!seen.has("x-user-scopes"), "{:?}", seen.headers);

    // strip_authorization: the upstream never sees the token.
    let seen = get(&http, &proxy.url("/strip"), Some(&t), &forged)
        .await
        .echo();
    assert!(!seen.has("authorization"), "{:?}", seen.headers);
    assert_eq!(seen.header("x-user-id").as_deref(), Some("bob"));
    // Another route's identity header is still no client's to send.
    assert!(!seen.has("x-user-scopes"), "{:?}", seen.headers);
}

/// CGI, WSGI, Rack and PHP read `x_user_id` as `X-User-Id` (`HTTP_X_USER_ID`): an identity
/// header spelled with `_` must not reach the upstream beside the real one, under either
/// setting of `server.headers_with_underscores`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_cannot_be_forged_with_underscores() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(ED, "ed")])).await;
    let routes = [
        route("open", "/open", "app", "none"),
        route(
            "api",
            "/api",
            "app",
            &format!("{{ issuers: [corp], {FORWARD} }}"),
        ),
    ]
    .concat();
    let body = config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes);
    let forged = [
        ("x_user_id", "mallory"),
        ("X_User-Id", "mallory"),
        ("x-user_scopes", "admin:all"),
        ("X_USER_SCOPES", "admin:all"),
        ("x_other", "plain"),
    ];
    let t = token(ED, "ed", json!({"sub": "alice", "scope": "orders:read"}));
    for (setting, plain_passes) in [("", false), ("headers_with_underscores: allow", true)] {
        let mut builder = Proxy::builder(&body);
        if !setting.is_empty() {
            builder = builder.server(setting);
        }
        let proxy = builder.start().await;
        wait_for_keys(&proxy, "corp").await;
        let http = client();
        for (path, token) in [("/open", None), ("/api", Some(t.as_str()))] {
            let seen = get(&http, &proxy.url(path), token, &forged).await.echo();
            let mut spelled: Vec<&str> = seen
                .headers
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| k.replace('_', "-").starts_with("x-user-"))
                .collect();
            spelled.sort_unstable();
            let want: &[&str] = if token.is_some() {
                &["x-user-id", "x-user-scopes"]
            } else {
                &[]
            };
            assert_eq!(spelled, want, "{path} {setting:?}: {:?}", seen.headers);
            if token.is_some() {
                assert_eq!(seen.header("x-user-id").as_deref(), Some("alice"));
                assert_eq!(seen.header("x-user-scopes").as_deref(), Some("orders:read"));
            }
            assert_eq!(seen.has("x_other"), plain_passes, "{path} {setting:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_picked_up_on_the_first_unknown_kid() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "key-a")])).await;
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "2s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    get(
        &http,
        &proxy.url("/api"),
        Some(&token(RSA, "key-a", json!({}))),
        &[],
    )
    .await
    .echo();
    assert_eq!(jwks.jwks_fetches(), 1);

    // The provider rotates to key B; the first token signed with it gets through.
    jwks.set_keys(key_set(&[(RSA_B, "key-b")]));
    get(
        &http,
        &proxy.url("/api"),
        Some(&token(RSA_B, "key-b", json!({}))),
        &[],
    )
    .await
    .echo();
    assert_eq!(jwks.jwks_fetches(), 2, "exactly one fetch for the new kid");

    // Key A left the set: a token of A never seen before is refused, and within
    // jwks_min_refresh that unknown kid causes no further fetch.
    let a = get(
        &http,
        &proxy.url("/api"),
        Some(&token(RSA, "key-a", json!({"sub": "after-rotation"}))),
        &[],
    )
    .await;
    a.refused(401, "invalid_token", "");
    assert_eq!(a.json()["message"], "the token signing key is unknown");
    get(
        &http,
        &proxy.url("/api"),
        Some(&token(RSA_B, "key-b", json!({}))),
        &[],
    )
    .await
    .echo();
    assert_eq!(jwks.jwks_fetches(), 2);
    assert_eq!(
        proxy
            .metric(FETCHES, &[("issuer", "corp"), ("result", "success")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_new_kid_all_wait_for_the_one_fetch() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "key-a")])).await;
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    assert_eq!(jwks.jwks_fetches(), 1);

    // The provider rotates; then many clients at once bring tokens of the new key (each a
    // different token, so the cache cannot help). None may be refused: those that do not
    // ask for the fetch wait for it.
    jwks.set_keys(key_set(&[(RSA, "key-a"), (EC256, "key-b")]));
    jwks.set_delay(Duration::from_millis(100));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = proxy.url("/api");
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            let t = token(EC256, "key-b", json!({"sub": format!("user-{i}")}));
            tokio::spawn(async move { get(&http, &url, Some(&t), &[]).await })
        })
        .collect();
    let mut refused = Vec::new();
    for answer in clients {
        let a = answer.await.unwrap();
        if a.status != 200 {
            refused.push(format!("{}: {}", a.status, a.body));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 50 refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    assert_eq!(jwks.jwks_fetches(), 2);
    assert_eq!(up.hits(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_min_refresh() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(EC256, "ec")])).await;
    let min_refresh = Duration::from_secs(5);
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let initial = jwks.jwks_fetches();
    assert_eq!(initial, 1);
    // A slow provider, so that the flood arrives while its one fetch is under way.
    jwks.set_delay(Duration::from_millis(200));

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let url = proxy.url("/api");
    let started = Instant::now();
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            let kid = format!("kid-{i}-{}", fastrand::u64(..));
            let t = token(EC256, &kid, json!({}));
            tokio::spawn(async move { get(&http, &url, Some(&t), &[]).await })
        })
        .collect();
    for answer in flood {
        let a = answer.await.unwrap();
        a.refused(401, "invalid_token", "");
        assert_eq!(a.json()["message"], "the token signing key is unknown");
    }
    let elapsed = started.elapsed();
    // Give a fetch asked for at the very end the time to show up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let extra = jwks.jwks_fetches() - initial;
    let allowed = 1 + (elapsed.as_millis() / min_refresh.as_millis()) as usize;
    assert!(
        (1..=allowed).contains(&extra),
        "{extra} fetches for 200 unknown kids in {elapsed:?} (allowed 1..={allowed})"
    );
    assert_eq!(
        proxy
            .metric(FETCHES, &[("issuer", "corp"), ("result", "success")])
            .await as usize,
        initial + extra
    );
    // The proxy still serves good tokens, and none of the flood reached the upstream.
    assert_eq!(up.arrivals(), 0);
    get(&http, &url, Some(&token(EC256, "ec", json!({}))), &[])
        .await
        .echo();
    assert_eq!(up.arrivals(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_or_slow_last_good_keys_keep_serving() {
    let up = Upstream::start("app").await;
    let mut jwks = JwksServer::start(key_set(&[(RSA, "rsa")])).await;
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(
        &up,
        &issuer("corp", &jwks, "300ms", "100ms"),
        &routes,
    ))
    .await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let url = proxy.url("/api");
    get(&http, &url, Some(&token(RSA, "rsa", json!({}))), &[])
        .await
        .echo();
    assert_eq!(proxy.metric(STALE, &[("issuer", "corp")]).await, 0.0);
    let corp_errors = [("issuer", "corp"), ("result", "error")];
    assert_eq!(proxy.metric(FETCHES, &corp_errors).await, 0.0);

    // Down: background refreshes fail; the last good keys keep serving, and both /readyz
    // and the metrics say so.
    jwks.stop().await;
    proxy.wait_metric(STALE, &[("issuer", "corp")], 1.0).await;
    let errors = proxy.metric(FETCHES, &corp_errors).await;
    assert!(errors >= 1.0, "{errors}");
    let (status, body) = proxy.readyz(true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"]["corp"]["stale"], true, "{body}");
    assert_eq!(body["issuers"]["corp"]["keys"], 1, "{body}");
    // A token never seen before (so not from the cache) verifies against the kept keys.
    get(
        &http,
        &url,
        Some(&token(RSA, "rsa", json!({"sub": "carol"}))),
        &[],
    )
    .await
    .echo();
    eventually("more failed fetches", Duration::from_secs(5), || async {
        let now = proxy.metric(FETCHES, &corp_errors).await;
        if now > errors {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    })
    .await;

    // Back: stale clears.
    jwks.restart().await;
    proxy.wait_metric(STALE, &[("issuer", "corp")], 0.0).await;
    let (_, body) = proxy.readyz(true).await;
    assert_eq!(body["issuers"]["corp"]["stale"], false, "{body}");

    // Slower than fetch_timeout (500ms) is as good as down.
    jwks.set_delay(Duration::from_millis(1500));
    proxy.wait_metric(STALE, &[("issuer", "corp")], 1.0).await;
    get(
        &http,
        &url,
        Some(&token(RSA, "rsa", json!({"sub": "dave"}))),
        &[],
    )
    .await
    .echo();
    jwks.set_delay(Duration::ZERO);
    proxy.wait_metric(STALE, &[("issuer", "corp")], 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_at_start_is_a_503_until_keys_arrive() {
    let up = Upstream::start("app").await;
    let mut jwks = JwksServer::start(key_set(&[(EC384, "ec384")])).await;
    jwks.stop().await;
    let routes = [
        route("open", "/open", "app", "none"),
        route("api", "/api", "app", "{ issuers: [corp] }"),
    ]
    .concat();
    // The node waits for this issuer's keys only because `readiness` says so.
    let proxy = Proxy::start(&format!(
        "readiness: {{ require_issuers: [corp] }}\n{}",
        config(&up, &issuer("corp", &jwks, "60s", "200ms"), &routes)
    ))
    .await;
    let http = client();
    let t = token(EC384, "ec384", json!({}));
    wait_metric_at_least(
        &proxy,
        FETCHES,
        &[("issuer", "corp"), ("result", "error")],
        1.0,
    )
    .await;

    let a = get(&http, &proxy.url("/api"), Some(&t), &[]).await;
    a.refused(503, "keys_unavailable", &t);
    assert_eq!(a.headers["retry-after"], "1");
    let (status, body) = proxy.readyz(true).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["issuers"]["corp"]["keys"], 0, "{body}");
    assert!(
        body["not_ready"].to_string().contains("issuer `corp`"),
        "{body}"
    );
    // Routes that do not need the provider serve.
    get(&http, &proxy.url("/open"), None, &[]).await.echo();
    assert_eq!(up.hits(), 1);

    jwks.restart().await;
    eventually("the route to recover", Duration::from_secs(10), || async {
        let a = get(&http, &proxy.url("/api"), Some(&t), &[]).await;
        if a.status == 200 {
            Ok(())
        } else {
            Err(format!("{}: {}", a.status, a.body))
        }
    })
    .await;
    assert_eq!(up.hits(), 2);
    let (status, body) = proxy.readyz(true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"]["corp"]["stale"], false, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_keys_and_refuses_a_document_naming_another_issuer() {
    let up = Upstream::start("app").await;
    let good = JwksServer::start(key_set(&[(EC256, "ec")])).await;
    let liar = JwksServer::start(key_set(&[(EC256, "ec")])).await;
    liar.set_discovery_issuer("https://someone-else.example.com");
    let discovered = |name: &str, server: &JwksServer| {
        format!(
            "  - name: {name}\n    issuer: \"{}\"\n    discovery: true\n    audiences: [{AUD}]\n    fetch_timeout: 500ms\n    jwks_refresh: 60s\n    jwks_min_refresh: 200ms\n",
            server.base_url()
        )
    };
    let issuers = format!("{}{}", discovered("good", &good), discovered("liar", &liar));
    let routes = [
        route("good", "/good", "app", "{ issuers: [good] }"),
        route("liar", "/liar", "app", "{ issuers: [liar] }"),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &issuers, &routes)).await;
    wait_for_keys(&proxy, "good").await;
    let http = client();

    let t = token(EC256, "ec", json!({"iss": good.base_url()}));
    get(&http, &proxy.url("/good"), Some(&t), &[]).await.echo();
    assert_eq!(good.fetches(DISCOVERY_PATH), 1);
    assert_eq!(good.jwks_fetches(), 1);

    // The liar's document names another issuer: its jwks_uri is never followed.
    wait_for_fetches(&liar, DISCOVERY_PATH, 2).await;
    let t = token(EC256, "ec", json!({"iss": liar.base_url()}));
    let a = get(&http, &proxy.url("/liar"), Some(&t), &[]).await;
    a.refused(503, "keys_unavailable", &t);
    assert_eq!(liar.jwks_fetches(), 0);
    // Not named in `readiness`: the node stays ready, and says what it lacks.
    let (status, body) = proxy.readyz(true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"]["liar"]["keys"], 0, "{body}");
    assert_eq!(body["issuers"]["liar"]["required"], false, "{body}");
    assert!(
        !body["not_ready"].to_string().contains("issuer `good`"),
        "{body}"
    );
    wait_metric_at_least(
        &proxy,
        FETCHES,
        &[("issuer", "liar"), ("result", "error")],
        2.0,
    )
    .await;
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_set_refuses_its_cached_tokens() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "key-a"), (RSA_B, "key-b")])).await;
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "2s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let url = proxy.url("/api");
    let a = token(RSA, "key-a", json!({}));
    let b = token(RSA_B, "key-b", json!({}));
    for t in [&a, &a, &b] {
        get(&http, &url, Some(t), &[]).await.echo();
    }
    assert_eq!(proxy.metric(CACHE, &[("result", "hit")]).await, 1.0);

    // Key A leaves the set; a token naming a kid never seen makes the proxy refetch.
    jwks.set_keys(key_set(&[(RSA_B, "key-b")]));
    let unknown = token(RSA_B, "key-new", json!({}));
    get(&http, &url, Some(&unknown), &[])
        .await
        .refused(401, "invalid_token", &unknown);
    assert_eq!(jwks.jwks_fetches(), 2);

    // The cached token of key A is refused now; B's still passes.
    let r = get(&http, &url, Some(&a), &[]).await;
    r.refused(401, "invalid_token", &a);
    assert_eq!(r.json()["message"], "the token signing key is unknown");
    get(&http, &url, Some(&b), &[]).await.echo();
    assert_eq!(up.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_drives_the_background_refresh() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "key-a"), (EC256, "key-b")])).await;
    jwks.set_max_age(Some(1));
    let routes = route("api", "/api", "app", "{ issuers: [corp] }");
    // jwks_refresh is a minute: only the 1s max-age can make the proxy fetch again soon.
    let proxy = Proxy::start(&config(
        &up,
        &issuer("corp", &jwks, "60s", "200ms"),
        &routes,
    ))
    .await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let a = token(RSA, "key-a", json!({}));
    get(&http, &proxy.url("/api"), Some(&a), &[]).await.echo();

    // Key A leaves; no request asks for anything, yet the next refresh drops it.
    jwks.set_keys(key_set(&[(EC256, "key-b")]));
    let fetched = jwks.jwks_fetches();
    wait_for_fetches(&jwks, JWKS_PATH, fetched + 1).await;
    eventually("key A to be dropped", Duration::from_secs(5), || async {
        let (_, body) = proxy.readyz(true).await;
        if body["issuers"]["corp"]["keys"] == 1 {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    get(&http, &proxy.url("/api"), Some(&a), &[])
        .await
        .refused(401, "invalid_token", &a);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_cache_are_counted() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(EC256, "ec")])).await;
    let routes = [
        route("open", "/open", "app", "none"),
        route(
            "api",
            "/api",
            "app",
            "{ issuers: [corp], require_scopes: [\"orders:read\"] }",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    let url = proxy.url("/api");
    let t = token(EC256, "ec", json!({}));
    for _ in 0..3 {
        get(&http, &url, Some(&t), &[]).await.echo();
    }
    let m = proxy.metrics().await;
    assert_eq!(m.get(CACHE, &[("result", "miss")]), Some(1.0));
    assert_eq!(m.get(CACHE, &[("result", "hit")]), Some(2.0));
    let allowed = [("route", "api"), ("result", "allowed"), ("reason", "ok")];
    assert_eq!(m.get(DECISIONS, &allowed), Some(3.0));

    get(&http, &url, None, &[]).await;
    let expired = token(
        EC256,
        "ec",
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    );
    get(&http, &url, Some(&expired), &[]).await;
    get(&http, &url, Some(&expired), &[]).await;
    let narrow = token(EC256, "ec", json!({"scope": "profile"}));
    get(&http, &url, Some(&narrow), &[]).await;
    get(&http, &proxy.url("/open"), None, &[]).await.echo();

    let m = proxy.metrics().await;
    let denied = |reason| [("route", "api"), ("result", "denied"), ("reason", reason)];
    assert_eq!(m.get(DECISIONS, &denied("missing_token")), Some(1.0));
    assert_eq!(m.get(DECISIONS, &denied("expired")), Some(2.0));
    assert_eq!(m.get(DECISIONS, &denied("insufficient_scope")), Some(1.0));
    assert_eq!(m.get(DECISIONS, &allowed), Some(3.0));
    // `auth: none` makes no decision.
    assert!(!m.has(DECISIONS, &[("route", "open")]), "{}", m.text());
    // An expired token is never cached: both were misses. The narrow token verified, so it
    // was a miss too.
    assert_eq!(m.get(CACHE, &[("result", "miss")]), Some(4.0));
    assert_eq!(m.get(CACHE, &[("result", "hit")]), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_keys_of_unchanged_issuers() {
    let up = Upstream::start("app").await;
    let mut jwks = JwksServer::start(key_set(&[(RSA, "rsa")])).await;
    let other = JwksServer::start(key_set(&[(ED, "ed")])).await;
    let corp = issuer("corp", &jwks, "60s", "5s");
    let api = route("api", "/api", "app", "{ issuers: [corp] }");
    let proxy = Proxy::start(&config(&up, &corp, &api)).await;
    wait_for_keys(&proxy, "corp").await;
    let http = client();
    get(
        &http,
        &proxy.url("/api"),
        Some(&token(RSA, "rsa", json!({}))),
        &[],
    )
    .await
    .echo();
    assert_eq!(jwks.jwks_fetches(), 1);

    // Add a route on the same issuer, and a new issuer (which must fetch its own keys).
    let more = route("more", "/more", "app", "{ issuers: [corp, other] }");
    let other_iss = "https://other.example.com/";
    let issuers = format!(
        "{corp}{}",
        issuer_for("other", other_iss, &other, "60s", "5s")
    );
    proxy.write_config(&config(&up, &issuers, &format!("{api}{more}")));
    proxy.wait_metric(GENERATION, &[], 2.0).await;
    wait_for_fetches(&other, JWKS_PATH, 1).await;
    wait_for_keys(&proxy, "other").await;
    assert_eq!(jwks.jwks_fetches(), 1, "the unchanged issuer fetched again");

    // The provider goes down: tokens never seen before still verify, on both routes.
    jwks.stop().await;
    for path in ["/api", "/more"] {
        let t = token(RSA, "rsa", json!({"sub": format!("fresh{path}")}));
        get(&http, &proxy.url(path), Some(&t), &[]).await.echo();
    }
    let t = token(ED, "ed", json!({"iss": other_iss}));
    get(&http, &proxy.url("/more"), Some(&t), &[]).await.echo();
    let (status, body) = proxy.readyz(true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"]["corp"]["keys"], 1, "{body}");
    assert_eq!(jwks.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_mints_a_token_that_inspect_decodes_and_the_proxy_accepts() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let minted = run(&[
        "token",
        "mint",
        "--key",
        EC256_PATH,
        "--claims",
        r#"{"sub":"x"}"#,
        "--kid",
        "k",
    ]);
    let minted = minted.trim();
    assert_eq!(minted.split('.').count(), 3, "{minted}");
    let seen: Value = serde_json::from_str(&run(&["token", "inspect", minted])).unwrap();
    assert_eq!(seen["header"]["alg"], "ES256", "{seen}");
    assert_eq!(seen["header"]["kid"], "k", "{seen}");
    assert_eq!(seen["claims"]["sub"], "x", "{seen}");
    assert!(seen["claims"]["exp"].as_u64().unwrap() > now(), "{seen}");
    assert_eq!(seen["verified"], false, "{seen}");

    // A token minted by the CLI is a real one: the proxy accepts it with the public key.
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(EC256, "k")])).await;
    let routes = route(
        "api",
        "/api",
        "app",
        "{ issuers: [corp], forward_claims: { sub: X-User-Id } }",
    );
    let proxy = Proxy::start(&config(&up, &issuer("corp", &jwks, "60s", "5s"), &routes)).await;
    wait_for_keys(&proxy, "corp").await;
    let claims = json!({"sub": "cli-user", "iss": ISS, "aud": AUD}).to_string();
    let minted = run(&[
        "token", "mint", "--key", EC256_PATH, "--claims", &claims, "--kid", "k",
    ]);
    let seen = get(&client(), &proxy.url("/api"), Some(minted.trim()), &[])
        .await
        .echo();
    assert_eq!(seen.header("x-user-id").as_deref(), Some("cli-user"));
}

/// Issue 13: `POST` open and `DELETE` behind a token on the same path. The method override
/// headers Symfony and Laravel honour on `POST` must not walk around the `DELETE` policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_cannot_walk_around_a_method_policy() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let routes = "  - name: orders-write\n    match: { path_prefix: /orders, methods: [GET, POST] }\n    upstream: app\n    auth: none\n  - name: orders-delete\n    match: { path_prefix: /orders, methods: [DELETE] }\n    upstream: app\n    auth: { issuers: [corp] }\n";
    let body = config(&up, &issuer("corp", &jwks, "60s", "5s"), routes);
    let http = client();
    let send =
        |proxy: &Proxy, method: reqwest::Method, token: Option<&str>, headers: &[(&str, &str)]| {
            let mut req = http.request(method, proxy.url("/orders/7"));
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send()
        };
    let names = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];

    // Default, `strip`: the POST passes as a POST, and the backend never sees the override.
    let proxy = Proxy::start(&body).await;
    for name in names {
        let resp = send(&proxy, reqwest::Method::POST, None, &[(name, "DELETE")])
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.method, "POST");
        assert!(
            !echo.has(name),
            "{name} reached the upstream: {:?}",
            echo.headers
        );
    }
    // Laravel reads a `_method` query parameter (as PHP spells its key) on POST the same
    // way: it cannot be stripped as a header is, so the POST is refused.
    for query in ["_method=DELETE", "a=1&%5Fmethod=delete", ".method=DELETE"] {
        let url = proxy.url(&format!("/orders/7?{query}"));
        let resp = http.post(url).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{query}");
    }
    let resp = http
        .get(proxy.url("/orders/7?_method=DELETE"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a GET is not taken as another method");
    assert_eq!(up.hits(), names.len() + 1);
    drop(proxy);

    // `honor`: the override is the method routed on, its policy applies, and it is forwarded.
    let proxy = Proxy::builder(&body)
        .server("method_override_headers: honor")
        .start()
        .await;
    wait_for_keys(&proxy, "corp").await;
    let hits = up.hits();
    for name in names {
        let resp = send(&proxy, reqwest::Method::POST, None, &[(name, "DELETE")])
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{name}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    let resp = http
        .post(proxy.url("/orders/7?_method=delete"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the query parameter is honoured too");
    let good = token(RSA, "k1", json!({}));
    let resp = send(
        &proxy,
        reqwest::Method::POST,
        Some(&good),
        &[("x-http-method", "delete")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.header("x-http-method").as_deref(), Some("delete"));
    // Overrides that disagree or are no method; and one on a GET, which a backend may take
    // as either method, while the two land on different routes.
    for (method, headers) in [
        (
            reqwest::Method::POST,
            &[
                ("x-http-method-override", "DELETE"),
                ("x-method-override", "PUT"),
            ][..],
        ),
        (
            reqwest::Method::POST,
            &[("x-http-method-override", "DE LETE")],
        ),
        (reqwest::Method::POST, &[("x-http-method-override", "")]),
        (
            reqwest::Method::GET,
            &[("x-http-method-override", "DELETE")],
        ),
    ] {
        let resp = send(&proxy, method.clone(), Some(&good), headers)
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{method} {headers:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{method} {headers:?}");
    }
    // Agreeing values pass; a plain POST still needs no token.
    let resp = send(
        &proxy,
        reqwest::Method::POST,
        None,
        &[("x-http-method-override", "PUT"), ("x-http-method", "put")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404, "no route takes PUT");
    let resp = send(&proxy, reqwest::Method::POST, None, &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits(), hits + 2);
}
