//! Revocation end to end: `POST /revoke` on the admin endpoint of the real binary, bearer
//! tokens of an HMAC issuer minted here, and, for the fleet, two real nodes sharing a real
//! `redis-server`.
//!
//! Every wait is bounded by a generous deadline; nothing asserts how fast a revocation
//! travels beyond it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use portcullis::auth::tools::mint_hmac;
use serde_json::{json, Value};

use crate::support::redis::Redis;
use crate::support::{client, eventually, pool, Proxy, Upstream};

const SECRET: &str = "it-revoke-secret-0123456789abcdef-0123456789";
const SECRET_ENV: &str = "PORTCULLIS_IT_REVOKE_SECRET";
const ISS: &str = "revoke-test";
const DECISIONS: &str = "portcullis_auth_decisions_total";
const REVOCATIONS: &str = "portcullis_session_revocations_total";
const ENTRIES: &str = "portcullis_session_revocation_entries";
const UNPUBLISHED: &str = "portcullis_session_revocations_unpublished";
const SYNC_UP: &str = "portcullis_session_revocation_sync_up";
const SYNC_ERRORS: &str = "portcullis_session_revocation_sync_errors_total";
const CACHE: &str = "portcullis_token_cache_requests_total";
/// How long a revocation may take to reach another node before a test gives up: far above
/// the one second the fleet is meant to take, so a slow machine does not fail it.
const DEADLINE: Duration = Duration::from_secs(15);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token of [`ISS`] for `sub`, issued at `iat` (`None`: no `iat`), with `extra` claims.
fn token(sub: &str, iat: Option<u64>, extra: Value) -> String {
    let mut claims = json!({"iss": ISS, "sub": sub, "exp": now() + 600});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    mint_hmac(
        SECRET.as_bytes(),
        &claims.to_string(),
        Algorithm::HS256,
        None,
    )
    .unwrap()
}

/// Pool `app` on `up`, issuer `legacy` (HMAC), route `api` (`/api`) taking its tokens; `extra`
/// goes first (`cluster:`).
fn config(up: &Upstream, extra: &str, more_routes: &str) -> String {
    format!(
        "{extra}upstreams:\n{}issuers:\n  - name: legacy\n    issuer: {ISS}\n    hmac_secret_env: {SECRET_ENV}\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: app\n    auth: {{ issuers: [legacy] }}\n{more_routes}",
        pool("app", &[up.addr().to_string()], &[])
    )
}

async fn start(body: &str) -> Proxy {
    Proxy::builder(body).env(SECRET_ENV, SECRET).start().await
}

