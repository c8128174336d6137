//! Opaque access tokens checked by RFC 7662 token introspection, end to end: the real
//! binary, a real introspection endpoint ([`IntrospectionServer`], which counts every call and
//! answers as told), real upstreams.
//!
//! Each test owns its proxy and its endpoint, so call counts and metric values are exact. The
//! last test introspects an opaque token of a real OpenID provider (`support::oidc`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::auth::tools::mint;
use serde_json::{json, Value};

use crate::support::introspection::{IntrospectionServer, Mode};
use crate::support::jwks::key_set;
use crate::support::keys::{RSA, RSA_B};
use crate::support::{client, eventually, pool, Proxy, Upstream};

const CALLS: &str = "portcullis_session_introspections_total";
const CACHE: &str = "portcullis_session_introspection_cache_requests_total";
const ENTRIES: &str = "portcullis_session_introspection_cache_entries";
const CLIENT_ID: &str = "edge proxy";
/// With characters RFC 6749 section 2.3.1 encodes before HTTP Basic.
const SECRET: &str = "s3cret:with&odd=chars";
const SECRET_ENV: &str = "PORTCULLIS_IT_INTROSPECTION_SECRET";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An endpoint for [`CLIENT_ID`] and [`SECRET`], its issuer's key set holding [`RSA`].
async fn endpoint() -> IntrospectionServer {
    IntrospectionServer::start(CLIENT_ID, SECRET, key_set(&[(RSA, "rsa")])).await
}

/// An active answer for `sub` with `scope`, from `idp`'s issuer, expiring in 10 minutes.
fn active(idp: &IntrospectionServer, sub: &str, scope: &str) -> Value {
    json!({
        "active": true, "sub": sub, "scope": scope, "client_id": "app-1",
        "iss": idp.base_url(), "aud": "orders-api", "exp": now() + 600,
        "token_type": "Bearer",
    })
}

/// Issuer `idp` of `server` (JWTs by its key set), introspecting with `settings` (more
/// fields of `introspection:`, each followed by `, `).
fn issuer(server: &IntrospectionServer, settings: &str) -> String {
    format!(
        "  - name: idp\n    issuer: \"{}\"\n    jwks_uri: \"{}\"\n    audiences: [orders-api]\n    introspection: {{ {settings}endpoint: \"{}\", client_id: \"{CLIENT_ID}\", client_secret_env: {SECRET_ENV} }}\n",
        server.base_url(),
        server.jwks_url(),
        server.endpoint()
    )
}

/// Pool `app` on `up`, `issuers`, and route `api` on `/` with policy `auth`.
fn config(up: &Upstream, issuers: &str, auth: &str) -> String {
    format!(
        "upstreams:\n{}issuers:\n{issuers}routes:\n  - name: api\n    match: {{ path_prefix: / }}\n    upstream: app\n    auth: {auth}\n",
        pool("app", &[up.addr().to_string()], &[])
    )
}

async fn start(body: &str) -> Proxy {
    Proxy::builder(body).env(SECRET_ENV, SECRET).start().await
}

