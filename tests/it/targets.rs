//! Targets as production has them: weights, and host names whose answers move (a real DNS
//! server, dnsmasq, whose answers the tests change), on distinct loopback addresses that
//! share one port. `check` never resolves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::dns::Dnsmasq;
use crate::support::{client, eventually, get_echo, Proxy, Upstream, BIN};

const LOOKUPS: &str = "portcullis_dns_lookups_total";
const ADDRESSES: &str = "portcullis_dns_addresses";
const HEALTHY: &str = "portcullis_upstream_target_healthy";

/// Upstreams named `a`, `b`, ... on 127.0.0.2, 127.0.0.3, ..., all on one port.
async fn on_loopbacks(n: u8) -> (Vec<Upstream>, u16) {
    'again: for _ in 0..10 {
        let first = Upstream::start_at("a", "127.0.0.2:0".parse().unwrap())
            .await
            .unwrap();
        let port = first.addr().port();
        let mut all = vec![first];
        for i in 1..n {
            let addr = SocketAddr::from(([127, 0, 0, 2 + i], port));
            let name = char::from(b'a' + i).to_string();
            match Upstream::start_at(&name, addr).await {
                Ok(u) => all.push(u),
                Err(_) => continue 'again,
            }
        }
        return (all, port);
    }
    panic!("no port free on every loopback address");
}

fn config(dns: &Dnsmasq, targets: &str, extra: &str) -> (String, String) {
    (
        format!(
            "upstreams:\n  - name: app\n    targets: {targets}\n    dns_refresh: 1s\n{extra}\
             routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n"
        ),
        format!("dns: {{ nameservers: [\"{}\"] }}", dns.addr()),
    )
}

async fn start(dns: &Dnsmasq, targets: &str, extra: &str) -> Proxy {
    let (body, server) = config(dns, targets, extra);
    Proxy::builder(&body).server(&server).start().await
}

/// Wait until a GET is answered 200 by upstream `by`.
async fn served_by(proxy: &Proxy, by: &str) {
    let http = client();
    eventually(
        &format!("{by} to serve"),
        Duration::from_secs(15),
        || async {
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            match serde_json::from_str::<crate::support::Echo>(&text) {
                Ok(echo) if status == 200 && echo.upstream == by => Ok(()),
                _ => Err(format!("{status}: {text}")),
            }
        },
    )
    .await;
}

/// Which upstream answered each of `n` sequential GETs.
async fn spread(proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let http = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen
            .entry(get_echo(&http, &proxy.url("/")).await.upstream)
            .or_insert(0) += 1;
    }
    seen
}

/// `{ address, weight }`: round robin sends three in four requests to the target of weight 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_the_traffic() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let body = format!(
        "upstreams:\n  - name: app\n    targets: [\"{}\", {{ address: \"{}\", weight: 3 }}]\n\
         routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        a.addr(),
        b.addr()
    );
    let proxy = Proxy::start(&body).await;
    let seen = spread(&proxy, 40).await;
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&30), "{seen:?}");
}

