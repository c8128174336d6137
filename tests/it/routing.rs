//! Routing: exact host over wildcard, longest prefix, methods, fall-through, 404; request
//! targets refused before routing, and absolute form.

use crate::support::{client_builder, pool, raw, Proxy, Upstream};

/// One upstream per route, so the echo's name says which route took a request.
async fn routed() -> (Proxy, Vec<Upstream>) {
    let names = ["exact", "wild", "v1", "orders", "read", "write"];
    let mut ups = Vec::new();
    let mut body = String::from("upstreams:\n");
    for n in names {
        let u = Upstream::start(n).await;
        body.push_str(&pool(n, &[u.addr().to_string()], &[]));
        ups.push(u);
    }
    body.push_str(
        r#"routes:
  - name: exact-host
    match: { host: "api.example.com", path_prefix: "/docs" }
    upstream: exact
  - name: wildcard-host
    match: { host: "*.example.com", path_prefix: "/docs" }
    upstream: wild
  - name: v1
    match: { path_prefix: "/v1" }
    upstream: v1
  - name: v1-orders
    match: { path_prefix: "/v1/orders" }
    upstream: orders
  - name: reports-read
    match: { path_prefix: "/reports", methods: [GET, HEAD] }
    upstream: read
  - name: reports-write
    match: { path_prefix: "/reports", methods: [POST, PUT] }
    upstream: write
"#,
    );
    (Proxy::start(&body).await, ups)
}

/// A client that sends requests for these host names to the proxy.
fn client_for(proxy: &Proxy, hosts: &[&str]) -> reqwest::Client {
    let mut b = client_builder();
    for h in hosts {
        b = b.resolve(h, proxy.addr());
    }
    b.build().unwrap()
}

