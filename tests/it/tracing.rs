//! Tracing end to end: the real binary, a real OTLP/HTTP receiver ([`Receiver`], which decodes
//! each export with the official protobuf definitions), a real key server and upstream.
//! Trace ids and parent links across the client, Portcullis's spans and the upstream's
//! `traceparent`; attributes and what must never be in them; parent-based sampling; a
//! receiver that is down or hangs; the access log's `trace_id`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::auth::tools::mint;
use serde_json::json;

use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, ISS, RSA, RSA_B};
use crate::support::otlp::{Got, Receiver};
use crate::support::{client, eventually, pool, Echo, Proxy, Upstream};

const DROPPED: &str = "portcullis_tracing_spans_dropped_total";
const EXPORTED: &str = "portcullis_tracing_spans_exported_total";
const EXPORTS: &str = "portcullis_tracing_exports_total";
/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn token(pem: &str, kid: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600});
    mint(pem, &claims.to_string(), None, Some(kid)).unwrap()
}

/// `tracing:` to `endpoint` with `ratio`, pool `app` on `up`, issuer `corp` on `jwks`, route
/// `orders` (token and per-IP limit) and route `open` (no token, per-route limit).
fn config(endpoint: &str, ratio: &str, up: &Upstream, jwks: &JwksServer) -> String {
    format!(
        "tracing:\n  otlp_endpoint: \"{endpoint}\"\n  sample_ratio: {ratio}\n  service_name: edge-test\n\
         upstreams:\n{}\
         issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\n    jwks_refresh: 60s\n    jwks_min_refresh: 1ms\n\
         routes:\n  - name: orders\n    match: {{ path_prefix: /api }}\n    upstream: app\n    auth: {{ issuers: [corp] }}\n    rate_limit:\n      per_ip: {{ rate: 1000/s, burst: 1000 }}\n\
         \x20 - name: open\n    match: {{ path_prefix: /open }}\n    upstream: app\n    auth: none\n    rate_limit:\n      per_route: {{ rate: 100000/s, burst: 100000 }}\n",
        pool("app", &[up.addr().to_string()], &[]),
        jwks.jwks_url(),
    )
}

/// The upstream `app` and a key server holding `key-a`, which every proxy here stands before.
async fn backends() -> (Upstream, JwksServer) {
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "key-a")])).await;
    (up, jwks)
}

/// A receiver, the [`backends`], and a proxy over them with [`config`]: spans to the receiver
/// at `ratio`.
async fn traced(ratio: &str) -> (Receiver, Upstream, JwksServer, Proxy) {
    let receiver = Receiver::start().await;
    let (up, jwks) = backends().await;
    let proxy = Proxy::start(&config(&receiver.endpoint(), ratio, &up, &jwks)).await;
    (receiver, up, jwks, proxy)
}