/// GET `/orders` with `token` as bearer: status and body.
async fn get(proxy: &Proxy, token: &str) -> (u16, Value) {
    let resp = client()
        .get(proxy.url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The introspection metrics of issuer `idp` now: (active, inactive, error, hit, miss).
async fn counts(proxy: &Proxy) -> [f64; 5] {
    let m = proxy.metrics().await;
    let at = |name, result| {
        m.get(name, &[("issuer", "idp"), ("result", result)])
            .unwrap()
    };
    [
        at(CALLS, "active"),
        at(CALLS, "inactive"),
        at(CALLS, "error"),
        at(CACHE, "hit"),
        at(CACHE, "miss"),
    ]
}

/// An active opaque token passes, found through discovery, with the client's credentials;
/// its claims go upstream and the route's scope, claim and per-user rules apply to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_opaque_token_passes_with_its_claims_and_the_route_policy() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    // Discovery names the endpoint: no `endpoint:` in the config.
    let issuers = format!(
        "  - name: idp\n    issuer: \"{}\"\n    discovery: true\n    audiences: [orders-api]\n    introspection: {{ client_id: \"{CLIENT_ID}\", client_secret_env: {SECRET_ENV} }}\n",
        idp.base_url()
    );
    let auth = "{ issuers: [idp], require_scopes: [orders:read], require_claims: { client_id: app-1 }, forward_claims: { sub: X-User-Id, client_id: X-Client-Id } }";
    let body = config(&up, &issuers, auth).replace(
        "    auth:",
        "    rate_limit: { per_user: { rate: 1/h, burst: 2 } }\n    auth:",
    );
    let proxy = start(&body).await;
    // Every series is there before the first token, at zero.
    assert_eq!(counts(&proxy).await, [0.0; 5]);

    let (alice, bob, reader, other_client) = ("opaque-alice", "opaque-bob", "opaque-r", "opaque-c");
    idp.set_answer(alice, active(&idp, "alice", "orders:read orders:write"));
    idp.set_answer(bob, active(&idp, "bob", "orders:read"));
    idp.set_answer(reader, active(&idp, "carol", "profile"));
    let mut other = active(&idp, "dave", "orders:read");
    other["client_id"] = "app-2".into();
    idp.set_answer(other_client, other);

    // The endpoint is known once discovery ran.
    let seen = eventually("an introspected pass", Duration::from_secs(10), || async {
        let resp = client()
            .get(proxy.url("/orders"))
            .header("authorization", format!("Bearer {alice}"))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => Ok(resp.json::<crate::support::Echo>().await.unwrap()),
            s => Err(format!("{s}: {}", resp.text().await.unwrap())),
        }
    })
    .await;
    assert_eq!(seen.header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-client-id").as_deref(), Some("app-1"));

    let call = idp.calls().pop().unwrap();
    let basic = call.authorization.unwrap();
    assert!(basic.starts_with("Basic "), "{basic}");
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(call.form["token"], alice);
    assert_eq!(call.form["token_type_hint"], "access_token");

    let (status, body) = get(&proxy, reader).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("insufficient_scope"))
    );
    let (status, body) = get(&proxy, other_client).await;
    assert_eq!((status, &body["error"]), (403, &json!("forbidden")));
    // Per-user limit by `sub`: alice's burst of two is spent by her second request; bob has
    // his own bucket.
    assert_eq!(get(&proxy, alice).await.0, 200);
    let (status, body) = get(&proxy, alice).await;
    assert_eq!((status, &body["error"]), (429, &json!("rate_limited")));
    assert_eq!(get(&proxy, bob).await.0, 200);
    // Nothing of the secret in the config file.
    assert!(!std::fs::read_to_string(proxy.config_path())
        .unwrap()
        .contains(SECRET));
}

/// `active: false` is a 401 `invalid_token` saying so; the refusal is remembered for a few
/// seconds (no second call); an active answer the issuer's rules refuse (another `iss`, an
/// audience not accepted, a refresh token) is a 401 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_token_is_a_401() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    let proxy = start(&config(&up, &issuer(&idp, ""), "{ issuers: [idp] }")).await;
    let resp = client()
        .get(proxy.url("/orders"))
        .header("authorization", "Bearer revoked-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["message"], "the token is not active");
    assert_eq!(idp.calls_for("revoked-token"), 1);
    assert_eq!(get(&proxy, "revoked-token").await.0, 401);
    assert_eq!(idp.calls_for("revoked-token"), 1, "the refusal is cached");
    assert_eq!(counts(&proxy).await, [0.0, 1.0, 0.0, 1.0, 1.0]);
    let decisions = proxy
        .metric(
            "portcullis_auth_decisions_total",
            &[("route", "api"), ("reason", "inactive")],
        )
        .await;
    assert_eq!(decisions, 2.0);

    let cases = [
        (
            "other-iss",
            json!({"iss": "https://elsewhere.example"}),
            "the token issuer is not accepted",
        ),
        (
            "other-aud",
            json!({"aud": ["billing"]}),
            "the token is not for this audience",
        ),
        (
            "refresh",
            json!({"token_type": "refresh_token"}),
            "the token is not active",
        ),
        (
            "expired",
            json!({"exp": now() - 3600}),
            "the token has expired",
        ),
    ];
    for (token, change, message) in cases {
        let mut answer = active(&idp, "alice", "orders:read");
        for (k, v) in change.as_object().unwrap() {
            answer[k] = v.clone();
        }
        idp.set_answer(token, answer);
        let (status, body) = get(&proxy, token).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some(message)),
            "{token}"
        );
    }
    assert_eq!(up.hits(), 0);
}

