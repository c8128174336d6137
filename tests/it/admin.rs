//! The admin endpoint: liveness, readiness, metrics that move as they should, methods.

use std::time::Duration;

use crate::support::{client, get_echo, pool, Proxy, Upstream};

fn config(up: &Upstream) -> String {
    format!(
        "upstreams:\n{}routes:\n  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: pool\n  - name: docs\n    match: {{ path_prefix: /docs }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up)).await;
    let http = client();
    let resp = http.get(proxy.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http.get(proxy.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "ready": true, "not_ready": [] }),
        "terse by default"
    );
    let resp = http
        .get(proxy.admin_url("/readyz?verbose"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["generation"], 1, "{body}");
    assert_eq!(body["upstreams"]["pool"]["healthy"], 1, "{body}");
    assert_eq!(body["not_ready"], serde_json::json!([]), "{body}");
    // The admin endpoint is not the proxy.
    let resp = http.get(proxy.admin_url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_a_405() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up)).await;
    let http = client();
    for (method, path) in [
        (reqwest::Method::POST, "/metrics"),
        (reqwest::Method::DELETE, "/healthz"),
        (reqwest::Method::PUT, "/readyz"),
        (reqwest::Method::GET, "/reload"),
    ] {
        let resp = http
            .request(method.clone(), proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
    }
    // GET /reload did not reload.
    assert_eq!(proxy.metric("portcullis_config_generation", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_the_requests_sent() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up)).await;
    let http = client();
    let ok = [("route", "orders"), ("method", "GET"), ("code", "200")];
    let count = "portcullis_request_duration_seconds_count";

    let before = proxy.metrics().await;
    let ok_before = before.get("portcullis_requests_total", &ok).unwrap_or(0.0);
    let docs_before = before
        .get(
            "portcullis_requests_total",
            &[("route", "docs"), ("method", "GET"), ("code", "200")],
        )
        .unwrap_or(0.0);
    let hist_before = before
        .get(count, &[("route", "orders"), ("method", "GET")])
        .unwrap_or(0.0);
    let miss_before = before
        .get(
            "portcullis_requests_total",
            &[("route", ""), ("method", "GET"), ("code", "404")],
        )
        .unwrap_or(0.0);

    for i in 0..7 {
        get_echo(&http, &proxy.url(&format!("/orders/{i}"))).await;
    }
    for _ in 0..3 {
        assert_eq!(
            http.get(proxy.url("/nowhere"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
    // Counted in the logging phase, just after the response: wait for it, then check the
    // exact figure.
    proxy
        .wait_metric("portcullis_requests_total", &ok, ok_before + 7.0)
        .await;
    proxy
        .wait_metric(
            "portcullis_requests_total",
            &[("route", ""), ("method", "GET"), ("code", "404")],
            miss_before + 3.0,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = proxy.metrics().await;
    assert_eq!(
        after.get("portcullis_requests_total", &ok),
        Some(ok_before + 7.0)
    );
    assert_eq!(
        after.get(count, &[("route", "orders"), ("method", "GET")]),
        Some(hist_before + 7.0)
    );
    assert_eq!(
        after
            .get(
                "portcullis_requests_total",
                &[("route", "docs"), ("method", "GET"), ("code", "200")]
            )
            .unwrap_or(0.0),
        docs_before,
        "another route did not move"
    );
    assert_eq!(after.requests_in_class("orders", '5'), 0.0);
    assert!(after.has(
        "portcullis_request_duration_seconds_bucket",
        &[("route", "orders"), ("le", "+Inf")]
    ));
    assert_eq!(after.get("portcullis_config_generation", &[]), Some(1.0));
    assert_eq!(
        after.get(
            "portcullis_upstream_target_healthy",
            &[("upstream", "pool")]
        ),
        Some(1.0)
    );
    let rss = after.get("process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1_000_000.0, "rss {rss}");
    assert!(after.has("process_cpu_seconds_total", &[]));
    // Labels stay bounded: no path, no client address.
    assert!(!after.text().contains("/orders/"), "a path became a label");
    assert!(
        !after.text().contains("127.0.0.1\""),
        "a client address became a label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_refusals_by_class() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up)).await;
    let http = client();
    let resp = http
        .get(proxy.url("/orders/1"))
        .header("x-delay-ms", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut up = up;
    up.stop().await;
    // The only target is gone: each 502 counts as a 5xx of the route.
    let mut bad_gateways = 0.0;
    for _ in 0..3 {
        let s = http
            .get(proxy.url("/orders/2"))
            .send()
            .await
            .unwrap()
            .status();
        if s == 502 {
            bad_gateways += 1.0;
        }
    }
    assert!(bad_gateways >= 2.0, "{bad_gateways}");
    proxy
        .wait_metric(
            "portcullis_requests_total",
            &[("route", "orders"), ("method", "GET"), ("code", "502")],
            bad_gateways,
        )
        .await;
}
