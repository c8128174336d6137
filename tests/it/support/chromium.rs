//! A real browser: Debian's headless Chromium (`make deps` installs it), run once per page
//! with `--dump-dom`: it loads a URL, follows the redirects, runs the page's scripts, and the
//! DOM of the page it ends on is the result. A fresh profile each run (so no cookies from
//! earlier runs), no network but 127.0.0.1: every other host name resolves to nothing, and
//! Chromium's own background traffic (updates, sync, QUIC, ...) is switched off.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Debian's package puts it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one page may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Load `url` in headless Chromium and give the DOM of the page it lands on (after HTTP
/// redirects and the page's scripts).
pub async fn dump_dom(url: &str) -> String {
    dump_dom_with(url, &[]).await
}

/// As [`dump_dom`], with more command-line switches (e.g. `--virtual-time-budget=5000` to let
/// scripts navigate further before the DOM is taken).
pub async fn dump_dom_with(url: &str, extra: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser tests run Debian's chromium; `make deps` installs it"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--metrics-recording-only",
        // Any name but the loopback ones resolves to nothing: no traffic leaves the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg("--dump-dom")
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    let pid = child.id();
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let out = match out {
        Ok(joined) => joined.unwrap().unwrap(),
        Err(_) => {
            // Chromium hung: end it (its id, as the child handle moved into the waiting task).
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("chromium took more than {TIMEOUT:?} on {url}");
        }
    };
    drop(profile);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !dom.trim().is_empty(),
        "chromium on {url}: {}\nstdout: {dom}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}
