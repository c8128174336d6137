//! Header and query conditions (`match.headers`, `match.query`; issue 18 part C): a route
//! with conditions is tried before the route of the same prefix without them, header names
//! ignore case and values do not, `present: true`, query values decoded and every occurrence
//! counted, no match falls to the plain route or 404, routes no request can tell apart are a
//! config error, and a reload adds conditions live.

use std::time::Duration;

use crate::support::{client, eventually, pool, raw, Proxy, Upstream, BIN};

/// The routes of the tests: one upstream per route, so the echo's name says which took it.
const ROUTES: &str = r#"routes:
  - name: plain
    match: { path_prefix: /api }
    upstream: plain
  - name: tenant
    match: { path_prefix: /api, headers: { X-Tenant: Acme } }
    upstream: tenant
  - name: beta
    match: { path_prefix: /api, headers: { x-beta: { present: true } } }
    upstream: beta
  - name: v2
    match: { path_prefix: /api, query: { version: 2 } }
    upstream: v2
  - name: tenant-v2
    match: { path_prefix: /api, headers: { x-tenant: Acme }, query: { version: 2 } }
    upstream: both
  - name: keyed
    match: { path_prefix: /keyed, headers: { x-key: k } }
    upstream: tenant
"#;

/// The upstreams' names, each serving the route(s) named after it.
const NAMES: [&str; 5] = ["plain", "tenant", "beta", "v2", "both"];

async fn upstreams() -> (String, Vec<Upstream>) {
    let mut body = String::from("upstreams:\n");
    let mut ups = Vec::new();
    for n in NAMES {
        let u = Upstream::start(n).await;
        body.push_str(&pool(n, &[u.addr().to_string()], &[]));
        ups.push(u);
    }
    (body, ups)
}

async fn matching() -> (Proxy, Vec<Upstream>) {
    let (mut body, ups) = upstreams().await;
    body.push_str(ROUTES);
    (Proxy::start(&body).await, ups)
}