/// GET `/api/x` with `token`: the status and the JSON body (`Null` for the echo's).
async fn call(proxy: &Proxy, token: &str) -> (u16, String) {
    let resp = client()
        .get(proxy.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.text().await.unwrap();
    (status, format!("{challenge} {body}"))
}

/// Panic unless `token` passes on `proxy`.
async fn passes(proxy: &Proxy, token: &str, what: &str) {
    let (status, text) = call(proxy, token).await;
    assert_eq!(status, 200, "{what}: {text}");
}

/// Panic unless `token` is refused on `proxy` as revoked.
async fn refused(proxy: &Proxy, token: &str, what: &str) {
    let (status, text) = call(proxy, token).await;
    assert_eq!(status, 401, "{what}: {text}");
    assert!(
        text.contains("error=\"invalid_token\"")
            && text.contains("the token has been revoked")
            && text.contains("\"error\":\"invalid_token\""),
        "{what}: {text}"
    );
}

/// POST `body` to the admin's `/revoke`: the status and the JSON answer.
async fn revoke(proxy: &Proxy, body: &str) -> (u16, Value) {
    let resp = client()
        .post(proxy.admin_url("/revoke"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {e}: {text}"));
    (status, json)
}

/// Revoke and expect it done; gives the time it took effect.
async fn revoked(proxy: &Proxy, body: Value) -> u64 {
    let (status, answer) = revoke(proxy, &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked"], true, "{answer}");
    let kind = body.as_object().unwrap().keys().next().unwrap().clone();
    assert_eq!(answer["kind"], kind.as_str(), "{answer}");
    answer["revoked_at"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_is_refused_right_after_a_revocation_and_a_new_login_passes() {
    let up = Upstream::start("app").await;
    let proxy = start(&config(&up, "", "")).await;
    let m = proxy.metrics().await;
    for kind in ["sub", "sid", "jti"] {
        assert_eq!(m.get(REVOCATIONS, &[("kind", kind)]), Some(0.0), "{kind}");
    }
    assert_eq!(m.get(ENTRIES, &[]), Some(0.0));

    let alice = token("alice", Some(now() - 5), json!({}));
    let alice_no_iat = token("alice", None, json!({"jti": "other"}));
    let bob = token("bob", Some(now() - 5), json!({}));
    for t in [&alice, &alice, &alice_no_iat, &bob] {
        passes(&proxy, t, "before any revocation").await;
    }
    let hits = proxy.metric(CACHE, &[("result", "hit")]).await;
    assert!(hits >= 1.0, "the second request came from the cache");

    let at = revoked(&proxy, json!({"sub": "alice"})).await;
    // Refused on the very next request, from the cache.
    refused(&proxy, &alice, "cached before the revocation").await;
    assert!(proxy.metric(CACHE, &[("result", "hit")]).await > hits);
    refused(&proxy, &alice_no_iat, "no iat: issued before").await;
    passes(&proxy, &bob, "another user").await;
    // Logged in again after the revocation.
    let again = token("alice", Some(at + 1), json!({}));
    passes(&proxy, &again, "issued after the revocation").await;
    passes(&proxy, &again, "and from the cache").await;

    // By provider session and by token id.
    let carol = token("carol", Some(now() - 5), json!({"sid": "session-7"}));
    let carol_elsewhere = token("carol", Some(now() - 5), json!({"sid": "session-8"}));
    let dave = token("dave", Some(now() - 5), json!({"jti": "token-9"}));
    let dave_other = token("dave", Some(now() - 5), json!({"jti": "token-10"}));
    for t in [&carol, &carol_elsewhere, &dave, &dave_other] {
        passes(&proxy, t, "not revoked yet").await;
    }
    revoked(&proxy, json!({"sid": "session-7"})).await;
    revoked(&proxy, json!({"jti": "token-9"})).await;
    refused(&proxy, &carol, "its session revoked").await;
    refused(&proxy, &dave, "its id revoked").await;
    passes(&proxy, &carol_elsewhere, "another session of the user").await;
    passes(&proxy, &dave_other, "another token of the user").await;

    let m = proxy.metrics().await;
    for kind in ["sub", "sid", "jti"] {
        assert_eq!(m.get(REVOCATIONS, &[("kind", kind)]), Some(1.0), "{kind}");
    }
    assert_eq!(m.get(ENTRIES, &[]), Some(3.0));
    assert_eq!(
        m.get(
            DECISIONS,
            &[
                ("route", "api"),
                ("result", "denied"),
                ("reason", "revoked")
            ]
        ),
        Some(4.0)
    );
    // The access log names the refusal.
    eventually("the access log", Duration::from_secs(5), || async {
        let n = proxy
            .access_lines()
            .iter()
            .filter(|l| l["status"] == 401 && l["reason"] == "invalid_token")
            .count();
        if n == 4 {
            Ok(())
        } else {
            Err(format!("{n} lines"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_a_reload() {
    let up = Upstream::start("app").await;
    let proxy = start(&config(&up, "", "")).await;
    let alice = token("alice", Some(now() - 5), json!({}));
    passes(&proxy, &alice, "before").await;
    revoked(&proxy, json!({"sub": "alice"})).await;
    refused(&proxy, &alice, "revoked").await;
    // A reload that changes the token cache's settings and adds a route: a new generation,
    // a new cache; the revocation is the process's and stays.
    let route =
        "  - name: open\n    match: { path_prefix: /open }\n    upstream: app\n    auth: none\n";
    proxy.write_config(&format!(
        "token_cache: {{ max_tokens: 500 }}\n{}",
        config(&up, "", route)
    ));
    let (status, answer) = {
        let resp = client()
            .post(proxy.admin_url("/reload"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(status, 200, "{answer}");
    proxy
        .wait_metric("portcullis_config_generation", &[], 2.0)
        .await;
    // And stays so past the revocation sync's next sweeps (one a second).
    for _ in 0..10 {
        refused(&proxy, &alice, "after the reload").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(proxy.metric(ENTRIES, &[]).await, 1.0);
    assert_eq!(proxy.metric(REVOCATIONS, &[("kind", "sub")]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revoke_bodies_get_400_and_revoke_nothing() {
    let up = Upstream::start("app").await;
    let proxy = start(&config(&up, "", "")).await;
    for body in [
        "",
        "sub=alice",
        "[\"alice\"]",
        "{}",
        "{\"sub\":null}",
        "{\"sub\":\"alice\",\"sid\":\"s\"}",
        "{\"sub\":\"alice\",\"sub\":\"bob\"}",
        "{\"sub\":7}",
        "{\"user\":\"alice\"}",
        "{\"sub\":\"\"}",
    ] {
        let (status, answer) = revoke(&proxy, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["revoked"], false, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("`sub`") && !error.contains("alice"),
            "{body}: a clear error that does not echo the body: {error}"
        );
    }
    let (status, answer) = revoke(&proxy, &format!("{{\"jti\":\"{}\"}}", "x".repeat(1025))).await;
    assert_eq!(status, 400, "{answer}");
    // A body past the bound is not read.
    let (status, answer) = revoke(&proxy, &format!("{{\"jti\":\"{}\"}}", "x".repeat(5000))).await;
    assert_eq!(status, 413, "{answer}");
    let resp = client()
        .get(proxy.admin_url("/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let m = proxy.metrics().await;
    assert_eq!(m.get(ENTRIES, &[]), Some(0.0));
    for kind in ["sub", "sid", "jti"] {
        assert_eq!(m.get(REVOCATIONS, &[("kind", kind)]), Some(0.0), "{kind}");
    }
    // The endpoint works after all that.
    revoked(&proxy, json!({"sub": "alice"})).await;
    assert_eq!(proxy.metric(ENTRIES, &[]).await, 1.0);
}

/// `cluster:` for `redis`.
fn cluster(redis: &Redis) -> String {
    format!("cluster: {{ redis: \"{}\" }}\n", redis.url())
}

/// A node of the fleet on `redis`, once it is subscribed to the fleet's revocations.
async fn node(up: &Upstream, redis: &Redis) -> Proxy {
    let proxy = start(&config(up, &cluster(redis), "")).await;
    proxy.wait_metric(SYNC_UP, &[], 1.0).await;
    proxy
}

/// Wait until `token` is refused as revoked on `proxy` (bounded by [`DEADLINE`]).
async fn until_refused(proxy: &Proxy, token: &str, what: &str) {
    eventually(what, DEADLINE, || async {
        match call(proxy, token).await {
            (401, text) if text.contains("the token has been revoked") => Ok(()),
            (status, text) => Err(format!("{status}: {text}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_reaches_another_through_redis() {
    let redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let (a, b) = (node(&up, &redis).await, node(&up, &redis).await);
    let erin = token("erin", Some(now() - 5), json!({"sid": "s-1", "jti": "j-1"}));
    let frank = token("frank", Some(now() - 5), json!({}));
    for p in [&a, &b] {
        passes(p, &erin, "before").await;
        passes(p, &frank, "before").await;
    }
    revoked(&a, json!({"sub": "erin"})).await;
    refused(&a, &erin, "on the node that revoked, at once").await;
    until_refused(&b, &erin, "the revocation to reach node B").await;
    passes(&b, &frank, "another user on B").await;
    // B holds it but did not make it.
    assert_eq!(b.metric(REVOCATIONS, &[("kind", "sub")]).await, 0.0);
    assert_eq!(b.metric(ENTRIES, &[]).await, 1.0);
    // And the other way, by token id.
    let grace = token("grace", Some(now() - 5), json!({"jti": "j-2"}));
    passes(&a, &grace, "before").await;
    revoked(&b, json!({"jti": "j-2"})).await;
    until_refused(&a, &grace, "B's revocation to reach A").await;
    a.wait_metric(UNPUBLISHED, &[], 0.0).await;
    b.wait_metric(UNPUBLISHED, &[], 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_after_the_revocation_refuses_too() {
    let redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let a = node(&up, &redis).await;
    let heidi = token("heidi", Some(now() - 5), json!({}));
    let ivan = token("ivan", Some(now() - 5), json!({"sid": "s-ivan"}));
    revoked(&a, json!({"sub": "heidi"})).await;
    revoked(&a, json!({"sid": "s-ivan"})).await;
    a.wait_metric(UNPUBLISHED, &[], 0.0).await;
    // Node B starts now: subscribed means it loaded the set first.
    let b = node(&up, &redis).await;
    assert_eq!(b.metric(ENTRIES, &[]).await, 2.0);
    refused(&b, &heidi, "revoked before B started").await;
    refused(&b, &ivan, "its session revoked before B started").await;
    passes(
        &b,
        &token("heidi", Some(now() + 1), json!({})),
        "a new login",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_redis_is_down_applies_at_once_and_reaches_the_fleet_when_it_is_back(
) {
    let mut redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let (a, b) = (node(&up, &redis).await, node(&up, &redis).await);
    let judy = token("judy", Some(now() - 5), json!({}));
    passes(&b, &judy, "before").await;
    redis.kill();
    a.wait_metric(SYNC_UP, &[], 0.0).await;
    revoked(&a, json!({"sub": "judy"})).await;
    refused(&a, &judy, "on this node at once, Redis down").await;
    assert_eq!(a.metric(UNPUBLISHED, &[]).await, 1.0);
    passes(&b, &judy, "B cannot know yet").await;
    // A tries Redis again (and fails) with the revocation waiting: it must keep it.
    let errors = a.metric(SYNC_ERRORS, &[]).await;
    eventually("A to retry Redis twice", DEADLINE, || async {
        let now = a.metric(SYNC_ERRORS, &[]).await;
        if now >= errors + 2.0 {
            Ok(())
        } else {
            Err(format!("{now} errors"))
        }
    })
    .await;
    assert_eq!(a.metric(UNPUBLISHED, &[]).await, 1.0);
    // Redis comes back empty: A sends what waited, B loads it when it reconnects.
    redis.restart().await;
    a.wait_metric(UNPUBLISHED, &[], 0.0).await;
    until_refused(&b, &judy, "the revocation to reach B once Redis is back").await;
}
