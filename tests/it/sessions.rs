//! Browser sessions against a real OpenID provider (Node's `oidc-provider`, support/oidc.rs):
//! login, the refresh race on one node and across two sharing a real Redis, Redis stopped
//! mid-race, the Redis store's in-process layer, `invalid_grant`, logout, back-channel
//! logout, admin revocation, split cookies, and one login in headless Chromium.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::browser::Browser;
use crate::support::oidc::{decode_jwt, Provider};
use crate::support::redis::Redis;
use crate::support::upstream::{Echo, Upstream};
use crate::support::{client, eventually, free_port, Proxy};

/// The cookie key every node of a test shares (32 bytes, base64).
const KEYS: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SECRET: &str = "a-client-secret-for-the-tests";
const COOKIE: &str = "__Host-portcullis";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Cookie,
    Redis,
}

struct Opts {
    store: Store,
    nodes: usize,
    /// The provider's access token lifetime, seconds.
    access_ttl: u64,
    refresh_ttl: u64,
    refresh_before: &'static str,
    absolute_timeout: &'static str,
    idle_timeout: &'static str,
    provider_timeout: &'static str,
    /// Claims of the accounts beyond the provider's built-in ones.
    accounts: Value,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            store: Store::Cookie,
            nodes: 1,
            access_ttl: 600,
            refresh_ttl: 86_400,
            refresh_before: "60s",
            absolute_timeout: "24h",
            idle_timeout: "8h",
            provider_timeout: "3s",
            accounts: json!({}),
        }
    }
}

struct Setup {
    provider: Provider,
    nodes: Vec<Proxy>,
    upstream: Upstream,
    redis: Option<Redis>,
}

fn body(o: &Opts, issuer: &str, upstream: &Upstream, redis: Option<&Redis>) -> String {
    let store = match o.store {
        Store::Cookie => "cookie",
        Store::Redis => "redis",
    };
    let cluster = redis.map_or(String::new(), |r| {
        format!("cluster:\n  redis: \"{}\"\n", r.url())
    });
    format!(
        r#"issuers:
  - name: idp
    issuer: "{issuer}"
    discovery: true
    audiences: ["urn:portcullis:api"]
    jwks_min_refresh: 1s
    fetch_timeout: 2s
sessions:
  - name: web
    issuer: idp
    client_id: portcullis
    client_secret_env: WEB_SECRET
    scopes: [openid, offline_access, profile, email, "api:read"]
    store: {store}
    cookie_keys_env: WEB_KEYS
    refresh_before: {rb}
    absolute_timeout: {absolute}
    idle_timeout: {idle}
    provider_timeout: {provider_timeout}
    post_logout_redirect: /bye
{cluster}upstreams:
  - name: app
    targets: ["{up}"]
routes:
  - name: app
    match: {{ path_prefix: /app }}
    upstream: app
    auth:
      session: web
      forward_access_token: true
      require_scopes: ["api:read"]
      forward_claims: {{ sub: X-User-Id, email: X-User-Email }}
  - name: both
    match: {{ path_prefix: /both }}
    upstream: app
    auth: {{ session: web, issuers: [idp], forward_claims: {{ sub: X-User-Id }} }}
  - name: open
    match: {{ path_prefix: / }}
    upstream: app
    auth: none
"#,
        rb = o.refresh_before,
        absolute = o.absolute_timeout,
        idle = o.idle_timeout,
        provider_timeout = o.provider_timeout,
        up = upstream.addr(),
    )
}

