//! Proxy hygiene and bad input: forwarded headers, request ids, hop-by-hop headers, malformed
//! requests, oversized headers, and what the access log keeps (and must never keep).

use std::time::Duration;

use crate::support::{client, eventually, get_echo, pool, raw, Echo, Proxy, Upstream};

fn one_route(up: &Upstream) -> String {
    format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    )
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_host_reach_the_upstream() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&up)).await;
    let port = proxy.addr().port();
    let http = crate::support::client_builder()
        .resolve("shop.example.com", proxy.addr())
        .build()
        .unwrap();
    let resp = http
        .get(format!("http://shop.example.com:{port}/cart?id=1"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    let host = format!("shop.example.com:{port}");
    assert_eq!(
        echo.header("host").as_deref(),
        Some(host.as_str()),
        "client Host kept"
    );
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        echo.header("x-forwarded-host").as_deref(),
        Some(host.as_str())
    );
    assert_eq!(echo.path, "/cart?id=1");

    // What a client claims about the scheme and host is not passed on as fact.
    let resp = http
        .get(format!("http://shop.example.com:{port}/"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "admin.internal")
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        echo.header("x-forwarded-host").as_deref(),
        Some(host.as_str())
    );

    // Without a previous hop: just the client.
    let echo = get_echo(&client(), &proxy.url("/")).await;
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

/// Headers Portcullis sets or strips cannot be sent under another spelling (`_` for `-`, as
/// CGI-style servers read them) nor through `Forwarded` (RFC 7239) or another
/// `X-Forwarded-*`: a client cannot forge its address, scheme, host or request id that way.
/// Under the default every header spelled with `_` is dropped (as nginx does); under
/// `headers_with_underscores: allow` only those naming an owned header are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_headers_cannot_be_sent_in_another_spelling() {
    let up = Upstream::start("up").await;
    let forged = "GET /spell HTTP/1.1\r\n\
        Host: shop.example\r\n\
        x_forwarded_for: 198.51.100.66\r\n\
        X-Forwarded_Proto: https\r\n\
        x_forwarded_host: admin.internal\r\n\
        X-Forwarded-Port: 443\r\n\
        x_forwarded_prefix: /admin\r\n\
        X-Forwarded-Ssl: on\r\n\
        Forwarded: for=198.51.100.66;proto=https;host=admin.internal\r\n\
        x_request_id: forged-id\r\n\
        X-Request-Id: real-id\r\n\
        proxy_authorization: Basic bWFsbG9yeQ==\r\n\
        keep_alive: timeout=5\r\n\
        Transfer_Encoding: chunked\r\n\
        content_length: 9\r\n\
        x_http_method_override: DELETE\r\n\
        X_Method_Override: DELETE\r\n\
        x_tenant_hint: blue\r\n\
        Connection: close\r\n\
        \r\n";
    for (setting, plain_passes) in [("", false), ("headers_with_underscores: allow", true)] {
        let mut builder = Proxy::builder(&one_route(&up));
        if !setting.is_empty() {
            builder = builder.server(setting);
        }
        let proxy = builder.start().await;
        let resp = raw::send(proxy.addr(), forged.as_bytes()).await;
        assert_eq!(resp.status, 200, "{setting:?}: {resp:?}");
        let echo: Echo = serde_json::from_slice(&resp.body).unwrap();
        let names: Vec<&str> = echo.headers.iter().map(|(k, _)| k.as_str()).collect();
        for (name, _) in &echo.headers {
            let read = name.replace('_', "-");
            assert!(
                !read.starts_with("x-forwarded-")
                    || ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
                        .contains(&name.as_str()),
                "{name} reached the upstream ({setting:?}): {names:?}"
            );
            assert!(
                name == &read || name == "x_tenant_hint",
                "{name} reached the upstream ({setting:?}): {names:?}"
            );
        }
        assert!(!echo.has("forwarded"), "{setting:?}: {names:?}");
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            echo.header("x-forwarded-host").as_deref(),
            Some("shop.example")
        );
        assert_eq!(echo.header("x-request-id").as_deref(), Some("real-id"));
        assert!(!echo.has("transfer-encoding"), "{setting:?}: {names:?}");
        assert_eq!(echo.method, "GET");
        assert_eq!(
            echo.has("x_tenant_hint"),
            plain_passes,
            "{setting:?}: {names:?}"
        );
        assert_eq!(resp.header("x-request-id").as_deref(), Some("real-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_made_or_kept_and_returned() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&up)).await;
    let http = client();

    // None sent: one is made, sent upstream, and returned.
    let resp = http.get(proxy.url("/a")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_hex32(&id), "{id}");
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-request-id"), Some(id.clone()));
    let other = http.get(proxy.url("/a")).send().await.unwrap();
    assert_ne!(
        other.headers()["x-request-id"].to_str().unwrap(),
        id,
        "ids are unique"
    );

    // A valid one is kept.
    let resp = http
        .get(proxy.url("/b"))
        .header("x-request-id", "trace-42_Ab.c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42_Ab.c");
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(
        echo.header("x-request-id").as_deref(),
        Some("trace-42_Ab.c")
    );

    // An unsafe one is replaced.
    let resp = http
        .get(proxy.url("/c"))
        .header("x-request-id", "a b<script>")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_hex32(&id), "{id}");
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-request-id"), Some(id));

    // Refused responses carry it too: a bad path (400) with and without one sent.
    let resp = raw::send(
        proxy.addr(),
        b"GET /a/../b HTTP/1.1\r\nHost: x\r\nX-Request-Id: refused-1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("x-request-id").as_deref(), Some("refused-1"));
    assert_eq!(resp.json()["request_id"], "refused-1");
    let resp = raw::send(
        proxy.addr(),
        b"GET /a/../b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(is_hex32(&resp.header("x-request-id").unwrap()), "{resp:?}");
    assert_eq!(up.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&up)).await;
    let resp = raw::send(
        proxy.addr(),
        b"GET /hop HTTP/1.1\r\n\
          Host: example.test\r\n\
          Connection: close, X-Hop-Secret, x-other-hop\r\n\
          X-Hop-Secret: 1\r\n\
          X-Other-Hop: 2\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Want-Hop-Headers: 1\r\n\
          X-End-To-End: kept\r\n\
          \r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo: Echo = serde_json::from_slice(&resp.body).unwrap();
    for gone in [
        "x-hop-secret",
        "x-other-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !echo.has(gone),
            "{gone} reached the upstream: {:?}",
            echo.headers
        );
    }
    if let Some(c) = echo.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("hop"), "connection: {c}");
    }
    assert_eq!(echo.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(echo.header("host").as_deref(), Some("example.test"));

    // The upstream answered with `Connection: x-up-hop`, `X-Up-Hop`, `Keep-Alive` and
    // `Proxy-Authenticate`: none is for the client.
    for gone in ["x-up-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            resp.header(gone).is_none(),
            "{gone} reached the client: {:?}",
            resp.headers
        );
    }
    if let Some(c) = resp.header("connection") {
        assert!(!c.contains("x-up-hop"), "connection: {c}");
    }
    assert_eq!(resp.header("x-upstream").as_deref(), Some("up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_line_is_a_400_and_the_proxy_keeps_serving() {
    let up = Upstream::start("up").await;
    let mut proxy = Proxy::start(&one_route(&up)).await;
    for garbage in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET /a HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"G@T /a HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let resp = raw::send(proxy.addr(), garbage).await;
        assert_eq!(
            resp.status,
            400,
            "{:?} gave {resp:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    // HTTP/1.1 without Host (RFC 9112 section 3.2); HTTP/1.0 without Host is fine.
    let resp = raw::send(
        proxy.addr(),
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "bad_request");
    assert_eq!(up.hits(), 0);
    let resp = raw::send(proxy.addr(), b"GET /a HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.hits(), 1);
    // Still serving, on a new connection.
    get_echo(&client(), &proxy.url("/after")).await;
    assert_eq!(
        proxy.wait_exit(Duration::from_millis(1)).await,
        None,
        "still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_refused_before_routing() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&up)).await;
    for path in [
        "/a/../b",
        "/..",
        "/a/./b",
        "/a/%2e%2e/b",
        "/static/%2E./admin",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw::send(proxy.addr(), req.as_bytes()).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.json()["error"], "bad_path", "{path}");
    }
    assert_eq!(up.hits(), 0);
    // Dots that are not segments are fine.
    let echo = get_echo(&client(), &proxy.url("/.well-known/a...b")).await;
    assert_eq!(echo.path, "/.well-known/a...b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_a_431() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::builder(&one_route(&up))
        .server("max_request_header_bytes: 2048")
        .start()
        .await;
    let http = client();
    let resp = http
        .get(proxy.url("/"))
        .header("x-big", "a".repeat(4000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "headers_too_large");
    // Many small headers count too.
    let mut req = http.get(proxy.url("/"));
    for i in 0..60 {
        req = req.header(
            format!("x-h-{i}"),
            "0123456789012345678901234567890123456789",
        );
    }
    assert_eq!(req.send().await.unwrap().status(), 431);
    assert_eq!(up.hits(), 0);
    // Below the limit it is served.
    let resp = http
        .get(proxy.url("/"))
        .header("x-big", "a".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_and_no_secrets() {
    let up = Upstream::start("up").await;
    let dead = format!("127.0.0.1:{}", crate::support::free_port());
    // At the most verbose log level: an operator debugging must not dump credentials either.
    let proxy = Proxy::builder(&format!(
        "upstreams:\n{}{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: pool\n  - name: dead\n    match: {{ path_prefix: /dead }}\n    upstream: dead\n",
        pool("pool", &[up.addr().to_string()], &[]),
        pool("dead", &[dead], &[]),
    ))
    .env("RUST_LOG", "trace")
    .start()
    .await;
    let http = client();
    let resp = http
        .post(proxy.url("/api/orders?access_token=secret-query-token&page=2"))
        .header("authorization", "Bearer secret-token")
        .header("cookie", "session=secret-cookie")
        .header("x-request-id", "log-test-1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = resp.bytes().await.unwrap().len();
    // The secrets did reach the upstream, which needs them: only the log must not keep them.
    let echo = &up.received()[0];
    assert_eq!(
        echo.header("authorization").as_deref(),
        Some("Bearer secret-token")
    );
    assert!(echo.path.contains("secret-query-token"));
    let resp = http
        .get(proxy.url("/api/x?token=secret-query-token"))
        .header("authorization", "Bearer secret-token")
        .header("x-request-id", "log-test-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = raw::send(proxy.addr(), b"GET /api/../x?access_token=secret-query-token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret-token\r\nX-Request-Id: log-test-3\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 400);
    // A failure logs an error line about the request: it must not carry them either.
    let resp = http
        .get(proxy.url("/dead/x?access_token=secret-query-token"))
        .header("authorization", "Bearer secret-token")
        .header("cookie", "session=secret-cookie")
        .header("x-request-id", "log-test-4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);

    let lines = eventually("four access log lines", Duration::from_secs(5), || async {
        let lines = proxy.access_lines();
        if lines.len() >= 4 {
            Ok(lines)
        } else {
            Err(format!("{} lines", lines.len()))
        }
    })
    .await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    let first = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-1")
        .unwrap();
    assert_eq!(first["route"], "api");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/api/orders");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], up.addr().to_string());
    assert!(first["duration_us"].is_u64(), "{first}");
    assert!(first.get("duration_ms").is_none(), "{first}");
    assert_eq!(first["bytes_sent"], sent);
    assert_eq!(first["bytes_received"], 5);
    let time = first["time"].as_str().unwrap();
    assert!(time.len() >= 20 && time.ends_with('Z'), "time: {time}");
    let refused = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-3")
        .unwrap();
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["reason"], "bad_path");
    let failed = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-4")
        .unwrap();
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["route"], "dead");
    assert_eq!(failed["reason"], "upstream_unreachable");
    assert_eq!(failed["path"], "/dead/x");

    // The process logs an error line about the failed request before its access line, but
    // stderr reaches the test through a pipe: wait for that line, so that the look below
    // reads what the process wrote about the requests, not an empty or partial stderr.
    let stderr = eventually(
        "the error line of the failed request",
        Duration::from_secs(5),
        || async {
            let stderr = proxy.stderr();
            if stderr
                .lines()
                .any(|l| l.contains("Fail to proxy") && l.contains("GET /dead/x"))
            {
                Ok(stderr)
            } else {
                Err(format!("stderr so far:\n{stderr}"))
            }
        },
    )
    .await;
    let log = proxy.access_log();
    for secret in [
        "secret-token",
        "secret-cookie",
        "secret-query-token",
        "Bearer",
        "session=",
    ] {
        assert!(!log.contains(secret), "access log leaks {secret}:\n{log}");
        assert!(!stderr.contains(secret), "stderr leaks {secret}:\n{stderr}");
    }
}

/// A refusal before proxying keeps a body-less request's connection open, so a client refused
/// by routing (or a policy or a limit, which share the path) does not reconnect each time;
/// a refusal of a request with a body closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_connection_when_they_can() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n{}routes:\n  - name: ok\n    match: {{ path_prefix: /ok }}\n    upstream: pool\n",
        pool("pool", &[up.addr().to_string()], &[])
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    use tokio::io::AsyncWriteExt;
    for path in ["/nowhere", "/a/%2e%2e/b", "/also-nowhere"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let resp = raw::read_response(&mut stream).await;
        assert!(matches!(resp.status, 404 | 400), "{path}: {resp:?}");
        assert_ne!(
            resp.header("connection").as_deref(),
            Some("close"),
            "{path}"
        );
    }
    // The same connection still reaches the upstream.
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw::read_response(&mut stream).await.status, 200);

    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /nowhere HTTP/1.1\r\nHost: elsewhere.example\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await
        .unwrap();
    let resp = raw::read_response(&mut stream).await;
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
}