/// An active answer is cached: the second request makes no call. It is trusted no longer
/// than `cache_ttl`: after it, a request calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_until_cache_ttl() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    let proxy = start(&config(
        &up,
        &issuer(&idp, "cache_ttl: 1s, "),
        "{ issuers: [idp] }",
    ))
    .await;
    idp.set_answer("tok-1", active(&idp, "alice", "orders:read"));
    assert_eq!(get(&proxy, "tok-1").await.0, 200);
    assert_eq!(get(&proxy, "tok-1").await.0, 200);
    assert_eq!(
        idp.calls_for("tok-1"),
        1,
        "the second request used the cache"
    );
    assert_eq!(counts(&proxy).await, [1.0, 0.0, 0.0, 1.0, 1.0]);
    assert_eq!(proxy.metric(ENTRIES, &[("issuer", "idp")]).await, 1.0);
    eventually(
        "a call after cache_ttl",
        Duration::from_secs(10),
        || async {
            assert_eq!(get(&proxy, "tok-1").await.0, 200);
            match idp.calls_for("tok-1") {
                1 => Err("still cached".to_string()),
                n => Ok(n),
            }
        },
    )
    .await;
}

/// Fifty requests with one new token at once make exactly one call: the others wait for its
/// answer and all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_with_a_new_token_make_one_call() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    let proxy = start(&config(&up, &issuer(&idp, ""), "{ issuers: [idp] }")).await;
    idp.set_answer("burst", active(&idp, "alice", "orders:read"));
    // A slow answer, so that every request arrives while the call is in flight.
    idp.set_delay(Duration::from_millis(500));
    let http = client();
    let requests = (0..50).map(|_| {
        let http = http.clone();
        let url = proxy.url("/orders");
        tokio::spawn(async move {
            http.get(url)
                .header("authorization", "Bearer burst")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let handles: Vec<_> = requests.collect();
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(idp.calls_for("burst"), 1);
    assert_eq!(up.hits(), 50);
}

/// An endpoint that answers 500, times out, answers something that is not RFC 7662's,
/// refuses our credentials, redirects or is down gives 503 `introspection_unavailable`: never a pass,
/// never a 401. A failure is not cached: once the endpoint is back, the token passes. Neither
/// the token nor the secret reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_a_503_never_a_pass() {
    let up = Upstream::start("app").await;
    let mut idp = endpoint().await;
    let proxy = start(&config(
        &up,
        &issuer(&idp, "timeout: 300ms, "),
        "{ issuers: [idp] }",
    ))
    .await;
    let token = "good-but-unchecked-token";
    idp.set_answer(token, active(&idp, "alice", "orders:read"));
    let unavailable = |(status, body): (u16, Value)| {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "introspection_unavailable");
    };
    let mut errors = 0.0;
    for mode in [
        Mode::Status(500),
        Mode::Status(401),
        Mode::Body("not json".into()),
        Mode::Body(json!({"sub": "alice"}).to_string()),
        Mode::Body(json!({"active": "yes"}).to_string()),
        Mode::Body(json!({"active": true, "exp": "tomorrow"}).to_string()),
    ] {
        idp.set_mode(mode.clone());
        unavailable(get(&proxy, token).await);
        errors += 1.0;
        assert_eq!(counts(&proxy).await[2], errors, "{mode:?}");
    }
    // A redirect is not followed (the call carries the token and the secret), even to a
    // place that would answer.
    idp.set_mode(Mode::Redirect("/elsewhere".into()));
    unavailable(get(&proxy, token).await);
    assert_eq!(
        idp.calls_for(token),
        7,
        "the redirect's target was never called"
    );
    idp.set_mode(Mode::Normal);
    idp.set_delay(Duration::from_secs(3));
    unavailable(get(&proxy, token).await);
    idp.set_delay(Duration::ZERO);
    idp.stop().await;
    unavailable(get(&proxy, token).await);
    assert_eq!(up.hits(), 0);
    idp.restart().await;
    assert_eq!(get(&proxy, token).await.0, 200);
    // A refusal carries Retry-After, like the other provider-side 503.
    idp.stop().await;
    let resp = client()
        .get(proxy.url("/orders"))
        .header("authorization", "Bearer another-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let log = proxy.stderr();
    assert!(log.contains("token introspection failed"), "{log}");
    for secret in [token, "another-token", SECRET] {
        assert!(!log.contains(secret), "the log shows `{secret}`: {log}");
    }
}

/// The cache holds at most `max_tokens` answers: past it, those nearest their end go first,
/// and a token whose answer went is introspected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    let proxy = start(&config(
        &up,
        &issuer(&idp, "max_tokens: 4, cache_ttl: 1h, "),
        "{ issuers: [idp] }",
    ))
    .await;
    let tokens: Vec<String> = (0..12).map(|i| format!("bounded-{i}")).collect();
    for (i, token) in tokens.iter().enumerate() {
        // Later tokens end later: the earliest go first.
        let mut answer = active(&idp, "alice", "orders:read");
        answer["exp"] = (now() + 600 + 60 * i as u64).into();
        idp.set_answer(token, answer);
        assert_eq!(get(&proxy, token).await.0, 200);
    }
    let held = proxy.metric(ENTRIES, &[("issuer", "idp")]).await;
    assert!((1.0..=4.0).contains(&held), "{held} answers held");
    // The last one is held; the first went.
    assert_eq!(get(&proxy, &tokens[11]).await.0, 200);
    assert_eq!(idp.calls_for(&tokens[11]), 1);
    assert_eq!(get(&proxy, &tokens[0]).await.0, 200);
    assert_eq!(
        idp.calls_for(&tokens[0]),
        2,
        "evicted, so introspected again"
    );
}