async fn upstream_of(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
) -> Result<crate::support::Echo, (u16, serde_json::Value)> {
    let resp = http.request(method, url).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    if status == 200 {
        Ok(serde_json::from_str(&text).unwrap())
    } else {
        Err((
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| text.into()),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_exact_beats_wildcard_and_falls_through_to_hostless_routes() {
    let (proxy, _ups) = routed().await;
    let port = proxy.addr().port();
    let hosts = [
        "api.example.com",
        "www.example.com",
        "a.b.example.com",
        "example.com",
        "other.test",
    ];
    let http = client_for(&proxy, &hosts);
    let url = |host: &str, path: &str| format!("http://{host}:{port}{path}");
    let get = reqwest::Method::GET;

    let cases = [
        ("api.example.com", "/docs/intro", "exact"),
        ("API.Example.COM", "/docs", "exact"),
        ("www.example.com", "/docs/intro", "wild"),
        ("a.b.example.com", "/docs", "wild"),
        // api.example.com has routes, but none for /v1: host-less routes take it.
        ("api.example.com", "/v1/orders/7", "orders"),
        ("www.example.com", "/v1/x", "v1"),
        ("other.test", "/v1/orders", "orders"),
    ];
    for (host, path, want) in cases {
        let echo = upstream_of(&http, get.clone(), &url(&host.to_ascii_lowercase(), path))
            .await
            .unwrap_or_else(|e| panic!("{host}{path}: {e:?}"));
        assert_eq!(echo.upstream, want, "{host}{path}");
        assert_eq!(echo.path, path, "the upstream sees the path unchanged");
    }
    // Upper-case Host header, sent as is.
    let resp = http
        .get(url("api.example.com", "/docs/x"))
        .header("host", format!("API.EXAMPLE.COM:{port}"))
        .send()
        .await
        .unwrap();
    let echo: crate::support::Echo = resp.json().await.unwrap();
    assert_eq!(echo.upstream, "exact");

    // `*.example.com` does not take the bare domain, and no host-less route has /docs.
    let (status, body) = upstream_of(&http, get.clone(), &url("example.com", "/docs"))
        .await
        .unwrap_err();
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_wins_and_methods_filter() {
    let (proxy, ups) = routed().await;
    let http = client_for(&proxy, &[]);
    let cases = [
        (reqwest::Method::GET, "/v1", "v1"),
        (reqwest::Method::GET, "/v1/customers", "v1"),
        (reqwest::Method::GET, "/v1/orders", "orders"),
        (reqwest::Method::DELETE, "/v1/orders/9?full=1", "orders"),
        (reqwest::Method::GET, "/reports/2024", "read"),
        (reqwest::Method::HEAD, "/reports", "read"),
        (reqwest::Method::POST, "/reports", "write"),
        (reqwest::Method::PUT, "/reports/1", "write"),
    ];
    for (method, path, want) in cases {
        let resp = http
            .request(method.clone(), proxy.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        assert_eq!(resp.headers()["x-upstream"], want, "{method} {path}");
    }
    let got = ups[3].received();
    let last = got.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("DELETE", "/v1/orders/9?full=1")
    );

    // DELETE is in neither /reports route and nothing else takes /reports.
    let before: usize = ups.iter().map(Upstream::hits).sum();
    let resp = http.delete(proxy.url("/reports/1")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_route");
    assert_eq!(ups.iter().map(Upstream::hits).sum::<usize>(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_json_404_that_reaches_no_upstream() {
    let (proxy, ups) = routed().await;
    let http = client_for(&proxy, &[]);
    for path in ["/", "/nothing/here", "/v", "/doc"] {
        let resp = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "no_route", "{path}: {body}");
        assert!(body["message"].is_string(), "{body}");
        assert_eq!(body["request_id"], id.as_str());
    }
    assert_eq!(ups.iter().map(Upstream::hits).sum::<usize>(), 0);
}

/// A path the upstream reads as `/v1/orders/..` is routed as `/v1/orders`, however it is
/// spelled: otherwise a client picks the route (and, later, its auth policy) by encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_paths_route_as_the_upstream_reads_them() {
    let (proxy, ups) = routed().await;
    for (path, want) in [
        ("/v1/%6Frders/7", "orders"),
        ("/v1/%6frders", "orders"),
        ("/%76%31/orders", "orders"),
        ("/v1/or%64ers?x=%6F", "orders"),
        ("/v1/%7Eorders", "v1"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw::send(proxy.addr(), req.as_bytes()).await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.header("x-upstream").as_deref(), Some(want), "{path}");
    }
    // The upstream gets the path as the client wrote it.
    assert_eq!(ups[3].received()[0].path, "/v1/%6Frders/7");

    // An encoded slash or backslash means one path to the proxy and another to many servers:
    // refused, like dot segments.
    let before: usize = ups.iter().map(Upstream::hits).sum();
    for path in ["/v1%2Forders", "/v1/x%2f..%2forders", "/v1%5Corders"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw::send(proxy.addr(), req.as_bytes()).await;
        assert_eq!(resp.status, 400, "{path}: {resp:?}");
        assert_eq!(resp.json()["error"], "bad_path", "{path}");
    }
    assert_eq!(ups.iter().map(Upstream::hits).sum::<usize>(), before);
}

/// Routes `/`, `/admin`, `/public` and `/private`, each on its own upstream, and one for
/// host `app.test` only.
async fn guarded() -> (Proxy, Vec<Upstream>) {
    let names = ["root", "admin", "public", "private", "app"];
    let mut ups = Vec::new();
    let mut body = String::from("upstreams:\n");
    for n in names {
        let u = Upstream::start(n).await;
        body.push_str(&pool(n, &[u.addr().to_string()], &[]));
        ups.push(u);
    }
    body.push_str("routes:\n");
    for (n, prefix) in [
        ("root", "/"),
        ("admin", "/admin"),
        ("public", "/public"),
        ("private", "/private"),
    ] {
        body.push_str(&format!(
            "  - name: {n}\n    match: {{ path_prefix: \"{prefix}\" }}\n    upstream: {n}\n"
        ));
    }
    body.push_str(
        "  - name: app\n    match: { host: app.test, path_prefix: /x }\n    upstream: app\n",
    );
    (Proxy::start(&body).await, ups)
}

fn get(target: &[u8], host: Option<&str>) -> Vec<u8> {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        req.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req
}

/// Issue 13: a raw `\`, bytes RFC 3986 does not allow in a target, and paths a backend
/// reads as another route (`;` parameters dropped, escapes decoded once) are refused, and
/// nothing reaches an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_a_backend_could_read_as_another_route_are_refused() {
    let (proxy, ups) = guarded().await;
    for target in [
        // The cases the penetration test quoted.
        &b"/public\\..\\private"[..],
        b"/public/..\\private",
        b"/public/..;/private",
        // A sample of their classes.
        b"/public\\private",
        b"/public?next=\\..\\private",
        b"/;x/admin",
        b"/public/.;/private",
        b"/public/%2e%2e;x/private",
        b"/%3Bx/admin",
        b"/public/a\"b",
        b"/public/{x}",
        b"/public/a|b",
        b"/public/a^b",
        b"/public?a=`{}|^",
        b"/public/caf\xc3\xa9",
        b"/public/a%00b",
        // Pingora percent-encodes a request line holding a control byte before Portcullis
        // sees it (`%09`, `%00`, `%7F`): encoded controls are refused.
        b"/public/a\tb",
        b"/public/a\x00b",
        b"/public/a\x7fb",
        b"*",
    ] {
        let shown = String::from_utf8_lossy(target);
        let resp = raw::send(proxy.addr(), &get(target, Some("x"))).await;
        assert_eq!(resp.status, 400, "{shown}: {resp:?}");
        assert_eq!(resp.json()["error"], "bad_path", "{shown}");
    }
    // Pingora's own parser refuses these before Portcullis sees them: a bare 400.
    for target in [
        &b"/public/<x>"[..],
        b"/public/a`b",
        b"/public?a=\"<",
        b"/public/\xff",
    ] {
        let resp = raw::send(proxy.addr(), &get(target, Some("x"))).await;
        let shown = String::from_utf8_lossy(target);
        assert_eq!(resp.status, 400, "{shown}: {resp:?}");
    }
    let hits: Vec<usize> = ups.iter().map(Upstream::hits).collect();
    assert_eq!(hits, [0, 0, 0, 0, 0], "nothing reached an upstream");

    // Parameters and escapes that every reading keeps on the same route pass unchanged.
    for (target, want) in [
        ("/admin;jsessionid=1/x", "admin"),
        ("/public/a%20b;v=2?q=%3B", "public"),
        ("/x;y/z", "root"),
    ] {
        let resp = raw::send(proxy.addr(), &get(target.as_bytes(), Some("x"))).await;
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(resp.header("x-upstream").as_deref(), Some(want), "{target}");
    }
    assert_eq!(ups[1].received()[0].path, "/admin;jsessionid=1/x");
}

/// Issue 13: an absolute-form target (RFC 9112 section 3.2.2) is routed on its host and
/// goes upstream in origin form, with the target's host as `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_is_routed_on_its_host_and_forwarded_in_origin_form() {
    let (proxy, ups) = guarded().await;
    for (target, host) in [
        ("http://app.test/x/1?q=%20", Some("app.test")),
        ("HTTP://app.test/x/1?q=%20", None),
        ("https://app.test/x/1?q=%20", None),
    ] {
        let resp = raw::send(proxy.addr(), &get(target.as_bytes(), host)).await;
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(
            resp.header("x-upstream").as_deref(),
            Some("app"),
            "{target}"
        );
        let echo = ups[4].received().pop().unwrap();
        assert_eq!(echo.path, "/x/1?q=%20", "{target}");
        assert_eq!(echo.header("host").as_deref(), Some("app.test"), "{target}");
        assert_eq!(echo.header("x-forwarded-host").as_deref(), Some("app.test"));
    }
    // The target's host decides, not a route for the path on another host.
    let resp = raw::send(proxy.addr(), &get(b"http://other.test/x?a=1", None)).await;
    assert_eq!(resp.header("x-upstream").as_deref(), Some("root"));
    assert_eq!(ups[0].received()[0].path, "/x?a=1");
    let resp = raw::send(proxy.addr(), &get(b"http://app.test:8080", None)).await;
    assert_eq!(resp.header("x-upstream").as_deref(), Some("root"));
    assert_eq!(ups[0].received()[1].path, "/");
    assert_eq!(
        ups[0].received()[1].header("host").as_deref(),
        Some("app.test:8080")
    );
    // Its path gets the same checks as any other.
    let resp = raw::send(proxy.addr(), &get(b"http://app.test/x/..;/admin", None)).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "bad_path");

    // A Host that disagrees with the target, and targets in no accepted form.
    let before: usize = ups.iter().map(Upstream::hits).sum();
    let resp = raw::send(proxy.addr(), &get(b"http://app.test/x", Some("evil.test"))).await;
    assert_eq!(resp.status, 400, "{resp:?}");
    for target in [
        &b"ftp://app.test/x"[..],
        b"ws://app.test/x",
        b"app.test:80",
        b"http://user@app.test/x",
    ] {
        let resp = raw::send(proxy.addr(), &get(target, Some("app.test"))).await;
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(target));
    }
    assert_eq!(ups.iter().map(Upstream::hits).sum::<usize>(), before);
}
