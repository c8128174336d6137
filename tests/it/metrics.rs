//! Metrics an SRE can alert on, read from the real binary's `/metrics`: requests by route,
//! method and status code; the build; series present at zero before their first event; CPU
//! time finer than a second; connections per listener; the expiry of a listener's certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use portcullis::auth::tools::{mint, mint_hmac};
use serde_json::json;

use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, EC384, ISS};
use crate::support::metrics::Metrics;
use crate::support::proxy::free_port;
use crate::support::upstream::Fault;
use crate::support::{client, client_builder, eventually, pool, Proxy, Upstream};

const REQUESTS: &str = "portcullis_requests_total";
const SECRET_ENV: &str = "PORTCULLIS_IT_METRICS_SECRET";
const SECRET: &str = "a secret of at least thirty-two bytes, for HS256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A config with a route for each way Portcullis answers: `api` (HMAC issuer `legacy`, scope
/// `read` required: 401, 403, 200), `keys` (issuer `remote` whose key server is down: 503),
/// `limited` (one request a minute per IP: 200 then 429), `down` (a pool with nothing
/// listening: 502), `slow` (a pool with a 300 ms read timeout: 504) and `teapot` (an upstream
/// answering 418, a code outside the route's table).
fn config(up: &Upstream, teapot: &Upstream, jwks: &JwksServer, dead: &str) -> String {
    format!(
        "upstreams:\n{}{}{}{}issuers:\n  - name: legacy\n    issuer: legacy\n    hmac_secret_env: {SECRET_ENV}\n  - name: remote\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\n    fetch_timeout: 500ms\n    jwks_refresh: 60s\n    jwks_min_refresh: 200ms\nroutes:\n{}{}{}{}{}{}",
        pool("app", &[up.addr().to_string()], &[]),
        pool("dead", &[dead.to_string()], &["connect_timeout: 200ms"]),
        pool("slowpool", &[up.addr().to_string()], &["read_timeout: 300ms"]),
        pool("teapots", &[teapot.addr().to_string()], &[]),
        jwks.jwks_url(),
        "  - name: api\n    match: { path_prefix: /api }\n    upstream: app\n    auth: { issuers: [legacy], require_scopes: [read] }\n",
        "  - name: keys\n    match: { path_prefix: /keys }\n    upstream: app\n    auth: { issuers: [remote] }\n",
        "  - name: limited\n    match: { path_prefix: /limited }\n    upstream: app\n    auth: none\n    rate_limit: { per_ip: { rate: 1/min, burst: 1 } }\n",
        "  - name: down\n    match: { path_prefix: /down }\n    upstream: dead\n    auth: none\n",
        "  - name: slow\n    match: { path_prefix: /slow, methods: [GET, PUT] }\n    upstream: slowpool\n    auth: none\n",
        "  - name: teapot\n    match: { path_prefix: /teapot }\n    upstream: teapots\n    auth: none\n",
    )
}

fn hmac_token(scope: &str) -> String {
    let claims = json!({"iss": "legacy", "sub": "alice", "scope": scope, "exp": now() + 600});
    mint_hmac(
        SECRET.as_bytes(),
        &claims.to_string(),
        Algorithm::HS256,
        None,
    )
    .unwrap()
}

fn remote_token() -> String {
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "bob", "exp": now() + 600});
    mint(EC384, &claims.to_string(), None, Some("ec384")).unwrap()
}

/// A port nothing listens on (bound, then let go).
fn dead_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The proxy of [`config`], and the teapot upstream it sends `/teapot` to.
async fn start(up: &Upstream, jwks: &JwksServer) -> (Proxy, Upstream) {
    let teapot = Upstream::start("teapot").await;
    teapot.set_fault(Fault::Status(418));
    let proxy = Proxy::builder(&config(up, &teapot, jwks, &dead_address()))
        .env(SECRET_ENV, SECRET)
        .start()
        .await;
    (proxy, teapot)
}

