//! The command line: `check` names every field and line, `run` refuses a broken file without
//! starting, every shipped config passes `check`, and `demo` serves.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{client, eventually, free_port, BIN};

fn portcullis(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn check(path: &Path) -> Output {
    portcullis(&["check", "--config", path.to_str().unwrap()])
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Field errors: each is reported, with its path and line, in one run.
const FIELD_ERRORS: &str = r#"listeners:
  - address: "127.0.0.1:8080"
upstreams:
  - name: orders
    targets: ["127.0.0.1:9000"]
routes:
  - match: { hots: api.example.com }
    name: r
    upstream: orders
  - name: s
    upstream: orders
    retries: 3
server:
  grace_period: 5
"#;

/// Errors found once the file parses: bad address, target without a port, unknown upstream.
const SEMANTIC_ERRORS: &str = r#"listeners:
  - address: "nowhere"
upstreams:
  - name: orders
    targets: ["127.0.0.1"]
routes:
  - name: r
    match: { path_prefix: /a }
    upstream: missing
"#;

const GOOD: &str = r#"listeners:
  - address: "127.0.0.1:8080"
upstreams:
  - name: orders
    targets: ["127.0.0.1:9000", "127.0.0.1:9001"]
    balance: consistent_hash
    hash_on: "header:x-user"
    health_check:
      http: { path: /healthz, expect_status: 200 }
      interval: 5s
routes:
  - name: orders
    match: { path_prefix: /v1/orders, methods: [GET, POST] }
    upstream: orders
    auth: none
"#;

#[test]
fn check_names_each_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "fields.yaml", FIELD_ERRORS);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    for want in [
        "line 7: routes[0].match.hots: unknown field `hots`",
        "line 12: routes[1].retries: unknown field `retries`",
        "line 14: server.grace_period: a duration needs a unit",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
    }
    assert!(stderr.contains("3 errors"), "{stderr}");

    let path = write(&dir, "semantic.yaml", SEMANTIC_ERRORS);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        "line 2: listeners[0].address:",
        "line 5: upstreams[0].targets[0]:",
        "line 9: routes[0].upstream: no upstream named `missing`",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
    }

    let path = write(
        &dir,
        "syntax.yaml",
        "routes:\n  - name: ok\n    upstream: a: b\nupstreams: []\n",
    );
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");

    let out = portcullis(&[
        "check",
        "--config",
        dir.path().join("absent.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.yaml"));
}

/// Ten mistakes across sections, of shape and of meaning, and one that only follows from
/// another (a route naming the upstream whose item is malformed): one run shows the ten.
const NINE_MISTAKES: &str = r#"listeners:
  - address: "127.0.0.1:8080"
    tls: yes
  - address: "nowhere"
admin:
  adress: "127.0.0.1:9901"
server:
  grace_period: 5
upstreams:
  - name: orders
    targets: ["127.0.0.1"]
  - name: broken
    targets: ["127.0.0.1:9001"]
    balance: fastest
routes:
  - name: r
    match: { hots: api.example.com }
    upstream: orders
  - name: s
    upstream: missing
  - name: t
    upstream: broken
readiness:
  require_pools: [orderz]
tokens_cache: {}
"#;

#[test]
fn check_shows_every_mistake_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "nine.yaml", NINE_MISTAKES);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = [
        "line 3: listeners[0].tls: invalid type",
        // A meaning error after a malformed item keeps the file's index.
        "line 4: listeners[1].address: `nowhere` is not an `ip:port` address",
        "line 6: admin.adress: unknown field `adress`",
        "line 8: server.grace_period: a duration needs a unit",
        "line 11: upstreams[0].targets[0]: `127.0.0.1` needs a port",
        "line 14: upstreams[1].balance: unknown variant `fastest`",
        "line 17: routes[0].match.hots: unknown field `hots`",
        "line 20: routes[1].upstream: no upstream named `missing`",
        "line 24: readiness.require_pools[0]: no upstream named `orderz`",
        "line 25: tokens_cache: unknown field `tokens_cache`",
    ];
    for want in want {
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!("({} errors)", want.len())),
        "no other error expected (`routes[2]` names the malformed upstream):\n{stderr}"
    );
}