/// GET `url` with these headers; the upstream's echo (the answer must be its 200).
async fn get(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Echo {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `traceparent` the upstream received, split: (trace id, parent id, flags).
fn upstream_parent(echo: &Echo) -> (String, String, String) {
    let all: Vec<&String> = echo
        .headers
        .iter()
        .filter(|(k, _)| k == "traceparent")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(all.len(), 1, "one traceparent upstream: {:?}", echo.headers);
    let parts: Vec<&str> = all[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{}", all[0]);
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Wait until the receiver holds the spans of `trace_id` that `done` accepts.
async fn spans_of(receiver: &Receiver, trace_id: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    eventually("spans at the receiver", Duration::from_secs(10), || {
        let spans = receiver.trace(trace_id);
        let ok = done(&spans);
        async move {
            if ok {
                Ok(spans)
            } else {
                Err(format!("{spans:#?}"))
            }
        }
    })
    .await
}

/// Wait until `/readyz` shows keys for issuer `corp`.
async fn wait_for_keys(proxy: &Proxy) {
    eventually("keys of issuer corp", Duration::from_secs(10), || async {
        let (_, body) = proxy.readyz(true).await;
        match body["issuers"]["corp"]["keys"].as_u64() {
            Some(n) if n > 0 => Ok(()),
            _ => Err(body.to_string()),
        }
    })
    .await;
}

fn named<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

fn one(spans: &[Got], kind: i32) -> &Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.span.kind == kind).collect();
    assert_eq!(found.len(), 1, "one span of kind {kind}: {spans:#?}");
    found[0]
}

/// A sampled incoming `traceparent` is continued: the request's span is its child, the token
/// check (with the key fetch it waited for), the limit check and the upstream attempt are the
/// request's children, and the upstream's `traceparent` names the attempt as its parent. The
/// attributes follow the HTTP conventions and nothing secret is exported anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_trace_is_continued_with_linked_spans() {
    let (receiver, up, jwks, proxy) = traced("1").await;
    wait_for_keys(&proxy).await;
    let http = client();
    let incoming = format!("00-{TRACE}-{CALLER}-01");
    // A kid the proxy does not have yet: the request waits for a key fetch.
    jwks.set_keys(key_set(&[(RSA, "key-a"), (RSA_B, "key-b")]));
    let secret = token(RSA_B, "key-b");
    let url = proxy.url("/api/orders?access_token=QUERYSECRET&page=2");
    let echo = get(
        &http,
        &url,
        &[
            ("traceparent", &incoming),
            ("tracestate", "vendor=opaque"),
            ("authorization", &format!("Bearer {secret}")),
            ("cookie", "sid=COOKIESECRET"),
        ],
    )
    .await;
    let (trace, parent, flags) = upstream_parent(&echo);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, CALLER, "the upstream's parent is Portcullis's span");
    assert_eq!(echo.header("tracestate").as_deref(), Some("vendor=opaque"));

    let spans = spans_of(&receiver, TRACE, |s| {
        s.iter().any(|g| g.span.kind == SERVER) && s.iter().any(|g| g.span.kind == CLIENT)
    })
    .await;
    let server = one(&spans, SERVER);
    assert_eq!(server.parent_id(), CALLER, "{server:#?}");
    assert_eq!(server.service, "edge-test");
    assert_eq!(server.span.name, "GET orders");
    let port = proxy.addr().port().to_string();
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/api/orders"),
        ("url.scheme", "http"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("http.route", "orders"),
        ("http.response.status_code", "200"),
        ("network.protocol.version", "1.1"),
        ("client.address", "127.0.0.1"),
        ("portcullis.auth.result", "allowed"),
    ] {
        assert_eq!(
            server.attr(key).as_deref(),
            Some(want),
            "{key}: {server:#?}"
        );
    }
    assert_eq!(server.attr("error.type"), None);

    let attempt = one(&spans, CLIENT);
    assert_eq!(
        attempt.span_id(),
        parent,
        "the upstream's parent is the attempt"
    );
    assert_eq!(attempt.parent_id(), server.span_id());
    assert_eq!(
        attempt.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attempt.attr("server.port"),
        Some(up.addr().port().to_string())
    );

    let check = named(&spans, "portcullis.token_check");
    assert_eq!(check.len(), 1, "{spans:#?}");
    assert_eq!(check[0].span.kind, INTERNAL);
    assert_eq!(check[0].parent_id(), server.span_id());
    assert_eq!(
        check[0].attr("portcullis.auth.check").as_deref(),
        Some("verification")
    );
    assert_eq!(
        check[0].attr("portcullis.auth.result").as_deref(),
        Some("allowed")
    );
    let fetch = named(&spans, "portcullis.key_fetch");
    assert_eq!(fetch.len(), 1, "{spans:#?}");
    assert_eq!(fetch[0].parent_id(), check[0].span_id());
    assert_eq!(fetch[0].attr("portcullis.issuer").as_deref(), Some("corp"));
    let limit = named(&spans, "portcullis.rate_limit");
    assert_eq!(limit.len(), 1, "{spans:#?}");
    assert_eq!(limit[0].parent_id(), server.span_id());
    assert_eq!(
        limit[0].attr("portcullis.limit.kind").as_deref(),
        Some("per_ip")
    );
    assert_eq!(
        limit[0].attr("portcullis.limit.result").as_deref(),
        Some("allowed")
    );

    // The same token again: a cache hit, in a trace of its own.
    let second = "0af7651916cd43dd8448eb211c80319c";
    get(
        &http,
        &url,
        &[
            ("traceparent", &format!("00-{second}-b7ad6b7169203331-01")),
            ("authorization", &format!("Bearer {secret}")),
        ],
    )
    .await;
    let spans = spans_of(&receiver, second, |s| {
        s.iter().any(|g| g.span.name == "portcullis.token_check")
    })
    .await;
    let check = named(&spans, "portcullis.token_check");
    assert_eq!(
        check[0].attr("portcullis.auth.check").as_deref(),
        Some("cache_hit")
    );

    let raw = receiver.raw();
    let text = String::from_utf8_lossy(&raw);
    for part in secret.split('.').filter(|p| p.len() >= 8) {
        assert!(!text.contains(part), "a piece of the token was exported");
    }
    for never in ["QUERYSECRET", "access_token", "COOKIESECRET", "Bearer"] {
        assert!(!text.contains(never), "`{never}` was exported");
    }

    // The access log line carries the trace id.
    proxy
        .wait_access_until("the access line", |lines| {
            lines.iter().any(|l| l["trace_id"] == TRACE)
        })
        .await;
    // Counted once the receiver's answer is read, a moment after it kept the spans.
    eventually("exports counted", Duration::from_secs(10), || async {
        let exported = proxy.metric(EXPORTED, &[]).await;
        let ok = proxy.metric(EXPORTS, &[("result", "success")]).await;
        if exported >= 5.0 && ok >= 1.0 {
            Ok(())
        } else {
            Err(format!("{exported} spans in {ok} exports"))
        }
    })
    .await;
    assert_eq!(proxy.metric(DROPPED, &[]).await, 0.0);
}

