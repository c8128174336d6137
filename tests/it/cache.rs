//! The edge cache of `auth: none` routes (`routes[].cache`), against the real binary and an
//! origin that counts what it is asked: HIT after MISS, each `Cache-Control` directive,
//! `Expires`, `Vary`, revalidation with `ETag` and `Last-Modified`, serving stale while
//! revalidating and on upstream errors, one upstream request for a stampede of 1,000, no
//! cache for requests with credentials, LRU eviction under `max_bytes`, purges, metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::server::Server;
use crate::support::{client, eventually, Proxy};

/// A request as the origin saw it.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct OriginState {
    count: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    delay_ms: AtomicUsize,
    /// Answer every request 503.
    failing: std::sync::atomic::AtomicBool,
}

/// An HTTP/1.1 origin whose answer the query decides: `cc` (Cache-Control), `etag`, `lm`
/// (Last-Modified, answered 304 to a matching `If-None-Match` / `If-Modified-Since`),
/// `expires` (`future` or `past`), `vary`, `status`, `cookie` (a Set-Cookie), `size` (body
/// bytes). The body names the request's number at the origin (`#1`, `#2`, ...).
struct Origin {
    server: Server,
    state: Arc<OriginState>,
}

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(OriginState::default());
        let s = Arc::clone(&state);
        let server = Server::start(listener, "cache origin", move |stream| {
            serve(stream, Arc::clone(&s))
        });
        Origin { server, state }
    }

    fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().last().cloned().unwrap()
    }
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn serve(mut stream: TcpStream, state: Arc<OriginState>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&buf[..end]).is_err() {
            return;
        }
        let seen = Seen {
            target: req.path.unwrap_or("").to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect(),
        };
        buf.drain(..end);
        let n = state.count.fetch_add(1, Ordering::SeqCst) + 1;
        state.seen.lock().unwrap().push(seen.clone());
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        let t = seen.target.as_str();
        let mut status: u16 = query_param(t, "status").map_or(200, |s| s.parse().unwrap());
        if state.failing.load(Ordering::SeqCst) {
            status = 503;
        }
        let mut head = String::new();
        if let Some(cc) = query_param(t, "cc") {
            head += &format!("cache-control: {cc}\r\n");
        }
        if let Some(etag) = query_param(t, "etag") {
            head += &format!("etag: \"{etag}\"\r\n");
            if seen.header("if-none-match") == Some(&format!("\"{etag}\"")) {
                status = 304;
            }
        }
        if query_param(t, "lm").is_some() {
            head += &format!("last-modified: {LAST_MODIFIED}\r\n");
            if seen.header("if-modified-since") == Some(LAST_MODIFIED) {
                status = 304;
            }
        }
        match query_param(t, "expires") {
            Some("future") => head += "expires: Thu, 01 Jan 2099 00:00:00 GMT\r\n",
            Some("past") => head += "expires: Thu, 01 Jan 2015 00:00:00 GMT\r\n",
            _ => {}
        }
        if let Some(vary) = query_param(t, "vary") {
            head += &format!("vary: {vary}\r\n");
        }
        if query_param(t, "cookie").is_some() {
            head += "set-cookie: theme=dark\r\n";
        }
        let mut body = format!("#{n}").into_bytes();
        if let Some(size) = query_param(t, "size") {
            body.resize(size.parse().unwrap(), b'x');
        }
        if status == 304 {
            body.clear();
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\n{head}content-length: {}\r\n\r\n",
            body.len()
        );
        let mut out = resp.into_bytes();
        out.extend_from_slice(&body);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

const CACHE: &str = "{ max_bytes: 3000, max_object_bytes: 1000, default_ttl: 60s }";