/// Exit codes as `check --help` and the README say: 0 valid (warnings pass), 1 invalid or
/// unreadable, 2 usage. `check FILE` is the same as `check --config FILE`.
#[test]
fn check_exit_codes_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.yaml", GOOD);
    let bad = write(&dir, "bad.yaml", SEMANTIC_ERRORS);
    let help = String::from_utf8_lossy(&portcullis(&["check", "--help"]).stdout).to_string();
    for doc in [
        "0 the config is valid",
        "1 the config is invalid or cannot be read",
        "2 a usage error",
    ] {
        assert!(help.contains(doc), "{help}");
    }
    let code = |args: &[&str]| portcullis(args).status.code();
    assert_eq!(code(&["check", good.to_str().unwrap()]), Some(0));
    assert_eq!(
        code(&["check", "--config", good.to_str().unwrap()]),
        Some(0)
    );
    assert_eq!(code(&["check", bad.to_str().unwrap()]), Some(1));
    assert_eq!(code(&["check", "--config", bad.to_str().unwrap()]), Some(1));
    assert_eq!(code(&["check", "/nonexistent/portcullis.yaml"]), Some(1));
    assert_eq!(code(&["check"]), Some(2));
    assert_eq!(code(&["check", "--bogus", good.to_str().unwrap()]), Some(2));
    assert_eq!(
        code(&[
            "check",
            good.to_str().unwrap(),
            "--config",
            good.to_str().unwrap()
        ]),
        Some(2)
    );
}

/// No listeners: `check` passes with a warning, `run` refuses to start.
#[test]
fn no_listeners_warns_in_check_and_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "upstreams: []\n"] {
        let path = write(&dir, "empty.yaml", text);
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("warning: no listeners"), "{stderr}");
        let out = portcullis(&["run", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("no listeners"), "{stderr}");
    }
}

#[test]
fn check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "good.yaml", GOOD);
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn run_refuses_a_broken_file_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = free_port();
    let text = format!(
        "listeners:\n  - address: \"127.0.0.1:{port}\"\nadmin:\n  address: \"127.0.0.1:{admin}\"\nupstreams:\n  - name: a\n    targets: [\"127.0.0.1:1\"]\nroutes:\n  - name: r\n    upstream: nowhere\n"
    );
    let path = write(&dir, "broken.yaml", &text);
    let mut child = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "it started listening"
        );
        assert!(Instant::now() < deadline, "still running after 10s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 10: routes[0].upstream: no upstream named `nowhere`"),
        "{stderr}"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(TcpStream::connect(("127.0.0.1", admin)).is_err());
}

/// Every config shipped under `config/` passes `check`. The folder is listed, so a new file
/// is covered the day it is added.
#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no {} yet: nothing to check", dir.display());
        return;
    };
    let mut checked = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if !is_yaml {
            continue;
        }
        let out = check(&path);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails check:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(path);
    }
    assert!(
        !checked.is_empty(),
        "{} exists but holds no .yaml file",
        dir.display()
    );
}

