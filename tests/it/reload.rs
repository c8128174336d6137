//! Live reload: by SIGHUP, by a change of the file, by `POST /reload`, each under traffic
//! with zero failed requests; broken files refused; health state carried over.

use std::time::Duration;

use crate::support::{client, eventually, get_echo, pool, Proxy, Traffic, Upstream};

const RELOADS: &str = "portcullis_config_reloads_total";
const GENERATION: &str = "portcullis_config_generation";

/// Route `/stable` to pool `a`, plus `extra_routes`.
fn config(a: &Upstream, b: &Upstream, extra_routes: &str) -> String {
    format!(
        "upstreams:\n{}{}routes:\n  - name: stable\n    match: {{ path_prefix: /stable }}\n    upstream: a\n{extra_routes}",
        pool("a", &[a.addr().to_string()], &[]),
        pool("b", &[b.addr().to_string()], &[]),
    )
}

const NEW_ROUTE: &str = "  - name: fresh\n    match: { path_prefix: /fresh }\n    upstream: b\n";

async fn status(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url).send().await.unwrap().status().as_u16()
}

async fn wait_for_route(proxy: &Proxy, path: &str, want: &str) {
    let http = client();
    let url = proxy.url(path);
    eventually(
        &format!("{path} to be served by {want}"),
        Duration::from_secs(10),
        || async {
            let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let upstream = resp
                .headers()
                .get("x-upstream")
                .map(|v| v.to_str().unwrap().to_string());
            if status == 200 && upstream.as_deref() == Some(want) {
                Ok(())
            } else {
                Err(format!("{status} from {upstream:?}"))
            }
        },
    )
    .await;
}