async fn setup(o: Opts) -> Setup {
    let upstream = Upstream::start("app").await;
    let redis = if o.store == Store::Redis || o.nodes > 1 {
        Some(Redis::start().await)
    } else {
        None
    };
    let provider_port = free_port();
    let issuer = format!("http://127.0.0.1:{provider_port}");
    let mut nodes = Vec::new();
    for _ in 0..o.nodes {
        let node = Proxy::builder(&body(&o, &issuer, &upstream, redis.as_ref()))
            .env("WEB_SECRET", SECRET)
            .env("WEB_KEYS", KEYS)
            .start()
            .await;
        nodes.push(node);
    }
    let redirect_uris: Vec<String> = nodes
        .iter()
        .map(|n| n.url("/.portcullis/callback"))
        .collect();
    let after: Vec<String> = nodes.iter().map(|n| n.url("/bye")).collect();
    let config = json!({
        "clients": [{
            "client_id": "portcullis",
            "client_secret": SECRET,
            "redirect_uris": redirect_uris,
            "post_logout_redirect_uris": after,
            "backchannel_logout_uri": nodes[0].url("/.portcullis/backchannel-logout"),
        }],
        "access_token_ttl": o.access_ttl,
        "refresh_token_ttl": o.refresh_ttl,
        "accounts": o.accounts,
    });
    // The port was free when picked; another test may have taken it since, while the nodes
    // started. Then the nodes move to another port (a config reload) and the provider tries
    // again there.
    let mut port = provider_port;
    let provider = loop {
        match Provider::try_start_on(port, config.clone()).await {
            Ok(provider) => break provider,
            Err(why) if why.contains("EADDRINUSE") => {
                port = free_port();
                let issuer = format!("http://127.0.0.1:{port}");
                for node in &nodes {
                    node.write_config(&body(&o, &issuer, &upstream, redis.as_ref()));
                }
            }
            Err(why) => panic!("{why}"),
        }
    };
    // Each node reads the provider's discovery document (it retries every second or so).
    for node in &nodes {
        let url = node.url("/app/");
        eventually("the login redirect", Duration::from_secs(20), || async {
            let hop = Browser::new().get(&url).await;
            if hop.status == 302 {
                Ok(())
            } else {
                Err(hop.status.to_string())
            }
        })
        .await;
    }
    Setup {
        provider,
        nodes,
        upstream,
        redis,
    }
}

/// Log `browser` in through `node`, landing on `path`; the echo the upstream sent back.
async fn login(browser: &Browser, node: &Proxy, path: &str) -> Echo {
    let hops = browser.follow(&node.url(path)).await;
    let last = hops.last().unwrap();
    assert_eq!(
        last.status,
        200,
        "{}",
        crate::support::browser::describe(&hops)
    );
    serde_json::from_str(&last.body).unwrap()
}

