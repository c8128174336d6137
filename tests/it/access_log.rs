//! The access log as an operator reads it: every field with a real value over HTTP/1.0,
//! HTTP/1.1 and HTTP/2 (TLS and plain), the claims it records only when listed (and a reload
//! that changes the list), SIGUSR1 reopening the file after logrotate renamed it, and whole
//! lines from many concurrent requests. What it must never hold is checked here and in
//! `hygiene.rs`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use portcullis::auth::tools::mint_hmac;
use serde_json::{json, Value};

use crate::support::{client, client_builder, eventually, pool, raw, Proxy, Upstream};

const REOPENS: &str = "portcullis_access_log_reopens_total";

/// The line of request `id`.
fn line<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"))
}

/// The line of request `id`, once the access log holds at least `n` lines.
async fn logged(proxy: &Proxy, n: usize, id: &str) -> Value {
    line(&proxy.wait_access_lines(n).await, id).clone()
}

/// GET `url` on `http` as request `id` (its `x-request-id`).
async fn get_as(http: &reqwest::Client, url: &str, id: &str) -> reqwest::Response {
    let resp = http.get(url).header("x-request-id", id).send().await;
    resp.unwrap()
}

/// [`get_as`], which must be answered 200.
async fn get_ok(http: &reqwest::Client, url: &str, id: &str) {
    assert_eq!(get_as(http, url, id).await.status(), 200, "{id}");
}

/// The upstream `up` behind one route `all`, and the proxy over it.
async fn one_upstream() -> (Upstream, Proxy) {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: up\n",
        pool("up", &[up.addr().to_string()], &[])
    ))
    .await;
    (up, proxy)
}

