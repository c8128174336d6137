//! `allow_ips` / `deny_ips` at the top level and per route: CIDRs of both families, the
//! client address behind a trusted proxy, the socket's address without one, 403 `ip_denied`
//! counted and logged, decided before any token work, and changed by a live reload.

use std::net::IpAddr;
use std::time::Duration;

use portcullis::auth::tools::mint;
use serde_json::json;

use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, EC256, ISS};
use crate::support::{client, client_builder, pool, Proxy, Upstream};

const REQUESTS: &str = "portcullis_requests_total";

/// Upstream `up`, routes `open` (`/open`, no lists), `office` (`/office`, its own lists) and
/// `extra` (the routes in `more`), the top-level lines in `top`.
fn config(up: &Upstream, top: &str, office: &str, more: &str) -> String {
    format!(
        "{top}upstreams:\n{}routes:\n\
         \x20 - name: open\n    match: {{ path_prefix: /open }}\n    upstream: up\n\
         \x20 - name: office\n    match: {{ path_prefix: /office }}\n    upstream: up\n{office}{more}",
        pool("up", &[up.addr().to_string()], &[])
    )
}

/// Every request of the test comes through a "proxy" at 127.0.0.1 that names the client in
/// `X-Forwarded-For`.
const BEHIND_PROXY: &str = "client_ip: { trusted_proxies: [127.0.0.1] }\n";

/// GET `path` as client `from` (through the trusted proxy); the status and the body's error.
async fn get_as(proxy: &Proxy, path: &str, from: &str) -> (u16, String) {
    let resp = client()
        .get(proxy.url(path))
        .header("x-forwarded-for", from)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or(json!({}));
    (status, body["error"].as_str().unwrap_or("").to_string())
}