/// An XHR-style request (JSON accepted) with the browser's cookies: status and body.
async fn xhr(browser: &Browser, url: &str) -> (u16, String) {
    let resp = browser
        .http()
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn header(echo: &Echo, name: &str) -> Option<String> {
    echo.header(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_and_the_upstream_sees_its_user() {
    let s = setup(Opts::default()).await;
    let node = &s.nodes[0];
    let browser = Browser::new();
    let hops = browser.follow(&node.url("/app/orders?page=2")).await;
    // To the provider: the code flow with PKCE S256, a state and a nonce.
    let first = &hops[0];
    assert_eq!(first.status, 302);
    for (k, v) in [
        ("response_type", Some("code")),
        ("client_id", Some("portcullis")),
        ("code_challenge_method", Some("S256")),
    ] {
        assert_eq!(first.location_param(k).as_deref(), v, "{k}");
    }
    assert!(first.location_param("state").is_some_and(|s| s.len() >= 32));
    assert!(first.location_param("nonce").is_some_and(|s| s.len() >= 32));
    assert!(first.location_param("code_challenge").is_some());
    let login_cookie = first
        .set_cookies
        .iter()
        .find(|c| c.contains("-login-"))
        .unwrap();
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("Secure"),
        "{login_cookie}"
    );
    // Back at the callback: the session cookie, and on to the page first asked for.
    let callback = hops
        .iter()
        .find(|h| h.url.path() == "/.portcullis/callback")
        .unwrap();
    assert_eq!(callback.status, 302);
    assert_eq!(
        callback.location.as_ref().unwrap().as_str(),
        node.url("/app/orders?page=2")
    );
    let session = callback.set_cookie(COOKIE).unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attr), "{session}");
    }
    let last = hops.last().unwrap();
    assert_eq!(last.status, 200);
    let echo: Echo = serde_json::from_str(&last.body).unwrap();
    assert_eq!(
        header(&echo, "x-user-id").as_deref(),
        Some("alice"),
        "{echo:?}"
    );
    assert_eq!(
        header(&echo, "x-user-email").as_deref(),
        Some("alice@example.test"),
        "{echo:?}"
    );
    // The same JWT an API client would send, and never the session cookie.
    let bearer = header(&echo, "authorization").unwrap();
    let (_, claims) = decode_jwt(bearer.strip_prefix("Bearer ").unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "urn:portcullis:api");
    let sent_cookies = header(&echo, "cookie").unwrap_or_default();
    assert!(!sent_cookies.contains(COOKIE), "{sent_cookies}");
    // An API call without a session: 401, no redirect.
    let (status, _) = xhr(&Browser::new(), &node.url("/app/orders")).await;
    assert_eq!(status, 401);
    assert_eq!(
        node.metric(
            "portcullis_session_logins_total",
            &[("session", "web"), ("result", "success")]
        )
        .await,
        1.0
    );
    let stats = s.provider.stats().await;
    assert_eq!(stats.code_grants, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_gets_a_page_not_a_loop() {
    let s = setup(Opts::default()).await;
    s.provider.deny_logins("access_denied").await;
    let hops = Browser::new().follow(&s.nodes[0].url("/app/")).await;
    let last = hops.last().unwrap();
    assert_eq!(
        last.status,
        403,
        "{}",
        crate::support::browser::describe(&hops)
    );
    assert!(last.body.contains("access_denied"), "{}", last.body);
    assert_eq!(s.provider.stats().await.authorizations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_must_carry_the_state_of_its_login_cookie() {
    let s = setup(Opts::default()).await;
    let node = &s.nodes[0];
    let browser = Browser::new();
    let hops = browser
        .follow_until(&node.url("/app/"), |u| u.path() == "/.portcullis/callback")
        .await;
    let callback = hops.last().unwrap().location.clone().unwrap();
    // Another state: refused, and the code is never redeemed.
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(&pairs);
    assert_eq!(browser.get(forged.as_str()).await.status, 400);
    // The right state in another browser (no login cookie): refused too.
    assert_eq!(Browser::new().get(callback.as_str()).await.status, 400);
    assert_eq!(s.provider.stats().await.code_grants, 0);
    // The real one still works.
    let hop = browser.get(callback.as_str()).await;
    assert_eq!(hop.status, 302);
    assert_eq!(s.provider.stats().await.code_grants, 1);
}

/// Wait until the session's access token (as the upstream last saw it) is due for refresh.
async fn until_due(s: &Setup, refresh_before: u64) {
    let echo = s.upstream.received().pop().unwrap();
    let bearer = echo.header("authorization").unwrap();
    let (_, claims) = decode_jwt(bearer.strip_prefix("Bearer ").unwrap());
    let due = claims["exp"].as_u64().unwrap() - refresh_before;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 50 requests at once, spread over the nodes: every status.
async fn burst(s: &Setup, browser: &Browser) -> Vec<u16> {
    let calls = (0..50).map(|i| {
        let url = s.nodes[i % s.nodes.len()].url(&format!("/app/item/{i}"));
        let browser = browser.clone();
        async move { xhr(&browser, &url).await.0 }
    });
    futures_join_all(calls).await
}

async fn futures_join_all<F: std::future::Future<Output = u16> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn race_opts(store: Store) -> Opts {
    Opts {
        store,
        nodes: 2,
        access_ttl: 8,
        refresh_before: "5s",
        ..Opts::default()
    }
}

async fn the_race(store: Store) {
    the_race_with(race_opts(store).await, Duration::from_millis(500)).await;
}

/// The race with the provider taking `delay` to answer each token request.
async fn the_race_with(opts: Opts, delay: Duration) {
    let s = setup(opts).await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/start").await;
    // A slow provider widens the window in which a second redemption would slip in.
    s.provider.set_token_delay(delay).await;
    s.provider.reset_stats().await;
    until_due(&s, 5).await;
    let statuses = burst(&s, &browser).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let stats = s.provider.stats().await;
    assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    assert_eq!(stats.refresh_invalid_grant, 0, "{stats:?}");
    // Still logged in, on both nodes.
    for node in &s.nodes {
        assert_eq!(xhr(&browser, &node.url("/app/after")).await.0, 200);
    }
    // No token and no cookie value in any log line, the refresh's included.
    let cookie = browser.cookie(&s.nodes[0].url("/"), COOKIE).unwrap();
    let tokens: Vec<String> = s
        .upstream
        .received()
        .iter()
        .filter_map(|e| e.header("authorization"))
        .map(|t| t.trim_start_matches("Bearer ").to_string())
        .collect();
    assert!(tokens.len() > 1);
    for node in &s.nodes {
        let log = node.stderr();
        assert!(!log.contains(&cookie[..40]), "a cookie value in the log");
        for token in &tokens {
            assert!(!log.contains(token.as_str()), "a token in the log");
        }
    }
}

/// oauth2-proxy's lock has a fixed TTL that a slow provider outlives; this one's lease is
/// renewed while the call runs, so a provider slower than the lease still sees one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_slower_than_the_lock_lease_still_sees_one_refresh() {
    let opts = Opts {
        provider_timeout: "15s",
        ..race_opts(Store::Cookie).await
    };
    the_race_with(opts, Duration::from_millis(4500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_requests_over_two_nodes_redeem_one_refresh_token_once_cookie_store() {
    the_race(Store::Cookie).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_requests_over_two_nodes_redeem_one_refresh_token_once_redis_store() {
    the_race(Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_stopped_each_node_refreshes_at_most_once_and_nothing_fails() {
    let mut s = setup(race_opts(Store::Cookie).await).await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/start").await;
    // Both nodes hold the session in process before Redis goes.
    for node in &s.nodes {
        assert_eq!(xhr(&browser, &node.url("/app/warm")).await.0, 200);
    }
    s.provider.set_token_delay(Duration::from_millis(500)).await;
    s.provider.reset_stats().await;
    s.redis.as_mut().unwrap().kill();
    until_due(&s, 5).await;
    let statuses = burst(&s, &browser).await;
    assert!(statuses.iter().all(|s| *s < 500), "{statuses:?}");
    let stats = s.provider.stats().await;
    assert!(
        stats.refresh_grants + stats.refresh_invalid_grant <= 2,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_redis_session_costs_no_redis_command() {
    let s = setup(Opts {
        store: Store::Redis,
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    let echo = login(&browser, &s.nodes[0], "/app/").await;
    let mut conn = redis::Client::open(s.redis.as_ref().unwrap().url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The session's own commands: the cluster's limit sync runs its script beside them
    // (whose inner commands count too: ZADD, PEXPIRE, ...).
    let session_commands = |info: String| -> u64 {
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter(|l| {
                ["get:", "set:", "del:", "eval:"]
                    .iter()
                    .any(|c| l.starts_with(c))
            })
            .map(|l| {
                l.split("calls=")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    let info = |mut conn: redis::aio::MultiplexedConnection| async move {
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        text
    };
    let before = session_commands(info(conn.clone()).await);
    for i in 0..40 {
        assert_eq!(
            xhr(&browser, &s.nodes[0].url(&format!("/app/{i}"))).await.0,
            200
        );
    }
    let after = session_commands(info(conn.clone()).await);
    assert_eq!(
        after - before,
        0,
        "Redis commands for 40 requests of a session held in process"
    );
    // A Redis dump shows no token: the record is sealed.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("portcullis:session:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let bearer = header(&echo, "authorization").unwrap();
    let access = bearer.trim_start_matches("Bearer ");
    let text = String::from_utf8_lossy(&value);
    assert!(!text.contains(access) && !text.contains("alice"), "{text}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the record has an expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_ends_the_session_and_the_next_navigation_logs_in_again() {
    let s = setup(Opts {
        access_ttl: 4,
        refresh_ttl: 2,
        refresh_before: "2s",
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/").await;
    until_due(&s, 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = xhr(&browser, &s.nodes[0].url("/app/x")).await;
    assert_eq!(status, 401);
    assert_eq!(s.provider.stats().await.refresh_invalid_grant, 1);
    let hop = browser.get(&s.nodes[0].url("/app/x")).await;
    assert_eq!(hop.status, 302);
    assert!(hop
        .location
        .unwrap()
        .as_str()
        .starts_with(s.provider.issuer()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_take_a_session_or_a_bearer_token() {
    let s = setup(Opts::default()).await;
    let node = &s.nodes[0];
    let browser = Browser::new();
    let echo = login(&browser, node, "/both/page").await;
    assert_eq!(header(&echo, "x-user-id").as_deref(), Some("alice"));
    // Not forwarded on this route: only what the client sent itself.
    assert!(header(&echo, "authorization").is_none(), "{echo:?}");
    // The session's access token (the /app route forwards it) as an API client's bearer
    // token, without any cookie.
    assert_eq!(xhr(&browser, &node.url("/app/x")).await.0, 200);
    let forwarded = s.upstream.received().pop().unwrap();
    let token = forwarded.header("authorization").unwrap();
    let token = token.trim_start_matches("Bearer ");
    let resp = crate::support::client()
        .get(node.url("/both/api"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(header(&echo, "x-user-id").as_deref(), Some("alice"));
    // A bad bearer token is judged as a token, even with a good session beside it.
    let resp = browser
        .http()
        .get(node.url("/both/api"))
        .bearer_auth("not-a-token.x.y")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_at_its_absolute_timeout() {
    let s = setup(Opts {
        absolute_timeout: "3s",
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/").await;
    assert_eq!(xhr(&browser, &s.nodes[0].url("/app/x")).await.0, 200);
    let url = s.nodes[0].url("/app/x");
    eventually("the session to end", Duration::from_secs(10), || async {
        match xhr(&browser, &url).await.0 {
            401 => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let hop = browser.get(&s.nodes[0].url("/app/x")).await;
    assert_eq!(hop.status, 302, "a navigation logs in again");
    assert!(
        s.nodes[0]
            .metric(
                "portcullis_session_logouts_total",
                &[("session", "web"), ("kind", "expired")]
            )
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_used_for_its_idle_timeout_ends() {
    let s = setup(Opts {
        idle_timeout: "3s",
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/").await;
    let url = s.nodes[0].url("/app/x");
    // Used every second, it lives past its idle timeout.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(xhr(&browser, &url).await.0, 200);
    }
    // Left alone longer than that, it ends.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(xhr(&browser, &url).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_too_large_for_one_cookie_is_split() {
    let s = setup(Opts {
        accounts: json!({ "alice": { "bio": "x".repeat(5000) } }),
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    let echo = login(&browser, &s.nodes[0], "/app/").await;
    assert_eq!(header(&echo, "x-user-id").as_deref(), Some("alice"));
    let names: Vec<String> = browser
        .cookies(&s.nodes[0].url("/"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.iter().any(|n| n == &format!("{COOKIE}.2")),
        "{names:?}"
    );
    assert_eq!(xhr(&browser, &s.nodes[0].url("/app/again")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_and_lands_on_the_page() {
    let s = setup(Opts::default()).await;
    let dom = crate::support::chromium::dump_dom(&s.nodes[0].url("/app/welcome")).await;
    // The echo of what the upstream received, as the browser shows it: the user's header.
    assert!(dom.contains(r#"["x-user-id","alice"]"#), "{dom}");
    assert!(dom.contains("/app/welcome"), "{dom}");
}

/// A revocation of the user (`POST /revoke`) ends the sessions created before it, on their
/// next request, cached in the process or not; a login after it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_loses_the_session_and_logs_in_again() {
    let s = setup(Opts::default()).await;
    let node = &s.nodes[0];
    let browser = Browser::new();
    login(&browser, node, "/app/").await;
    assert_eq!(xhr(&browser, &node.url("/app/x")).await.0, 200);
    let resp = crate::support::client()
        .post(node.admin_url("/revoke"))
        .body(r#"{"sub":"alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let at = resp.json::<Value>().await.unwrap()["revoked_at"]
        .as_u64()
        .unwrap();
    assert_eq!(
        xhr(&browser, &node.url("/app/x")).await.0,
        401,
        "the session was created before the revocation"
    );
    // A session created in the revocation's own second would count as before it.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= at
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let echo = login(&browser, node, "/app/").await;
    assert_eq!(header(&echo, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(xhr(&browser, &node.url("/app/x")).await.0, 200);
}

/// A logout revokes the session's provider session (`sid`): a copy of the cookie kept from
/// before is refused afterwards, even with the cookie store (where the cookie is the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_revokes_its_provider_session_so_a_kept_cookie_is_refused() {
    let s = setup(Opts::default()).await;
    let node = &s.nodes[0];
    let browser = Browser::new();
    login(&browser, node, "/app/").await;
    let kept: Vec<String> = browser
        .cookies(&node.url("/app/x"))
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    assert!(!kept.is_empty());
    let with_kept = || async {
        crate::support::client()
            .get(node.url("/app/x"))
            .header("cookie", kept.join("; "))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_kept().await, 200, "the copy works before the logout");
    let _ = browser.get(&node.url("/.portcullis/logout")).await;
    assert_eq!(with_kept().await, 401, "the copy is refused after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_ends_the_session_and_goes_to_end_session() {
    let s = setup(Opts {
        store: Store::Redis,
        nodes: 2,
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/").await;
    // The other node holds the session in its process too.
    assert_eq!(xhr(&browser, &s.nodes[1].url("/app/")).await.0, 200);
    let stale = browser.cookie(&s.nodes[0].url("/"), COOKIE).unwrap();
    let hops = browser.follow(&s.nodes[0].url("/.portcullis/logout")).await;
    let first = &hops[0];
    assert_eq!(first.status, 302);
    let end = first.location.as_ref().unwrap().as_str();
    assert!(
        end.starts_with(s.provider.issuer()) && end.contains("id_token_hint="),
        "{end}"
    );
    assert!(first.set_cookie(COOKIE).unwrap().contains("Max-Age=0"));
    assert_eq!(
        hops.last().unwrap().url.path(),
        "/bye",
        "{}",
        crate::support::browser::describe(&hops)
    );
    let stats = s.provider.stats().await;
    assert_eq!(stats.revocations, 1, "{stats:?}");
    // The old cookie, replayed, works on neither node.
    for node in &s.nodes {
        let url = node.url("/app/");
        eventually("the session to end", Duration::from_secs(5), || async {
            let status = client()
                .get(&url)
                .header("accept", "application/json")
                .header("cookie", format!("{COOKIE}={stale}"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .status();
            if status == 401 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_ends_the_session_on_every_node() {
    let s = setup(Opts {
        nodes: 2,
        ..Opts::default()
    })
    .await;
    let browser = Browser::new();
    login(&browser, &s.nodes[0], "/app/").await;
    assert_eq!(xhr(&browser, &s.nodes[1].url("/app/")).await.0, 200);
    // A logout token for the user (`sub`); the provider adds no `sid` it does not know.
    let sent = s
        .provider
        .trigger_backchannel("portcullis", "alice", None)
        .await;
    assert!(sent.ok, "{sent:?}");
    for node in &s.nodes {
        let url = node.url("/app/");
        eventually("the session to end", Duration::from_secs(5), || async {
            match xhr(&browser, &url).await.0 {
                401 => Ok(()),
                other => Err(other.to_string()),
            }
        })
        .await;
    }
    assert_eq!(
        s.nodes[0]
            .metric(
                "portcullis_session_logouts_total",
                &[("session", "web"), ("kind", "backchannel")]
            )
            .await,
        1.0
    );
    // Garbage is refused.
    let resp = client()
        .post(s.nodes[0].url("/.portcullis/backchannel-logout"))
        .form(&[("logout_token", "not.a.token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
