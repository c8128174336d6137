//! TLS to upstreams, against real TLS servers whose certificates a local CA issued: trust by
//! `ca_file`, the failures a handshake can meet (each a 502 `upstream_tls`, a metric series and
//! one log line saying why), mTLS, and a CA file whose content a reload replaces.

use std::time::Duration;

use crate::support::tls::{Ca, TlsFront};
use crate::support::{client, eventually, get_echo, pool, Proxy, Upstream};

const FAILURES: &str = "portcullis_upstream_tls_failures_total";

/// `routes:` with one route `/{name}` per pool name.
fn routes(names: &[&str]) -> String {
    let mut s = String::from("routes:\n");
    for n in names {
        s.push_str(&format!(
            "  - name: {n}\n    match: {{ path_prefix: /{n} }}\n    upstream: {n}\n"
        ));
    }
    s
}

/// GET `path` and expect the 502 `upstream_tls` refusal.
async fn refused(proxy: &Proxy, path: &str) {
    let resp = client().get(proxy.url(path)).send().await.unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 502, "{path}: {body}");
    assert_eq!(body["error"], "upstream_tls", "{path}: {body}");
}

/// The log lines about TLS failures with pool `pool`.
fn tls_lines(proxy: &Proxy, pool: &str) -> Vec<String> {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("upstream TLS failed") && l.contains(&format!("\"{pool}\"")))
        .map(str::to_string)
        .collect()
}