/// An origin and a proxy with one cache route `public` in front of it (cache settings
/// `cache`).
async fn setup(cache: &str) -> (Origin, Proxy) {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  - name: origin\n    targets: [\"{}\"]\nroutes:\n  - name: public\n    \
         match: {{ path_prefix: / }}\n    upstream: origin\n    auth: none\n    cache: {cache}\n",
        origin.server.addr()
    ))
    .await;
    (origin, proxy)
}

/// GET `path` (with `headers`): the `X-Cache` value and the body.
async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = client().get(proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    let x = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (x, resp.text().await.unwrap())
}

async fn x_cache(proxy: &Proxy, path: &str) -> String {
    get(proxy, path, &[]).await.0
}

#[tokio::test]
async fn hit_after_miss_and_cache_control_directives() {
    let (origin, proxy) = setup(CACHE).await;
    // max-age: stored, then served without the origin.
    assert_eq!(
        get(&proxy, "/a?cc=max-age=60", &[]).await,
        ("MISS".into(), "#1".into())
    );
    assert_eq!(
        get(&proxy, "/a?cc=max-age=60", &[]).await,
        ("HIT".into(), "#1".into())
    );
    assert_eq!(origin.count(), 1);
    // s-maxage is the shared cache's, over max-age.
    assert_eq!(x_cache(&proxy, "/s?cc=max-age=0,s-maxage=60").await, "MISS");
    assert_eq!(x_cache(&proxy, "/s?cc=max-age=0,s-maxage=60").await, "HIT");
    // no-store and private: never stored.
    for path in ["/n?cc=no-store,max-age=60", "/p?cc=private,max-age=60"] {
        assert_eq!(x_cache(&proxy, path).await, "MISS");
        assert_eq!(x_cache(&proxy, path).await, "MISS", "{path}");
    }
    // no-cache: stored, but asked again every time (a conditional request with its ETag).
    let path = "/nc?cc=no-cache&etag=v1";
    assert_eq!(x_cache(&proxy, path).await, "MISS");
    let before = origin.count();
    assert_eq!(
        get(&proxy, path, &[]).await,
        ("EXPIRED".into(), format!("#{before}"))
    );
    assert_eq!(origin.count(), before + 1);
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));
    // Expires: in the future, fresh; in the past, stale at once.
    assert_eq!(x_cache(&proxy, "/e?expires=future").await, "MISS");
    assert_eq!(x_cache(&proxy, "/e?expires=future").await, "HIT");
    assert_eq!(x_cache(&proxy, "/ep?expires=past").await, "MISS");
    assert_eq!(x_cache(&proxy, "/ep?expires=past").await, "EXPIRED");
    // No freshness at all: default_ttl, for heuristically cacheable statuses only.
    assert_eq!(x_cache(&proxy, "/d").await, "MISS");
    assert_eq!(x_cache(&proxy, "/d").await, "HIT");
    let status = |path: &'static str| {
        let proxy = &proxy;
        async move { client().get(proxy.url(path)).send().await.unwrap() }
    };
    let r = status("/d500?status=500").await;
    assert_eq!(r.status(), 500);
    let r = status("/d500?status=500").await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    let r = status("/d404?status=404").await;
    assert_eq!(r.status(), 404);
    let r = status("/d404?status=404").await;
    assert_eq!(r.headers()["x-cache"], "HIT");
    // A response setting a cookie is never stored.
    assert_eq!(x_cache(&proxy, "/c?cc=max-age=60&cookie=1").await, "MISS");
    assert_eq!(x_cache(&proxy, "/c?cc=max-age=60&cookie=1").await, "MISS");

    // The lookups are counted by result (once the last request's log step ran), and the
    // bytes held shown.
    proxy
        .wait_metric(
            "portcullis_cache_lookups_total",
            &[("route", "public"), ("result", "miss")],
            15.0,
        )
        .await;
    let m = proxy.metrics().await;
    let lookups = |result: &str| {
        m.get(
            "portcullis_cache_lookups_total",
            &[("route", "public"), ("result", result)],
        )
        .unwrap()
    };
    assert_eq!(lookups("hit"), 5.0, "{}", m.text());
    assert_eq!(lookups("expired"), 2.0);
    assert_eq!(lookups("stale"), 0.0);
    assert_eq!(lookups("miss"), 15.0);
    assert!(
        m.get("portcullis_cache_bytes", &[("route", "public")])
            .unwrap()
            > 0.0
    );
    // The access line says what the cache did; a hit has no upstream status.
    let lines = proxy
        .wait_access_until("a hit's access line", |lines| {
            lines.iter().any(|l| l["cache"] == "hit")
        })
        .await;
    let hit = lines.iter().find(|l| l["cache"] == "hit").unwrap();
    assert!(hit["upstream_status"].is_null(), "{hit}");
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let (origin, proxy) = setup(CACHE).await;
    let path = "/v?cc=max-age=60&vary=accept-language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get(&proxy, path, &en).await, ("MISS".into(), "#1".into()));
    assert_eq!(get(&proxy, path, &fr).await, ("MISS".into(), "#2".into()));
    assert_eq!(get(&proxy, path, &en).await, ("HIT".into(), "#1".into()));
    assert_eq!(get(&proxy, path, &fr).await, ("HIT".into(), "#2".into()));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn revalidates_with_etag_and_last_modified() {
    let (origin, proxy) = setup(CACHE).await;
    for (path, header, value) in [
        ("/etag?cc=max-age=1&etag=v7", "if-none-match", "\"v7\""),
        ("/lm?cc=max-age=1&lm=1", "if-modified-since", LAST_MODIFIED),
    ] {
        let (x, body) = get(&proxy, path, &[]).await;
        assert_eq!(x, "MISS");
        let n = origin.count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Expired: asked again with the validator; the origin's 304 refreshes the entry,
        // and the stored body is served.
        assert_eq!(
            get(&proxy, path, &[]).await,
            ("EXPIRED".into(), body.clone())
        );
        assert_eq!(origin.count(), n + 1);
        assert_eq!(origin.last().header(header), Some(value), "{path}");
        assert_eq!(get(&proxy, path, &[]).await, ("HIT".into(), body));
        assert_eq!(origin.count(), n + 1);
    }
}

