//! Rate limits and in-flight caps end to end: the real binary, real upstreams, a real key
//! server for per-user limits, and a real `redis-server` shared by two proxy processes for
//! cluster-wide limits.
//!
//! Each test owns its processes, so metric values and upstream counters are exact. Limits use
//! slow rates (per minute) wherever refill is not under test, so that a loaded machine cannot
//! refill a bucket between two requests; where refill is under test, only lower bounds on
//! time are asserted (a bucket can never refill early, a slow machine only makes it later).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, ISS, RSA, RSA_B};
use crate::support::metrics::Metrics;
use crate::support::redis::Redis;
use crate::support::{client, client_builder, eventually, pool, Proxy, Upstream, BIN};

const DECISIONS: &str = "portcullis_ratelimit_decisions_total";
const AUTH_DECISIONS: &str = "portcullis_auth_decisions_total";
const CONCURRENCY_LIMIT: &str = "portcullis_upstream_concurrency_limit";
const IN_FLIGHT: &str = "portcullis_upstream_in_flight";
const REDIS_UP: &str = "portcullis_cluster_redis_up";
const NODES: &str = "portcullis_cluster_nodes";
const SYNC_ERRORS: &str = "portcullis_cluster_sync_errors_total";
const GENERATION: &str = "portcullis_config_generation";

/// A response, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Panic unless this is a 429 from `limit` with the headers a client needs to back off:
    /// `Retry-After: retry_after`, the route's `RateLimit-Policy` and `RateLimit` naming the
    /// limit with nothing left and the seconds until its bucket is full again.
    fn limited(&self, limit: &str, policy: &str, retry_after: u64, reset: u64) {
        assert_eq!(self.status, 429, "{self:?}");
        let body: Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(body["error"], "rate_limited", "{}", self.body);
        assert_eq!(
            self.header("retry-after"),
            Some(retry_after.to_string().as_str()),
            "{self:?}"
        );
        assert_eq!(self.header("ratelimit-policy"), Some(policy), "{self:?}");
        assert_eq!(
            self.header("ratelimit"),
            Some(format!("\"{limit}\";r=0;t={reset}").as_str()),
            "{self:?}"
        );
    }
}

/// GET `url` with these headers.
async fn get(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// GET `url` `n` times in a row; the statuses.
async fn statuses(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(http, url, headers).await.status);
    }
    out
}

/// The YAML of a route on pool `app` with `rate_limit: {limits}` (a flow mapping body) and
/// `auth` (`none` or a flow mapping).
fn route(name: &str, prefix: &str, auth: &str, limits: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: app\n    auth: {auth}\n    rate_limit: {{ {limits} }}\n"
    )
}

/// A config body: pool `app` on `up` (with pool settings `pool_extra`), `extra` top-level
/// sections, then `routes`.
fn config(up: &Upstream, pool_extra: &[&str], extra: &str, routes: &str) -> String {
    format!(
        "upstreams:\n{}{extra}routes:\n{routes}",
        pool("app", &[up.addr().to_string()], pool_extra)
    )
}

/// `portcullis_ratelimit_decisions_total` of one route, limit and result.
fn decisions(m: &Metrics, route: &str, limit: &str, result: &str) -> f64 {
    m.get(
        DECISIONS,
        &[("route", route), ("limit", limit), ("result", result)],
    )
    .unwrap_or(0.0)
}

