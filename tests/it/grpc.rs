//! HTTP/2 and gRPC: h2c listeners (`h2c: true`), h2c pools (`protocol: h2c`), gRPC end to end
//! with a real grpcio server and client (unary, server, client and bidirectional streaming,
//! trailers), and refusals of gRPC calls in the form gRPC clients read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::auth::tools::mint;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::grpc::{calls, GrpcServer};
use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, ISS, RSA};
use crate::support::{client_builder, eventually, pool, Echo, Proxy, Upstream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what an HTTP/2 client sends right after the preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A token for [`ISS`] and [`AUD`], subject `alice`, with `scope`.
fn token(scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "scope": scope, "iat": now, "exp": now + 600,
    });
    mint(RSA, &claims.to_string(), None, Some("k1")).unwrap()
}

/// Issuer `corp` on `jwks`, pool `grpc` (h2c) on `server`, pool `dead` (h2c, nothing
/// listening), then `routes`.
fn config(jwks: &JwksServer, server: &GrpcServer, routes: &str) -> String {
    format!(
        "issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\nupstreams:\n{}{}routes:\n{routes}",
        jwks.jwks_url(),
        pool("grpc", &[server.addr().to_string()], &["protocol: h2c"]),
        pool("dead", &["127.0.0.1:1".to_string()], &["protocol: h2c"]),
    )
}

/// The route of service `portcullis.test.Echo`: a valid token, `sub` forwarded as `X-User-Id`.
const ECHO_ROUTE: &str = "  - name: echo\n    match: { path_prefix: /portcullis.test.Echo/ }\n    upstream: grpc\n    auth: { issuers: [corp], forward_claims: { sub: X-User-Id } }\n";