async fn assert_statuses(proxy: &Proxy, cases: &[(&str, &str, u16)]) {
    for &(path, from, want) in cases {
        let (status, error) = get_as(proxy, path, from).await;
        assert_eq!(status, want, "{path} from {from}: {error}");
        if want == 403 {
            assert_eq!(error, "ip_denied", "{path} from {from}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_levels_with_cidrs_of_both_families_behind_a_trusted_proxy() {
    let up = Upstream::start("up").await;
    let top = format!("{BEHIND_PROXY}deny_ips: [203.0.113.0/24, \"2001:db8:dead::/48\"]\n");
    let office =
        "    allow_ips: [10.0.0.0/8, \"2001:db8::/32\", 192.0.2.7]\n    deny_ips: [10.66.0.0/16]\n";
    let proxy = Proxy::start(&config(&up, &top, office, "")).await;

    assert_statuses(
        &proxy,
        &[
            ("/open", "198.51.100.1", 200),
            ("/open", "203.0.113.5", 403),
            ("/open", "2001:db8:dead::1", 403),
            ("/open", "2001:db8:beef::1", 200),
            // A client the top level refuses learns nothing about routes.
            ("/nowhere", "203.0.113.5", 403),
            ("/nowhere", "198.51.100.1", 404),
            ("/office", "10.1.2.3", 200),
            ("/office", "::ffff:10.1.2.3", 200),
            ("/office", "192.0.2.7", 200),
            ("/office", "192.0.2.8", 403),
            ("/office", "10.66.1.1", 403),
            ("/office", "::ffff:10.66.1.1", 403),
            ("/office", "198.51.100.1", 403),
            ("/office", "2001:db8::5", 200),
            ("/office", "2001:db8:dead::5", 403),
            // The rightmost untrusted hop is the client; the left one is whatever it said.
            ("/office", "10.1.2.3, 198.51.100.1", 403),
            ("/office", "198.51.100.1, 10.1.2.3", 200),
        ],
    )
    .await;
    // The upstream saw only the 7 allowed requests.
    assert_eq!(up.hits(), 7);

    // Counted: under the route after route lookup, under no route before it.
    let denied = |route: &'static str| [("route", route), ("method", "GET"), ("code", "403")];
    proxy.wait_metric(REQUESTS, &denied("office"), 5.0).await;
    proxy.wait_metric(REQUESTS, &denied(""), 4.0).await;
    proxy.wait_metric(REQUESTS, &denied("open"), 0.0).await;
    // Logged with the reason, the client and the route.
    let lines = proxy.wait_access_lines(17).await;
    let refused: Vec<_> = lines.iter().filter(|l| l["status"] == 403).collect();
    assert_eq!(refused.len(), 9, "{lines:?}");
    for line in &refused {
        assert_eq!(line["reason"], "ip_denied", "{line}");
    }
    assert!(refused
        .iter()
        .any(|l| l["client"] == "10.66.1.1" && l["route"] == "office"));
}

/// A client that binds its socket to `ip` (any of 127.0.0.0/8 is this machine).
fn client_from(ip: &str) -> reqwest::Client {
    client_builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_address_counts_without_trusted_proxies() {
    let up = Upstream::start("up").await;
    // No trusted proxy: `X-Forwarded-For` is the client's own word and changes nothing.
    let proxy = Proxy::start(&config(
        &up,
        "deny_ips: [127.0.0.2]\n",
        "    allow_ips: [127.0.0.3/32]\n",
        "",
    ))
    .await;
    for (from, path, xff, want) in [
        ("127.0.0.1", "/open", "127.0.0.3", 200),
        ("127.0.0.2", "/open", "127.0.0.1", 403),
        ("127.0.0.1", "/office", "127.0.0.3", 403),
        ("127.0.0.3", "/office", "127.0.0.2", 200),
    ] {
        let resp = client_from(from)
            .get(proxy.url(path))
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{path} from {from}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_any_token_work() {
    let up = Upstream::start("up").await;
    let mut jwks = JwksServer::start(key_set(&[(EC256, "ec256")])).await;
    let issuer = format!(
        "issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\n    fetch_timeout: 300ms\n    jwks_refresh: 1h\n    jwks_min_refresh: 1h\n",
        jwks.jwks_url()
    );
    // The keys are out of reach from the start.
    jwks.stop().await;
    let route = "  - name: api\n    match: { path_prefix: /api }\n    upstream: up\n    auth: { issuers: [corp] }\n    deny_ips: [127.0.0.2]\n";
    let body = config(&up, &issuer, "    auth: none\n", route).replace(
        "    upstream: up\n  - name: office",
        "    upstream: up\n    auth: none\n  - name: office",
    );
    let proxy = Proxy::start(&body).await;
    let fetches = || async {
        proxy
            .metrics()
            .await
            .sum("portcullis_jwks_fetches_total", &[("issuer", "corp")])
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "a", "iat": now, "exp": now + 600});
    let token = mint(EC256, &claims.to_string(), None, Some("ec256")).unwrap();
    let ask = |from: &str| {
        client_from(from)
            .get(proxy.url("/api/x"))
            .bearer_auth(&token)
            .send()
    };
    // Wait for the start-up fetch to have failed, so the count holds still.
    crate::support::eventually(
        "the first key fetch failed",
        Duration::from_secs(10),
        || {
            let f = fetches();
            async move {
                (f.await >= 1.0)
                    .then_some(())
                    .ok_or("no fetch yet".to_string())
            }
        },
    )
    .await;
    let before = fetches().await;
    let denied = ask("127.0.0.2").await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["error"], "ip_denied");
    assert_eq!(fetches().await, before, "a refused client made a key fetch");
    // Control: an allowed client with the same token reaches the token check.
    let allowed = ask("127.0.0.1").await.unwrap();
    assert_eq!(allowed.status(), 503);
    assert_eq!(up.hits(), 0);
    let decisions = proxy.metrics().await;
    assert_eq!(
        decisions.sum("portcullis_auth_decisions_total", &[("route", "api")]),
        1.0,
        "only the allowed client's token was checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_lists_live_and_a_bad_entry_is_refused() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up, BEHIND_PROXY, "", "")).await;
    assert_statuses(&proxy, &[("/office", "10.9.9.9", 200)]).await;

    proxy.write_config(&config(
        &up,
        &format!("{BEHIND_PROXY}deny_ips: [10.9.0.0/16]\n"),
        "    allow_ips: [\"2001:db8::/32\"]\n",
        "",
    ));
    proxy.reload_ok().await;
    assert_statuses(
        &proxy,
        &[
            ("/open", "10.9.9.9", 403),
            ("/open", "10.8.9.9", 200),
            ("/office", "10.8.9.9", 403),
            ("/office", "2001:db8::1", 200),
        ],
    )
    .await;

    // A bad entry: refused with its index, and the lists in force stay.
    proxy.write_config(&config(
        &up,
        &format!("{BEHIND_PROXY}deny_ips: [10.9.0.0/16, 10.1.2.3/8]\n"),
        "    allow_ips: [\"2001:db8::/32\", not-an-ip]\n",
        "",
    ));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 422);
    assert!(body.contains("deny_ips[1]"), "{body}");
    assert!(body.contains("routes[1].allow_ips[1]"), "{body}");
    assert_statuses(
        &proxy,
        &[("/open", "10.9.9.9", 403), ("/office", "2001:db8::1", 200)],
    )
    .await;
}