/// `portcullis_requests_total` of one route, method and code (0 when absent).
fn requests(m: &Metrics, route: &str, method: &str, code: &str) -> f64 {
    m.get(
        REQUESTS,
        &[("route", route), ("method", method), ("code", code)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_method_and_code() {
    let up = Upstream::start("app").await;
    let mut jwks = JwksServer::start(key_set(&[(EC384, "ec384")])).await;
    jwks.stop().await;
    let (proxy, _teapot) = start(&up, &jwks).await;
    let http = client();
    let send = |method: reqwest::Method, path: &str, token: Option<String>| {
        let mut req = http.request(method, proxy.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    // Wait until the remote issuer's first fetch failed, so its answer is the 503.
    proxy
        .wait_metric(
            "portcullis_jwks_fetches_total",
            &[("issuer", "remote"), ("result", "error")],
            1.0,
        )
        .await;

    assert_eq!(send(Method::GET, "/api/a", None).await, 401);
    assert_eq!(send(Method::GET, "/api/a", None).await, 401);
    assert_eq!(send(Method::DELETE, "/api/a", None).await, 401);
    let unscoped = hmac_token("write");
    assert_eq!(send(Method::POST, "/api/a", Some(unscoped)).await, 403);
    assert_eq!(
        send(Method::GET, "/api/a", Some(hmac_token("read"))).await,
        200
    );
    assert_eq!(send(Method::GET, "/keys", Some(remote_token())).await, 503);
    assert_eq!(send(Method::GET, "/limited", None).await, 200);
    assert_eq!(send(Method::GET, "/limited", None).await, 429);
    assert_eq!(send(Method::PATCH, "/down", None).await, 502);
    let slow = http
        .get(proxy.url("/slow"))
        .header("x-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    // A method outside the standard ones is `OTHER`.
    let purge = Method::from_bytes(b"PURGE").unwrap();
    assert_eq!(send(purge, "/down", None).await, 502);
    // A code outside the table, twice: made at the first, found at the second.
    assert_eq!(send(Method::GET, "/teapot", None).await, 418);
    assert_eq!(send(Method::GET, "/teapot", None).await, 418);

    let expected = [
        ("api", "GET", "401", 2.0),
        ("api", "DELETE", "401", 1.0),
        ("api", "POST", "403", 1.0),
        ("api", "GET", "200", 1.0),
        ("keys", "GET", "503", 1.0),
        ("limited", "GET", "200", 1.0),
        ("limited", "GET", "429", 1.0),
        ("down", "PATCH", "502", 1.0),
        ("down", "OTHER", "502", 1.0),
        ("slow", "GET", "504", 1.0),
        ("teapot", "GET", "418", 2.0),
    ];
    let m = eventually("every request counted", Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        let total: f64 = m.sum(REQUESTS, &[]);
        if total >= 13.0 {
            Ok(m)
        } else {
            Err(format!(
                "{total} counted:\n{}",
                m.text()
                    .lines()
                    .filter(|l| l.starts_with(REQUESTS) && !l.ends_with(" 0"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    })
    .await;
    for (route, method, code, want) in expected {
        assert_eq!(
            requests(&m, route, method, code),
            want,
            "{route} {method} {code}:\n{}",
            m.text()
        );
    }
    // Nothing else was counted, and the codes were told apart: a 401 is not a 403.
    assert_eq!(m.sum(REQUESTS, &[]), 13.0, "{}", m.text());
    assert_eq!(requests(&m, "api", "GET", "403"), 0.0);
    assert_eq!(requests(&m, "down", "PATCH", "503"), 0.0);
    assert_eq!(
        m.get(
            "portcullis_request_duration_seconds_count",
            &[("route", "api"), ("method", "GET")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.get(
            "portcullis_request_duration_seconds_count",
            &[("route", "down"), ("method", "OTHER")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_series_are_there_at_zero_from_the_start() {
    let up = Upstream::start("app").await;
    let mut jwks = JwksServer::start(key_set(&[(EC384, "ec384")])).await;
    jwks.stop().await;
    let (proxy, _teapot) = start(&up, &jwks).await;
    // No request was sent.
    let m = proxy.metrics().await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            m.get(name, labels),
            Some(0.0),
            "{name}{labels:?}:\n{}",
            m.text()
        );
    };
    let codes = [
        "200", "400", "401", "403", "404", "429", "500", "502", "503", "504",
    ];
    for route in ["api", "keys", "limited", "down", ""] {
        for method in ["GET", "POST"] {
            for code in codes {
                zero(
                    REQUESTS,
                    &[("route", route), ("method", method), ("code", code)],
                );
            }
            zero(
                "portcullis_request_duration_seconds_count",
                &[("route", route), ("method", method)],
            );
        }
    }
    // A route's own `match.methods` take the place of GET and POST.
    for code in codes {
        zero(
            REQUESTS,
            &[("route", "slow"), ("method", "PUT"), ("code", code)],
        );
    }
    assert!(!m.has(REQUESTS, &[("route", "slow"), ("method", "POST")]));
    let decisions = "portcullis_auth_decisions_total";
    for route in ["api", "keys"] {
        zero(decisions, &[("route", route), ("result", "allowed")]);
        for reason in [
            "missing_token",
            "insufficient_scope",
            "keys_unavailable",
            "expired",
        ] {
            zero(
                decisions,
                &[("route", route), ("result", "denied"), ("reason", reason)],
            );
        }
    }
    assert!(!m.has(decisions, &[("route", "limited")]), "auth: none");
    for result in ["allowed", "denied"] {
        zero(
            "portcullis_ratelimit_decisions_total",
            &[
                ("route", "limited"),
                ("limit", "per_ip"),
                ("result", result),
            ],
        );
    }
    zero(
        "portcullis_jwks_fetches_total",
        &[("issuer", "legacy"), ("result", "error")],
    );
    for result in ["success", "failure"] {
        zero("portcullis_config_reloads_total", &[("result", result)]);
    }
    for reason in ["max_connections", "max_connections_per_ip"] {
        zero(
            "portcullis_connections_refused_total",
            &[("reason", reason)],
        );
    }
    for pool in ["app", "dead", "slowpool"] {
        zero("portcullis_upstream_ejections_total", &[("upstream", pool)]);
        zero(
            "portcullis_upstream_retry_budget_exhausted_total",
            &[("upstream", pool)],
        );
    }
    zero("portcullis_access_log_dropped_total", &[]);
    // The build: version and commit of this very build.
    assert_eq!(
        m.get(
            "portcullis_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", portcullis::metrics::COMMIT)
            ]
        ),
        Some(1.0),
        "{}",
        m.text()
    );
    assert!(!portcullis::metrics::COMMIT.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_is_finer_than_a_second() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        pool("app", &[up.addr().to_string()], &[])
    ))
    .await;
    // Some work for the proxy to burn CPU on; far less than a second of it.
    let http = client();
    for i in 0..200 {
        let resp = http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let cpu = proxy.metric("process_cpu_seconds_total", &[]).await;
    assert!(cpu > 0.0, "{cpu}");
    assert!(cpu.fract() != 0.0, "{cpu} is whole seconds");
    // The other process families are kept.
    let m = proxy.metrics().await;
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    ] {
        let v = m.get(name, &[]).unwrap_or(0.0);
        assert!(v > 0.0, "{name} = {v}");
    }
}

/// The notAfter of the first certificate in PEM file `path`, in Unix seconds.
fn not_after(path: &std::path::Path) -> i64 {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_listener_and_certificate_expiry() {
    let up = Upstream::start("app").await;
    let plain_port = free_port();
    let plain = format!("127.0.0.1:{plain_port}");
    let proxy = Proxy::builder(&format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        pool("app", &[up.addr().to_string()], &[])
    ))
    .tls()
    .extra_listener(&format!("address: \"{plain}\""))
    .start()
    .await;
    let tls = format!("127.0.0.1:{}", proxy.addr().port());
    let open = "portcullis_connections_open";
    let accepted = "portcullis_connections_accepted_total";
    let m = proxy.metrics().await;
    for listener in [&tls, &plain] {
        assert_eq!(
            m.get(open, &[("listener", listener)]),
            Some(0.0),
            "{}",
            m.text()
        );
        assert_eq!(m.get(accepted, &[("listener", listener)]), Some(0.0));
    }

    // Two keep-alive clients on the plain listener, one on the TLS listener.
    let plain_clients = [client(), client()];
    for c in &plain_clients {
        let resp = c.get(format!("http://{plain}/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let tls_client = client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    assert_eq!(
        tls_client
            .get(proxy.url("/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    proxy.wait_metric(open, &[("listener", &plain)], 2.0).await;
    proxy.wait_metric(open, &[("listener", &tls)], 1.0).await;
    let m = proxy.metrics().await;
    assert_eq!(m.get(accepted, &[("listener", &plain)]), Some(2.0));
    assert_eq!(m.get(accepted, &[("listener", &tls)]), Some(1.0));
    drop(plain_clients);
    proxy.wait_metric(open, &[("listener", &plain)], 0.0).await;
    assert_eq!(proxy.metric(open, &[("listener", &tls)]).await, 1.0);

    // The certificate's notAfter, for the TLS listener only.
    let expiry = "portcullis_tls_certificate_expiry_timestamp_seconds";
    let want = not_after(&proxy.tls_cert_path());
    let m = proxy.metrics().await;
    assert_eq!(m.get(expiry, &[("listener", &tls)]), Some(want as f64));
    assert!(!m.has(expiry, &[("listener", &plain)]));

    // A reload that replaced the certificate publishes the new one's.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 7, 15);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = proxy.tls_cert_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    let renewed = not_after(&proxy.tls_cert_path());
    assert_ne!(renewed, want);
    proxy.sighup();
    proxy
        .wait_metric(expiry, &[("listener", &tls)], renewed as f64)
        .await;
}
