//! The status page of the admin listener (`GET /`) and its data (`GET /status.json`): their
//! types and policy, escaping of what the config names, and in a real browser (headless
//! Chromium) the page drawn and redrawn by itself as a target goes down.

use std::time::Duration;

use base64::Engine as _;

use crate::support::chromium::Page;
use crate::support::upstream::Fault;
use crate::support::{addrs, client, eventually, pool, pool_behind_proxy, Proxy, Upstream};

/// A route whose name would be markup if it were not escaped.
const HOSTILE: &str = r#"x</td><img id=pwned src=x>"'&amp;"#;

fn jwks_file() -> String {
    format!(
        "{}/config/keys/example-jwks.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Two pools (one probed every 100 ms), an issuer with keys from a file, three routes (one
/// named [`HOSTILE`]).
fn config(api: &[Upstream], web: &Upstream) -> String {
    let check =
        "health_check:\n  tcp: {}\n  interval: 100ms\n  timeout: 300ms\n  healthy_after: 1\n  unhealthy_after: 1";
    format!(
        "issuers:\n  - name: corp\n    issuer: https://corp.test/\n    jwks_file: {jwks}\n    audiences: [orders-api]\n\
         upstreams:\n{api}{web}\
         routes:\n  - name: orders\n    match: {{ host: api.example.test, path_prefix: /v1/orders, methods: [GET, POST] }}\n    upstream: api\n    auth: {{ issuers: [corp], require_scopes: [orders.read] }}\n    rate_limit:\n      per_ip: {{ rate: 50/s, burst: 20 }}\n\
         \x20 - name: '{hostile}'\n    match: {{ path_prefix: /hostile }}\n    upstream: web\n    auth: none\n\
         \x20 - name: docs\n    match: {{ path_prefix: /docs }}\n    upstream: web\n    auth: none\n",
        jwks = jwks_file(),
        api = pool("api", &addrs(api), &[check]),
        web = pool("web", &[web.addr().to_string()], &[]),
        hostile = HOSTILE.replace('\'', "''"),
    )
}

/// `api_targets` upstreams in pool `api`, the upstream `web`, and the proxy over them with
/// [`config`].
async fn start(api_targets: usize) -> (Vec<Upstream>, Upstream, Proxy) {
    let api = Upstream::start_many("api", api_targets).await;
    let web = Upstream::start("web").await;
    let proxy = Proxy::start(&config(&api, &web)).await;
    (api, web, proxy)
}

/// `GET /status.json` of the admin listener, parsed.
async fn status_json(http: &reqwest::Client, proxy: &Proxy) -> serde_json::Value {
    let resp = http.get(proxy.admin_url("/status.json")).send().await;
    resp.unwrap().json().await.unwrap()
}

/// `GET /` of the admin listener: the page's HTML.
async fn page_html(http: &reqwest::Client, proxy: &Proxy) -> String {
    let resp = http.get(proxy.admin_url("/")).send().await;
    resp.unwrap().text().await.unwrap()
}

/// The `'sha256-...'` source of the text between `open` and `close` in `html`.
fn hash_of_inline(html: &str, open: &str, close: &str) -> String {
    let start = html.find(open).unwrap() + open.len();
    let end = start + html[start..].find(close).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &html.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_json_answer_with_their_types_and_a_strict_policy() {
    let (api, web, proxy) = start(2).await;
    let http = client();

    let resp = http.get(proxy.admin_url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let html = resp.text().await.unwrap();
    // The policy allows exactly the page's own style and script, and fetches to itself.
    let style = hash_of_inline(&html, "<style>", "</style>");
    let script = hash_of_inline(&html, "<script>", "</script>");
    assert_eq!(
        csp,
        format!(
            "default-src 'none'; style-src {style}; script-src {script}; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    );
    assert_eq!(html.matches("<script").count(), 1, "one script, inline");
    for tag in ["<script src", "<link", "<img", "<iframe", "<object"] {
        assert!(!html.contains(tag), "nothing loaded from elsewhere: {tag}");
    }
    for shown in [
        "orders",
        "api.example.test",
        "/v1/orders",
        "orders.read",
        "example-1",
    ] {
        assert!(html.contains(shown), "`{shown}` missing from the page");
    }
    for addr in addrs(&api) {
        assert!(html.contains(&addr), "target {addr} missing from the page");
    }
    // No secret or key material: the page names key ids, not keys.
    let jwks = std::fs::read_to_string(jwks_file()).unwrap();
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let modulus = jwks["keys"][0]["x"]
        .as_str()
        .or(jwks["keys"][0]["n"].as_str())
        .unwrap();
    assert!(!html.contains(modulus));

    let resp = http
        .get(proxy.admin_url("/status.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.headers()["content-security-policy"],
        "default-src 'none'"
    );
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["generation"], 1);
    let route = &status["routes"][0];
    assert_eq!(route["name"], "orders");
    assert_eq!(route["host"], "api.example.test");
    assert_eq!(route["methods"], serde_json::json!(["GET", "POST"]));
    assert_eq!(route["auth"]["kind"], "jwt");
    assert_eq!(
        route["auth"]["audiences"],
        serde_json::json!(["orders-api"])
    );
    assert_eq!(route["limits"][0]["rate"], "50/s");
    assert_eq!(status["routes"][1]["name"], HOSTILE);
    assert_eq!(status["pools"][0]["name"], "api");
    assert_eq!(status["pools"][0]["targets"][0]["state"], "up");
    assert_eq!(
        status["issuers"][0]["key_ids"],
        serde_json::json!(["example-1"])
    );
    assert_eq!(status["issuers"][0]["stale"], false);
    assert_eq!(status["reloads"][0]["trigger"], "start");

    // A refused reload and an applied one are recorded, newest first, with the error.
    proxy.write_config(&format!(
        "{}  - name: 'dup<b>'\n    match: {{ path_prefix: /a }}\n    upstream: web\n    auth: none\n  - name: 'dup<b>'\n    match: {{ path_prefix: /b }}\n    upstream: web\n    auth: none\n",
        config(&api, &web)
    ));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    proxy.write_config(&config(&api, &web).replace("/docs", "/documents"));
    let resp = http.post(proxy.admin_url("/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let status = status_json(&http, &proxy).await;
    let reloads = status["reloads"].as_array().unwrap();
    let applied = reloads
        .iter()
        .position(|r| r["ok"] == true && r["generation"] == 2);
    let refused = reloads
        .iter()
        .position(|r| r["ok"] == false && r["generation"] == 1);
    assert!(
        applied.unwrap() < refused.unwrap(),
        "newest first: {reloads:?}"
    );
    let error = reloads[refused.unwrap()]["error"].as_str().unwrap();
    assert!(error.contains("duplicate route `dup<b>`"), "{error}");
    assert_eq!(reloads.last().unwrap()["trigger"], "start");
    for (method, path) in [
        (reqwest::Method::POST, "/"),
        (reqwest::Method::DELETE, "/status.json"),
    ] {
        let resp = http
            .request(method, proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
    }
    let html = page_html(&http, &proxy).await;
    assert!(
        html.contains("duplicate route `dup&lt;b&gt;`"),
        "the error, escaped"
    );
    assert!(!html.contains("dup<b>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_config_are_escaped() {
    let (_api, _web, proxy) = start(1).await;
    let html = page_html(&client(), &proxy).await;
    assert!(!html.contains("<img"), "the route name became markup");
    assert!(
        html.contains("x&lt;/td&gt;&lt;img id=pwned src=x&gt;&quot;&#39;&amp;amp;"),
        "the route name, escaped"
    );

    // And a browser reads it as text: no element came of it.
    let mut page = Page::open(&proxy.admin_url("/"));
    let name = eventually("the routes table drawn", Duration::from_secs(20), || {
        let found = page.eval(
            "(() => { const r = document.querySelectorAll('#routes tr[data-route] td b'); \
             return r.length === 3 ? r[1].textContent : null; })()",
        );
        async move {
            found
                .as_str()
                .map(str::to_string)
                .ok_or("not yet".to_string())
        }
    })
    .await;
    assert_eq!(name, HOSTILE);
    assert_eq!(page.eval("document.getElementById('pwned') === null"), true);
    assert_eq!(page.eval("document.images.length"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_target_going_down_within_one_refresh() {
    let (mut api, _web, proxy) = start(2).await;
    let down = api[1].addr().to_string();
    let mut page = Page::open(&proxy.admin_url("/"));

    // Drawn: routes, pools and their targets, the issuer's keys.
    let state_of = |target: &str| {
        format!(
            "(() => {{ const t = document.querySelector('table[data-pool=\"api\"] tr[data-target=\"{target}\"]'); \
             return t ? t.dataset.state : null; }})()"
        )
    };
    eventually(
        "both targets up on the page",
        Duration::from_secs(20),
        || {
            let states: Vec<_> = addrs(&api)
                .iter()
                .map(|a| page.eval(&state_of(a)))
                .collect();
            async move {
                if states.iter().all(|s| s == "up") {
                    Ok(())
                } else {
                    Err(format!("{states:?}"))
                }
            }
        },
    )
    .await;
    let text = page.eval("document.querySelector('main').innerText");
    let text = text.as_str().unwrap();
    for shown in [
        "orders",
        "api.example.test",
        "docs",
        "corp",
        "example-1",
        "orders-api",
        "start",
    ] {
        assert!(text.contains(shown), "`{shown}` not on the page:\n{text}");
    }
    assert_eq!(
        page.eval("document.querySelectorAll('table.pool').length"),
        2
    );
    // Marks this document: a reload of the page would lose it.
    page.eval("window.sameDocument = true");

    api[1].stop().await;
    let http = client();
    eventually(
        "the proxy sees the target down",
        Duration::from_secs(10),
        || {
            let (http, proxy, down) = (&http, &proxy, &down);
            async move {
                let status = status_json(http, proxy).await;
                let targets = status["pools"][0]["targets"].as_array().unwrap().clone();
                targets
                    .iter()
                    .find(|t| t["label"] == down.as_str() && t["state"] == "down")
                    .map(|_| ())
                    .ok_or(format!("{targets:?}"))
            }
        },
    )
    .await;
    // The next refresh the page asks for after this moment shows it down.
    let asked = page.eval("Number(document.body.dataset.requested || 0)");
    let asked = asked.as_u64().unwrap();
    eventually("one more refresh drawn", Duration::from_secs(10), || {
        let drawn = page.eval("Number(document.body.dataset.drawn || 0)");
        async move {
            if drawn.as_u64().unwrap() > asked {
                Ok(())
            } else {
                Err(format!("drawn {drawn}, asked {asked}"))
            }
        }
    })
    .await;
    assert_eq!(page.eval(&state_of(&down)), "down");
    assert_eq!(page.eval(&state_of(&api[0].addr().to_string())), "up");
    assert_eq!(
        page.eval("window.sameDocument === true"),
        true,
        "not reloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_target_is_shown_ejected_with_its_count() {
    let (ups, proxy) = pool_behind_proxy(
        2,
        &[
            "retry: { attempts: 1 }",
            "outlier: { consecutive_errors: 2, base_ejection: 1h }",
        ],
    )
    .await;
    ups[0].set_fault(Fault::Status(500));
    let http = client();
    for _ in 0..6 {
        http.get(proxy.url("/")).send().await.unwrap();
    }
    let status = status_json(&http, &proxy).await;
    let targets = &status["pools"][0]["targets"];
    let (bad, good) = (&targets[0], &targets[1]);
    assert_eq!(bad["state"], "ejected", "{targets}");
    assert_eq!(bad["ejections"], 1, "{targets}");
    let left = bad["ejected_seconds"].as_u64().unwrap();
    assert!(left > 3000 && left <= 3600, "{left}");
    assert_eq!(good["state"], "up", "{targets}");
    assert_eq!(good["ejections"], 0, "{targets}");
    assert_eq!(status["pools"][0]["healthy"], 1);
    let html = page_html(&http, &proxy).await;
    let row = format!(
        "<tr class=ejected data-target=\"{}\" data-state=ejected>",
        ups[0].addr()
    );
    assert!(html.contains(&row), "no `{row}` in the page");
}