#[tokio::test]
async fn serves_stale_while_revalidating_with_one_refresh() {
    let (origin, proxy) = setup(CACHE).await;
    let path = "/swr?cc=max-age=1,stale-while-revalidate=60";
    assert_eq!(get(&proxy, path, &[]).await, ("MISS".into(), "#1".into()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    origin.state.delay_ms.store(300, Ordering::SeqCst);
    // Expired but within stale-while-revalidate: the stored body at once, refreshed behind.
    let all = futures_util::future::join_all((0..5).map(|_| get(&proxy, path, &[]))).await;
    for (x, body) in &all {
        assert_eq!((x.as_str(), body.as_str()), ("STALE", "#1"));
    }
    eventually("the background refresh", Duration::from_secs(5), || async {
        match get(&proxy, path, &[]).await {
            (x, body) if x == "HIT" && body == "#2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(origin.count(), 2, "exactly one background refresh");
}

#[tokio::test]
async fn serves_stale_if_error_when_the_upstream_is_down() {
    let (mut origin, proxy) = setup(CACHE).await;
    let sie = "/sie?cc=max-age=1,stale-if-error=60";
    let plain = "/plain?cc=max-age=1";
    let sie_5xx = "/sie5?cc=max-age=1,stale-if-error=60";
    assert_eq!(get(&proxy, sie, &[]).await, ("MISS".into(), "#1".into()));
    assert_eq!(x_cache(&proxy, plain).await, "MISS");
    assert_eq!(
        get(&proxy, sie_5xx, &[]).await,
        ("MISS".into(), "#3".into())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The origin answers 503: the stored response is served instead.
    origin.state.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        get(&proxy, sie_5xx, &[]).await,
        ("STALE".into(), "#3".into())
    );
    origin.server.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&proxy, sie, &[]).await, ("STALE".into(), "#1".into()));
    // Without stale-if-error, an expired entry is not served when the origin is down.
    let resp = client().get(proxy.url(plain)).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}

/// The stampede: 1,000 concurrent requests (many connections) for one cold object
/// make exactly one upstream request.
#[tokio::test]
async fn a_stampede_makes_one_upstream_request() {
    let (origin, proxy) = setup(CACHE).await;
    origin.state.delay_ms.store(500, Ordering::SeqCst);
    let url = proxy.url("/cold?cc=max-age=60");
    let http = crate::support::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let resp = http.get(url).send().await.unwrap();
                let status = resp.status();
                (status, resp.text().await.unwrap())
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "#1"));
    }
    assert_eq!(
        origin.count(),
        1,
        "one upstream request for 1,000 concurrent misses"
    );
}

