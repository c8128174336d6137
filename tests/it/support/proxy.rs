//! The real `portcullis` binary, run on free ports with a config file in a temp folder.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{client, eventually, metrics::Metrics};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux `/proc`).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    // Socket inodes of listening sockets (state 0A) on that address.
    let inodes: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// How to start a proxy.
pub struct ProxyBuilder {
    body: String,
    server: Vec<String>,
    listener: Vec<String>,
    extra_listeners: Vec<String>,
    tls: bool,
    env: Vec<(String, String)>,
    log_claims: Vec<String>,
}

impl ProxyBuilder {
    /// A field of the listener (e.g. `h2c: true`).
    pub fn listener(mut self, line: &str) -> Self {
        self.listener.push(line.to_string());
        self
    }

    /// A line under `server:` (e.g. `max_request_header_bytes: 2048`).
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_string());
        self
    }

    /// Another listener, with its fields as one YAML flow mapping body (e.g.
    /// `address: "127.0.0.1:8081"`).
    pub fn extra_listener(mut self, fields: &str) -> Self {
        self.extra_listeners.push(fields.to_string());
        self
    }

    /// Serve TLS on the listener, with a self-signed certificate made for the test.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Write `access_log:` in its object form, listing these claims.
    pub fn log_claims(mut self, claims: &[&str]) -> Self {
        self.log_claims = claims.iter().map(|c| c.to_string()).collect();
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Start it and wait until it serves.
    pub async fn start(self) -> Proxy {
        let mut last = String::new();
        // A port picked as free may be taken by someone else before the proxy binds it:
        // then start again on other ports.
        for _ in 0..4 {
            match Proxy::try_start(&self).await {
                Ok(proxy) => return proxy,
                Err(e) => last = e,
            }
        }
        panic!("the proxy did not start: {last}");
    }
}

/// A running `portcullis run`. Dropping it kills the process.
pub struct Proxy {
    /// `None` only while starting.
    child: Option<Child>,
    /// Folder of the config file, the access log and the TLS files.
    dir: tempfile::TempDir,
    port: u16,
    admin_port: u16,
    tls: bool,
    server: Vec<String>,
    listener: Vec<String>,
    extra_listeners: Vec<String>,
    /// `access_log.claims`; empty: the plain string form.
    log_claims: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    exit: Option<ExitStatus>,
}

impl Proxy {
    /// Start with `body` (the `upstreams:` and `routes:` sections) and default settings.
    pub async fn start(body: &str) -> Proxy {
        Proxy::builder(body).start().await
    }

    /// Start with `body` and more settings.
    pub fn builder(body: &str) -> ProxyBuilder {
        ProxyBuilder {
            body: body.to_string(),
            server: Vec::new(),
            listener: Vec::new(),
            extra_listeners: Vec::new(),
            tls: false,
            env: Vec::new(),
            log_claims: Vec::new(),
        }
    }

