//! TLS listeners: HTTPS with HTTP/1.1 and HTTP/2 by ALPN; the upstream learns the scheme.

use crate::support::{client, client_builder, pool, Echo, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http1_and_http2_by_alpn() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&format!(
        "upstreams:\n{}routes:\n  - name: one\n    match: {{ path_prefix: /one }}\n    upstream: pool\n  - name: two\n    match: {{ path_prefix: /two }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    ))
    .tls()
    .start()
    .await;
    assert!(proxy.url("/").starts_with("https://"));

    let h1 = client_builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .build()
        .unwrap();
    let resp = h1.get(proxy.url("/one?x=1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert!(resp.headers().contains_key("x-request-id"));
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(echo.path, "/one?x=1");

    // The default client offers h2 and http/1.1 by ALPN; the listener picks h2.
    let h2 = client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for i in 0..3 {
        let resp = h2
            .post(proxy.url(&format!("/two/{i}")))
            .body("over h2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert!(resp.headers().contains_key("x-request-id"));
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(echo.method, "POST");
        assert_eq!(echo.body, "over h2");
        let host = format!("127.0.0.1:{}", proxy.addr().port());
        assert_eq!(
            echo.header("x-forwarded-host").as_deref(),
            Some(host.as_str())
        );
        assert_eq!(
            echo.header("host").as_deref(),
            Some(host.as_str()),
            "the :authority becomes Host"
        );
    }
    // Refusals over h2 are JSON too.
    let resp = h2.get(proxy.url("/three")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_route");

    // Plain HTTP on the TLS port is not served.
    let plain = client_builder().build().unwrap();
    let url = proxy.url("/").replace("https://", "http://");
    let refused = plain.get(url).send().await;
    assert!(refused.map(|r| r.status() != 200).unwrap_or(true));
}

/// A certificate or key that cannot serve is a config error: `check` names the listener and
/// `run` stops at once, instead of starting without any listener.
#[test]
fn unusable_tls_files_are_config_errors() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let put = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good_cert = put("a.crt", &a.cert.pem());
    let good_key = put("a.key", &a.signing_key.serialize_pem());
    let other_key = put("b.key", &b.signing_key.serialize_pem());
    let garbage = put("garbage.pem", "not a pem file\n");
    let port = crate::support::free_port();
    for (what, cert, key, good) in [
        ("a matching pair", &good_cert, &good_key, true),
        ("garbage certificate", &garbage, &good_key, false),
        ("garbage key", &good_cert, &garbage, false),
        ("key of another certificate", &good_cert, &other_key, false),
        ("key given as certificate", &good_key, &good_key, false),
    ] {
        let config = put(
            "tls.yaml",
            &format!(
                "listeners:\n  - address: \"127.0.0.1:{port}\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\nupstreams:\n  - name: a\n    targets: [\"127.0.0.1:1\"]\nroutes:\n  - name: r\n    upstream: a\n",
                cert.display(),
                key.display()
            ),
        );
        let check = Command::new(crate::support::BIN)
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        if good {
            assert_eq!(check.status.code(), Some(0), "{what}: {stderr}");
            continue;
        }
        assert_eq!(check.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("line 3: listeners[0].tls:"),
            "{what}: {stderr}"
        );

        let mut run = Command::new(crate::support::BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = run.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = run.kill();
                panic!("{what}: `run` still going after 10s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1), "{what}");
    }
}

/// The listener's certificate files are replaced (same paths) and the config reloaded: new
/// connections get the new certificate, without a restart. A reload with a key that does not
/// fit is refused and the certificate before keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_listener_certificate() {
    use crate::support::tls::{client_trusting, Ca};
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&format!(
        "upstreams:\n{}routes:\n  - name: one\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    ))
    .tls()
    .start()
    .await;
    let ca = Ca::new("listener CA");
    let trusting = || client_trusting(&ca);
    let before = trusting().get(proxy.url("/")).send().await;
    assert!(
        before.is_err(),
        "the self-signed start certificate is not the CA's"
    );

    let dir = proxy.config_path().parent().unwrap().to_path_buf();
    let leaf = ca.issue(&["127.0.0.1", "localhost"]);
    std::fs::write(dir.join("server.crt"), &leaf.cert).unwrap();
    std::fs::write(dir.join("server.key"), &leaf.key).unwrap();
    let reload = client()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "{}", reload.text().await.unwrap());
    let resp = trusting().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // A key of another certificate: refused, and the CA's certificate keeps serving.
    std::fs::write(dir.join("server.key"), ca.issue(&["127.0.0.1"]).key).unwrap();
    let reload = client()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_ne!(reload.status(), 200);
    let resp = trusting().get(proxy.url("/y")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
