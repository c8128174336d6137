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
    let (listen, admin, echo) = (free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--echo",
            &format!("127.0.0.1:{echo}"),
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
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body["upstream"], "echo", "{body}");
    assert_eq!(body["uri"], "/hello", "{body}");
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
