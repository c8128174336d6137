//! Issue 18 part A, end to end: header edits with variables in both directions (top-level
//! then the route's), headers Portcullis owns refused by `portcullis check`, `server_header`
//! (on upstream answers and on Portcullis's own), rewrites of path and `Host` (kept across
//! retries, refused when they would make a dot segment), route redirects and a listener's
//! `redirect_to_https`, each reloaded live.

use std::process::{Command, Stdio};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::auth::tools::mint_hmac;
use serde_json::json;

use crate::support::upstream::Fault;
use crate::support::{client, free_port, pool, Echo, Proxy, Upstream, BIN};

const SECRET: &str = "route-edits-hmac-secret-0123456789abcdef";
const SECRET_ENV: &str = "PORTCULLIS_IT_EDITS_SECRET";
const KEYS_ENV: &str = "PORTCULLIS_IT_EDITS_KEYS";

/// An HS256 token of issuer `edits` with these claims (and a future `exp`).
fn token(claims: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut c = json!({ "iss": "edits", "exp": exp });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    mint_hmac(SECRET.as_bytes(), &c.to_string(), Algorithm::HS256, None).unwrap()
}

/// A proxy whose config is `top` (top-level fields), the issuer `edits`, the pool `pool`
/// over `targets`, and `routes` (the items of `routes:`).
async fn start(top: &str, targets: &[String], routes: &str) -> Proxy {
    Proxy::builder(&body(top, targets, routes))
        .env(SECRET_ENV, SECRET)
        .env(KEYS_ENV, &"ab".repeat(32))
        .start()
        .await
}

fn body(top: &str, targets: &[String], routes: &str) -> String {
    format!(
        "{top}issuers:\n  - name: edits\n    issuer: edits\n    hmac_secret_env: {SECRET_ENV}\nupstreams:\n{}routes:\n{routes}",
        pool("pool", targets, &[])
    )
}

