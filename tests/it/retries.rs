//! Retries beyond connect failures (an upstream that answers 503, resets, hangs), the rules
//! that keep them safe (idempotent methods, the retry budget), `x-portcullis-attempts`, and
//! the timeouts a route sets over its pool's.

use crate::support::upstream::Fault;
use crate::support::{addrs, client, pool, Proxy, Upstream};

const RETRIES: &str = "portcullis_upstream_retries_total";
const EXHAUSTED: &str = "portcullis_upstream_retry_budget_exhausted_total";

/// One route `all` on `/` to pool `pool` over `targets`, the pool's lines `pool_extra`, the
/// route's lines `route_extra` (at the route's field indent).
fn config(targets: &[String], pool_extra: &[&str], route_extra: &str) -> String {
    let mut route = String::new();
    for l in route_extra.lines() {
        route.push_str(&format!("    {l}\n"));
    }
    format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n{route}",
        pool("pool", targets, pool_extra)
    )
}

async fn retries(proxy: &Proxy, reason: &str) -> f64 {
    proxy
        .metric(RETRIES, &[("upstream", "pool"), ("reason", reason)])
        .await
}

/// The attempt numbers the upstream saw, in arrival order.
fn attempts(up: &Upstream) -> Vec<String> {
    up.received()
        .iter()
        .map(|e| e.header("x-portcullis-attempts").unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_a_draining_target_is_retried_on_another() {
    let ups = Upstream::start_many("u", 2).await;
    ups[0].set_fault(Fault::Status(503));
    let proxy = Proxy::start(&config(&addrs(&ups), &[], "")).await;
    let http = client();
    // Counters exist at zero before anything happened.
    assert_eq!(retries(&proxy, "503").await, 0.0);
    assert_eq!(retries(&proxy, "reset").await, 0.0);
    assert_eq!(proxy.metric(EXHAUSTED, &[("upstream", "pool")]).await, 0.0);
    for i in 0..10 {
        let resp = http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    assert_eq!(ups[1].hits(), 10);
    // Round robin sends every other first attempt to the draining target.
    let refused = ups[0].received().len();
    assert!(refused >= 4, "{refused}");
    assert_eq!(retries(&proxy, "503").await, refused as f64);
    // The upstream is told which attempt it sees; a client cannot say it for us.
    assert!(
        attempts(&ups[0]).iter().all(|a| a == "1"),
        "{:?}",
        attempts(&ups[0])
    );
    let second = attempts(&ups[1]).iter().filter(|a| *a == "2").count();
    assert_eq!(second, refused, "{:?}", attempts(&ups[1]));
    let resp = http
        .get(proxy.url("/forged"))
        .header("x-portcullis-attempts", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let last = ups
        .iter()
        .flat_map(|u| u.received())
        .filter(|e| e.path == "/forged");
    assert!(last
        .into_iter()
        .all(|e| e.header("x-portcullis-attempts").as_deref() != Some("7")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_unless_the_route_says_so() {
    let ups = Upstream::start_many("u", 2).await;
    ups[0].set_fault(Fault::Status(503));
    let proxy = Proxy::start(&config(&addrs(&ups), &[], "")).await;
    let http = client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = http
            .post(proxy.url(&format!("/{i}")))
            .body("order")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    // The draining target's 503 reaches the client as it was.
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(retries(&proxy, "503").await, 0.0);

    let proxy = Proxy::start(&config(
        &addrs(&ups),
        &[],
        "retry: { idempotent_only: false }",
    ))
    .await;
    for i in 0..6 {
        let resp = http
            .post(proxy.url(&format!("/again{i}")))
            .body("order")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The body was replayed to the second target.
    let replayed: Vec<_> = ups[1]
        .received()
        .into_iter()
        .filter(|e| {
            e.path.starts_with("/again")
                && e.header("x-portcullis-attempts").as_deref() == Some("2")
        })
        .collect();
    let refused = ups[0]
        .received()
        .iter()
        .filter(|e| e.path.starts_with("/again"))
        .count();
    assert!(refused >= 3, "{refused}");
    assert_eq!(replayed.len(), refused);
    assert!(replayed.iter().all(|e| e.body == "order"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_and_a_hang_on_timeout_when_asked() {
    let ups = Upstream::start_many("u", 2).await;
    ups[0].set_fault(Fault::Reset);
    let proxy = Proxy::start(&config(&addrs(&ups), &[], "")).await;
    let http = client();
    for i in 0..6 {
        let resp = http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Each retry moves the round robin on, so the first attempts may all meet the reset.
    let reset = ups[0].received().len();
    assert!(reset >= 3, "{reset}");
    assert_eq!(retries(&proxy, "reset").await, reset as f64);

    // A hanging target: retried only with `timeout` in `on`, each attempt bounded by
    // `per_try_timeout`.
    ups[0].set_fault(Fault::Hang);
    let proxy = Proxy::start(&config(
        &addrs(&ups),
        &[],
        "retry: { on: [timeout], per_try_timeout: 300ms }",
    ))
    .await;
    for i in 0..4 {
        let resp = http.get(proxy.url(&format!("/h{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let hung = ups[0].received().len() - reset;
    assert!(hung >= 2, "{hung}");
    assert_eq!(retries(&proxy, "timeout").await, hung as f64);
    let proxy = Proxy::start(&config(
        &addrs(&ups),
        &[],
        "retry: { per_try_timeout: 300ms }",
    ))
    .await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(
            http.get(proxy.url(&format!("/n{i}")))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 504, 504]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_target_is_tried_again_up_to_the_attempts() {
    let up = Upstream::start("only").await;
    up.set_fault(Fault::Status(503));
    let proxy = Proxy::start(&config(
        &[up.addr().to_string()],
        &["retry: { attempts: 3, on: [502, 503] }"],
        "",
    ))
    .await;
    let resp = client().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(attempts(&up), ["1", "2", "3"]);
    assert_eq!(retries(&proxy, "503").await, 2.0);
    // A route's `attempts` overrides its pool's.
    let proxy = Proxy::start(&config(
        &[up.addr().to_string()],
        &["retry: { attempts: 3, on: [502, 503] }"],
        "retry: { attempts: 1 }",
    ))
    .await;
    let before = up.received().len();
    let resp = client().get(proxy.url("/y")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(up.received().len(), before + 1);
}

/// Every target failing slowly: only the budget's share of the requests in flight is retried
/// (20% of 20 = 4 at once), the rest answered at once with what the target said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm() {
    let ups = Upstream::start_many("u", 2).await;
    for up in &ups {
        up.set_fault(Fault::Status(503));
        up.set_delay(std::time::Duration::from_millis(400));
    }
    let proxy = Proxy::start(&config(&addrs(&ups), &[], "")).await;
    let http = client();
    let requests = (0..20).map(|i| {
        let (http, url) = (http.clone(), proxy.url(&format!("/{i}")));
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
    });
    for r in requests.collect::<Vec<_>>() {
        assert_eq!(r.await.unwrap(), 503);
    }
    let retried = retries(&proxy, "503").await;
    let exhausted = proxy.metric(EXHAUSTED, &[("upstream", "pool")]).await;
    assert!((1.0..=4.0).contains(&retried), "retried {retried}");
    assert_eq!(retried + exhausted, 20.0, "every request asked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_is_a_504_and_overrides_the_pool() {
    let up = Upstream::start("slow").await;
    up.set_delay(std::time::Duration::from_millis(1500));
    let body = format!(
        "upstreams:\n{}routes:\n  - name: quick\n    match: {{ path_prefix: /quick }}\n    upstream: pool\n    timeout: 300ms\n  - name: patient\n    match: {{ path_prefix: /patient }}\n    upstream: pool\n  - name: short-read\n    match: {{ path_prefix: /short }}\n    upstream: pool\n    read_timeout: 300ms\n",
        pool("pool", &[up.addr().to_string()], &["read_timeout: 5s"])
    );
    let proxy = Proxy::start(&body).await;
    let http = client();
    for path in ["/quick", "/short"] {
        let resp = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 504, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "upstream_timeout", "{path}: {body}");
    }
    let resp = http.get(proxy.url("/patient")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The connection a timed-out request left is closed, never handed to the next request
    // (whose answer would then be the slow one's): no connection is ever reused here.
    let target = up.addr().to_string();
    let reused = proxy
        .metric(
            "portcullis_upstream_connections_total",
            &[
                ("upstream", "pool"),
                ("target", &target),
                ("reused", "true"),
            ],
        )
        .await;
    assert_eq!(reused, 0.0);
    // Lines reach the file within the writer's next round.
    proxy
        .wait_access_until("the timeout's line", |lines| {
            lines
                .iter()
                .any(|l| l["route"] == "quick" && l["reason"] == "upstream_timeout")
        })
        .await;
}