/// The sum of every series of `name` whose labels include all of `labels`.
fn sum(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

// ---------------------------------------------------------------------------------------
// Per-IP limits, headers, client addresses
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_admits_burst_then_refuses_with_headers_and_refills_at_rate() {
    let up = Upstream::start("app").await;
    let routes = [
        route(
            "limited",
            "/limited",
            "none",
            "per_ip: { rate: 1/s, burst: 5, headers: true }",
        ),
        route(
            "quiet",
            "/quiet",
            "none",
            "per_ip: { rate: 1/min, burst: 2 }",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &[], "", &routes)).await;
    let http = client();
    let url = proxy.url("/limited/x");
    // Burst 5 of one request a second: the bucket lasts 5 s.
    let policy = "\"per_ip\";q=5;w=5";

    // Measured before the first request reaches the proxy, so the bucket's clock started later.
    let started = Instant::now();
    for left in (0..5).rev() {
        let a = get(&http, &url, &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        // `headers: true`: allowed answers carry the policy and what is left.
        assert_eq!(a.header("ratelimit-policy"), Some(policy), "{a:?}");
        assert_eq!(
            a.header("ratelimit"),
            Some(format!("\"per_ip\";r={left};t={}", 5 - left).as_str()),
            "{a:?}"
        );
    }
    // Still inside the first second (a slower machine would see the sixth admitted): one
    // second to wait, and five until the bucket is full.
    let sixth = get(&http, &url, &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the machine is too slow for this test: 6 requests took {:?}",
        started.elapsed()
    );
    sixth.limited("per_ip", policy, 1, 5);
    assert_eq!(up.hits(), 5, "a refused request reached the upstream");

    // Refill at the rate: one more passes once a second has gone by since the first, never
    // earlier, and only one.
    eventually(
        "one request to pass again",
        Duration::from_secs(5),
        || async {
            match get(&http, &url, &[]).await.status {
                200 => Ok(()),
                s => Err(format!("{s}")),
            }
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the bucket refilled faster than 1/s: {:?}",
        started.elapsed()
    );
    let a = get(&http, &url, &[]).await;
    assert_eq!(a.status, 429, "two passed after one refill: {a:?}");
    assert_eq!(up.hits(), 6);

    let m = proxy.metrics().await;
    assert_eq!(decisions(&m, "limited", "per_ip", "allowed"), 6.0);
    let denied = decisions(&m, "limited", "per_ip", "denied");
    assert!(denied >= 2.0, "{}", m.text());

    // `headers: false`: none on allowed answers, always on the 429.
    let quiet = proxy.url("/quiet");
    for _ in 0..2 {
        let a = get(&http, &quiet, &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.header("ratelimit-policy"), None, "{a:?}");
        assert_eq!(a.header("ratelimit"), None, "{a:?}");
    }
    // One a minute, burst 2: a minute to wait, two until full.
    get(&http, &quiet, &[])
        .await
        .limited("per_ip", "\"per_ip\";q=2;w=120", 60, 120);
    assert_eq!(up.hits(), 8);
    // The access log names the reason of each refusal.
    let refused = denied as usize + 1;
    eventually(
        "the refusals in the access log",
        Duration::from_secs(5),
        || async {
            let lines = proxy.access_lines();
            let limited = lines
                .iter()
                .filter(|l| l["status"] == 429 && l["reason"] == "rate_limited")
                .count();
            let ok = lines.iter().filter(|l| l["status"] == 200).count();
            if (limited, ok) == (refused, 8) {
                Ok(())
            } else {
                Err(format!("{limited} refused, {ok} ok: {lines:?}"))
            }
        },
    )
    .await;
    let m = proxy.metrics().await;
    assert_eq!(decisions(&m, "quiet", "per_ip", "allowed"), 2.0);
    assert_eq!(decisions(&m, "quiet", "per_ip", "denied"), 1.0);
    assert_eq!(
        decisions(&m, "limited", "per_ip", "denied"),
        denied,
        "one route's limit counted another's requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_comes_from_trusted_proxies_only() {
    let up = Upstream::start("app").await;
    let routes = route("r", "/", "none", "per_ip: { rate: 1/min, burst: 2 }");
    let trusting = Proxy::start(&config(
        &up,
        &[],
        "client_ip: { trusted_proxies: [127.0.0.1/32] }\n",
        &routes,
    ))
    .await;
    let untrusting = Proxy::start(&config(&up, &[], "", &routes)).await;
    let http = client();

    // Behind a trusted proxy each forwarded client has its own bucket.
    let url = trusting.url("/x");
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let xff = [("x-forwarded-for", ip)];
        assert_eq!(
            statuses(&http, &url, &xff, 3).await,
            [200, 200, 429],
            "{ip}"
        );
    }
    // The rightmost address that is not a trusted proxy is the client: a spoofed entry to
    // its left changes nothing.
    let chained = [("x-forwarded-for", "198.51.100.7, 203.0.113.1")];
    assert_eq!(get(&http, &url, &chained).await.status, 429);
    // The proxy itself, without the header, is one more client.
    assert_eq!(statuses(&http, &url, &[], 3).await, [200, 200, 429]);
    // IPv6 clients count by /64 (the default `ipv6_prefix`): one site, one bucket.
    let v6 = |ip| [("x-forwarded-for", ip)];
    assert_eq!(get(&http, &url, &v6("2001:db8:1:2::1")).await.status, 200);
    assert_eq!(
        statuses(&http, &url, &v6("2001:db8:1:2:ffff::9"), 2).await,
        [200, 429]
    );
    assert_eq!(
        statuses(&http, &url, &v6("2001:db8:1:3::1"), 2).await,
        [200, 200]
    );
    assert_eq!(up.hits(), 10);

    // From an untrusted peer the header is ignored: rotating it shares one bucket.
    let url = untrusting.url("/x");
    let mut seen = Vec::new();
    for i in 1..=6 {
        let ip = format!("198.51.100.{i}");
        seen.push(get(&http, &url, &[("x-forwarded-for", &ip)]).await.status);
    }
    assert_eq!(seen, [200, 200, 429, 429, 429, 429]);
    assert_eq!(up.hits(), 12, "a refused request reached the upstream");
    let m = untrusting.metrics().await;
    assert_eq!(decisions(&m, "r", "per_ip", "allowed"), 2.0);
    assert_eq!(decisions(&m, "r", "per_ip", "denied"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_per_route_and_per_route_limits_are_shared_by_all_clients() {
    let up = Upstream::start("app").await;
    // Two routes with the very same limits.
    let limits = "per_ip: { rate: 1/min, burst: 2 }, per_route: { rate: 1/min, burst: 3 }";
    let routes = [
        route("a", "/a", "none", limits),
        route("b", "/b", "none", limits),
    ]
    .concat();
    let proxy = Proxy::start(&config(
        &up,
        &[],
        "client_ip: { trusted_proxies: [127.0.0.1/32] }\n",
        &routes,
    ))
    .await;
    let http = client();
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];

    // Per IP: one client spends its bucket on route a; route b has its own.
    assert_eq!(
        statuses(&http, &proxy.url("/a"), &xff("203.0.113.1"), 3).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&http, &proxy.url("/b"), &xff("203.0.113.1"), 2).await,
        [200, 200]
    );
    // Per route: route a has one request left, whoever sends it; then every client is
    // refused, each on a fresh connection, by the route's limit.
    assert_eq!(
        get(&http, &proxy.url("/a"), &xff("203.0.113.2"))
            .await
            .status,
        200
    );
    for ip in ["203.0.113.3", "203.0.113.4"] {
        let fresh = client();
        get(&fresh, &proxy.url("/a"), &xff(ip)).await.limited(
            "per_route",
            "\"per_ip\";q=2;w=120, \"per_route\";q=3;w=180",
            60,
            180,
        );
    }
    // Route b had two of its three: one more from anyone, then no more.
    assert_eq!(
        get(&http, &proxy.url("/b"), &xff("203.0.113.9"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&http, &proxy.url("/b"), &xff("203.0.113.8"))
            .await
            .status,
        429
    );
    assert_eq!(up.hits(), 6);

    let m = proxy.metrics().await;
    assert_eq!(decisions(&m, "a", "per_route", "allowed"), 3.0);
    assert_eq!(decisions(&m, "a", "per_route", "denied"), 2.0);
    assert_eq!(decisions(&m, "b", "per_route", "allowed"), 3.0);
    assert_eq!(decisions(&m, "a", "per_ip", "denied"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_arriving_at_a_full_key_store_is_still_limited() {
    let up = Upstream::start("app").await;
    let routes = route(
        "r",
        "/",
        "none",
        "per_ip: { rate: 1/min, burst: 2, max_keys: 2 }",
    );
    let proxy = Proxy::start(&config(
        &up,
        &[],
        "client_ip: { trusted_proxies: [127.0.0.1/32] }\n",
        &routes,
    ))
    .await;
    let http = client();
    let url = proxy.url("/x");
    // Two busy clients fill the store.
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let xff = [("x-forwarded-for", ip)];
        assert_eq!(
            statuses(&http, &url, &xff, 6).await,
            [200, 200, 429, 429, 429, 429]
        );
    }
    // Newcomers keep knocking while the store makes room (its upkeep runs in the
    // background): each gets its burst once, not once per eviction.
    for ip in ["203.0.113.3", "203.0.113.4"] {
        let xff = [("x-forwarded-for", ip)];
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.extend(statuses(&http, &url, &xff, 3).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let admitted = seen.iter().filter(|s| **s == 200).count();
        assert_eq!(admitted, 2, "{ip} got a fresh bucket: {seen:?}");
    }
    assert_eq!(up.hits(), 8);
}

// ---------------------------------------------------------------------------------------
// Per-user limits and the failed-token guard
// ---------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub`, signed with `pem` under kid `k1`; a fresh `jti` makes each one new.
fn token(pem: &str, sub: &str) -> String {
    token_with(pem, sub, json!({}))
}

/// [`token`] with more claims.
fn token_with(pem: &str, sub: &str, extra: Value) -> String {
    let now = now();
    let jti = format!("{:x}", fastrand::u64(..));
    let mut claims =
        json!({ "iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 600, "jti": jti });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    portcullis::auth::tools::mint(pem, &claims.to_string(), None, Some("k1")).unwrap()
}

/// The `issuers:` section for the key server `jwks`.
fn issuers(jwks: &JwksServer) -> String {
    format!(
        "issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\n",
        jwks.jwks_url()
    )
}

/// Wait until `/readyz` shows keys for issuer `corp`.
async fn wait_for_keys(proxy: &Proxy) {
    eventually("keys of issuer corp", Duration::from_secs(10), || async {
        let body: Value = client()
            .get(proxy.admin_url("/readyz?verbose"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match body["issuers"]["corp"]["keys"].as_u64() {
            Some(n) if n > 0 => Ok(()),
            _ => Err(body.to_string()),
        }
    })
    .await;
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_buckets_follow_the_token_across_connections() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let routes = [
        route(
            "orders",
            "/",
            "{ issuers: [corp] }",
            "per_user: { rate: 1/min, burst: 2 }",
        ),
        route(
            "teams",
            "/teams",
            "{ issuers: [corp] }",
            "per_user: { rate: 1/min, burst: 2, claim: org.id }",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &[], &issuers(&jwks), &routes)).await;
    wait_for_keys(&proxy).await;
    let url = proxy.url("/orders");
    let (alice, bob) = (bearer(&token(RSA, "alice")), bearer(&token(RSA, "bob")));

    // Alice's two, each on its own connection: the bucket follows the user, not the socket.
    for _ in 0..2 {
        let a = get(&client(), &url, &[("authorization", &alice)]).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    get(&client(), &url, &[("authorization", &alice)])
        .await
        .limited("per_user", "\"per_user\";q=2;w=120", 60, 120);
    // Bob, from the same address, has his own bucket.
    let http = client();
    assert_eq!(
        statuses(&http, &url, &[("authorization", &bob)], 3).await,
        [200, 200, 429]
    );
    // A fresh token for Alice is still Alice.
    let again = bearer(&token(RSA, "alice"));
    assert_ne!(again, alice);
    assert_eq!(
        get(&http, &url, &[("authorization", &again)]).await.status,
        429
    );

    assert_eq!(up.hits(), 4, "a refused request reached the upstream");
    let users: Vec<String> = up
        .received()
        .iter()
        .map(|e| e.header("authorization").unwrap())
        .collect();
    assert_eq!(users, [alice.clone(), alice, bob.clone(), bob]);
    let m = proxy.metrics().await;
    assert_eq!(decisions(&m, "orders", "per_user", "allowed"), 4.0);
    assert_eq!(decisions(&m, "orders", "per_user", "denied"), 3.0);

    // Keyed by a nested claim: two people of one organisation share its bucket.
    let url = proxy.url("/teams");
    let member =
        |sub: &str, org: &str| bearer(&token_with(RSA, sub, json!({ "org": { "id": org } })));
    let (carol, dave) = (member("carol", "acme"), member("dave", "acme"));
    assert_eq!(
        get(&http, &url, &[("authorization", &carol)]).await.status,
        200
    );
    assert_eq!(
        statuses(&http, &url, &[("authorization", &dave)], 2).await,
        [200, 429]
    );
    let erin = member("erin", "globex");
    assert_eq!(
        get(&http, &url, &[("authorization", &erin)]).await.status,
        200
    );
    assert_eq!(up.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tokens_lock_out_the_address_before_any_signature_check() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let routes = route(
        "orders",
        "/",
        "{ issuers: [corp] }",
        "auth_failures_per_ip: { rate: 1/min, burst: 3 }",
    );
    let extra = format!(
        "client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\n{}",
        issuers(&jwks)
    );
    let proxy = Proxy::start(&config(&up, &[], &extra, &routes)).await;
    wait_for_keys(&proxy).await;
    let http = client();
    let url = proxy.url("/orders");
    let attacker = ("x-forwarded-for", "203.0.113.66");
    // Signed with another key under the right kid: only the signature check fails it.
    let forged = bearer(&token(RSA_B, "alice"));
    let good = bearer(&token(RSA, "alice"));

    for _ in 0..3 {
        let a = get(&http, &url, &[attacker, ("authorization", &forged)]).await;
        assert_eq!(a.status, 401, "{a:?}");
    }
    let checks = |m: &Metrics| sum(m, AUTH_DECISIONS, &[("route", "orders")]);
    let before = proxy.metrics().await;
    assert_eq!(checks(&before), 3.0, "{}", before.text());

    // Spent: refused before the token is even looked at, a good one included.
    for t in [&forged, &good] {
        get(&http, &url, &[attacker, ("authorization", t)])
            .await
            .limited(
                "auth_failures_per_ip",
                "\"auth_failures_per_ip\";q=3;w=180",
                60,
                180,
            );
    }
    let after = proxy.metrics().await;
    assert_eq!(
        checks(&after),
        3.0,
        "a locked-out address still had its token checked: {}",
        after.text()
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(
        decisions(&after, "orders", "auth_failures_per_ip", "denied"),
        2.0
    );

    // Another address is not locked out; a missing token is no failed check.
    let other = ("x-forwarded-for", "203.0.113.7");
    for _ in 0..4 {
        assert_eq!(get(&http, &url, &[other]).await.status, 401);
    }
    let a = get(&http, &url, &[other, ("authorization", &good)]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_route_refuses_before_any_signature_check() {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let routes = route(
        "orders",
        "/",
        "{ issuers: [corp] }",
        "per_route: { rate: 1/min, burst: 1 }, auth_failures_per_ip: { rate: 1/min, burst: 1 }",
    );
    let proxy = Proxy::start(&config(&up, &[], &issuers(&jwks), &routes)).await;
    wait_for_keys(&proxy).await;
    let http = client();
    let url = proxy.url("/orders");
    let checks = |m: &Metrics| sum(m, AUTH_DECISIONS, &[("route", "orders")]);

    let a = get(
        &http,
        &url,
        &[("authorization", &bearer(&token(RSA, "alice")))],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    // The route has nothing left: a token never seen before, good or forged, is not checked.
    let policy = "\"per_route\";q=1;w=60, \"auth_failures_per_ip\";q=1;w=60";
    for t in [token(RSA, "bob"), token(RSA_B, "mallory")] {
        get(&http, &url, &[("authorization", &bearer(&t))])
            .await
            .limited("per_route", policy, 60, 60);
    }
    let m = proxy.metrics().await;
    assert_eq!(
        checks(&m),
        1.0,
        "a token was checked for nothing: {}",
        m.text()
    );
    // Nor did the forged one count as a failed check (the guard would refuse it now).
    assert_eq!(
        decisions(&m, "orders", "auth_failures_per_ip", "allowed"),
        0.0
    );
    assert_eq!(decisions(&m, "orders", "per_route", "allowed"), 1.0);
    assert_eq!(decisions(&m, "orders", "per_route", "denied"), 2.0);
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_buckets_of_unchanged_limits() {
    let up = Upstream::start("app").await;
    let limited = |burst: u32| {
        route(
            "r",
            "/r",
            "none",
            &format!("per_ip: {{ rate: 1/min, burst: {burst} }}"),
        )
    };
    let proxy = Proxy::start(&config(&up, &[], "", &limited(2))).await;
    let http = client();
    let url = proxy.url("/r");
    assert_eq!(statuses(&http, &url, &[], 3).await, [200, 200, 429]);

    // An unrelated change: a new route. The spent bucket stays spent.
    let added = format!(
        "{}{}",
        limited(2),
        route("new", "/new", "none", "per_ip: { rate: 1/min, burst: 2 }")
    );
    proxy.write_config(&config(&up, &[], "", &added));
    proxy.wait_metric(GENERATION, &[], 2.0).await;
    assert_eq!(get(&http, &proxy.url("/new"), &[]).await.status, 200);
    assert_eq!(
        get(&http, &url, &[]).await.status,
        429,
        "a reload forgave a spent bucket"
    );

    // New parameters for the limit: a new bucket, full.
    let changed = format!(
        "{}{}",
        limited(3),
        route("new", "/new", "none", "per_ip: { rate: 1/min, burst: 2 }")
    );
    proxy.write_config(&config(&up, &[], "", &changed));
    proxy.wait_metric(GENERATION, &[], 3.0).await;
    assert_eq!(statuses(&http, &url, &[], 4).await, [200, 200, 200, 429]);
    // The untouched route kept its bucket through that reload too (one of two spent).
    assert_eq!(
        statuses(&http, &proxy.url("/new"), &[], 2).await,
        [200, 429]
    );
}

// ---------------------------------------------------------------------------------------
// In-flight caps
// ---------------------------------------------------------------------------------------

/// Clients GETting one URL in a loop until stopped: 200s and 503s counted, anything else
/// kept as a failure. A shed client pauses a little before trying again, as a client honouring
/// `Retry-After` loosely would, so that refusals do not eat the machine.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    shed: Arc<AtomicUsize>,
    last_shed: Arc<Mutex<Option<Instant>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, clients: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            shed: Arc::default(),
            last_shed: Arc::default(),
            failures: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, shed) = (load.stop.clone(), load.ok.clone(), load.shed.clone());
                let (last_shed, failures) = (load.last_shed.clone(), load.failures.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    let http = client_builder().pool_max_idle_per_host(1).build().unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        let a = match http.get(&url).send().await {
                            Ok(resp) => Answer {
                                status: resp.status().as_u16(),
                                headers: resp.headers().clone(),
                                body: resp.text().await.unwrap_or_default(),
                            },
                            Err(e) => {
                                failures.lock().unwrap().push(format!("{e:?}"));
                                continue;
                            }
                        };
                        match a.status {
                            200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            503 if a.header("retry-after") == Some("1")
                                && a.body.contains("\"overloaded\"") =>
                            {
                                shed.fetch_add(1, Ordering::SeqCst);
                                *last_shed.lock().unwrap() = Some(Instant::now());
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            _ => failures.lock().unwrap().push(format!("{a:?}")),
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn shed(&self) -> usize {
        self.shed.load(Ordering::SeqCst)
    }

    /// How long since the last 503 (`None`: there was none).
    fn since_last_shed(&self) -> Option<Duration> {
        self.last_shed.lock().unwrap().map(|t| t.elapsed())
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    async fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::SeqCst),
            self.shed.load(Ordering::SeqCst),
            failures,
        )
    }
}

/// The in-flight cap of pool `app` now.
async fn cap(proxy: &Proxy) -> f64 {
    proxy
        .metric(CONCURRENCY_LIMIT, &[("upstream", "app")])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_cap_sheds_when_the_upstream_slows_and_recovers_when_it_speeds_up() {
    let up = Upstream::start("app").await;
    up.set_delay(Duration::from_millis(2));
    let proxy = Proxy::start(&config(
        &up,
        &["concurrency: { adaptive: true, min: 2, max: 200 }"],
        "",
        "  - name: r\n    match: { path_prefix: / }\n    upstream: app\n",
    ))
    .await;
    assert_eq!(cap(&proxy).await, 2.0, "the adaptive cap starts at `min`");
    let load = Load::start(&proxy.url("/x"), 40);

    // Fast: the cap grows with the demand.
    eventually("the cap to grow", Duration::from_secs(20), || async {
        let c = cap(&proxy).await;
        if c >= 12.0 {
            Ok(())
        } else {
            Err(format!("cap {c}, {} ok, {} shed", load.ok(), load.shed()))
        }
    })
    .await;

    // Slow: the cap falls and the excess is shed with 503 at once.
    let fast_cap = cap(&proxy).await;
    let shed_before = load.shed();
    up.set_delay(Duration::from_millis(300));
    let slow_cap = eventually("the cap to fall", Duration::from_secs(15), || async {
        let c = cap(&proxy).await;
        if c <= fast_cap * 0.7 && load.shed() > shed_before {
            Ok(c)
        } else {
            Err(format!(
                "cap {c} (was {fast_cap}), {} shed since slow",
                load.shed() - shed_before
            ))
        }
    })
    .await;

    // Fast again: the cap grows back and nothing is shed any more.
    up.set_delay(Duration::from_millis(2));
    eventually("the cap to grow back", Duration::from_secs(15), || async {
        let c = cap(&proxy).await;
        if c > slow_cap {
            Ok(())
        } else {
            Err(format!("cap {c} (was {slow_cap})"))
        }
    })
    .await;
    eventually("a second without 503", Duration::from_secs(15), || async {
        let ok = load.ok();
        match load.since_last_shed() {
            Some(quiet) if quiet >= Duration::from_secs(1) && ok > 0 => Ok(()),
            other => Err(format!("last 503 {other:?} ago, cap {}", cap(&proxy).await)),
        }
    })
    .await;
    let ok_before = load.ok();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(load.ok() > ok_before, "traffic stopped flowing");
    assert!(load.failures().is_empty(), "{:?}", load.failures());

    let (ok, shed, failures) = load.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(shed > 0);
    // A shed request never reached the upstream.
    assert_eq!(up.arrivals(), ok);
}

/// An answer's status, its `Retry-After` and when it arrived.
type Timed = (u16, Option<String>, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_cap_refuses_the_excess_at_once_instead_of_queueing() {
    let up = Upstream::start("app").await;
    up.set_delay(Duration::from_millis(1500));
    let proxy = Proxy::start(&config(
        &up,
        &["concurrency: { limit: 3 }"],
        "",
        "  - name: r\n    match: { path_prefix: / }\n    upstream: app\n",
    ))
    .await;
    assert_eq!(cap(&proxy).await, 3.0);

    // Status, Retry-After and when the answer came, for each client.
    let answers: Arc<Mutex<Vec<Timed>>> = Arc::default();
    let started = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (url, answers) = (proxy.url("/x"), answers.clone());
            tokio::spawn(async move {
                // A client each: ten connections at once.
                let a = get(&client(), &url, &[]).await;
                let retry = a.header("retry-after").map(str::to_string);
                answers
                    .lock()
                    .unwrap()
                    .push((a.status, retry, Instant::now()));
            })
        })
        .collect();

    // The seven over the cap are answered while the three admitted are still upstream.
    eventually("seven 503s", Duration::from_secs(10), || async {
        let n = answers.lock().unwrap().len();
        if n >= 7 {
            Ok(())
        } else {
            Err(format!("{n} answers"))
        }
    })
    .await;
    assert_eq!(up.arrivals(), 3);
    assert_eq!(
        up.hits(),
        0,
        "the slow requests finished already: the test proves nothing"
    );
    assert_eq!(proxy.metric(IN_FLIGHT, &[("upstream", "app")]).await, 3.0);
    for t in tasks {
        t.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let first_ok = answers
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .map(|(_, _, at)| *at)
        .min()
        .unwrap();
    assert!(first_ok - started >= Duration::from_millis(1500));
    let shed: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(shed.len(), 7, "{answers:?}");
    assert_eq!(answers.len() - shed.len(), 3, "{answers:?}");
    for (_, retry, at) in shed {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(*at < first_ok, "a 503 waited for a slot: {answers:?}");
    }
    // The places are free again.
    proxy
        .wait_metric(IN_FLIGHT, &[("upstream", "app")], 0.0)
        .await;
    let is_shed = |l: &serde_json::Value| l["status"] == 503 && l["reason"] == "overloaded";
    // Lines reach the file within the writer's next round.
    let lines = proxy
        .wait_access_until("seven 503 lines", |lines| {
            lines.iter().filter(|l| is_shed(l)).count() >= 7
        })
        .await;
    let overloaded = lines.iter().filter(|l| is_shed(l)).count();
    assert_eq!(overloaded, 7, "{}", proxy.access_log());
    up.set_delay(Duration::ZERO);
    assert_eq!(get(&client(), &proxy.url("/x"), &[]).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// Cluster-wide limits on Redis
// ---------------------------------------------------------------------------------------

/// Requests per second and burst of the cluster-scoped route limit.
const CLUSTER_RATE: f64 = 20.0;
const CLUSTER_BURST: f64 = 20.0;
/// `sync_interval`.
const SYNC: Duration = Duration::from_millis(100);

/// Two proxies with one config, once both see Redis and each other: route `shared` (`/shared`)
/// limited per route and route `users` (`/users`, tokens of `jwks`) limited per user, both
/// cluster-wide on `redis`.
async fn cluster_pair(redis: &Redis, up: &Upstream, jwks: &JwksServer) -> [Proxy; 2] {
    let extra = format!(
        "cluster: {{ redis: \"{}\", sync_interval: {}ms }}\n{}",
        redis.url(),
        SYNC.as_millis(),
        issuers(jwks)
    );
    let limit = format!("rate: {CLUSTER_RATE}/s, burst: {CLUSTER_BURST}, scope: cluster");
    let routes = [
        route(
            "shared",
            "/shared",
            "none",
            &format!("per_route: {{ {limit} }}"),
        ),
        route(
            "users",
            "/users",
            "{ issuers: [corp] }",
            &format!("per_user: {{ {limit} }}"),
        ),
    ]
    .concat();
    let body = config(up, &[], &extra, &routes);
    let proxies = [Proxy::start(&body).await, Proxy::start(&body).await];
    for p in &proxies {
        p.wait_metric(REDIS_UP, &[], 1.0).await;
        p.wait_metric(NODES, &[], 2.0).await;
        wait_for_keys(p).await;
    }
    proxies
}

/// Drive `path` of each proxy (with `Authorization: auth` when given) with a few clients for
/// `duration`, far above the limit; the requests each admitted, and how long it took from the
/// first request sent to the last answer.
async fn drive(
    proxies: &[Proxy],
    path: &str,
    auth: Option<&str>,
    duration: Duration,
) -> (Vec<usize>, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, p) in proxies.iter().enumerate() {
        for _ in 0..3 {
            let url = p.url(path);
            let auth = auth.map(str::to_string);
            tasks.push(tokio::spawn(async move {
                let http = client_builder().pool_max_idle_per_host(1).build().unwrap();
                let headers: Vec<(&str, &str)> =
                    auth.iter().map(|a| ("authorization", a.as_str())).collect();
                let mut admitted = 0;
                while started.elapsed() < duration {
                    let a = get(&http, &url, &headers).await;
                    match a.status {
                        200 => admitted += 1,
                        429 => {}
                        _ => panic!("{a:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (i, admitted)
            }));
        }
    }
    let mut admitted = vec![0; proxies.len()];
    for t in tasks {
        let (i, n) = t.await.unwrap();
        admitted[i] += n;
    }
    (admitted, started.elapsed())
}

/// Panic unless `admitted` (per node, in `took`) is within the documented bound of a cluster
/// limit of two nodes, and clearly below what two unshared nodes would admit.
fn assert_shared(what: &str, admitted: &[usize], took: Duration) {
    let total = admitted.iter().sum::<usize>() as f64;
    let secs = took.as_secs_f64();
    // What one node may admit on its own in that time, and the documented bound for two:
    // the limit plus, for the other node, a burst and a sync interval's worth.
    let allowance = CLUSTER_BURST + CLUSTER_RATE * secs;
    let bound = allowance + (CLUSTER_BURST + CLUSTER_RATE * SYNC.as_secs_f64());
    assert!(
        total <= bound,
        "{what}: {admitted:?} in {took:?}: over the bound {bound}"
    );
    assert!(
        total < 0.75 * 2.0 * allowance,
        "{what}: {admitted:?} in {took:?}: the nodes did not share the limit (each may admit {allowance})"
    );
    assert!(
        total >= CLUSTER_RATE * secs * 0.5,
        "{what}: {admitted:?} in {took:?}: far below the limit"
    );
    assert!(admitted.iter().all(|n| *n > 0), "{what}: {admitted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_admit_the_cluster_limit_within_the_documented_bound() {
    let redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let proxies = cluster_pair(&redis, &up, &jwks).await;
    let alice = bearer(&token(RSA, "alice"));

    // A route limit and a user's limit, each driven on both nodes at once.
    let window = Duration::from_secs(3);
    let ((route_admitted, route_took), (user_admitted, user_took)) = tokio::join!(
        drive(&proxies, "/shared", None, window),
        drive(&proxies, "/users", Some(&alice), window),
    );
    assert_shared("per_route", &route_admitted, route_took);
    assert_shared("per_user", &user_admitted, user_took);
    let total: usize = route_admitted.iter().chain(&user_admitted).sum();
    assert_eq!(up.hits(), total);
    for p in &proxies {
        let m = p.metrics().await;
        assert_eq!(m.get(REDIS_UP, &[]), Some(1.0));
        assert_eq!(m.get(NODES, &[]), Some(2.0));
        assert_eq!(m.get(SYNC_ERRORS, &[]), Some(0.0), "{}", m.text());
    }

    // A node that goes away stops counting: the other soon shares with itself alone.
    let [a, b] = proxies;
    drop(b);
    a.wait_metric(NODES, &[], 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_each_nodes_share_and_recovers_by_itself() {
    let mut redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let proxies = cluster_pair(&redis, &up, &jwks).await;

    redis.kill();
    for p in &proxies {
        p.wait_metric(REDIS_UP, &[], 0.0).await;
        assert!(p.metric(SYNC_ERRORS, &[]).await >= 1.0);
    }
    // Still serving, each with its share: half the rate and half the burst.
    let (admitted, took) = drive(&proxies, "/shared", None, Duration::from_secs(2)).await;
    let share = (CLUSTER_BURST + CLUSTER_RATE * took.as_secs_f64()) / 2.0;
    for n in &admitted {
        let n = *n as f64;
        assert!(
            n <= share + 1.0,
            "{admitted:?} in {took:?}: over the local share {share}"
        );
        assert!(
            n >= share / 2.0,
            "{admitted:?} in {took:?}: far below the local share {share}"
        );
    }
    for p in &proxies {
        assert_eq!(p.metric(REDIS_UP, &[]).await, 0.0);
        let log = p.stderr();
        assert!(
            log.contains("fall back to each node's share"),
            "the outage is not in the log:\n{log}"
        );
    }

    // Back on the same port: each node finds it again by itself.
    redis.restart().await;
    for p in &proxies {
        p.wait_metric(REDIS_UP, &[], 1.0).await;
        p.wait_metric(NODES, &[], 2.0).await;
        let log = p.stderr();
        assert!(
            log.contains("shared again"),
            "the recovery is not in the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_delays_no_request_and_each_node_falls_back_to_its_share() {
    let redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let proxies = cluster_pair(&redis, &up, &jwks).await;

    // Frozen: connections stay open and nothing answers, so only a timeout tells.
    redis.freeze();
    for p in &proxies {
        p.wait_metric(REDIS_UP, &[], 0.0).await;
    }
    // Every request is answered while Redis still hangs (`drive` fails on any error), each
    // node within its share.
    let (admitted, took) = drive(&proxies, "/shared", None, Duration::from_secs(1)).await;
    let share = (CLUSTER_BURST + CLUSTER_RATE * took.as_secs_f64()) / 2.0;
    for n in &admitted {
        let n = *n as f64;
        assert!(
            n <= share + 1.0 && n >= share / 2.0,
            "{admitted:?} in {took:?}: not the local share {share}"
        );
    }
    for p in &proxies {
        assert!(p.metric(SYNC_ERRORS, &[]).await >= 1.0);
    }

    redis.thaw();
    for p in &proxies {
        p.wait_metric(REDIS_UP, &[], 1.0).await;
        p.wait_metric(NODES, &[], 2.0).await;
    }
}

#[test]
fn cluster_scope_without_a_cluster_section_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listeners:
  - address: \"127.0.0.1:8080\"
upstreams:
  - name: app
    targets: [\"127.0.0.1:9000\"]
routes:
  - name: r
    match: { path_prefix: / }
    upstream: app
    rate_limit:
      per_route:
        rate: 20/s
        burst: 20
        scope: cluster
";
    let check = |text: &str| {
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = check(text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = "line 14: routes[0].rate_limit.per_route.scope: `scope: cluster` needs a `cluster:` section";
    assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");

    // With the section the same limit is fine.
    let out = check(&format!(
        "{text}cluster: {{ redis: \"redis://127.0.0.1:6379/0\" }}\n"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