fn routes(up: &Upstream, slow: &Upstream) -> String {
    let dead = format!("127.0.0.1:{}", crate::support::free_port());
    format!(
        "upstreams:\n{}{}{}routes:\n  - name: fast\n    match: {{ path_prefix: /fast }}\n    upstream: up\n  - name: slow\n    match: {{ path_prefix: /slow }}\n    upstream: slow\n  - name: dead\n    match: {{ path_prefix: /dead }}\n    upstream: dead\n",
        pool("up", &[up.addr().to_string()], &[]),
        pool("slow", &[slow.addr().to_string()], &[]),
        pool("dead", &[dead], &[]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_has_its_value_over_http1_and_http2() {
    let up = Upstream::start("up").await;
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(60));
    let proxy = Proxy::builder(&routes(&up, &slow)).tls().start().await;
    let agent = "it-agent/1.0 \"quoted\" \\ back";
    let h1 = client_builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .user_agent(agent)
        .build()
        .unwrap();
    let h2 = client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let resp = get_as(&h1, &proxy.url("/fast/a?secret=query"), "h1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let resp = get_as(&h2, &proxy.url("/slow/b"), "h2").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let resp = get_as(&h1, &proxy.url("/dead/c"), "dead").await;
    assert_eq!(resp.status(), 502);
    let resp = get_as(&h1, &proxy.url("/nowhere"), "none").await;
    assert_eq!(resp.status(), 404);

    let lines = proxy.wait_access_lines(4).await;
    let host = format!("127.0.0.1:{}", proxy.addr().port());
    let first = line(&lines, "h1");
    assert_eq!(first["host"], host.as_str(), "{first}");
    assert_eq!(first["protocol"], "HTTP/1.1", "{first}");
    assert_eq!(first["tls_version"], "TLSv1.3", "{first}");
    assert_eq!(first["user_agent"], agent, "{first}");
    assert_eq!(first["path"], "/fast/a", "{first}");
    assert_eq!(first["upstream_status"], 200, "{first}");
    assert!(first["upstream_time_us"].is_u64(), "{first}");
    assert!(first["duration_us"].is_u64(), "{first}");
    assert!(first.get("duration_ms").is_none(), "{first}");
    // The tracing helper fills it; until then it is there and null.
    assert_eq!(first["trace_id"], Value::Null, "{first}");
    assert!(first.get("claims").is_none(), "{first}");

    let second = line(&lines, "h2");
    assert_eq!(second["protocol"], "HTTP/2", "{second}");
    assert_eq!(second["host"], host.as_str(), "the :authority: {second}");
    assert_eq!(second["tls_version"], "TLSv1.3", "{second}");
    assert_eq!(second["upstream_status"], 200, "{second}");
    // The upstream waited 60 ms before answering: its time holds that, and the request's
    // holds the upstream's.
    let upstream_us = second["upstream_time_us"].as_u64().unwrap();
    let duration_us = second["duration_us"].as_u64().unwrap();
    assert!(upstream_us >= 60_000, "{second}");
    assert!(duration_us >= upstream_us, "{second}");

    // An attempt that never got an answer has a time but no status.
    let dead = line(&lines, "dead");
    assert_eq!(dead["status"], 502, "{dead}");
    assert_eq!(dead["upstream_status"], Value::Null, "{dead}");
    assert!(dead["upstream_time_us"].is_u64(), "{dead}");
    // No route, no attempt: neither.
    let none = line(&lines, "none");
    assert_eq!(none["upstream_status"], Value::Null, "{none}");
    assert_eq!(none["upstream_time_us"], Value::Null, "{none}");
    assert_eq!(none["upstream"], Value::Null, "{none}");
    assert!(!proxy.access_log().contains("secret=query"));

    // Plain TCP: no TLS version; HTTP/1.0 says so.
    let plain = Proxy::start(&routes(&up, &slow)).await;
    let resp = raw::send(
        plain.addr(),
        b"GET /fast/x HTTP/1.0\r\nHost: plain.example\r\nUser-Agent: old/1.0\r\nX-Request-Id: h10\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let old = logged(&plain, 1, "h10").await;
    assert_eq!(old["protocol"], "HTTP/1.0", "{old}");
    assert_eq!(old["tls_version"], Value::Null, "{old}");
    assert_eq!(old["host"], "plain.example", "{old}");
    assert_eq!(old["user_agent"], "old/1.0", "{old}");
    assert_eq!(old["client"], "127.0.0.1", "{old}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const SECRET: &str = "it-access-log-hmac-secret-0123456789abcdef";

fn claims_config(up: &Upstream) -> String {
    format!(
        "upstreams:\n{}issuers:\n  - name: hs\n    issuer: hs-issuer\n    hmac_secret_env: PORTCULLIS_IT_LOG_SECRET\nroutes:\n  - name: api\n    match: {{ path_prefix: / }}\n    upstream: up\n    auth: {{ issuers: [hs] }}\n",
        pool("up", &[up.addr().to_string()], &[])
    )
}

async fn get_with(proxy: &Proxy, token: Option<&str>, id: &str) -> u16 {
    let mut req = client().get(proxy.url("/x")).header("x-request-id", id);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_logged_only_when_listed() {
    let up = Upstream::start("up").await;
    let token = mint_hmac(
        SECRET.as_bytes(),
        &json!({
            "iss": "hs-issuer", "sub": "alice", "tenant": "acme",
            "email": "alice@example.com", "exp": now() + 600,
        })
        .to_string(),
        Algorithm::HS256,
        None,
    )
    .unwrap();
    let signature = token.rsplit('.').next().unwrap().to_string();

    // The plain string form: no claims at all.
    let plain = Proxy::builder(&claims_config(&up))
        .env("PORTCULLIS_IT_LOG_SECRET", SECRET)
        .start()
        .await;
    assert_eq!(get_with(&plain, Some(&token), "p1").await, 200);
    let l = logged(&plain, 1, "p1").await;
    assert_eq!(l["status"], 200);
    assert!(l.get("claims").is_none(), "{l}");
    assert!(!plain.access_log().contains("alice"), "{l}");

    // Listed: those claims, and only those.
    let mut listed = Proxy::builder(&claims_config(&up))
        .env("PORTCULLIS_IT_LOG_SECRET", SECRET)
        .log_claims(&["sub", "tenant", "missing"])
        .start()
        .await;
    assert_eq!(get_with(&listed, Some(&token), "l1").await, 200);
    assert_eq!(get_with(&listed, None, "l2").await, 401);
    let l = logged(&listed, 2, "l1").await;
    assert_eq!(
        l["claims"],
        json!({"sub": "alice", "tenant": "acme", "missing": null}),
        "{l}"
    );
    // A request without a verified identity has none to log.
    let refused = logged(&listed, 2, "l2").await;
    assert!(refused.get("claims").is_none(), "{refused}");

    // The list reloads live: the next requests log the new one.
    listed.set_log_claims(&["email"]);
    listed.write_config(&claims_config(&up));
    listed
        .wait_metric("portcullis_config_generation", &[], 2.0)
        .await;
    assert_eq!(get_with(&listed, Some(&token), "l3").await, 200);
    let l = logged(&listed, 3, "l3").await;
    assert_eq!(l["claims"], json!({"email": "alice@example.com"}), "{l}");
    assert!(
        !listed.stderr().contains("only after a restart"),
        "claims reload live: {}",
        listed.stderr()
    );
    // The path does not: the reload applies, warns, and lines stay in the file open.
    let path = listed.access_log_path().display().to_string();
    let moved = listed
        .config_text(&claims_config(&up))
        .replace(&path, &format!("{path}.elsewhere"));
    listed.write_raw_config(&moved);
    listed
        .wait_metric("portcullis_config_generation", &[], 3.0)
        .await;
    let stderr = listed.wait_for_log("only after a restart").await;
    assert!(stderr.contains("access_log.path"), "{stderr}");
    assert_eq!(get_with(&listed, Some(&token), "l4").await, 200);
    logged(&listed, 4, "l4").await;

    for log in [plain.access_log(), listed.access_log()] {
        assert!(!log.contains(&signature), "the token is in the log: {log}");
        assert!(!log.contains("Bearer"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_a_rename_and_loses_nothing() {
    let (_up, proxy) = one_upstream().await;
    let metrics = proxy.metrics().await;
    for result in ["success", "failure"] {
        assert_eq!(
            metrics.get(REOPENS, &[("result", result)]),
            Some(0.0),
            "{result}"
        );
    }
    let (http, url) = (client(), proxy.url("/x"));
    for i in 0..30 {
        get_ok(&http, &url, &format!("before-{i}")).await;
    }
    // As logrotate does: rename, then signal.
    let rotated = proxy.access_log_path().with_extension("log.1");
    std::fs::rename(proxy.access_log_path(), &rotated).unwrap();
    proxy.signal("USR1");
    proxy
        .wait_metric(REOPENS, &[("result", "success")], 1.0)
        .await;
    for i in 0..30 {
        get_ok(&http, &url, &format!("after-{i}")).await;
    }
    let (old, new) = eventually("60 lines over both files", Duration::from_secs(5), || {
        let rotated = rotated.clone();
        let proxy = &proxy;
        async move {
            let old = std::fs::read_to_string(&rotated).unwrap();
            let new = proxy.access_log();
            let n = old.lines().count() + new.lines().count();
            if n >= 60 {
                Ok((old, new))
            } else {
                Err(format!("{n} lines"))
            }
        }
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in old.lines().chain(new.lines()) {
        let v: Value = serde_json::from_str(l).unwrap();
        *seen
            .entry(v["request_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 60, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    // Every request sent after the reopen went to the new file.
    for i in 0..30 {
        assert!(new.contains(&format!("\"after-{i}\"")), "after-{i}:\n{new}");
        assert!(!old.contains(&format!("\"after-{i}\"")), "after-{i}");
    }
    assert_eq!(proxy.metric(REOPENS, &[("result", "failure")]).await, 0.0);

    // A path that cannot be opened: counted, and the lines keep going to the file open.
    let second = proxy.access_log_path().with_extension("log.2");
    std::fs::rename(proxy.access_log_path(), &second).unwrap();
    std::fs::create_dir(proxy.access_log_path()).unwrap();
    proxy.signal("USR1");
    proxy
        .wait_metric(REOPENS, &[("result", "failure")], 1.0)
        .await;
    get_ok(&http, &url, "still").await;
    eventually(
        "the line in the file still open",
        Duration::from_secs(5),
        || {
            let second = second.clone();
            async move {
                let text = std::fs::read_to_string(&second).unwrap();
                if text.contains("\"still\"") {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_many_concurrent_requests_arrive_whole() {
    let (_up, proxy) = one_upstream().await;
    // Long lines (a 200-byte user agent) from 16 clients at once, over both worker threads.
    let agent = "a".repeat(200);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let http = client_builder().user_agent(agent.clone()).build().unwrap();
        let url = proxy.url("/x");
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                get_ok(&http, &url, &format!("c{t}-{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // `access_lines` fails on any line that is not one whole JSON object.
    let lines = proxy.wait_access_lines(800).await;
    assert_eq!(lines.len(), 800);
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["user_agent"], agent.as_str(), "{l}");
            l["request_id"].as_str().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 800);
    assert_eq!(
        proxy
            .metric("portcullis_access_log_dropped_total", &[])
            .await,
        0.0
    );
}

/// `deploy/logrotate/portcullis`, run by the real logrotate on a running proxy's log: the
/// file is rotated, the proxy reopens it on the snippet's SIGUSR1, and no line is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logrotate_snippet_rotates_the_log_without_losing_a_line() {
    let logrotate = ["/usr/sbin/logrotate", "/usr/bin/logrotate"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("logrotate is not installed (`make deps` installs it)");
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/logrotate/portcullis"
    ))
    .unwrap();
    let (_up, proxy) = one_upstream().await;
    // The snippet as written, on this test's log, its postrotate signalling this proxy the
    // way the snippet's command signals the service (which needs systemd).
    let mut conf = String::new();
    let mut in_script = false;
    for l in snippet.lines() {
        if l.trim() == "endscript" {
            in_script = false;
        } else if in_script {
            assert!(l.contains("SIGUSR1"), "postrotate must send SIGUSR1: {l}");
            conf.push_str(&format!("        kill -USR1 {}\n", proxy.pid()));
            continue;
        }
        if l.trim() == "postrotate" {
            in_script = true;
        }
        conf.push_str(l);
        conf.push('\n');
    }
    let path = proxy.access_log_path();
    assert!(conf.contains("/var/log/portcullis/access.log {"), "{conf}");
    let conf = conf.replace("/var/log/portcullis/access.log", path.to_str().unwrap());
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("portcullis"), conf).unwrap();

    let (http, url) = (client(), proxy.url("/x"));
    for i in 0..20 {
        get_ok(&http, &url, &format!("before-{i}")).await;
    }
    proxy.wait_access_lines(20).await;
    let out = std::process::Command::new(logrotate)
        .arg("--state")
        .arg(work.path().join("state"))
        .arg("--force")
        .arg(work.path().join("portcullis"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = path.with_extension("log.1");
    assert!(rotated.exists(), "no {}", rotated.display());
    proxy
        .wait_metric(REOPENS, &[("result", "success")], 1.0)
        .await;
    for i in 0..20 {
        get_ok(&http, &url, &format!("after-{i}")).await;
    }
    let lines = proxy.wait_access_lines(20).await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 20, "{old}");
    for i in 0..20 {
        line(&lines, &format!("after-{i}"));
        assert!(old.contains(&format!("\"before-{i}\"")), "before-{i}");
    }
}