/// A client that does not follow redirects.
fn no_follow() -> reqwest::Client {
    crate::support::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn reload(proxy: &Proxy, text: &str) {
    proxy.write_config(text);
    proxy.reload_ok().await;
}

const EDIT_TOP: &str = "request_headers:
  set: { X-Env: prod, X-Tag: top }
  remove: [X-Top-Drop]
response_headers:
  set: { X-Frame-Options: DENY }
  add: { X-Served-By: edge }
";

const EDIT_ROUTES: &str = "  - name: api
    match: { path_prefix: /api }
    upstream: pool
    auth: { issuers: [edits], forward_claims: { sub: X-User-Id } }
    request_headers:
      set: { X-Client: \"{client_ip}\", X-Req: \"{request_id}\", X-Route: \"{route}\", X-Tenant: \"t-{claim.tenant}\" }
      add: { X-Tag: route }
      remove: [X-Drop]
    response_headers:
      set: { X-Upstream: replaced }
      add: { X-Who: \"{route}/{claim.sub}\" }
      remove: [Content-Type]
  - name: open
    match: { path_prefix: /open }
    upstream: pool
    auth: none
    request_headers:
      set: { X-Env: staging, X-Tenant: \"{claim.tenant}\" }
";

/// Every variable, set/add/remove both ways, top-level edits first and the route's after
/// (a route's `set` wins), a claim the identity lacks (the client's own header does not
/// stand in), and a reload that changes the edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_use_every_variable_both_ways() {
    let up = Upstream::start("up").await;
    let targets = [up.addr().to_string()];
    let proxy = start(EDIT_TOP, &targets, EDIT_ROUTES).await;
    let http = client();

    let resp = http
        .get(proxy.url("/api/x"))
        .bearer_auth(token(json!({ "sub": "alice", "tenant": "acme" })))
        .header("x-drop", "1")
        .header("x-top-drop", "1")
        .header("x-tenant", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let id = h["x-request-id"].to_str().unwrap().to_string();
    let echo: Option<Echo> = serde_json::from_slice(&resp.bytes().await.unwrap()).ok();
    let echo = echo.unwrap();
    assert_eq!(echo.header("x-client").as_deref(), Some("127.0.0.1"));
    assert_eq!(echo.header("x-req"), Some(id));
    assert_eq!(echo.header("x-route").as_deref(), Some("api"));
    assert_eq!(echo.header("x-tenant").as_deref(), Some("t-acme"));
    assert_eq!(echo.header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(echo.header("x-env").as_deref(), Some("prod"));
    assert_eq!(echo.header("x-tag").as_deref(), Some("top, route"));
    assert!(!echo.has("x-drop") && !echo.has("x-top-drop"), "{echo:?}");
    // Response: the upstream's `X-Upstream` replaced, `Content-Type` removed, one added
    // with variables, and the top-level ones.
    assert_eq!(h["x-upstream"], "replaced");
    assert!(h.get("content-type").is_none(), "{h:?}");
    assert_eq!(h["x-who"], "api/alice");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-served-by"], "edge");

    // A token without the claim: the header is not sent, and the client's is not kept.
    let resp = http
        .get(proxy.url("/api/x"))
        .bearer_auth(token(json!({ "sub": "bob" })))
        .header("x-tenant", "forged")
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert!(!echo.has("x-tenant"), "{echo:?}");

    // A route without a token: no claim at all; its own `set` wins over the top-level one.
    let resp = http
        .get(proxy.url("/open"))
        .header("x-tenant", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-served-by"], "edge");
    let echo: Echo = resp.json().await.unwrap();
    assert!(!echo.has("x-tenant"), "{echo:?}");
    assert_eq!(echo.header("x-env").as_deref(), Some("staging"));
    assert_eq!(echo.header("x-tag").as_deref(), Some("top"));

    // Reloaded: the new edits hold at once.
    let changed = EDIT_TOP.replace("X-Env: prod", "X-Env: canary");
    reload(&proxy, &body(&changed, &targets, EDIT_ROUTES)).await;
    let resp = http
        .get(proxy.url("/api/x"))
        .bearer_auth(token(json!({ "sub": "alice" })))
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-env").as_deref(), Some("canary"));
}

/// A header Portcullis owns cannot be set, added or removed, in either direction, at the
/// top level or on a route: `portcullis check` exits 1 naming each field.
#[test]
fn owned_headers_are_config_errors() {
    let text = format!(
        "issuers:
  - name: edits
    issuer: edits
    jwks_file: {}/config/keys/example-jwks.json
    audiences: [api]
upstreams:
  - name: pool
    targets: [\"127.0.0.1:9\"]
request_headers:
  set: {{ X-Forwarded-For: 1.2.3.4 }}
  add: {{ Host: other }}
response_headers:
  remove: [Set-Cookie, Server]
routes:
  - name: r
    upstream: pool
    auth: {{ issuers: [edits], forward_claims: {{ sub: X-User-Id }} }}
    request_headers:
      set: {{ X-User-Id: someone, X-Request-Id: mine, \"Bad Name\": x, X-Ok: \"{{nope}}\" }}
      remove: [Connection, Transfer-Encoding]
    response_headers:
      add: {{ Content-Length: \"0\" }}
server_header: \"bad\\u0001\"
",
        env!("CARGO_MANIFEST_DIR")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    for field in [
        "request_headers.set.X-Forwarded-For",
        "request_headers.add.Host",
        "response_headers.remove[0]",
        "response_headers.remove[1]",
        "routes[0].request_headers.set.X-User-Id",
        "routes[0].request_headers.set.X-Request-Id",
        "routes[0].request_headers.set.Bad Name",
        "routes[0].request_headers.set.X-Ok",
        "routes[0].request_headers.remove[0]",
        "routes[0].request_headers.remove[1]",
        "routes[0].response_headers.add.Content-Length",
        "server_header",
    ] {
        assert!(
            said.contains(&format!("{field}:")),
            "no `{field}` in:\n{said}"
        );
    }
    assert!(said.contains("an identity header"), "{said}");
    assert!(said.contains("unknown variable `{nope}`"), "{said}");
}

/// `Server` and `X-Powered-By` from the upstream: removed by default, `Server` replaced by a
/// value (Portcullis's own answers carry it too), both kept with `server_header: upstream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_header_hides_the_backend_by_default() {
    let up = Upstream::start("up").await;
    let targets = [up.addr().to_string()];
    let routes =
        "  - name: all\n    match: { path_prefix: /app }\n    upstream: pool\n    auth: none\n";
    let proxy = start("", &targets, routes).await;
    let http = client();
    let get = |path: &str| {
        http.get(proxy.url(path))
            .header("x-want-fingerprint", "1")
            .send()
    };
    let resp = get("/app").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("server").is_none(), "{resp:?}");
    assert!(resp.headers().get("x-powered-by").is_none(), "{resp:?}");

    reload(&proxy, &body("server_header: edge/1\n", &targets, routes)).await;
    let resp = get("/app").await.unwrap();
    assert_eq!(resp.headers()["server"], "edge/1");
    assert!(resp.headers().get("x-powered-by").is_none(), "{resp:?}");
    let refused = get("/nowhere").await.unwrap();
    assert_eq!(refused.status(), 404);
    assert_eq!(refused.headers()["server"], "edge/1");

    // A session endpoint's answer (a GET to the back-channel logout: 405) carries it too.
    let sessions = format!(
        "server_header: edge/1\nsessions:\n  - name: web\n    issuer: idp\n    client_id: c\n    cookie_keys_env: {KEYS_ENV}\n"
    );
    let idp = "  - name: idp\n    issuer: \"http://127.0.0.1:9/\"\n    discovery: true\n";
    let text =
        body(&sessions, &targets, routes).replace("upstreams:\n", &format!("{idp}upstreams:\n"));
    reload(&proxy, &text).await;
    let resp = get("/.portcullis/backchannel-logout").await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["server"], "edge/1");

    reload(&proxy, &body("server_header: upstream\n", &targets, routes)).await;
    let resp = get("/app").await.unwrap();
    assert_eq!(resp.headers()["server"], "gunicorn/21.2");
    assert_eq!(resp.headers()["x-powered-by"], "Express");
}

const REWRITE_ROUTES: &str = "  - name: strip
    match: { path_prefix: /api }
    upstream: pool
    auth: none
    rewrite: { strip_prefix: true }
  - name: moved
    match: { path_prefix: /v1 }
    upstream: pool
    auth: none
    rewrite: { prefix: /internal/v2, host: backend.internal }
  - name: files
    match: { path_prefix: /files }
    upstream: pool
    auth: none
    rewrite: { strip_prefix: true }
";

/// `strip_prefix`, `prefix` and `host`, the query kept, the same rewritten request on a
/// retry, and a rewrite that would make a dot segment refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_change_path_and_host_and_keep_the_query() {
    let ups = Upstream::start_many("u", 2).await;
    let targets = crate::support::addrs(&ups);
    let proxy = start("", &targets, REWRITE_ROUTES).await;
    let http = client();
    let port = proxy.addr().port();

    let echo = crate::support::get_echo(&http, &proxy.url("/api/users?id=7&x=%20")).await;
    assert_eq!(echo.path, "/users?id=7&x=%20");
    let echo = crate::support::get_echo(&http, &proxy.url("/api")).await;
    assert_eq!(echo.path, "/");
    let echo = crate::support::get_echo(&http, &proxy.url("/v1/orders?page=2")).await;
    assert_eq!(echo.path, "/internal/v2/orders?page=2");
    assert_eq!(echo.header("host").as_deref(), Some("backend.internal"));
    assert_eq!(
        echo.header("x-forwarded-host"),
        Some(format!("127.0.0.1:{port}"))
    );

    // `/files..` takes the route of `/files`; stripped, it would be `/..`.
    let before = ups[0].arrivals() + ups[1].arrivals();
    let resp = crate::support::raw::send(
        proxy.addr(),
        b"GET /files.. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.json()["error"], "bad_rewrite");
    assert_eq!(ups[0].arrivals() + ups[1].arrivals(), before);

    // One target answers 503: every request it gets is retried on the other, which gets
    // the same rewritten path.
    ups[0].set_fault(Fault::Status(503));
    for i in 0..6 {
        let echo = crate::support::get_echo(&http, &proxy.url(&format!("/api/r{i}?q={i}"))).await;
        assert_eq!(echo.path, format!("/r{i}?q={i}"));
    }
    let failed: Vec<String> = ups[0].received().iter().map(|e| e.path.clone()).collect();
    let retried: Vec<String> = ups[1]
        .received()
        .iter()
        .filter(|e| e.header("x-portcullis-attempts").as_deref() == Some("2"))
        .map(|e| e.path.clone())
        .collect();
    let failed_now: Vec<&String> = failed.iter().filter(|p| p.starts_with("/r")).collect();
    assert!(!failed_now.is_empty(), "{failed:?}");
    assert_eq!(failed_now.len(), retried.len(), "{failed:?} {retried:?}");
    for path in &retried {
        assert!(failed_now.contains(&path), "{path} in {failed:?}");
    }
}

const REDIRECT_ROUTES: &str = "  - name: permanent
    match: { path_prefix: /old }
    redirect: { to: \"https://new.example{path}{query}\", status: 301 }
  - name: found
    match: { path_prefix: /moved }
    redirect: { to: \"/new{path}\" }
  - name: temporary
    match: { path_prefix: /tmp }
    redirect: { to: \"/landing?from=tmp{query}\", status: 307 }
  - name: perm308
    match: { path_prefix: /p308 }
    redirect: { to: \"http://other.example/x{query}\", status: 308 }
  - name: app
    match: { path_prefix: / }
    upstream: pool
    auth: none
";

/// Each status, `{path}` and `{query}` (no dangling `?`), counted and logged, no upstream;
/// a reload changes a redirect at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_with_redirects() {
    let up = Upstream::start("up").await;
    let targets = [up.addr().to_string()];
    let proxy = start("", &targets, REDIRECT_ROUTES).await;
    let http = no_follow();
    let cases = [
        (
            "/old/a/b?x=1&y=2",
            301,
            "https://new.example/old/a/b?x=1&y=2",
        ),
        ("/old//a", 301, "https://new.example/old/a"),
        ("/old", 301, "https://new.example/old"),
        ("/moved/z?dropped=1", 302, "/new/moved/z"),
        ("/tmp?q=1", 307, "/landing?from=tmp&q=1"),
        ("/tmp", 307, "/landing?from=tmp"),
        ("/p308/y?k=v", 308, "http://other.example/x?k=v"),
    ];
    for (path, status, location) in cases {
        let resp = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()["location"], location, "{path}");
        assert!(resp.headers().contains_key("x-request-id"), "{path}");
    }
    assert_eq!(up.arrivals(), 0);
    // Counted when logged, just after the answer went out.
    crate::support::eventually("the redirects counted", Duration::from_secs(5), || async {
        let metrics = proxy.metrics().await;
        let counts = (
            metrics.requests_in_class("permanent", '3'),
            metrics.requests_in_class("temporary", '3'),
        );
        if counts == (3.0, 2.0) {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    let lines = proxy
        .wait_access_until("the redirects logged", |l| l.len() >= cases.len())
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l["route"] == "found" && l["status"] == 302),
        "{lines:?}"
    );

    reload(
        &proxy,
        &body(
            "",
            &targets,
            &REDIRECT_ROUTES.replace("/new{path}", "/newer"),
        ),
    )
    .await;
    let resp = http.get(proxy.url("/moved/z")).send().await.unwrap();
    assert_eq!(resp.headers()["location"], "/newer");
}

/// A redirect route has no upstream and needs none; a route with neither is an error, as
/// are both, a status that is not a redirect's, and a `to` that could leave for any host.
#[test]
fn redirect_routes_are_checked() {
    let text = "upstreams:
  - name: pool
    targets: [\"127.0.0.1:9\"]
routes:
  - name: neither
    match: { path_prefix: /a }
  - name: both
    match: { path_prefix: /b }
    upstream: pool
    redirect: { to: /x }
  - name: status
    match: { path_prefix: /c }
    redirect: { to: /x, status: 303 }
  - name: anyhost
    match: { path_prefix: /d }
    redirect: { to: \"//evil.example{path}\" }
  - name: fine
    match: { path_prefix: /e }
    redirect: { to: /x }
";
    let err = portcullis::generation::Generation::from_yaml(text)
        .unwrap_err()
        .to_string();
    for expected in [
        "routes[0].upstream: a route needs an `upstream`",
        "routes[1].upstream: a `redirect` route sends nothing upstream",
        "routes[2].redirect.status: must be 301, 302, 307 or 308",
        "routes[3].redirect.to:",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }
    assert!(!err.contains("routes[4]"), "{err}");
}

/// A listener with `redirect_to_https: true` answers every request with 308 to the same
/// host and path on https; another listener serves; a reload turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_https_sends_the_same_host_and_path() {
    let up = Upstream::start("up").await;
    let targets = [up.addr().to_string()];
    let other = free_port();
    let routes =
        "  - name: app\n    match: { path_prefix: / }\n    upstream: pool\n    auth: none\n";
    let proxy = Proxy::builder(&body("", &targets, routes))
        .env(SECRET_ENV, SECRET)
        .listener("redirect_to_https: true")
        .extra_listener(&format!("address: \"127.0.0.1:{other}\""))
        .start()
        .await;
    let port = proxy.addr().port();
    let http = crate::support::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("shop.example.com", proxy.addr())
        .build()
        .unwrap();
    let resp = http
        .get(format!("http://shop.example.com:{port}/cart/items?id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        "https://shop.example.com/cart/items?id=1"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    // A `Host` no `Location` may be built from is refused.
    let bad = crate::support::raw::send(
        proxy.addr(),
        b"GET /x HTTP/1.1\r\nHost: evil.example/y\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(up.arrivals(), 0);
    let plain = client()
        .get(format!("http://127.0.0.1:{other}/cart"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);

    let text = proxy
        .config_text(&body("", &targets, routes))
        .replace("redirect_to_https: true", "redirect_to_https: false");
    proxy.write_raw_config(&text);
    proxy.reload_ok().await;
    let resp = http
        .get(format!("http://shop.example.com:{port}/cart"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
