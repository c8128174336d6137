//! Outlier detection: targets that fail requests in a row are taken out of rotation, no more
//! than the pool's share at once, and come back when their time is up or their probe passes.

use std::time::Duration;

use crate::support::upstream::Fault;
use crate::support::{addrs, client, eventually, free_port, one_route, pool, Proxy, Upstream};

const EJECTIONS: &str = "portcullis_upstream_ejections_total";

async fn statuses(proxy: &Proxy, n: usize) -> Vec<u16> {
    let http = client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let resp = http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
        out.push(resp.status().as_u16());
    }
    out
}

/// Send requests until `up` answers one (it is back in rotation).
async fn served_again(proxy: &Proxy, up: &Upstream, what: &str) {
    eventually(what, Duration::from_secs(10), || async {
        statuses(proxy, 2).await;
        if up.hits() > 0 {
            Ok(())
        } else {
            Err("no request yet".to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_5xx_in_a_row_eject_a_target_until_its_time_is_up() {
    let ups = Upstream::start_many("u", 2).await;
    ups[0].set_fault(Fault::Status(500));
    let proxy = Proxy::start(&one_route(&pool(
        "pool",
        &addrs(&ups),
        &["retry: { attempts: 1 }", "outlier: { base_ejection: 1s }"],
    )))
    .await;
    assert_eq!(proxy.metric(EJECTIONS, &[("upstream", "pool")]).await, 0.0);
    let seen = statuses(&proxy, 30).await;
    // Round robin: every other request meets the failing target until its fifth 500.
    assert_eq!(ups[0].received().len(), 5, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| **s == 500).count(), 5, "{seen:?}");
    assert_eq!(proxy.metric(EJECTIONS, &[("upstream", "pool")]).await, 1.0);
    let log = proxy.wait_for_log("target ejected").await;
    assert!(log.contains(&ups[0].addr().to_string()), "{log}");

    // Mended, and back once its second is up.
    ups[0].set_fault(Fault::None);
    served_again(&proxy, &ups[0], "the target to take traffic again").await;
    proxy.wait_for_log("its time is up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_the_pools_share_is_ejected() {
    let ups = Upstream::start_many("u", 2).await;
    for up in &ups {
        up.set_fault(Fault::Status(503));
    }
    let proxy = Proxy::start(&one_route(&pool(
        "pool",
        &addrs(&ups),
        &["retry: { attempts: 1 }"],
    )))
    .await;
    let seen = statuses(&proxy, 30).await;
    assert!(seen.iter().all(|s| *s == 503), "{seen:?}");
    // 50% of two targets: one out, the other keeps serving whatever it answers.
    assert_eq!(proxy.metric(EJECTIONS, &[("upstream", "pool")]).await, 1.0);
    let counts = [ups[0].received().len(), ups[1].received().len()];
    assert_eq!(counts.iter().sum::<usize>(), 30);
    assert!(counts.contains(&5), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_probe_brings_an_ejected_target_back_early() {
    let ups = Upstream::start_many("u", 2).await;
    ups[0].set_fault(Fault::Status(500));
    let check = "health_check:\n  http: { path: /healthz, host: probe }\n  interval: 200ms\n  timeout: 500ms\n  healthy_after: 1\n  unhealthy_after: 1";
    let proxy = Proxy::start(&one_route(&pool(
        "pool",
        &addrs(&ups),
        &[
            "retry: { attempts: 1 }",
            "outlier: { base_ejection: 1h }",
            check,
        ],
    )))
    .await;
    statuses(&proxy, 10).await;
    assert_eq!(proxy.metric(EJECTIONS, &[("upstream", "pool")]).await, 1.0);
    ups[0].set_fault(Fault::None);
    // An hour of ejection, cut short by the probe that passes.
    served_again(&proxy, &ups[0], "the probe to readmit the target").await;
    proxy.wait_for_log("its probe passed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_connections_is_ejected_and_no_longer_tried() {
    let up = Upstream::start("alive").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&one_route(&pool(
        "pool",
        &[dead, up.addr().to_string()],
        &[],
    )))
    .await;
    let seen = statuses(&proxy, 30).await;
    assert!(seen.iter().all(|s| *s == 200), "{seen:?}");
    assert_eq!(proxy.metric(EJECTIONS, &[("upstream", "pool")]).await, 1.0);
    let retried = proxy
        .metric(
            "portcullis_upstream_retries_total",
            &[("upstream", "pool"), ("reason", "connect_failure")],
        )
        .await;
    assert_eq!(retried, 5.0, "tried until ejected, never after");
}