/// A JWT on a route with introspection is verified as a JWT, never introspected: a good one
/// passes and a forged one is refused for its signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_on_the_same_route_goes_the_jwt_path() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    let proxy = start(&config(
        &up,
        &issuer(&idp, ""),
        "{ issuers: [idp], forward_claims: { sub: X-User-Id } }",
    ))
    .await;
    let claims = json!({
        "iss": idp.base_url(), "aud": "orders-api", "sub": "jwt-user", "exp": now() + 600,
    })
    .to_string();
    let good = mint(RSA, &claims, None, Some("rsa")).unwrap();
    let forged = mint(RSA_B, &claims, None, Some("rsa")).unwrap();
    let seen = eventually("the JWT to pass", Duration::from_secs(10), || async {
        let resp = client()
            .get(proxy.url("/orders"))
            .header("authorization", format!("Bearer {good}"))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => Ok(resp.json::<crate::support::Echo>().await.unwrap()),
            s => Err(format!("{s}: {}", resp.text().await.unwrap())),
        }
    })
    .await;
    assert_eq!(seen.header("x-user-id").as_deref(), Some("jwt-user"));
    let (status, body) = get(&proxy, &forged).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("the token signature is invalid"))
    );
    assert!(idp.calls().is_empty(), "{:?}", idp.calls());
    assert_eq!(
        counts(&proxy).await[4],
        0.0,
        "no introspection cache lookup"
    );
}

/// A reload that leaves the issuer as it was keeps the cached answers; one that changes its
/// `introspection:` starts a new cache. Either way, JWTs keep passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_survives_a_reload_that_leaves_the_issuer_alone() {
    let up = Upstream::start("app").await;
    let idp = endpoint().await;
    let issuers = issuer(&idp, "");
    let proxy = start(&config(&up, &issuers, "{ issuers: [idp] }")).await;
    idp.set_answer("kept", active(&idp, "alice", "orders:read"));
    assert_eq!(get(&proxy, "kept").await.0, 200);
    let claims = json!({
        "iss": idp.base_url(), "aud": "orders-api", "sub": "jwt-user", "exp": now() + 600,
    });
    let jwt = mint(RSA, &claims.to_string(), None, Some("rsa")).unwrap();
    eventually("the JWT to pass", Duration::from_secs(10), || async {
        match get(&proxy, &jwt).await {
            (200, _) => Ok(()),
            (s, body) => Err(format!("{s}: {body}")),
        }
    })
    .await;
    let reload = || proxy.reload_ok();
    // Another route: the issuer is unchanged.
    let more = format!(
        "{}  - name: other\n    match: {{ path_prefix: /other }}\n    upstream: app\n    auth: none\n",
        config(&up, &issuers, "{ issuers: [idp] }")
    );
    proxy.write_config(&more);
    reload().await;
    assert_eq!(get(&proxy, "kept").await.0, 200);
    assert_eq!(idp.calls_for("kept"), 1, "the answer survived the reload");
    // A new cache_ttl: a new cache.
    proxy.write_config(&config(
        &up,
        &issuer(&idp, "cache_ttl: 30s, "),
        "{ issuers: [idp] }",
    ));
    reload().await;
    // The rebuilt issuer serves the keys it had at once.
    assert_eq!(get(&proxy, &jwt).await.0, 200);
    assert_eq!(get(&proxy, "kept").await.0, 200);
    assert_eq!(idp.calls_for("kept"), 2);
    // Without `introspection:` the issuer's series go, and an opaque token is only a
    // malformed JWT.
    let plain = format!(
        "  - name: idp\n    issuer: \"{}\"\n    jwks_uri: \"{}\"\n    audiences: [orders-api]\n",
        idp.base_url(),
        idp.jwks_url()
    );
    proxy.write_config(&config(&up, &plain, "{ issuers: [idp] }"));
    reload().await;
    let m = proxy.metrics().await;
    for (name, result) in [(CALLS, "active"), (CALLS, "error"), (CACHE, "hit")] {
        let labels = [("issuer", "idp"), ("result", result)];
        assert!(!m.has(name, &labels), "{name}{labels:?} left behind");
    }
    assert!(!m.has(ENTRIES, &[("issuer", "idp")]));
    let (status, body) = get(&proxy, "kept").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("the token is malformed"))
    );
    assert_eq!(idp.calls_for("kept"), 2);
}