/// Without a `traceparent`, or with a malformed one, Portcullis starts a trace: the
/// request's span is a root, the upstream gets the new trace and the access log its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_starts_when_none_or_a_malformed_one_came() {
    let (receiver, _up, _jwks, proxy) = traced("1").await;
    let http = client();
    let malformed = format!("00-{}-{CALLER}-01", TRACE.to_uppercase());
    for headers in [vec![], vec![("traceparent", malformed.as_str())]] {
        let echo = get(&http, &proxy.url("/open/x?q=1"), &headers).await;
        let (trace, parent, flags) = upstream_parent(&echo);
        assert_ne!(trace, TRACE.to_string());
        assert_eq!(flags, "01");
        let spans = spans_of(&receiver, &trace, |s| s.len() >= 3).await;
        let server = one(&spans, SERVER);
        assert_eq!(server.parent_id(), "", "a root: {server:#?}");
        assert_eq!(server.attr("http.route").as_deref(), Some("open"));
        assert_eq!(server.attr("url.path").as_deref(), Some("/open/x"));
        let attempt = one(&spans, CLIENT);
        assert_eq!(attempt.span_id(), parent);
        assert_eq!(attempt.parent_id(), server.span_id());
        let limit = named(&spans, "portcullis.rate_limit");
        assert_eq!(
            limit[0].attr("portcullis.limit.kind").as_deref(),
            Some("per_route")
        );
        assert!(named(&spans, "portcullis.token_check").is_empty());
        let id = echo.header("x-request-id").unwrap();
        proxy
            .wait_access_until("the access line", |lines| {
                lines
                    .iter()
                    .find(|l| l["request_id"] == id.as_str())
                    .is_some_and(|l| l["trace_id"] == trace.as_str())
            })
            .await;
    }
}

/// A method outside the standard ones is `_OTHER`, its spelling kept beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_other() {
    let (receiver, _up, _jwks, proxy) = traced("1").await;
    let resp = client()
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            proxy.url("/open/x"),
        )
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = spans_of(&receiver, TRACE, |s| s.len() >= 3).await;
    let server = one(&spans, SERVER);
    assert_eq!(server.span.name, "HTTP open");
    assert_eq!(
        server.attr("http.request.method").as_deref(),
        Some("_OTHER")
    );
    assert_eq!(
        server.attr("http.request.method_original").as_deref(),
        Some("PURGE")
    );
    let attempt = one(&spans, CLIENT);
    assert_eq!(attempt.span.name, "HTTP");
    assert_eq!(
        attempt.attr("http.request.method").as_deref(),
        Some("_OTHER")
    );
}

