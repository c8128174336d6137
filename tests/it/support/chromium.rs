//! A real browser: Debian's headless Chromium (`make deps` installs it), run once per page
//! with `--dump-dom`: it loads a URL, follows the redirects, runs the page's scripts, and the
//! DOM of the page it ends on is the result. A fresh profile each run (so no cookies from
//! earlier runs), no network but 127.0.0.1: every other host name resolves to nothing, and
//! Chromium's own background traffic (updates, sync, QUIC, ...) is switched off.
//!
//! [`Page`] keeps a page open instead and asks it questions while it runs, through the
//! DevTools protocol over a pipe (`--remote-debugging-pipe`: JSON messages ended by a NUL
//! byte on file descriptors 3 and 4), for pages that change by themselves.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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
    cmd.args(SWITCHES)
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

/// The switches of every run: headless, no sandbox (tests may run as root), a fresh
/// profile's defaults, no traffic but to loopback.
const SWITCHES: [&str; 14] = [
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
];

/// A page kept open in headless Chromium, asked questions while it runs (DevTools protocol
/// over a pipe). Dropping it ends the browser.
pub struct Page {
    child: Child,
    /// Where Chromium's stderr goes, for the message of a failed call.
    log: std::path::PathBuf,
    to_browser: ChildStdin,
    from_browser: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Page {
    /// Open `url` in a fresh headless Chromium.
    pub fn open(url: &str) -> Page {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the browser tests run Debian's chromium; `make deps` installs it"
        );
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromium.log");
        // Chromium reads the protocol on fd 3 and writes it on fd 4: the shell puts the
        // pipes of our stdin and stdout there, then points 0 and 1 at /dev/null.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(CHROMIUM)
            .args(SWITCHES)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
        let to_browser = child.stdin.take().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, from_browser) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut message = Vec::new();
            match reader.read_until(0, &mut message) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    message.pop();
                    if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut page = Page {
            child,
            log,
            to_browser,
            from_browser,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = page.call(None, "Target.createTarget", json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = page.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        page
    }

    /// Send one command (to the page's session, or to the browser with `None`) and wait for
    /// its answer; events on the way are dropped. It blocks its thread (in `block_in_place`,
    /// so the test's runtime must be multi-threaded).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        self.to_browser.flush().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = tokio::task::block_in_place(|| self.from_browser.recv_timeout(left))
                .unwrap_or_else(|e| {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    panic!("no answer from chromium to {method}: {e}\nstderr: {log}")
                });
            if answer["id"] == json!(id) {
                assert!(
                    answer.get("error").is_none(),
                    "chromium refused {method}: {answer}"
                );
                return answer["result"].clone();
            }
        }
    }

    /// The value of JavaScript `expression` in the page (JSON-serialisable results only).
    pub fn eval(&mut self, expression: &str) -> Value {
        self.evaluate(expression, false)
    }

    /// As [`Page::eval`], for an expression that is a promise: its settled value (e.g. of an
    /// `async` function that makes a `fetch`).
    pub fn eval_await(&mut self, expression: &str) -> Value {
        self.evaluate(expression, true)
    }

    fn evaluate(&mut self, expression: &str, await_promise: bool) -> Value {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({
                "expression": expression,
                "returnByValue": true,
                "awaitPromise": await_promise,
            }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "`{expression}` threw: {result}"
        );
        result["result"]["value"].clone()
    }
}

impl Drop for Page {
    /// Ask the browser to close, so that it ends its own helper processes; kill it if it
    /// has not within 5 s.
    fn drop(&mut self) {
        let close = json!({ "id": self.next_id + 1, "method": "Browser.close", "params": {} });
        let mut bytes = serde_json::to_vec(&close).unwrap_or_default();
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes);
        let _ = self.to_browser.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