/// An opaque access token from a real OpenID provider (Node's `oidc-provider`, which issues
/// opaque tokens to a client registered for them) is introspected by Portcullis at the
/// endpoint the provider's discovery document names, as the provider's own confidential
/// client: the user's claims go upstream, the route's scope applies, the answer is cached, and
/// once the provider revokes the token it is refused within `cache_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_token_from_a_real_provider_is_introspected() {
    use crate::support::browser::Browser;
    use crate::support::oidc::{Provider, Rp, RESOURCE};
    const CALLBACK: &str = "http://127.0.0.1:9/callback";
    let provider = Provider::start(json!({
        "clients": [
            {
                "client_id": "web", "client_secret": "web-secret",
                "redirect_uris": [CALLBACK], "access_token_format": "opaque",
            },
            { "client_id": "edge proxy", "client_secret": SECRET, "grant_types": [] },
        ],
    }))
    .await;
    let web = Rp::confidential("web", "web-secret", CALLBACK);
    let login = provider
        .login(&Browser::new(), &web, "openid profile email api:read")
        .await;
    let token = login.tokens.access_token.clone();
    assert_eq!(token.matches('.').count(), 0, "opaque, not a JWT: {token}");

    let up = Upstream::start("app").await;
    let issuers = format!(
        "  - name: idp\n    issuer: \"{}\"\n    discovery: true\n    audiences: [\"{RESOURCE}\"]\n    introspection: {{ client_id: \"{CLIENT_ID}\", client_secret_env: {SECRET_ENV}, cache_ttl: 1s }}\n",
        provider.issuer()
    );
    let auth = "{ issuers: [idp], require_scopes: [api:read], forward_claims: { sub: X-User-Id, email: X-User-Email, client_id: X-Client-Id } }";
    let proxy = start(&config(&up, &issuers, auth)).await;
    let seen = eventually(
        "the opaque token to pass",
        Duration::from_secs(10),
        || async {
            let resp = client()
                .get(proxy.url("/orders"))
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                200 => Ok(resp.json::<crate::support::Echo>().await.unwrap()),
                s => Err(format!("{s}: {}", resp.text().await.unwrap())),
            }
        },
    )
    .await;
    assert_eq!(seen.header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-user-email").as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(seen.header("x-client-id").as_deref(), Some("web"));
    let stats = provider.stats().await;
    assert_eq!(
        (stats.introspections, stats.introspections_active),
        (1, 1),
        "{stats:?}"
    );
    // Revoked at the provider: refused (401 inactive) once the cached answer is over.
    assert_eq!(provider.revoke(&web, &token).await, 200);
    eventually(
        "the revoked token to be refused",
        Duration::from_secs(10),
        || async {
            match get(&proxy, &token).await {
                (401, body) if body["message"] == "the token is not active" => Ok(()),
                (s, body) => Err(format!("{s}: {body}")),
            }
        },
    )
    .await;
    let m = proxy.metrics().await;
    let calls = |result| {
        m.get(CALLS, &[("issuer", "idp"), ("result", result)])
            .unwrap()
    };
    assert!(calls("active") >= 1.0 && calls("inactive") >= 1.0);
}