#[test]
fn help_is_everywhere() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let out = portcullis(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = portcullis(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing --config is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_through_its_echo_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (listen, admin, echo, issuer) = (free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--echo",
            &format!("127.0.0.1:{echo}"),
            "--issuer",
            &format!("127.0.0.1:{issuer}"),
        ])
        // The demo writes its config into the temp folder: keep it to this test.
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = client();
    let body: serde_json::Value =
        eventually("the demo to serve", Duration::from_secs(20), || async {
            let resp = http
                .get(format!("http://127.0.0.1:{listen}/hello"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status() != 200 {
                return Err(resp.status().to_string());
            }
            resp.json().await.map_err(|e| e.to_string())
        })
        .await;
    assert_eq!(body["upstream"], "echo", "{body}");
    assert_eq!(body["uri"], "/hello", "{body}");
    demo_logs_a_browser_in_and_out(listen).await;
    let _ = child.kill();
    let _ = child.wait();
    // The printed lines show the browser URL and the logout URL.
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.contains(&format!("http://127.0.0.1:{listen}/app/")),
        "{out}"
    );
    assert!(
        out.contains(&format!("http://127.0.0.1:{listen}/.portcullis/logout")),
        "{out}"
    );
}

/// A browser's cookies, as far as these tests need them: name to value, from `Set-Cookie`.
#[derive(Default)]
struct Jar(std::collections::BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let text = v.to_str().unwrap();
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attrs.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The demo's browser session, step by step, with the cookies a browser would keep.
async fn demo_logs_a_browser_in_and_out(listen: u16) {
    let http = crate::support::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut jar = Jar::default();
    let app = format!("http://127.0.0.1:{listen}/app/orders?x=1");
    let get = |url: String, jar: &Jar| {
        http.get(url)
            .header("accept", "text/html")
            .header("cookie", jar.header())
            .send()
    };
    let location =
        |resp: &reqwest::Response| resp.headers()["location"].to_str().unwrap().to_string();
    // An API call without a session: 401, never a redirect.
    let api = http
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    // A navigation: to the issuer's login page, with PKCE, state and nonce (once the
    // issuer's discovery has been read: 503 until then).
    let resp = eventually("a login redirect", Duration::from_secs(20), || async {
        let resp = get(app.clone(), &Jar::default())
            .await
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            302 => Ok(resp),
            other => Err(other.to_string()),
        }
    })
    .await;
    jar.take(&resp);
    let authorize = location(&resp);
    for part in [
        "response_type=code",
        "client_id=demo-web",
        "code_challenge_method=S256",
        "state=",
        "nonce=",
    ] {
        assert!(authorize.contains(part), "{authorize}");
    }
    assert!(
        jar.0
            .keys()
            .any(|k| k.starts_with("portcullis-demo-login-")),
        "{:?}",
        jar.0
    );
    let page = get(authorize.clone(), &jar)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Log in as alice"), "{page}");
    // The one click: the form sends the same parameters to /authorize/approve.
    let approve = authorize.replacen("/authorize?", "/authorize/approve?", 1);
    let resp = get(approve, &jar).await.unwrap();
    assert_eq!(resp.status(), 302);
    let callback = location(&resp);
    assert!(
        callback.starts_with(&format!("http://127.0.0.1:{listen}/.portcullis/callback?")),
        "{callback}"
    );
    let resp = get(callback, &jar).await.unwrap();
    assert_eq!(resp.status(), 302, "{:?}", resp.text().await);
    jar.take(&resp);
    assert_eq!(location(&resp), "/app/orders?x=1");
    assert!(jar.0.contains_key("portcullis-demo"), "{:?}", jar.0);
    assert!(
        !jar.0.keys().any(|k| k.contains("-login-")),
        "the login cookie is cleared"
    );
    // Through to the upstream as alice, with the access token and without the cookie.
    let resp = get(app.clone(), &jar).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let headers = &echo["headers"];
    assert_eq!(headers["x-user-id"], "alice", "{echo}");
    assert_eq!(headers["x-user-email"], "alice@example.com", "{echo}");
    assert!(
        headers["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ey"),
        "{echo}"
    );
    assert!(headers.get("cookie").is_none(), "{echo}");
    // Logout: cookies cleared, on to the issuer's end-session with the ID token as hint.
    let resp = get(
        format!("http://127.0.0.1:{listen}/.portcullis/logout"),
        &jar,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 302);
    let end = location(&resp);
    assert!(
        end.contains("/logout?") && end.contains("id_token_hint="),
        "{end}"
    );
    assert!(
        end.contains("post_logout_redirect_uri=http%3A%2F%2F127.0.0.1"),
        "{end}"
    );
    jar.take(&resp);
    assert!(jar.0.is_empty(), "{:?}", jar.0);
    let resp = get(app, &jar).await.unwrap();
    assert_eq!(resp.status(), 302, "logged out: to the login again");
}

/// A port in use stops the start with a clear error: never a process that runs on without
/// its listener (Pingora alone retries for 30 s, then panics in one thread and lives on).
#[test]
fn run_exits_when_a_port_is_taken() {
    for taken_is_admin in [false, true] {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap().port();
        let other = free_port();
        let (listen, admin) = if taken_is_admin {
            (other, taken)
        } else {
            (taken, other)
        };
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "listeners:\n  - address: \"127.0.0.1:{listen}\"\nadmin:\n  address: \"127.0.0.1:{admin}\"\nupstreams:\n  - name: a\n    targets: [\"127.0.0.1:1\"]\nroutes:\n  - name: r\n    upstream: a\n"
        );
        let path = write(&dir, "taken.yaml", &text);
        let mut child = Command::new(BIN)
            .args(["run", "--config", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = status.unwrap_or_else(|| panic!("still running 10s after start:\n{stderr}"));
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{taken}")),
            "{stderr}"
        );
        drop(holder);
    }
}

/// The binary allocates through mimalloc's 2.x series: the memory figures (a million cached
/// tokens under 150 MB) hold with it, and did not with glibc's old table sizes or mimalloc 3.x.
#[test]
fn the_binary_runs_on_mimalloc_2() {
    let minimal = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/minimal.yaml");
    let out = Command::new(BIN)
        .args(["check", "--config", minimal.to_str().unwrap()])
        .env("MIMALLOC_VERBOSE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("mimalloc: v2.")),
        "no mimalloc 2.x banner in: {stderr}"
    );
}