/// The upstream that served `path` with `headers`, or the status when none did.
async fn served_by(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Result<String, u16> {
    let mut req = client().get(proxy.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(status);
    }
    let echo: crate::support::Echo = resp.json().await.unwrap();
    Ok(echo.upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_take_precedence_with_their_case_rules() {
    let (proxy, _ups) = matching().await;
    let by = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        served_by(&proxy, path, headers)
    };
    assert_eq!(by("/api/x", &[]).await.as_deref(), Ok("plain"));
    assert_eq!(
        by("/api/x", &[("x-tenant", "Acme")]).await.as_deref(),
        Ok("tenant")
    );
    // Values are case-sensitive: another spelling is no match, and falls to the plain route.
    assert_eq!(
        by("/api/x", &[("x-tenant", "acme")]).await.as_deref(),
        Ok("plain")
    );
    // `present: true` takes any value, the empty one too.
    assert_eq!(by("/api/x", &[("x-beta", "")]).await.as_deref(), Ok("beta"));
    assert_eq!(
        by("/api/x", &[("x-beta", "no")]).await.as_deref(),
        Ok("beta")
    );
    // Query: exact, decoded; a repeated parameter must have the value every time.
    assert_eq!(by("/api/x?version=2", &[]).await.as_deref(), Ok("v2"));
    assert_eq!(by("/api/x?a=1&version=%32", &[]).await.as_deref(), Ok("v2"));
    assert_eq!(by("/api/x?version=3", &[]).await.as_deref(), Ok("plain"));
    assert_eq!(
        by("/api/x?version=2&version=3", &[]).await.as_deref(),
        Ok("plain")
    );
    // More conditions first.
    assert_eq!(
        by("/api/x?version=2", &[("x-tenant", "Acme")])
            .await
            .as_deref(),
        Ok("both")
    );
    // A header sent twice holds only when both values are the value.
    let twice = |second: &str| {
        format!(
            "GET /api/x HTTP/1.1\r\nHost: t\r\nX-TENANT: Acme\r\nx-tenant: {second}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let upstream_of = |r: raw::RawResponse| r.json()["upstream"].as_str().unwrap().to_string();
    assert_eq!(
        upstream_of(raw::send(proxy.addr(), twice("Acme").as_bytes()).await),
        "tenant",
        "header names are case-insensitive"
    );
    assert_eq!(
        upstream_of(raw::send(proxy.addr(), twice("Other").as_bytes()).await),
        "plain"
    );
    // Only a route with conditions at the prefix: no match is 404.
    assert_eq!(by("/keyed", &[]).await, Err(404));
    assert_eq!(by("/keyed", &[("x-key", "K")]).await, Err(404));
    assert_eq!(
        by("/keyed", &[("x-key", "k")]).await.as_deref(),
        Ok("tenant")
    );
}

/// `portcullis check` on `routes` (under the test upstreams): exit code and output.
fn check(routes: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    let mut text = String::from("upstreams:\n");
    for n in NAMES {
        text.push_str(&pool(n, &["127.0.0.1:9".to_string()], &[]));
    }
    text.push_str(routes);
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn routes_no_request_can_tell_apart_are_config_errors() {
    let (code, _) = check(ROUTES);
    assert_eq!(code, Some(0), "the test routes are valid");
    // The same conditions, header names in another case, overlapping methods.
    let (code, out) = check(
        r#"routes:
  - name: a
    match: { path_prefix: /api, methods: [GET], headers: { X-Tenant: Acme } }
    upstream: plain
  - name: b
    match: { path_prefix: /api, headers: { x-tenant: Acme } }
    upstream: tenant
"#,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("routes[1].match"), "{out}");
    assert!(
        out.contains("route `b` takes the same requests as route `a`"),
        "{out}"
    );
    // Disjoint methods, or different conditions, can be told apart.
    let (code, out) = check(
        r#"routes:
  - name: a
    match: { path_prefix: /api, methods: [GET], headers: { x-tenant: Acme } }
    upstream: plain
  - name: b
    match: { path_prefix: /api, methods: [POST], headers: { x-tenant: Acme } }
    upstream: tenant
  - name: c
    match: { path_prefix: /api, headers: { x-tenant: Other } }
    upstream: tenant
"#,
    );
    assert_eq!(code, Some(0), "{out}");
    // Conditions that cannot be compiled name their field.
    let (code, out) = check(
        r#"routes:
  - name: a
    match: { path_prefix: /api, headers: { "bad header": x, x-gone: { present: false } } }
    upstream: plain
"#,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("routes[0].match.headers.bad header"), "{out}");
    assert!(
        out.contains("routes[0].match.headers.x-gone.present"),
        "{out}"
    );
    // A header Portcullis removes from client requests is not one to route on.
    let (code, out) = check(
        r#"routes:
  - name: a
    match: { path_prefix: /api, headers: { X-Forwarded-Port: "443" } }
    upstream: plain
"#,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("routes[0].match.headers.x-forwarded-port"),
        "{out}"
    );
    assert!(out.contains("owns this header"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_conditions_live() {
    let (base, _ups) = upstreams().await;
    let plain = "routes:\n  - name: plain\n    match: { path_prefix: /api }\n    upstream: plain\n";
    let proxy = Proxy::start(&format!("{base}{plain}")).await;
    let tenant = [("x-tenant", "Acme")];
    assert_eq!(
        served_by(&proxy, "/api", &tenant).await.as_deref(),
        Ok("plain")
    );
    proxy.write_config(&format!("{base}{ROUTES}"));
    eventually(
        "the conditioned route serves",
        Duration::from_secs(10),
        || async {
            match served_by(&proxy, "/api", &tenant).await {
                Ok(up) if up == "tenant" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(served_by(&proxy, "/api", &[]).await.as_deref(), Ok("plain"));
    proxy.write_config(&format!("{base}{plain}"));
    eventually("the condition is gone", Duration::from_secs(10), || async {
        match served_by(&proxy, "/api", &tenant).await {
            Ok(up) if up == "plain" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