/// Parent-based sampling: an incoming trace whose flag is 00 exports nothing but its
/// `traceparent` still goes upstream (flag 00, Portcullis's span as parent); with
/// `sample_ratio: 0` a root exports nothing, while a sampled incoming trace still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_parent_and_the_ratio() {
    let (receiver, _up, _jwks, proxy) = traced("0").await;
    let http = client();
    let url = proxy.url("/open/x");
    let unsampled = "11111111111111111111111111111111";
    let echo = get(
        &http,
        &url,
        &[("traceparent", &format!("00-{unsampled}-{CALLER}-00"))],
    )
    .await;
    let (trace, parent, flags) = upstream_parent(&echo);
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled, "00"));
    assert_ne!(parent, CALLER);
    let root = upstream_parent(&get(&http, &url, &[]).await);
    assert_eq!(root.2, "00", "ratio 0: a root is not sampled");
    // A sampled trace afterwards: once its spans are in, the ones before would be too.
    get(
        &http,
        &url,
        &[("traceparent", &format!("00-{TRACE}-{CALLER}-01"))],
    )
    .await;
    spans_of(&receiver, TRACE, |s| {
        s.iter().any(|g| g.span.kind == SERVER)
    })
    .await;
    let traces: Vec<String> = receiver.spans().iter().map(|g| g.trace_id()).collect();
    assert!(traces.iter().all(|t| t == TRACE), "{traces:?}");
    assert!(!traces.iter().any(|t| *t == root.0 || t == unsampled));
}

/// A receiver that refuses connections, or one that takes the export and never answers,
/// costs spans (dropped at the full queue and counted), never requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_hanging_receiver_never_holds_requests() {
    let (up, jwks) = backends().await;
    let down = format!("http://127.0.0.1:{}/v1/traces", crate::support::free_port());
    let proxy = Proxy::start(&config(&down, "1", &up, &jwks)).await;
    let http = client();
    for _ in 0..20 {
        get(&http, &proxy.url("/open/x"), &[]).await;
    }
    proxy
        .wait_metric(EXPORTS, &[("result", "success")], 0.0)
        .await;
    eventually("a failed export", Duration::from_secs(20), || {
        let m = proxy.metric(EXPORTS, &[("result", "failure")]);
        async move {
            let n = m.await;
            if n >= 1.0 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;

    let receiver = Receiver::start().await;
    receiver.hang();
    let proxy = Proxy::start(&config(&receiver.endpoint(), "1", &up, &jwks)).await;
    // Three spans a request (request, limit, attempt): past the queue and a batch in flight.
    let url = proxy.url("/open/x");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..400 {
                    get(&http, &url, &[]).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    eventually("an export at the receiver", Duration::from_secs(10), || {
        let n = receiver.requests();
        async move {
            if n >= 1 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    let dropped = proxy.metric(DROPPED, &[]).await;
    assert!(dropped >= 1.0, "spans dropped at the full queue: {dropped}");
    assert_eq!(proxy.metric(EXPORTED, &[]).await, 0.0);
}

/// A reload applies a new `sample_ratio` to the next request, and a new endpoint moves the
/// spans to the new receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_ratio_at_once_and_moves_to_a_new_receiver() {
    let (first, up, jwks, proxy) = traced("0").await;
    let http = client();
    let url = proxy.url("/open/x");
    assert_eq!(upstream_parent(&get(&http, &url, &[]).await).2, "00");

    proxy.write_config(&config(&first.endpoint(), "1", &up, &jwks));
    proxy
        .wait_metric("portcullis_config_generation", &[], 2.0)
        .await;
    let (trace, _, flags) = upstream_parent(&get(&http, &url, &[]).await);
    assert_eq!(flags, "01", "the new ratio applies to the next request");
    spans_of(&first, &trace, |s| s.iter().any(|g| g.span.kind == SERVER)).await;

    let second = Receiver::start().await;
    proxy.write_config(&config(&second.endpoint(), "1", &up, &jwks));
    proxy
        .wait_metric("portcullis_config_generation", &[], 3.0)
        .await;
    let (trace, _, _) = upstream_parent(&get(&http, &url, &[]).await);
    spans_of(&second, &trace, |s| s.iter().any(|g| g.span.kind == SERVER)).await;
    assert!(first.trace(&trace).is_empty(), "the old receiver got none");
}