/// Traffic on `/stable` before, during and after `reload`; no request may fail.
async fn under_traffic<F: std::future::Future<Output = ()>>(proxy: &Proxy, reload: F) {
    let traffic = Traffic::start(proxy, "/stable", 2);
    traffic.wait_for_more(50).await;
    reload.await;
    traffic.wait_for_more(50).await;
    let (ok, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 100, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_traffic() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();
    assert_eq!(status(&http, &proxy.url("/fresh")).await, 404);
    assert_eq!(proxy.metric(GENERATION, &[]).await, 1.0);

    under_traffic(&proxy, async {
        // The file did not change: only the signal can make this reload.
        proxy.sighup();
        proxy.wait_metric(GENERATION, &[], 2.0).await;
        assert_eq!(proxy.metric(RELOADS, &[("result", "success")]).await, 1.0);

        proxy.write_config(&config(&a, &b, NEW_ROUTE));
        proxy.sighup();
        wait_for_route(&proxy, "/fresh/x", "b").await;
    })
    .await;
    assert_eq!(proxy.metric(RELOADS, &[("result", "failure")]).await, 0.0);
    get_echo(&http, &proxy.url("/stable")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_under_traffic() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();
    assert_eq!(status(&http, &proxy.url("/fresh")).await, 404);

    under_traffic(&proxy, async {
        proxy.write_config(&config(&a, &b, NEW_ROUTE));
        wait_for_route(&proxy, "/fresh", "b").await;
    })
    .await;
    proxy.wait_metric(GENERATION, &[], 2.0).await;
    assert_eq!(proxy.metric(RELOADS, &[("result", "success")]).await, 1.0);

    // A change that moves the traffic: /stable now goes to b, under traffic.
    let moved = format!(
        "upstreams:\n{}{}routes:\n  - name: stable\n    match: {{ path_prefix: /stable }}\n    upstream: b\n",
        pool("a", &[a.addr().to_string()], &[]),
        pool("b", &[b.addr().to_string()], &[]),
    );
    under_traffic(&proxy, async {
        proxy.write_config(&moved);
        wait_for_route(&proxy, "/stable", "b").await;
    })
    .await;
    assert_eq!(
        status(&http, &proxy.url("/fresh")).await,
        404,
        "the removed route is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_under_traffic() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();

    // Unchanged file: the request alone makes the reload.
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["generation"], 2);
    assert_eq!(proxy.metric(GENERATION, &[]).await, 2.0);

    under_traffic(&proxy, async {
        proxy.write_config(&config(&a, &b, NEW_ROUTE));
        let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // Applied by the time the answer comes.
        let echo = get_echo(&http, &proxy.url("/fresh")).await;
        assert_eq!(echo.upstream, "b");
    })
    .await;
    assert_eq!(proxy.metric(RELOADS, &[("result", "failure")]).await, 0.0);
}

/// A broken file of each kind is refused by every trigger; the old config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_refused_and_change_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();
    let good = config(&a, &b, NEW_ROUTE);

    let broken = [
        (
            "invalid YAML",
            proxy.config_text(&format!("{good}  - name: [unclosed\n")),
        ),
        (
            "unknown upstream",
            proxy.config_text(&config(
                &a,
                &b,
                "  - name: ghost\n    match: { path_prefix: /fresh }\n    upstream: nowhere\n",
            )),
        ),
        (
            "unknown field",
            proxy.config_text(&config(
                &a,
                &b,
                "  - name: fresh\n    match: { path_prefix: /fresh, hots: x }\n    upstream: b\n",
            )),
        ),
    ];
    let traffic = Traffic::start(&proxy, "/stable", 1);
    for (what, text) in &broken {
        let failures = proxy.metric(RELOADS, &[("result", "failure")]).await;
        proxy.write_raw_config(text);
        let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
        assert_eq!(resp.status(), 422, "{what}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["reloaded"], false, "{what}: {body}");
        let issues = body["issues"].as_array().unwrap();
        assert!(!issues.is_empty(), "{what}: {body}");
        match *what {
            "unknown upstream" => assert!(
                body["issues"]
                    .to_string()
                    .contains("routes[1].upstream: no upstream named `nowhere`"),
                "{body}"
            ),
            "unknown field" => assert!(
                body["issues"].to_string().contains("routes[1].match.hots"),
                "{body}"
            ),
            _ => assert!(
                body["issues"][0].as_str().unwrap().starts_with("line "),
                "{body}"
            ),
        }
        proxy.sighup();
        // The admin reload and the signal each count; the file watcher may add its own.
        proxy_waits_failures(&proxy, failures + 2.0).await;
        assert_eq!(proxy.metric(GENERATION, &[]).await, 1.0, "{what}");
        assert_eq!(
            proxy.metric(RELOADS, &[("result", "success")]).await,
            0.0,
            "{what}"
        );
        assert_eq!(status(&http, &proxy.url("/fresh")).await, 404, "{what}");
        get_echo(&http, &proxy.url("/stable")).await;
    }
    // A file that cannot be read at all.
    std::fs::remove_file(proxy.config_path()).unwrap();
    let failures = proxy.metric(RELOADS, &[("result", "failure")]).await;
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cannot read"),
        "{body}"
    );
    proxy_waits_failures(&proxy, failures + 1.0).await;
    assert_eq!(proxy.metric(GENERATION, &[]).await, 1.0);
    get_echo(&http, &proxy.url("/stable")).await;

    traffic.wait_for_more(20).await;
    let (_, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        proxy.stderr().contains("reload refused"),
        "the reason is logged"
    );

    // Fixed: the next reload applies it.
    proxy.write_config(&good);
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(get_echo(&http, &proxy.url("/fresh")).await.upstream, "b");
    // The file watcher may have applied it a moment before: 2 or 3.
    let generation = body["generation"].as_f64().unwrap();
    assert!(generation >= 2.0, "{body}");
    assert_eq!(proxy.metric(GENERATION, &[]).await, generation);
}

async fn proxy_waits_failures(proxy: &Proxy, at_least: f64) {
    eventually(
        "failed reloads to be counted",
        Duration::from_secs(5),
        || async {
            let n = proxy.metric(RELOADS, &[("result", "failure")]).await;
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_carries_over_a_reload() {
    let ups = Upstream::start_many("u", 2).await;
    let targets = vec![ups[0].addr().to_string(), ups[1].addr().to_string()];
    let fast = "health_check:\n  http: { path: /healthz }\n  interval: 200ms\n  timeout: 500ms\n  healthy_after: 1\n  unhealthy_after: 1";
    // After the reload, probes are an hour apart and need 3 failures: a target that came back
    // healthy from the rebuild would keep taking traffic for the rest of the test.
    let slow = "health_check:\n  http: { path: /healthz }\n  interval: 1h\n  timeout: 500ms\n  healthy_after: 1\n  unhealthy_after: 3";
    let body = |check: &str, extra: &str| {
        format!(
            "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n{extra}",
            pool("pool", &targets, &[check])
        )
    };
    let proxy = Proxy::start(&body(fast, "")).await;
    let http = client();
    let bad = ups[1].addr().to_string();
    let labels = [("upstream", "pool"), ("target", bad.as_str())];
    ups[1].set_health_status(503);
    proxy
        .wait_metric("portcullis_upstream_target_healthy", &labels, 0.0)
        .await;

    proxy.write_config(&body(
        slow,
        "  - name: extra\n    match: { path_prefix: /extra }\n    upstream: pool\n",
    ));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        proxy
            .metric("portcullis_upstream_target_healthy", &labels)
            .await,
        0.0
    );
    let before = ups[1].hits();
    for _ in 0..10 {
        assert_eq!(get_echo(&http, &proxy.url("/extra")).await.upstream, "u0");
    }
    assert_eq!(
        ups[1].hits(),
        before,
        "the unhealthy target came back by the reload"
    );
    let (_, ready) = proxy.readyz(true).await;
    assert_eq!(ready["upstreams"]["pool"]["healthy"], 1, "{ready}");
    assert!(ready["generation"].as_u64().unwrap() >= 2, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_swaps_a_target_moves_traffic_and_metrics() {
    let ups = Upstream::start_many("u", 3).await;
    let body = |targets: &[&Upstream]| {
        let list: Vec<String> = targets.iter().map(|u| u.addr().to_string()).collect();
        format!(
            "upstreams:\n{}routes:\n  - name: stable\n    match: {{ path_prefix: /stable }}\n    upstream: pool\n",
            pool("pool", &list, &[])
        )
    };
    let proxy = Proxy::start(&body(&[&ups[0], &ups[1]])).await;
    let http = client();
    let healthy = "portcullis_upstream_target_healthy";
    let series = |u: &Upstream| u.addr().to_string();
    assert_eq!(
        proxy.metric(healthy, &[("target", &series(&ups[1]))]).await,
        1.0
    );

    under_traffic(&proxy, async {
        proxy.write_config(&body(&[&ups[0], &ups[2]]));
        let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    })
    .await;
    let before = ups[1].hits();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10 {
        *seen
            .entry(get_echo(&http, &proxy.url("/stable")).await.upstream)
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("u0"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("u2"), Some(&5), "{seen:?}");
    assert_eq!(ups[1].hits(), before, "a removed target got traffic");
    let metrics = proxy.metrics().await;
    assert!(
        !metrics.has(healthy, &[("target", &series(&ups[1]))]),
        "removed target still reported"
    );
    assert_eq!(
        metrics.get(healthy, &[("target", &series(&ups[2]))]),
        Some(1.0)
    );
    assert_eq!(
        metrics.get(healthy, &[("target", &series(&ups[0]))]),
        Some(1.0)
    );
}

/// A request keeps the config it started with: a reload that removes its route while it is
/// at the upstream neither fails it nor changes how it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_keeps_its_snapshot() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();
    let url = proxy.url("/stable/slow");
    let slow = {
        let http = http.clone();
        tokio::spawn(async move {
            let resp = http
                .get(url)
                .header("x-delay-ms", "800")
                .header("x-request-id", "in-flight-1")
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    eventually(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || async {
            if a.arrivals() == 1 {
                Ok(())
            } else {
                Err(a.arrivals().to_string())
            }
        },
    )
    .await;
    // The new config has no /stable route and no pool `a`.
    proxy.write_config(&format!(
        "upstreams:\n{}routes:\n{NEW_ROUTE}",
        pool("b", &[b.addr().to_string()], &[])
    ));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        status(&http, &proxy.url("/stable/x")).await,
        404,
        "the new config serves"
    );

    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"upstream\":\"a\""), "{body}");
    let line = eventually("its access line", Duration::from_secs(5), || async {
        proxy
            .access_lines()
            .into_iter()
            .find(|l| l["request_id"] == "in-flight-1")
            .ok_or_else(|| proxy.access_log())
    })
    .await;
    assert_eq!(line["route"], "stable", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream"], a.addr().to_string(), "{line}");
    // The removed route's series are gone from /metrics; the kept route's stay.
    let metrics = proxy.metrics().await;
    let removed = [("route", "stable"), ("method", "GET"), ("code", "200")];
    assert!(!metrics.has("portcullis_requests_total", &removed));
    assert!(!metrics.has(
        "portcullis_request_duration_seconds_count",
        &[("route", "stable")]
    ));
    assert!(metrics.has(
        "portcullis_requests_total",
        &[("route", ""), ("method", "GET"), ("code", "404")]
    ));
}

/// Listeners are bound at start: a reload that changes them applies the rest, keeps serving
/// on the old address and says a restart is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_change_needs_a_restart_and_says_so() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();
    let old = proxy.addr().to_string();
    let new = format!("127.0.0.1:{}", crate::support::free_port());
    let text = proxy
        .config_text(&config(&a, &b, NEW_ROUTE))
        .replace(&old, &new);
    assert!(text.contains(&new));
    proxy.write_raw_config(&text);
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        get_echo(&http, &proxy.url("/fresh")).await.upstream,
        "b",
        "the rest applies"
    );
    assert!(
        std::net::TcpStream::connect(&new).is_err(),
        "a new listener appeared"
    );
    assert!(
        proxy.stderr().contains("only after a restart"),
        "{}",
        proxy.stderr()
    );
}

/// Without a health check every target counts as healthy, also when the check is removed by
/// a reload while a target was ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_health_check_readmits_every_target() {
    let ups = Upstream::start_many("u", 2).await;
    let targets = vec![ups[0].addr().to_string(), ups[1].addr().to_string()];
    let check = "health_check:\n  http: { path: /healthz }\n  interval: 200ms\n  timeout: 500ms\n  healthy_after: 1\n  unhealthy_after: 1";
    let body = |extra: &[&str]| {
        format!(
            "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
            pool("pool", &targets, extra)
        )
    };
    let proxy = Proxy::start(&body(&[check])).await;
    let http = client();
    let labels = [("upstream", "pool"), ("target", targets[1].as_str())];
    ups[1].set_health_status(500);
    proxy
        .wait_metric("portcullis_upstream_target_healthy", &labels, 0.0)
        .await;

    proxy.write_config(&body(&[]));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10 {
        *seen
            .entry(get_echo(&http, &proxy.url("/")).await.upstream)
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("u1"), Some(&5), "{seen:?}");
    assert_eq!(
        proxy
            .metric("portcullis_upstream_target_healthy", &labels)
            .await,
        1.0
    );
    let (_, ready) = proxy.readyz(true).await;
    assert_eq!(ready["upstreams"]["pool"]["healthy"], 2, "{ready}");
}

/// The `portcullis_*` samples of a scrape that a reload could touch: all but the reload
/// counters and the open-connection gauge (the scrapes' own traffic).
fn series_of(metrics: &crate::support::metrics::Metrics) -> Vec<String> {
    let mut lines: Vec<String> = metrics
        .text()
        .lines()
        .filter(|l| l.starts_with("portcullis_"))
        .filter(|l| !l.starts_with(RELOADS) && !l.starts_with("portcullis_connections_"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// A config that compiles a new pool (a target, a probe, a concurrency cap), a new route
/// with limits, and an issuer with a key file, and is then refused for a route naming no
/// pool: none of what it compiled may show in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_leaves_metrics_as_they_were() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "")).await;
    let http = client();
    get_echo(&http, &proxy.url("/stable")).await;
    assert_eq!(status(&http, &proxy.url("/nowhere")).await, 404);
    // Counted once the response is sent: wait for both, so nothing moves after.
    let requests = "portcullis_requests_total";
    proxy
        .wait_metric(
            requests,
            &[("route", "stable"), ("method", "GET"), ("code", "200")],
            1.0,
        )
        .await;
    proxy
        .wait_metric(
            requests,
            &[("route", ""), ("method", "GET"), ("code", "404")],
            1.0,
        )
        .await;
    let before = series_of(&proxy.metrics().await);

    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/config/keys/example-jwks.json");
    let refused = format!(
        "issuers:\n  - name: files\n    issuer: https://files.test/\n    jwks_file: {jwks}\n    audiences: [api]\n\
         upstreams:\n{}{}{}\
         routes:\n  - name: stable\n    match: {{ path_prefix: /stable }}\n    upstream: a\n    auth: none\n\
         \x20 - name: limited\n    match: {{ path_prefix: /limited }}\n    upstream: c\n    auth: {{ issuers: [files] }}\n\
         \x20   rate_limit:\n      per_ip: {{ rate: 10/s, burst: 10 }}\n      per_route: {{ rate: 10/s, burst: 10 }}\n\
         \x20 - name: ghost\n    match: {{ path_prefix: /ghost }}\n    upstream: nowhere\n    auth: none\n",
        pool("a", &[a.addr().to_string()], &[]),
        pool("b", &[b.addr().to_string()], &[]),
        pool(
            "c",
            &["127.0.0.1:9".to_string()],
            &[
                "concurrency: { limit: 5 }",
                "health_check: { http: { path: /healthz }, interval: 1s }",
            ],
        ),
    );
    proxy.write_config(&refused);
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["issues"]
            .to_string()
            .contains("no upstream named `nowhere`"),
        "{body}"
    );
    assert_eq!(series_of(&proxy.metrics().await), before);
}

/// An accepted reload drops the series of what it removed (a route, a pool, a limit) and a
/// renamed route's series move to the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_reload_removes_and_moves_series() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let limited = "  - name: fresh\n    match: { path_prefix: /fresh }\n    upstream: b\n    rate_limit:\n      per_ip: { rate: 100/s, burst: 100 }\n";
    let first = format!(
        "upstreams:\n{}{}routes:\n  - name: stable\n    match: {{ path_prefix: /stable }}\n    upstream: a\n    rate_limit:\n      per_route: {{ rate: 100/s, burst: 100 }}\n{limited}",
        pool("a", &[a.addr().to_string()], &[]),
        pool("b", &[b.addr().to_string()], &["concurrency: { limit: 5 }"]),
    );
    let proxy = Proxy::start(&first).await;
    let http = client();
    get_echo(&http, &proxy.url("/stable")).await;
    get_echo(&http, &proxy.url("/fresh")).await;
    let m = proxy.metrics().await;
    let b_target = [("upstream", "b")];
    assert!(m.has("portcullis_upstream_target_healthy", &b_target));
    assert!(m.has("portcullis_upstream_concurrency_limit", &b_target));
    assert!(m.has(
        "portcullis_ratelimit_decisions_total",
        &[
            ("route", "stable"),
            ("limit", "per_route"),
            ("result", "allowed")
        ]
    ));
    assert!(m.has(
        "portcullis_requests_total",
        &[("route", "fresh"), ("method", "GET"), ("code", "200")]
    ));

    // Pool b, route fresh and stable's limit removed.
    proxy.write_config(&format!(
        "upstreams:\n{}routes:\n  - name: stable\n    match: {{ path_prefix: /stable }}\n    upstream: a\n",
        pool("a", &[a.addr().to_string()], &[]),
    ));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let m = proxy.metrics().await;
    for (name, labels) in [
        ("portcullis_upstream_target_healthy", &b_target[..]),
        ("portcullis_upstream_concurrency_limit", &b_target[..]),
        ("portcullis_upstream_in_flight", &b_target[..]),
        ("portcullis_requests_total", &[("route", "fresh")][..]),
        (
            "portcullis_ratelimit_decisions_total",
            &[("route", "fresh")][..],
        ),
        (
            "portcullis_ratelimit_decisions_total",
            &[("route", "stable")][..],
        ),
    ] {
        let found = m
            .text()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .any(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            });
        assert!(!found, "{name}{labels:?} is still there:\n{}", m.text());
    }
    assert!(m.has(
        "portcullis_requests_total",
        &[("route", "stable"), ("method", "GET"), ("code", "200")]
    ));

    // stable renamed steady: the series follow the name.
    proxy.write_config(&format!(
        "upstreams:\n{}routes:\n  - name: steady\n    match: {{ path_prefix: /stable }}\n    upstream: a\n",
        pool("a", &[a.addr().to_string()], &[]),
    ));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    get_echo(&http, &proxy.url("/stable")).await;
    proxy
        .wait_metric(
            "portcullis_requests_total",
            &[("route", "steady"), ("method", "GET"), ("code", "200")],
            1.0,
        )
        .await;
    let m = proxy.metrics().await;
    assert!(
        !m.text().contains("route=\"stable\""),
        "stable's series are still there:\n{}",
        m.text()
    );
    assert_eq!(
        m.get(
            "portcullis_requests_total",
            &[("route", "steady"), ("method", "GET"), ("code", "200")]
        ),
        Some(1.0)
    );
}