async fn wait_for_keys(proxy: &Proxy) {
    eventually(
        "the keys of issuer corp",
        Duration::from_secs(10),
        || async {
            match proxy
                .metrics()
                .await
                .get("portcullis_jwks_keys", &[("issuer", "corp")])
            {
                Some(n) if n > 0.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Every kind of call through [`ECHO_ROUTE`], and what the client must see: the upstream's
/// answers and its own statuses and trailers, and the proxy's refusal of a call without token.
async fn every_kind_of_call(proxy: &Proxy, ca: Option<&std::path::Path>, scheme: &str) {
    let good = token("orders:read");
    let results = calls(
        proxy.addr(),
        json!([
            {"method": "Unary", "request": "hello", "token": good},
            {"method": "Unary", "request": "fail:no such order", "token": good},
            {"method": "ServerStream", "request": "5", "token": good},
            {"method": "ClientStream", "request": ["a", "b", "c"], "token": good},
            {"method": "Bidi", "request": ["x", "y", "z"], "token": good},
            {"method": "Unary", "request": "hello"},
        ]),
        ca,
    )
    .await;
    let [unary, failed, server_stream, client_stream, bidi, anonymous] = &results[..] else {
        panic!("{results:?}");
    };

    assert_eq!(unary["code"], "OK", "{unary}");
    let seen: Value = serde_json::from_str(unary["responses"][0].as_str().unwrap()).unwrap();
    assert_eq!(seen["request"], "hello");
    let md = &seen["metadata"];
    assert_eq!(
        md["x-user-id"], "alice",
        "the claim reaches the upstream: {md}"
    );
    assert_eq!(md["authorization"], "<present>", "{md}");
    assert_eq!(md["x-forwarded-proto"], scheme, "{md}");
    assert!(md["x-request-id"].is_string(), "{md}");
    assert!(unary["initial"]["x-request-id"].is_string(), "{unary}");
    assert_eq!(
        unary["trailing"]["x-trailer"], "hello",
        "trailers pass: {unary}"
    );

    // The upstream's own error status, in its trailers.
    assert_eq!(failed["code"], "NOT_FOUND", "{failed}");
    assert_eq!(failed["details"], "no such order", "{failed}");
    assert_eq!(failed["trailing"]["x-trailer"], "fail:no such order");

    assert_eq!(server_stream["code"], "OK", "{server_stream}");
    assert_eq!(
        server_stream["responses"],
        json!(["item-0", "item-1", "item-2", "item-3", "item-4"])
    );
    assert_eq!(client_stream["code"], "OK", "{client_stream}");
    assert_eq!(client_stream["responses"], json!(["a,b,c"]));
    assert_eq!(bidi["code"], "OK", "{bidi}");
    assert_eq!(bidi["responses"], json!(["X", "Y", "Z"]));

    assert_eq!(anonymous["code"], "UNAUTHENTICATED", "{anonymous}");
    assert_eq!(anonymous["code_value"], 16);
    assert_eq!(anonymous["details"], "a bearer token is required");
}

/// Client to Portcullis in h2c (prior knowledge), Portcullis to the grpcio server in h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_through_an_authenticated_route() {
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let server = GrpcServer::start();
    let proxy = Proxy::builder(&config(&jwks, &server, ECHO_ROUTE))
        .listener("h2c: true")
        .start()
        .await;
    wait_for_keys(&proxy).await;
    every_kind_of_call(&proxy, None, "http").await;

    // Six calls, each logged with the status sent; the refused one with its reason.
    eventually("six access log lines", Duration::from_secs(10), || async {
        let lines = proxy.access_lines();
        let ok = lines
            .iter()
            .filter(|l| l["route"] == "echo" && l["status"] == 200)
            .count();
        if ok == 6 && lines.iter().any(|l| l["reason"] == "unauthorized") {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
}

/// Client to Portcullis in h2 by ALPN on a TLS listener, Portcullis to the server in h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_on_a_tls_listener() {
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let server = GrpcServer::start();
    let proxy = Proxy::builder(&config(&jwks, &server, ECHO_ROUTE))
        .tls()
        .start()
        .await;
    wait_for_keys(&proxy).await;
    every_kind_of_call(&proxy, Some(&proxy.tls_cert_path()), "https").await;
}

/// Each refusal of a gRPC call reaches the grpcio client as its gRPC status and message; the
/// access log and the metrics still say what was refused. An HTTP/1.1 request with a gRPC
/// content type gets the same form; any other request keeps the JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_grpc_calls_get_grpc_statuses() {
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let server = GrpcServer::start();
    let routes = concat!(
        "  - name: scoped\n    match: { path_prefix: /scoped.Echo/ }\n    upstream: grpc\n",
        "    auth: { issuers: [corp], require_scopes: [\"orders:write\"] }\n",
        "  - name: limited\n    match: { path_prefix: /limited.Echo/ }\n    upstream: grpc\n",
        "    auth: none\n    rate_limit: { per_route: { rate: 1/h, burst: 1 } }\n",
        "  - name: down\n    match: { path_prefix: /down.Echo/ }\n    upstream: dead\n",
        "    auth: none\n",
    );
    let proxy = Proxy::builder(&config(&jwks, &server, routes))
        .listener("h2c: true")
        .start()
        .await;
    wait_for_keys(&proxy).await;
    let read_only = token("orders:read");
    let results = calls(
        proxy.addr(),
        json!([
            {"service": "scoped.Echo", "method": "Unary"},
            {"service": "scoped.Echo", "method": "Unary", "token": "not-a-token"},
            {"service": "scoped.Echo", "method": "Unary", "token": read_only},
            {"service": "limited.Echo", "method": "Unary", "request": "first"},
            {"service": "limited.Echo", "method": "Unary"},
            {"service": "limited.Echo", "method": "ServerStream", "request": "3"},
            {"service": "down.Echo", "method": "Unary"},
            {"service": "nowhere.Echo", "method": "Unary"},
        ]),
        None,
    )
    .await;
    let expected = [
        ("UNAUTHENTICATED", 16, Some("a bearer token is required")),
        ("UNAUTHENTICATED", 16, None),
        (
            "PERMISSION_DENIED",
            7,
            Some("the token lacks a required scope"),
        ),
        ("OK", 0, Some("")),
        ("RESOURCE_EXHAUSTED", 8, Some("too many requests")),
        ("RESOURCE_EXHAUSTED", 8, Some("too many requests")),
        ("UNAVAILABLE", 14, Some("the upstream could not be reached")),
        ("UNIMPLEMENTED", 12, Some("no route matches this request")),
    ];
    assert_eq!(results.len(), expected.len());
    for (i, (result, (code, value, details))) in results.iter().zip(expected).enumerate() {
        assert_eq!(result["code"], code, "call {i}: {result}");
        assert_eq!(result["code_value"], value, "call {i}: {result}");
        if let Some(details) = details {
            assert_eq!(result["details"], details, "call {i}: {result}");
        }
    }
    assert!(
        results[1]["details"].as_str().unwrap().contains("token"),
        "{}",
        results[1]
    );

    // The access log has what went out (200) and why; the metrics count each refusal by
    // its HTTP status, never as a success.
    // A line is written when its request ends, which may be after the client has its answer
    // and sent the next call: compared in any order, once all are there.
    let lines = eventually(
        "eight access log lines",
        Duration::from_secs(10),
        || async {
            let lines = proxy.access_lines();
            if lines.len() >= 8 {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        },
    )
    .await;
    let mut reasons: Vec<(&str, &str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["route"].as_str().unwrap_or(""),
                l["reason"].as_str().unwrap_or("-"),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    reasons.sort_unstable();
    let mut expected = vec![
        ("scoped", "unauthorized", 200),
        ("scoped", "invalid_token", 200),
        ("scoped", "insufficient_scope", 200),
        ("limited", "-", 200),
        ("limited", "rate_limited", 200),
        ("limited", "rate_limited", 200),
        ("down", "upstream_unreachable", 200),
        ("", "no_route", 200),
    ];
    expected.sort_unstable();
    assert_eq!(reasons, expected, "{lines:?}");
    let metrics = proxy.metrics().await;
    let requests =
        |route: &str, class: &str| metrics.requests_in_class(route, class.chars().next().unwrap());
    assert_eq!(requests("scoped", "4xx"), 3.0);
    assert_eq!(requests("scoped", "2xx"), 0.0);
    assert_eq!(requests("limited", "2xx"), 1.0);
    assert_eq!(requests("limited", "4xx"), 2.0);
    assert_eq!(requests("down", "5xx"), 1.0);
    assert_eq!(requests("", "4xx"), 1.0);

    // HTTP/1.1 with a gRPC content type: the same form, framed with `content-length: 0`.
    let h1 = client_builder().http1_only().build().unwrap();
    let url = proxy.url("/scoped.Echo/Unary");
    let resp = h1
        .post(&url)
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "16");
    assert_eq!(h["grpc-message"], "a bearer token is required");
    assert_eq!(h["content-length"], "0");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    // Not gRPC (gRPC-Web reads errors from the body, as every other client): JSON.
    for content_type in [
        "application/grpc-web",
        "application/json",
        "application/grpcx",
    ] {
        let resp = h1
            .post(&url)
            .header("content-type", content_type)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{content_type}");
        assert!(
            !resp.headers().contains_key("grpc-status"),
            "{content_type}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{content_type}");
    }
}

/// Read HTTP/2 frames until the server sends one of `kind`; give its flags.
async fn read_frame_of(conn: &mut TcpStream, kind: u8) -> u8 {
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).await.unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        if head[3] == kind {
            return head[4];
        }
    }
}

/// Wait until the server closes `conn` (reading and dropping whatever it sends first).
async fn wait_closed(conn: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is still open after 10s");
}

/// `h2c: true` serves HTTP/2 by prior knowledge beside HTTP/1.1 on one listener; a listener
/// without it stays HTTP/1.1. The preface may come in pieces; it must come within
/// `request_header_timeout`; an idle HTTP/2 connection is closed after `keepalive_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listeners_take_prior_knowledge_http2_beside_http1() {
    let up = Upstream::start("up").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - name: all\n    upstream: app\n",
        pool("app", &[up.addr().to_string()], &[])
    );
    let plain = Proxy::start(&body).await;
    let proxy = Proxy::builder(&body)
        .listener("h2c: true")
        .server("request_header_timeout: 1s")
        .server("keepalive_timeout: 1s")
        .start()
        .await;

    let h2 = client_builder().http2_prior_knowledge().build().unwrap();
    let h1 = client_builder().http1_only().build().unwrap();
    for i in 0..3 {
        let resp = h2.get(proxy.url(&format!("/h2/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.path, format!("/h2/{i}"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
        let resp = h1.get(proxy.url("/h1")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    }
    let refused = h2.get(plain.url("/h2")).send().await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() != 200),
        "a listener without h2c served HTTP/2: {refused:?}"
    );

    // The preface in two pieces, a moment apart: still HTTP/2 (the server's SETTINGS).
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(&PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(&PREFACE[10..]).await.unwrap();
    conn.write_all(EMPTY_SETTINGS).await.unwrap();
    let flags = read_frame_of(&mut conn, 4).await;
    assert_eq!(flags & 1, 0, "the server's own SETTINGS first, not an ack");
    // Idle past `keepalive_timeout` with no stream: closed.
    wait_closed(&mut conn).await;

    // Part of a preface, then nothing: cut at `request_header_timeout`, and counted.
    let timeouts = "portcullis_connections_header_timeouts_total";
    let before = proxy.metric(timeouts, &[]).await;
    let mut stalled = TcpStream::connect(proxy.addr()).await.unwrap();
    stalled.write_all(&PREFACE[..8]).await.unwrap();
    wait_closed(&mut stalled).await;
    proxy.wait_metric(timeouts, &[], before + 1.0).await;
}

/// An h2c connection is one connection under `max_connections`, for as long as it is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_connections_count_against_the_connection_limit() {
    let up = Upstream::start("up").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - name: all\n    upstream: app\n",
        pool("app", &[up.addr().to_string()], &[])
    );
    let proxy = Proxy::builder(&body)
        .listener("h2c: true")
        .server("max_connections: 1")
        .start()
        .await;
    // The start-up probe's connection first has to be gone.
    proxy
        .wait_metric("portcullis_connections_open", &[], 0.0)
        .await;
    let mut held = TcpStream::connect(proxy.addr()).await.unwrap();
    held.write_all(PREFACE).await.unwrap();
    held.write_all(EMPTY_SETTINGS).await.unwrap();
    read_frame_of(&mut held, 4).await;
    proxy
        .wait_metric("portcullis_connections_open", &[], 1.0)
        .await;

    let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
    wait_closed(&mut second).await;
    proxy
        .wait_metric(
            "portcullis_connections_refused_total",
            &[("reason", "max_connections")],
            1.0,
        )
        .await;

    drop(held);
    proxy
        .wait_metric("portcullis_connections_open", &[], 0.0)
        .await;
    let h2 = client_builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.get(proxy.url("/again")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

/// `protocol` reloads live: a pool switched from `http1` to `h2c` speaks HTTP/2 to its
/// target from the next request (no HTTP/1.1 connection of before is reused for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_a_pool_to_h2c() {
    let server = GrpcServer::start();
    let body = |protocol: &str| {
        format!(
            "upstreams:\n{}routes:\n  - name: echo\n    upstream: grpc\n",
            pool(
                "grpc",
                &[server.addr().to_string()],
                &[&format!("protocol: {protocol}")]
            )
        )
    };
    let proxy = Proxy::builder(&body("http1"))
        .listener("h2c: true")
        .start()
        .await;
    let call = json!([{"method": "Unary", "request": "hello"}]);
    let before = calls(proxy.addr(), call.clone(), None).await;
    assert_ne!(before[0]["code"], "OK", "gRPC over HTTP/1.1: {before:?}");

    proxy.write_config(&body("h2c"));
    proxy
        .wait_metric("portcullis_config_generation", &[], 2.0)
        .await;
    let after = calls(proxy.addr(), call, None).await;
    assert_eq!(after[0]["code"], "OK", "{after:?}");
}

/// Calls in flight at once share one HTTP/2 connection to the target (up to 100 streams on
/// each), where Pingora's default of one stream per connection would open one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_an_upstream_connection() {
    let server = GrpcServer::start();
    let body = format!(
        "upstreams:\n{}routes:\n  - name: echo\n    upstream: grpc\n",
        pool("grpc", &[server.addr().to_string()], &["protocol: h2c"])
    );
    let proxy = Proxy::builder(&body).listener("h2c: true").start().await;
    let results = calls(
        proxy.addr(),
        json!([
            {"method": "Unary", "request": "first"},
            {"method": "Unary", "request": "sleep:0.5", "parallel": 20},
        ]),
        None,
    )
    .await;
    assert_eq!(results[0]["code"], "OK", "{results:?}");
    assert_eq!(results[1]["codes"], json!(vec!["OK"; 20]), "{results:?}");
    let target = server.addr().to_string();
    let connections = |reused: &'static str| {
        let target = target.clone();
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "portcullis_upstream_connections_total",
                    &[
                        ("upstream", "grpc"),
                        ("target", &target),
                        ("reused", reused),
                    ],
                )
                .await
        }
    };
    let (new, reused) = (connections("false").await, connections("true").await);
    assert_eq!(new + reused, 21.0);
    // The first call's connection carries the rest; more may open when calls race for it on
    // a busy machine, never one per call (Pingora's default of one stream per connection
    // opens one for each of the 20 calls in flight).
    assert!(new <= 10.0, "{new} new connections for 21 calls");
}

/// `protocol: h2` on a pool with `tls:`: HTTP/2 by ALPN to a grpcio server over TLS (a
/// certificate from a local CA that `ca_file` trusts), every kind of call end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_an_h2_upstream_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::Ca::new("grpc test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "server");
    let server = GrpcServer::start_tls(&cert, &key);
    let jwks = JwksServer::start(key_set(&[(RSA, "k1")])).await;
    let body = format!(
        "issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\nupstreams:\n{}routes:\n{ECHO_ROUTE}",
        jwks.jwks_url(),
        pool(
            "grpc",
            &[server.addr().to_string()],
            &[
                "protocol: h2",
                &format!("tls: {{ sni: localhost, ca_file: \"{}\" }}", ca_file.display()),
            ]
        ),
    );
    let proxy = Proxy::builder(&body).listener("h2c: true").start().await;
    wait_for_keys(&proxy).await;
    every_kind_of_call(&proxy, None, "http").await;
}