#[tokio::test]
async fn requests_with_credentials_are_never_cached() {
    let (origin, proxy) = setup(CACHE).await;
    let path = "/cred?cc=public,max-age=60";
    for creds in [("authorization", "Bearer abc"), ("cookie", "session=abc")] {
        // Not stored...
        assert_eq!(get(&proxy, path, &[creds]).await.0, "MISS");
        assert_eq!(get(&proxy, path, &[creds]).await.0, "MISS");
    }
    assert_eq!(origin.count(), 4);
    // ...and not served from the cache either.
    assert_eq!(get(&proxy, path, &[]).await.0, "MISS");
    assert_eq!(get(&proxy, path, &[]).await.0, "HIT");
    let (x, body) = get(&proxy, path, &[("cookie", "session=abc")]).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "#6"));
    proxy
        .wait_metric(
            "portcullis_cache_lookups_total",
            &[("route", "public"), ("result", "bypass")],
            5.0,
        )
        .await;
}

#[tokio::test]
async fn a_route_with_auth_cannot_have_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: \"127.0.0.1:0\"\nupstreams:\n  - name: up\n    targets: \
         [\"127.0.0.1:9\"]\nissuers:\n  - name: hs\n    issuer: hs-issuer\n    \
         hmac_secret_env: PORTCULLIS_IT_CACHE_SECRET\nroutes:\n  - name: api\n    \
         match: { path_prefix: / }\n    upstream: up\n    auth: { issuers: [hs] }\n    \
         cache: { max_bytes: 10000000 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .env(
            "PORTCULLIS_IT_CACHE_SECRET",
            "0123456789abcdef0123456789abcdef",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("routes[0].cache") && stderr.contains("only an `auth: none` route"),
        "{stderr}"
    );
}

#[tokio::test]
async fn evicts_least_recently_used_under_max_bytes() {
    // 3,000 bytes hold three 900-byte objects; a 1,500-byte one is never stored.
    let (origin, proxy) = setup(CACHE).await;
    let obj = |n: u32| format!("/o{n}?cc=max-age=60&size=900");
    for n in 1..=3 {
        assert_eq!(x_cache(&proxy, &obj(n)).await, "MISS");
    }
    assert_eq!(x_cache(&proxy, &obj(1)).await, "HIT");
    // The fourth pushes out the least recently used: the second.
    assert_eq!(x_cache(&proxy, &obj(4)).await, "MISS");
    assert_eq!(x_cache(&proxy, &obj(1)).await, "HIT");
    assert_eq!(x_cache(&proxy, &obj(3)).await, "HIT");
    assert_eq!(x_cache(&proxy, &obj(4)).await, "HIT");
    assert_eq!(x_cache(&proxy, &obj(2)).await, "MISS");
    // Its admission (and the eviction it makes) may end a moment after its response.
    proxy
        .wait_metric(
            "portcullis_cache_evictions_total",
            &[("route", "public")],
            2.0,
        )
        .await;
    let bytes = proxy
        .metric("portcullis_cache_bytes", &[("route", "public")])
        .await;
    assert_eq!(bytes, 2700.0);
    // Over max_object_bytes: passed through, never stored.
    let big = "/big?cc=max-age=60&size=1500";
    let n = origin.count();
    let (x, body) = get(&proxy, big, &[]).await;
    assert_eq!((x.as_str(), body.len()), ("MISS", 1500));
    assert_eq!(x_cache(&proxy, big).await, "MISS");
    assert_eq!(origin.count(), n + 2);
}