    async fn try_start(b: &ProxyBuilder) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().unwrap();
        if b.tls {
            let key = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .unwrap();
            std::fs::write(dir.path().join("server.crt"), key.cert.pem()).unwrap();
            std::fs::write(
                dir.path().join("server.key"),
                key.signing_key.serialize_pem(),
            )
            .unwrap();
        }
        let port = free_port();
        let mut admin_port = free_port();
        while admin_port == port {
            admin_port = free_port();
        }
        let mut proxy_cmd = Command::new(BIN);
        let config = dir.path().join("portcullis.yaml");
        proxy_cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &b.env {
            proxy_cmd.env(k, v);
        }
        let mut proxy = Proxy {
            child: None,
            dir,
            port,
            admin_port,
            tls: b.tls,
            server: b.server.clone(),
            listener: b.listener.clone(),
            extra_listeners: b.extra_listeners.clone(),
            log_claims: b.log_claims.clone(),
            stderr: Arc::new(Mutex::new(Vec::new())),
            exit: None,
        };
        proxy.write_config(&b.body);
        let mut child = proxy_cmd.spawn().unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&proxy.stderr);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        proxy.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(20);
        let http = client();
        loop {
            if let Some(status) = proxy.child_mut().try_wait().unwrap() {
                return Err(format!(
                    "exited with {status} before serving:\n{}",
                    proxy.stderr()
                ));
            }
            if proxy.stderr().contains("Failed to build listeners") {
                return Err(format!("a listener could not bind:\n{}", proxy.stderr()));
            }
            let admin_up = matches!(
                http.get(proxy.admin_url("/healthz")).send().await,
                Ok(r) if r.status() == 200
            );
            // The listener must be this process's own: a port picked as free may have gone to
            // a proxy of another test, which would then answer this test's requests.
            let pid = proxy.child_mut().id();
            if admin_up && listens_on(pid, proxy.port) && TcpStream::connect(proxy.addr()).is_ok() {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                return Err(format!("not serving after 20s:\n{}", proxy.stderr()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The config file text for `body` on this proxy's ports.
    pub fn config_text(&self, body: &str) -> String {
        let tls = if self.tls {
            format!(
                "\n    tls: {{ cert: \"{}\", key: \"{}\" }}",
                self.dir.path().join("server.crt").display(),
                self.dir.path().join("server.key").display()
            )
        } else {
            String::new()
        };
        let tls: String = std::iter::once(tls)
            .chain(self.listener.iter().map(|l| format!("\n    {l}")))
            .chain(
                self.extra_listeners
                    .iter()
                    .map(|l| format!("\n  - {{ {l} }}")),
            )
            .collect();
        let mut server = String::from("server:\n  threads: 2\n");
        for line in &self.server {
            server.push_str(&format!("  {line}\n"));
        }
        let path = format!("\"{}\"", self.access_log_path().display());
        let access_log = if self.log_claims.is_empty() {
            path
        } else {
            format!(
                "{{ path: {path}, claims: [{}] }}",
                self.log_claims.join(", ")
            )
        };
        format!(
            "listeners:\n  - address: \"127.0.0.1:{}\"{tls}\nadmin:\n  address: \"127.0.0.1:{}\"\naccess_log: {access_log}\n{server}{body}",
            self.port,
            self.admin_port,
        )
    }

    /// Replace the config file with `body` on the same ports, in one atomic rename so that
    /// the file watcher never reads half a file.
    pub fn write_config(&self, body: &str) {
        self.write_raw_config(&self.config_text(body));
    }

    /// Replace the whole config file with `text`, atomically.
    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.dir.path().join(".portcullis.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// The listener's self-signed certificate (with [`ProxyBuilder::tls`]), for
    /// `localhost` and `127.0.0.1`.
    pub fn tls_cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.yaml")
    }

    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:port{path}` (`https` with TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// The admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `POST /reload` on the admin listener: its status and body.
    pub async fn reload(&self) -> (u16, String) {
        let resp = crate::support::client()
            .post(self.admin_url("/reload"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// `POST /reload`, which must succeed.
    pub async fn reload_ok(&self) {
        let (status, body) = self.reload().await;
        assert_eq!(status, 200, "{body}");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    /// Send a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Ask for a reload.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Ask for a graceful shutdown.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait().unwrap() {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /readyz` (with `?verbose` when asked): its status and JSON body.
    pub async fn readyz(&self, verbose: bool) -> (u16, serde_json::Value) {
        let path = if verbose {
            "/readyz?verbose"
        } else {
            "/readyz"
        };
        let resp = client().get(self.admin_url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Wait (up to 5 s) until stderr holds `needle`, and give it: a thread of the test reads
    /// the process's stderr, so a line may arrive a moment after what it tells of.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        super::eventually(
            &format!("`{needle}` in the log"),
            Duration::from_secs(5),
            || async {
                let log = self.stderr();
                if log.contains(needle) {
                    Ok(log)
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await
    }

    /// The access log file.
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The access log as written so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    /// From the next [`Proxy::write_config`] on, list these claims in `access_log` (none:
    /// the plain string form).
    pub fn set_log_claims(&mut self, claims: &[&str]) {
        self.log_claims = claims.iter().map(|c| c.to_string()).collect();
    }

    /// Wait (up to 5 s) until the access log holds at least `n` lines, and give them: lines
    /// reach the file on the writer's next round (every 100 ms).
    pub async fn wait_access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        eventually(
            &format!("{n} access log lines"),
            Duration::from_secs(5),
            || async {
                let lines = self.access_lines();
                if lines.len() >= n {
                    Ok(lines)
                } else {
                    Err(format!("{} lines", lines.len()))
                }
            },
        )
        .await
    }

    /// Wait (up to 5 s) until the access log's lines satisfy `done`, and give them.
    pub async fn wait_access_until(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        eventually(what, Duration::from_secs(5), || async {
            let lines = self.access_lines();
            if done(&lines) {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        })
        .await
    }

    /// The access log lines, parsed.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        let mut log = self.access_log();
        // Whole lines only: the writer may be in the middle of its next write.
        log.truncate(log.rfind('\n').map_or(0, |i| i + 1));
        log.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The metrics now.
    pub async fn metrics(&self) -> Metrics {
        let resp = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        Metrics::parse(&resp.text().await.unwrap())
    }

    /// One metric value now; 0 when the series does not exist yet.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().await.get(name, labels).unwrap_or(0.0)
    }

    /// Wait until metric `name{labels}` reads `want`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        eventually(
            &format!("{name}{labels:?} == {want}"),
            Duration::from_secs(10),
            || async {
                let got = self.metrics().await.get(name, labels);
                if got == Some(want) {
                    Ok(())
                } else {
                    Err(format!("reads {got:?}"))
                }
            },
        )
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let (None, Some(child)) = (self.exit, self.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