/// Wait for exactly one log line about `pool` and check it says `why`.
async fn one_line_saying(proxy: &Proxy, pool: &str, why: &str) {
    let lines = eventually(
        &format!("a TLS log line for {pool}"),
        Duration::from_secs(5),
        || async {
            let lines = tls_lines(proxy, pool);
            if lines.is_empty() {
                Err("none yet".to_string())
            } else {
                Ok(lines)
            }
        },
    )
    .await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(why), "`{why}` not in {}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_names_and_dates_of_upstream_certificates() {
    let up = Upstream::start("behind-tls").await;
    let ca = Ca::new("local test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let ca_file = ca_file.display();

    let by_name = TlsFront::start(up.addr(), ca.issue(&["api.test"]).server_config(None)).await;
    let by_ip = TlsFront::start(up.addr(), ca.issue(&["127.0.0.1"]).server_config(None)).await;
    let expired = TlsFront::start(
        up.addr(),
        ca.issue_expired(&["api.test"]).server_config(None),
    )
    .await;
    let future = TlsFront::start(
        up.addr(),
        ca.issue_future(&["api.test"]).server_config(None),
    )
    .await;
    let at = |front: &TlsFront| vec![front.addr().to_string()];
    let body = format!(
        "upstreams:\n{}{}{}{}{}{}{}{}",
        pool(
            "trusted",
            &at(&by_name),
            &[&format!("tls: {{ sni: api.test, ca_file: \"{ca_file}\" }}")]
        ),
        pool(
            "by-address",
            &at(&by_ip),
            &[&format!("tls: {{ ca_file: \"{ca_file}\" }}")]
        ),
        pool("unknown", &at(&by_name), &["tls: { sni: api.test }"]),
        pool(
            "mismatch",
            &at(&by_name),
            &[&format!(
                "tls: {{ sni: other.test, ca_file: \"{ca_file}\" }}"
            )]
        ),
        pool(
            "expired",
            &at(&expired),
            &[&format!("tls: {{ sni: api.test, ca_file: \"{ca_file}\" }}")]
        ),
        pool(
            "future",
            &at(&future),
            &[&format!("tls: {{ sni: api.test, ca_file: \"{ca_file}\" }}")]
        ),
        pool("unchecked", &at(&expired), &["tls: { verify: false }"]),
        routes(&[
            "trusted",
            "by-address",
            "unknown",
            "mismatch",
            "expired",
            "future",
            "unchecked"
        ]),
    );
    let proxy = Proxy::start(&body).await;
    let http = client();

    // Trusted through ca_file, by the name given as sni and by the target's address.
    let echo = get_echo(&http, &proxy.url("/trusted/x")).await;
    assert_eq!(echo.path, "/trusted/x");
    get_echo(&http, &proxy.url("/by-address")).await;
    // verify: false checks nothing, not even the dates; the operator is told once.
    get_echo(&http, &proxy.url("/unchecked")).await;
    let warned: Vec<_> = proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("tls.verify is false"))
        .map(str::to_string)
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("\"unchecked\""), "{}", warned[0]);

    for (pool, reason, why) in [
        ("unknown", "unknown_issuer", "unknown issuer"),
        ("mismatch", "name_mismatch", "name mismatch"),
        ("expired", "expired", "expired"),
        ("future", "not_yet_valid", "not valid yet"),
    ] {
        refused(&proxy, &format!("/{pool}")).await;
        one_line_saying(&proxy, pool, why).await;
        let m = proxy.metrics().await;
        for r in [
            "unknown_issuer",
            "name_mismatch",
            "expired",
            "not_yet_valid",
            "client_cert_refused",
            "other",
        ] {
            let want = if r == reason { 1.0 } else { 0.0 };
            assert_eq!(
                m.get(FAILURES, &[("upstream", pool), ("reason", r)]),
                Some(want),
                "{pool} {r}"
            );
        }
    }
    // Lines reach the file within the writer's next round.
    let lines = proxy
        .wait_access_until("four 502 lines", |lines| {
            lines.iter().filter(|l| l["status"] == 502).count() >= 4
        })
        .await;
    let reasons: Vec<_> = lines
        .iter()
        .filter(|l| l["status"] == 502)
        .map(|l| l["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(reasons, ["upstream_tls"; 4], "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_a_client_certificate() {
    let up = Upstream::start("behind-mtls").await;
    let ca = Ca::new("local test CA");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let (cert, key) = ca.issue(&["client.test"]).write(dir.path(), "client");
    let stranger = Ca::new("another CA");
    let (other_cert, other_key) = stranger.issue(&["client.test"]).write(dir.path(), "other");
    let front = TlsFront::start(up.addr(), ca.issue(&["api.test"]).server_config(Some(&ca))).await;
    let tls = |extra: &str| {
        format!(
            "tls: {{ sni: api.test, ca_file: \"{}\"{extra} }}",
            dir.path().join("ca.pem").display()
        )
    };
    let target = vec![front.addr().to_string()];
    let body = format!(
        "upstreams:\n{}{}{}{}",
        pool(
            "with-cert",
            &target,
            &[&tls(&format!(
                ", client_cert: \"{}\", client_key: \"{}\"",
                cert.display(),
                key.display()
            ))]
        ),
        pool("without-cert", &target, &[&tls("")]),
        pool(
            "wrong-cert",
            &target,
            &[&tls(&format!(
                ", client_cert: \"{}\", client_key: \"{}\"",
                other_cert.display(),
                other_key.display()
            ))]
        ),
        routes(&["with-cert", "without-cert", "wrong-cert"]),
    );
    let proxy = Proxy::start(&body).await;
    let http = client();
    for _ in 0..3 {
        get_echo(&http, &proxy.url("/with-cert")).await;
    }
    for pool in ["without-cert", "wrong-cert"] {
        refused(&proxy, &format!("/{pool}")).await;
        one_line_saying(&proxy, pool, "client cert").await;
        assert_eq!(
            proxy
                .metric(
                    FAILURES,
                    &[("upstream", pool), ("reason", "client_cert_refused")]
                )
                .await,
            1.0
        );
    }
    assert_eq!(
        proxy
            .metric(
                FAILURES,
                &[("upstream", "with-cert"), ("reason", "client_cert_refused")]
            )
            .await,
        0.0
    );
}

/// A key that is not the certificate's, or a file that is missing, is a config error naming
/// the field: never a panic in the connector.
#[test]
fn bad_key_material_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("local test CA");
    let (cert, _) = ca.issue(&["client.test"]).write(dir.path(), "client");
    let (_, other_key) = ca.issue(&["client.test"]).write(dir.path(), "other");
    std::fs::write(dir.path().join("junk.pem"), "junk\n").unwrap();
    for (tls, field, says) in [
        (
            format!(
                "{{ client_cert: \"{}\", client_key: \"{}\" }}",
                cert.display(),
                other_key.display()
            ),
            "upstreams[0].tls.client_cert",
            "not a certificate and its key",
        ),
        (
            "{ ca_file: missing.pem }".to_string(),
            "upstreams[0].tls.ca_file",
            "missing.pem",
        ),
        (
            "{ ca_file: junk.pem }".to_string(),
            "upstreams[0].tls.ca_file",
            "junk.pem",
        ),
        (
            format!("{{ client_cert: \"{}\" }}", cert.display()),
            "upstreams[0].tls.client_key",
            "needed with `client_cert`",
        ),
    ] {
        let config = dir.path().join("c.yaml");
        std::fs::write(
            &config,
            format!(
                "upstreams:\n  - name: a\n    targets: [\"127.0.0.1:1\"]\n    tls: {tls}\nroutes:\n  - name: r\n    upstream: a\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(crate::support::BIN)
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tls}: {stderr}");
        assert!(
            stderr.contains(field) && stderr.contains(says),
            "{tls}: {stderr}"
        );
    }
}

/// The CA file's content changes (same path, same config text): a reload trusts the new
/// content, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_ca_file() {
    let up = Upstream::start("behind-tls").await;
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let front = TlsFront::start(up.addr(), new_ca.issue(&["api.test"]).server_config(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &old_ca.pem).unwrap();
    let body = format!(
        "upstreams:\n{}{}",
        pool(
            "api",
            &[front.addr().to_string()],
            &[&format!(
                "tls: {{ sni: api.test, ca_file: \"{}\" }}",
                ca_file.display()
            )]
        ),
        routes(&["api"]),
    );
    let proxy = Proxy::start(&body).await;
    refused(&proxy, "/api").await;

    std::fs::write(&ca_file, &new_ca.pem).unwrap();
    proxy.reload_ok().await;
    get_echo(&client(), &proxy.url("/api")).await;
    assert_eq!(
        proxy
            .metric(
                FAILURES,
                &[("upstream", "api"), ("reason", "unknown_issuer")]
            )
            .await,
        1.0,
        "the series and its count outlive the reload"
    );
}

/// An HTTP health check of a `tls:` pool speaks HTTPS with the pool's settings: a trusted
/// target passes its probes, one whose certificate the pool does not trust is taken out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_of_a_tls_pool_use_its_tls() {
    let up = Upstream::start("probed").await;
    let ca = Ca::new("local test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let front = TlsFront::start(up.addr(), ca.issue(&["api.test"]).server_config(None)).await;
    let check = "health_check:\n  http: { path: /healthz }\n  interval: 100ms\n  timeout: 500ms\n  healthy_after: 1\n  unhealthy_after: 1";
    let target = vec![front.addr().to_string()];
    let body = format!(
        "upstreams:\n{}{}{}",
        pool(
            "trusted",
            &target,
            &[
                &format!(
                    "tls: {{ sni: api.test, ca_file: \"{}\" }}",
                    ca_file.display()
                ),
                check
            ]
        ),
        pool("untrusted", &target, &["tls: { sni: api.test }", check]),
        routes(&["trusted", "untrusted"]),
    );
    let proxy = Proxy::start(&body).await;
    let healthy = "portcullis_upstream_target_healthy";
    let label = front.addr().to_string();
    proxy
        .wait_metric(
            healthy,
            &[("upstream", "untrusted"), ("target", &label)],
            0.0,
        )
        .await;
    let resp = client().get(proxy.url("/untrusted")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let probes = up.health_hits();
    eventually("more HTTPS probes", Duration::from_secs(5), || async {
        if up.health_hits() >= probes + 3 {
            Ok(())
        } else {
            Err(format!("{} probes", up.health_hits()))
        }
    })
    .await;
    assert_eq!(
        proxy
            .metric(healthy, &[("upstream", "trusted"), ("target", &label)])
            .await,
        1.0
    );
    get_echo(&client(), &proxy.url("/trusted")).await;
}