/// A name answering A sends traffic to A; answering A and B, to both; answering B only, A
/// gets no new request while a slow request already on A finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_answers() {
    let (ups, port) = on_loopbacks(2).await;
    let dns = Dnsmasq::start(&[("127.0.0.2", "app.test")]).await;
    let proxy = start(&dns, &format!("[\"app.test:{port}\"]"), "").await;
    let a_label = format!("app.test:{port}@127.0.0.2:{port}");
    let b_label = format!("app.test:{port}@127.0.0.3:{port}");

    served_by(&proxy, "a").await;
    assert_eq!(spread(&proxy, 6).await.get("a"), Some(&6));

    dns.set(
        &[("127.0.0.2", "app.test"), ("127.0.0.3", "app.test")],
        "app.test",
        &["127.0.0.2", "127.0.0.3"],
    )
    .await;
    proxy
        .wait_metric(HEALTHY, &[("upstream", "app"), ("target", &b_label)], 1.0)
        .await;
    let seen = spread(&proxy, 10).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );
    assert_eq!(
        proxy.metric(ADDRESSES, &[("upstream", "app")]).await,
        2.0,
        "addresses gauge"
    );
    let (_, ready) = proxy.readyz(true).await;
    assert_eq!(ready["upstreams"]["app"]["targets"], 2, "{ready}");

    // Two slow requests in a row: round robin puts one on each address.
    let before = ups[0].arrivals();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = proxy.url("/slow");
            tokio::spawn(async move {
                let resp = client()
                    .get(url)
                    .header("x-delay-ms", "2500")
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    eventually("a slow request on A", Duration::from_secs(5), || async {
        if ups[0].arrivals() > before {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;

    dns.set(&[("127.0.0.3", "app.test")], "app.test", &["127.0.0.3"])
        .await;
    eventually("A to leave the pool", Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        if m.has(HEALTHY, &[("target", &a_label)]) {
            Err("A is still a member".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let a_before = ups[0].arrivals();
    assert_eq!(spread(&proxy, 10).await.get("b"), Some(&10));
    assert_eq!(ups[0].arrivals(), a_before, "A got a new request");
    for task in slow {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        ups[0].received().iter().any(|e| e.path == "/slow"),
        "the slow request on A finished there"
    );
}

/// The health check probes an address from the moment the name gains it: a new address
/// that fails its probe is taken out, and traffic stays on the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_addresses_are_probed() {
    let (ups, port) = on_loopbacks(2).await;
    ups[1].set_health_status(503);
    let dns = Dnsmasq::start(&[("127.0.0.2", "app.test")]).await;
    let check =
        "    health_check: { http: { path: /healthz }, interval: 200ms, unhealthy_after: 1 }\n";
    let proxy = start(&dns, &format!("[\"app.test:{port}\"]"), check).await;
    served_by(&proxy, "a").await;
    dns.set(
        &[("127.0.0.2", "app.test"), ("127.0.0.3", "app.test")],
        "app.test",
        &["127.0.0.2", "127.0.0.3"],
    )
    .await;
    let b_label = format!("app.test:{port}@127.0.0.3:{port}");
    eventually("B to be probed", Duration::from_secs(10), || async {
        if ups[1].health_hits() > 0 {
            Ok(())
        } else {
            Err("no probe yet".to_string())
        }
    })
    .await;
    proxy
        .wait_metric(HEALTHY, &[("upstream", "app"), ("target", &b_label)], 0.0)
        .await;
    assert_eq!(spread(&proxy, 10).await.get("a"), Some(&10));
}

/// An answer's TTL shorter than `dns_refresh` brings the next lookup forward: with
/// `dns_refresh: 1h` and a TTL of 1 s, a changed answer is followed within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_wins_over_dns_refresh() {
    let (_ups, port) = on_loopbacks(2).await;
    let dns = Dnsmasq::start_with_ttl(&[("127.0.0.2", "app.test")], 1).await;
    let (body, server) = config(&dns, &format!("[\"app.test:{port}\"]"), "");
    let body = body.replace("dns_refresh: 1s", "dns_refresh: 1h");
    let proxy = Proxy::builder(&body).server(&server).start().await;
    served_by(&proxy, "a").await;
    dns.set(&[("127.0.0.3", "app.test")], "app.test", &["127.0.0.3"])
        .await;
    served_by(&proxy, "b").await;
}

/// A `dns_refresh` shorter than the TTL wins: an answer with a TTL of an hour is asked for
/// again after 1 s (no cache holds it for its TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_refresh_wins_over_a_long_ttl() {
    let (_ups, port) = on_loopbacks(2).await;
    let dns = Dnsmasq::start_with_ttl(&[("127.0.0.2", "app.test")], 3600).await;
    let proxy = start(&dns, &format!("[\"app.test:{port}\"]"), "").await;
    served_by(&proxy, "a").await;
    dns.set(&[("127.0.0.3", "app.test")], "app.test", &["127.0.0.3"])
        .await;
    served_by(&proxy, "b").await;
}

/// A name stands for its A and its AAAA records: an upstream on 127.0.0.2 and one on ::1,
/// same port, both take traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_stands_for_its_a_and_aaaa_records() {
    let (v4, v6, port) = 'found: {
        for _ in 0..10 {
            let v4 = Upstream::start_at("v4", "127.0.0.2:0".parse().unwrap())
                .await
                .unwrap();
            let port = v4.addr().port();
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            if let Ok(v6) = Upstream::start_at("v6", v6).await {
                break 'found (v4, v6, port);
            }
        }
        panic!("no port free on both 127.0.0.2 and ::1");
    };
    let dns = Dnsmasq::start(&[("127.0.0.2", "dual.test"), ("::1", "dual.test")]).await;
    let proxy = start(&dns, &format!("[\"dual.test:{port}\"]"), "").await;
    proxy
        .wait_metric(ADDRESSES, &[("upstream", "app")], 2.0)
        .await;
    let http = client();
    eventually("both to serve", Duration::from_secs(10), || async {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            match serde_json::from_str::<crate::support::Echo>(&text) {
                Ok(echo) if status == 200 => seen.push(echo.upstream),
                _ => return Err(format!("{status}: {text}")),
            }
        }
        seen.sort();
        if seen == ["v4", "v4", "v6", "v6"] {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    drop((v4, v6));
}

/// A name that does not resolve at start: the proxy runs, answers 503 `no_healthy_target`,
/// and serves once the name appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_later() {
    let (_ups, port) = on_loopbacks(1).await;
    let dns = Dnsmasq::start(&[("127.0.0.9", "other.test")]).await;
    let proxy = start(&dns, &format!("[\"later.test:{port}\"]"), "").await;
    let http = client();
    proxy
        .wait_metric(
            LOOKUPS,
            &[
                ("upstream", "app"),
                ("name", &format!("later.test:{port}")),
                ("result", "failure"),
            ],
            1.0,
        )
        .await;
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_healthy_target", "{body}");

    dns.set(&[("127.0.0.2", "later.test")], "later.test", &["127.0.0.2"])
        .await;
    served_by(&proxy, "a").await;
}

/// The DNS server stops: the last good addresses keep serving, failures are counted, and a
/// reload keeps the addresses (pool, name and port unchanged) instead of emptying the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dns_server_keeps_the_last_good_addresses() {
    let (_ups, port) = on_loopbacks(1).await;
    let mut dns = Dnsmasq::start(&[("127.0.0.2", "app.test")]).await;
    let proxy = start(&dns, &format!("[\"app.test:{port}\"]"), "").await;
    let http = client();
    let name = format!("app.test:{port}");
    let labels = |result| {
        [
            ("upstream", "app"),
            ("name", name.as_str()),
            ("result", result),
        ]
    };
    served_by(&proxy, "a").await;

    dns.stop();
    let failures = proxy.metric(LOOKUPS, &labels("failure")).await;
    eventually(
        "failed lookups to be counted",
        Duration::from_secs(20),
        || async {
            let now = proxy.metric(LOOKUPS, &labels("failure")).await;
            if now >= failures + 2.0 {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;
    assert_eq!(get_echo(&http, &proxy.url("/")).await.upstream, "a");
    assert_eq!(proxy.metric(ADDRESSES, &labels("")[..2]).await, 1.0);

    let (body, _) = config(
        &dns,
        &format!("[\"app.test:{port}\"]"),
        "    read_timeout: 20s\n",
    );
    proxy.write_config(&body);
    proxy
        .wait_metric("portcullis_config_generation", &[], 2.0)
        .await;
    assert_eq!(get_echo(&http, &proxy.url("/")).await.upstream, "a");
}

fn check(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap()
}

/// Without `server.dns` the system's settings are used, `/etc/hosts` included: `localhost`
/// resolves there (to 127.0.0.1, and perhaps ::1, which a retry steps over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_resolver_reads_etc_hosts() {
    let up = Upstream::start("local").await;
    let body = format!(
        "upstreams:\n  - name: app\n    targets: [\"localhost:{}\"]\n    retries: 2\n\
         routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        up.addr().port()
    );
    let proxy = Proxy::start(&body).await;
    served_by(&proxy, "local").await;
}

/// `check` never resolves: a target whose name resolves nowhere passes.
#[test]
fn check_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offline.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: \"127.0.0.1:8080\"\nupstreams:\n  - name: app\n    \
         targets: [\"backend.invalid:80\", { address: \"canary.invalid:80\", weight: 2 }]\n\
         routes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: app\n",
    )
    .unwrap();
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
