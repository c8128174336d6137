//! TLS listeners: HTTPS with HTTP/1.1 and HTTP/2 by ALPN; the upstream learns the scheme.

use crate::support::{client_builder, pool, Echo, Proxy, Upstream};

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