#[tokio::test]
async fn purges_by_url_and_by_prefix() {
    let (_origin, proxy) = setup(CACHE).await;
    let paths = [
        "/static/a.css?cc=max-age=60",
        "/static/b.js?cc=max-age=60",
        "/other?cc=max-age=60",
    ];
    for p in paths {
        assert_eq!(x_cache(&proxy, p).await, "MISS");
        assert_eq!(x_cache(&proxy, p).await, "HIT");
    }
    let purge = |body: serde_json::Value| {
        let proxy = &proxy;
        async move {
            let resp = client()
                .post(proxy.admin_url("/cache/purge"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let host = format!("http://{}", proxy.addr());
    let (status, body) = purge(serde_json::json!({ "url": format!("{host}{}", paths[0]) })).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(x_cache(&proxy, paths[0]).await, "MISS");
    assert_eq!(x_cache(&proxy, paths[1]).await, "HIT");
    let (status, body) = purge(serde_json::json!({ "prefix": format!("{host}/static/") })).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(x_cache(&proxy, paths[0]).await, "MISS");
    assert_eq!(x_cache(&proxy, paths[1]).await, "MISS");
    assert_eq!(x_cache(&proxy, paths[2]).await, "HIT");
    let (status, _) = purge(serde_json::json!({ "url": "/static/a.css" })).await;
    assert_eq!(status, 400);
    // A body past the bound is refused unread, in purge's own words (not /revoke's).
    let long = format!("{host}/{}", "x".repeat(5000));
    let (status, body) = purge(serde_json::json!({ "prefix": long })).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body.get("revoked").is_none() && body["error"].is_string(),
        "{body}"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.get("portcullis_cache_purges_total", &[("route", "public")]),
        Some(3.0)
    );
}

/// A reload keeps a route's cache while its name and `max_bytes` stay (other settings apply
/// to what it stores next), and empties it when `max_bytes` changes.
#[tokio::test]
async fn a_reload_keeps_the_cache_unless_max_bytes_changes() {
    let (origin, proxy) = setup(CACHE).await;
    let body = |cache: &str| {
        format!(
            "upstreams:\n  - name: origin\n    targets: [\"{}\"]\nroutes:\n  - name: public\n    \
             match: {{ path_prefix: / }}\n    upstream: origin\n    auth: none\n    cache: {cache}\n",
            origin.server.addr()
        )
    };
    assert_eq!(x_cache(&proxy, "/r?cc=max-age=60").await, "MISS");
    proxy.write_config(&body(
        "{ max_bytes: 3000, max_object_bytes: 500, default_ttl: 10s }",
    ));
    proxy.sighup();
    proxy
        .wait_metric("portcullis_config_generation", &[], 2.0)
        .await;
    assert_eq!(x_cache(&proxy, "/r?cc=max-age=60").await, "HIT");
    proxy.write_config(&body("{ max_bytes: 4000, max_object_bytes: 500 }"));
    proxy.sighup();
    proxy
        .wait_metric("portcullis_config_generation", &[], 3.0)
        .await;
    assert_eq!(
        proxy
            .metric("portcullis_cache_bytes", &[("route", "public")])
            .await,
        0.0
    );
    assert_eq!(x_cache(&proxy, "/r?cc=max-age=60").await, "MISS");
    assert_eq!(origin.count(), 2);
}
