//! Upstream pools: balancing, health checks (ejection and re-admission), every target down,
//! retries on connect failure, read timeouts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{
    client, client_builder, eventually, free_port, get_echo, one_route, pool, pool_behind_proxy,
    Blackhole, Proxy, Upstream,
};

const HEALTHY: &str = "portcullis_upstream_target_healthy";
const RETRIES: &str = "portcullis_upstream_retries_total";

/// Connect failures of pool `pool` retried so far.
async fn connect_retries(proxy: &Proxy, pool: &str) -> f64 {
    proxy
        .metric(
            RETRIES,
            &[("upstream", pool), ("reason", "connect_failure")],
        )
        .await
}

/// Which upstream answered each of `n` sequential GETs of `/`.
async fn spread(proxy: &Proxy, http: &reqwest::Client, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen
            .entry(get_echo(http, &proxy.url("/")).await.upstream)
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let (ups, proxy) = pool_behind_proxy(3, &["balance: round_robin"]).await;
    let seen = spread(&proxy, &client(), 30).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for u in &ups {
        assert_eq!(seen[u.name()], 10, "{seen:?}");
        assert_eq!(u.hits(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reaches_every_target() {
    let (_ups, proxy) = pool_behind_proxy(3, &["balance: random"]).await;
    // The chance that 90 random picks miss one of 3 targets is below 1e-15.
    let seen = spread(&proxy, &client(), 90).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_sticks_per_value() {
    let (_ups, proxy) = pool_behind_proxy(
        3,
        &["balance: consistent_hash", "hash_on: \"header:x-user\""],
    )
    .await;
    let http = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..4 {
        for user in 0..25 {
            let user = format!("user-{user}");
            let echo: crate::support::Echo = http
                .get(proxy.url("/"))
                .header("x-user", &user)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let first = owner.entry(user.clone()).or_insert(echo.upstream.clone());
            assert_eq!(*first, echo.upstream, "{user} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    // 25 users, not a multiple of 3: round robin would move them between rounds. All of
    // them on one of 3 targets would mean the header is not hashed at all.
    assert!(used.len() > 1, "every user on one target: {owner:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_client_ip_sticks_per_client() {
    let (_ups, proxy) =
        pool_behind_proxy(3, &["balance: consistent_hash", "hash_on: client_ip"]).await;
    // Every 127.0.0.0/8 address is loopback on Linux: each client gets its own source IP.
    let mut owner: HashMap<u8, String> = HashMap::new();
    for last in 10..34u8 {
        let ip = std::net::IpAddr::from([127, 0, 0, last]);
        let http = client_builder().local_address(ip).build().unwrap();
        for _ in 0..3 {
            let echo = get_echo(&http, &proxy.url("/")).await;
            let first = owner.entry(last).or_insert(echo.upstream.clone());
            assert_eq!(*first, echo.upstream, "client {ip} moved");
            assert_eq!(
                echo.header("x-forwarded-for").as_deref(),
                Some(ip.to_string().as_str())
            );
        }
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert!(used.len() > 1, "every client on one target: {owner:?}");
}

const FAST_HTTP_CHECK: &str = "health_check:
  http: { path: /healthz, expect_status: 200 }
  interval: 200ms
  timeout: 500ms
  healthy_after: 1
  unhealthy_after: 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_ejects_a_failing_target_and_readmits_it() {
    let (ups, proxy) = pool_behind_proxy(2, &[FAST_HTTP_CHECK]).await;
    let http = client();
    let bad = ups[1].addr().to_string();
    let labels = [("upstream", "pool"), ("target", bad.as_str())];
    eventually(
        "probes to reach both targets",
        Duration::from_secs(5),
        || async {
            if ups.iter().all(|u| u.health_hits() > 0) {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    assert_eq!(spread(&proxy, &http, 4).await.len(), 2);

    ups[1].set_health_status(500);
    proxy.wait_metric(HEALTHY, &labels, 0.0).await;
    let before = ups[1].hits();
    let seen = spread(&proxy, &http, 20).await;
    assert_eq!(seen.get("u0"), Some(&20), "{seen:?}");
    assert_eq!(ups[1].hits(), before, "an ejected target got traffic");

    let (_, ready) = proxy.readyz(true).await;
    assert_eq!(
        ready["ready"], true,
        "one healthy target is enough: {ready}"
    );
    assert_eq!(ready["upstreams"]["pool"]["healthy"], 1, "{ready}");
    assert_eq!(ready["upstreams"]["pool"]["targets"], 2, "{ready}");

    ups[1].set_health_status(200);
    proxy.wait_metric(HEALTHY, &labels, 1.0).await;
    let seen = spread(&proxy, &http, 10).await;
    assert_eq!(
        seen.get("u1"),
        Some(&5),
        "re-admitted target takes its turn: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_ejects_a_stopped_target_and_readmits_it_on_restart() {
    let (mut ups, proxy) = pool_behind_proxy(2, &[FAST_HTTP_CHECK]).await;
    let http = client();
    let down = ups[1].addr().to_string();
    let labels = [("upstream", "pool"), ("target", down.as_str())];
    proxy.wait_metric(HEALTHY, &labels, 1.0).await;

    ups[1].stop().await;
    proxy.wait_metric(HEALTHY, &labels, 0.0).await;
    let retries = connect_retries(&proxy, "pool").await;
    let seen = spread(&proxy, &http, 20).await;
    assert_eq!(seen.get("u0"), Some(&20), "{seen:?}");
    // Not even a connection attempt: an ejected target is never picked, so nothing is retried.
    assert_eq!(connect_retries(&proxy, "pool").await, retries);

    ups[1].restart().await;
    proxy.wait_metric(HEALTHY, &labels, 1.0).await;
    let before = ups[1].hits();
    let seen = spread(&proxy, &http, 10).await;
    assert_eq!(seen.get("u1"), Some(&5), "{seen:?}");
    assert_eq!(ups[1].hits(), before + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_ejects_and_readmits() {
    let check = "health_check:\n  tcp: {}\n  interval: 200ms\n  timeout: 300ms\n  healthy_after: 1\n  unhealthy_after: 1";
    let (mut ups, proxy) = pool_behind_proxy(2, &[check]).await;
    let http = client();
    let down = ups[0].addr().to_string();
    let labels = [("upstream", "pool"), ("target", down.as_str())];

    ups[0].stop().await;
    proxy.wait_metric(HEALTHY, &labels, 0.0).await;
    let retries = connect_retries(&proxy, "pool").await;
    assert_eq!(spread(&proxy, &http, 10).await.get("u1"), Some(&10));
    assert_eq!(connect_retries(&proxy, "pool").await, retries);
    // A TCP check never sends HTTP.
    assert_eq!(ups[1].health_hits(), 0);

    ups[0].restart().await;
    proxy.wait_metric(HEALTHY, &labels, 1.0).await;
    assert_eq!(spread(&proxy, &http, 10).await.get("u0"), Some(&5));
}

/// A dead pool answers 502 at once; it does not make the node unready (every node would see
/// the same and the Service would empty), unless `readiness.require_pools` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_ejected_gives_502_at_once_and_readyz_only_when_required() {
    let mut up = Upstream::start("only").await;
    let body = one_route(&pool("pool", &[up.addr().to_string()], &[FAST_HTTP_CHECK]));
    let proxy = Proxy::start(&body).await;
    let http = client();
    let target = up.addr().to_string();
    assert_eq!(proxy.readyz(false).await.0, 200);

    up.stop().await;
    proxy
        .wait_metric(HEALTHY, &[("upstream", "pool"), ("target", &target)], 0.0)
        .await;
    for _ in 0..3 {
        let started = Instant::now();
        let resp = http.get(proxy.url("/x")).send().await.unwrap();
        // Generous: this proves "no hang", not a speed.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.headers().contains_key("x-request-id"));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "no_healthy_upstream", "{body}");
    }

    // Not required: still ready, and the verbose report and the metrics show the dead pool.
    let (status, terse) = proxy.readyz(false).await;
    assert_eq!(status, 200, "{terse}");
    assert_eq!(terse["ready"], true, "{terse}");
    assert!(terse.get("upstreams").is_none(), "terse: {terse}");
    let (status, verbose) = proxy.readyz(true).await;
    assert_eq!(status, 200, "{verbose}");
    assert_eq!(verbose["upstreams"]["pool"]["healthy"], 0, "{verbose}");
    assert_eq!(verbose["upstreams"]["pool"]["required"], false, "{verbose}");
    assert_eq!(
        proxy
            .metric(
                "portcullis_upstream_healthy_targets",
                &[("upstream", "pool")]
            )
            .await,
        0.0
    );

    // Required: the node is unready while the pool is dead.
    proxy.write_config(&format!("readiness: {{ require_pools: [pool] }}\n{body}"));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (status, terse) = proxy.readyz(false).await;
    assert_eq!(status, 503, "{terse}");
    assert_eq!(terse["ready"], false);
    let reasons = terse["not_ready"].to_string();
    assert!(reasons.contains("pool"), "{terse}");
    assert!(reasons.contains("no healthy target"), "{terse}");

    up.restart().await;
    eventually("readyz to recover", Duration::from_secs(10), || async {
        match proxy.readyz(false).await {
            (200, _) => Ok(()),
            (s, body) => Err(format!("{s} {body}")),
        }
    })
    .await;
    assert_eq!(
        proxy
            .metric(
                "portcullis_upstream_healthy_targets",
                &[("upstream", "pool")]
            )
            .await,
        1.0
    );
    get_echo(&http, &proxy.url("/x")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_unreachable_without_checks_gives_502_at_once() {
    let targets = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let proxy = Proxy::start(&one_route(&pool("pool", &targets, &["retries: 1"]))).await;
    let http = client();
    for _ in 0..3 {
        let started = Instant::now();
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(resp.status(), 502);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unreachable", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_target() {
    let up = Upstream::start("alive").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let targets = vec![dead, up.addr().to_string()];
    // Outlier detection off: this is about retries, and it would take the dead target out.
    let proxy = Proxy::start(&one_route(&pool(
        "pool",
        &targets,
        &["retries: 1", "outlier: { consecutive_errors: 0 }"],
    )))
    .await;
    let http = client();
    let before = connect_retries(&proxy, "pool").await;
    for i in 0..20 {
        let resp = http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "request {i}: {}",
            resp.text().await.unwrap()
        );
    }
    assert_eq!(up.hits(), 20);
    let retried = connect_retries(&proxy, "pool").await - before;
    // Round robin sends at least every other first try to the dead target.
    assert!(retried >= 10.0, "retries moved by {retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_connect_failure_is_a_502() {
    let up = Upstream::start("alive").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let targets = vec![dead, up.addr().to_string()];
    let proxy = Proxy::start(&one_route(&pool("pool", &targets, &["retries: 0"]))).await;
    let http = client();
    let mut statuses = HashMap::new();
    for _ in 0..10 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, HashMap::from([(200, 5), (502, 5)]));
    assert_eq!(connect_retries(&proxy, "pool").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_beyond_read_timeout_is_a_504() {
    let up = Upstream::start("slow").await;
    let proxy = Proxy::start(&one_route(&pool(
        "pool",
        &[up.addr().to_string()],
        &["read_timeout: 300ms"],
    )))
    .await;
    let http = client();
    let started = Instant::now();
    let resp = http
        .get(proxy.url("/slow"))
        .header("x-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout", "{body}");
    // Within the timeout the same upstream answers.
    let resp = http
        .get(proxy.url("/fast"))
        .header("x-delay-ms", "50")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_a_silent_target_and_retries_elsewhere() {
    let hole = Blackhole::new();
    let up = Upstream::start("alive").await;
    let targets = vec![hole.addr().to_string(), up.addr().to_string()];
    let proxy = Proxy::start(&format!(
        "upstreams:\n{}{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n  - name: silent\n    match: {{ path_prefix: /silent }}\n    upstream: silent\n",
        pool("pool", &targets, &["connect_timeout: 200ms", "retries: 1"]),
        pool("silent", &[hole.addr().to_string()], &["connect_timeout: 200ms"]),
    ))
    .await;
    let http = client();
    for i in 0..6 {
        let started = Instant::now();
        let echo = get_echo(&http, &proxy.url(&format!("/{i}"))).await;
        assert_eq!(echo.upstream, "alive");
        // Without the timeout a connect to it hangs for minutes.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(connect_retries(&proxy, "pool").await >= 3.0);

    let started = Instant::now();
    let resp = http.get(proxy.url("/silent")).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable", "{body}");
}

/// Consistent hashing keeps keys where they are when a target is ejected: only the keys of
/// that target move (a modulo hash would move most of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_only_the_keys_of_an_ejected_target() {
    let (ups, proxy) = pool_behind_proxy(
        3,
        &[
            "balance: consistent_hash",
            "hash_on: \"header:x-user\"",
            FAST_HTTP_CHECK,
        ],
    )
    .await;
    let http = client();
    let owners = |users: Vec<String>| {
        let http = http.clone();
        let url = proxy.url("/");
        async move {
            let mut out = HashMap::new();
            for user in users {
                let echo: crate::support::Echo = http
                    .get(&url)
                    .header("x-user", &user)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                out.insert(user, echo.upstream);
            }
            out
        }
    };
    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let before = owners(users.clone()).await;
    // Eject the target that holds the most keys, so that some keys must move.
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for owner in before.values() {
        *counts.entry(owner).or_default() += 1;
    }
    let (ejected, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let ejected = ejected.to_string();
    let up = ups.iter().find(|u| u.name() == ejected).unwrap();
    up.set_health_status(500);
    let target = up.addr().to_string();
    proxy
        .wait_metric(HEALTHY, &[("upstream", "pool"), ("target", &target)], 0.0)
        .await;

    let after = owners(users.clone()).await;
    for user in &users {
        if before[user] == ejected {
            assert_ne!(
                after[user], ejected,
                "{user} still sent to the ejected target"
            );
        } else {
            assert_eq!(
                after[user], before[user],
                "{user} moved though its target is healthy"
            );
        }
    }
}

/// The retry counter counts retries that happen: one per failed connection that another
/// target can take over, none when no target is left to try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_counted_only_when_another_target_is_tried() {
    let (dead_a, dead_b, dead_c) = (free_port(), free_port(), free_port());
    let proxy = Proxy::start(&format!(
        "upstreams:\n{}{}routes:\n  - name: one\n    match: {{ path_prefix: /one }}\n    upstream: one\n  - name: two\n    match: {{ path_prefix: /two }}\n    upstream: two\n",
        pool("one", &[format!("127.0.0.1:{dead_a}")], &["retries: 3"]),
        pool(
            "two",
            &[format!("127.0.0.1:{dead_b}"), format!("127.0.0.1:{dead_c}")],
            &["retries: 3"]
        ),
    ))
    .await;
    let http = client();
    for path in ["/one", "/two"] {
        for _ in 0..3 {
            let resp = http.get(proxy.url(path)).send().await.unwrap();
            assert_eq!(resp.status(), 502, "{path}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "upstream_unreachable", "{path}: {body}");
        }
    }
    assert_eq!(connect_retries(&proxy, "one").await, 0.0);
    assert_eq!(connect_retries(&proxy, "two").await, 3.0);
}

/// Each target's series: answers by code, time to first byte and attempt duration, pooled and
/// new connections; present from the start, gone with the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_has_its_own_series() {
    let (ups, proxy) = pool_behind_proxy(2, &[]).await;
    ups[1].set_fault(crate::support::upstream::Fault::Status(404));
    let (t0, t1) = (ups[0].addr().to_string(), ups[1].addr().to_string());
    let series = |target: &str, extra: (&str, &str)| {
        vec![("upstream", "pool"), ("target", target), extra]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let value = |m: &crate::support::metrics::Metrics, name: &str, l: &[(String, String)]| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        m.get(name, &l)
    };
    let m = proxy.metrics().await;
    let conns = "portcullis_upstream_connections_total";
    assert_eq!(
        value(&m, conns, &series(&t0, ("reused", "true"))),
        Some(0.0)
    );
    assert_eq!(
        value(&m, conns, &series(&t0, ("reused", "false"))),
        Some(0.0)
    );

    let http = client();
    for i in 0..6 {
        http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
    }
    let m = proxy.metrics().await;
    let codes = "portcullis_upstream_responses_total";
    assert_eq!(value(&m, codes, &series(&t0, ("code", "200"))), Some(3.0));
    assert_eq!(value(&m, codes, &series(&t1, ("code", "404"))), Some(3.0));
    let counted = |name: &str, target: &str| {
        let l = [("upstream", "pool"), ("target", target)];
        m.get(&format!("{name}_count"), &l)
    };
    assert_eq!(
        counted("portcullis_upstream_first_byte_seconds", &t0),
        Some(3.0)
    );
    assert_eq!(
        counted("portcullis_upstream_attempt_duration_seconds", &t1),
        Some(3.0)
    );
    // One client connection, kept alive: one new connection per target, then pooled ones.
    assert_eq!(
        value(&m, conns, &series(&t0, ("reused", "false"))),
        Some(1.0)
    );
    assert_eq!(
        value(&m, conns, &series(&t0, ("reused", "true"))),
        Some(2.0)
    );

    // A reload without the second target drops its series.
    proxy.write_config(&one_route(&pool("pool", std::slice::from_ref(&t0), &[])));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let m = proxy.metrics().await;
    assert_eq!(value(&m, codes, &series(&t1, ("code", "404"))), None);
    assert_eq!(value(&m, conns, &series(&t1, ("reused", "true"))), None);
    assert_eq!(value(&m, codes, &series(&t0, ("code", "200"))), Some(3.0));
}
