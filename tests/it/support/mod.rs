//! The test harness: real upstream servers, the real binary, a real client.
//!
//! - [`Upstream`]: an HTTP/1.1 server that echoes what it received as JSON.
//! - [`Proxy`]: `portcullis run` on free ports, with its config file, access log and metrics.
//! - [`netns::NetnsServer`]: an HTTP server at a non-loopback address, in a namespace of its own.
//! - [`eventually`]: wait for health checks and reloads instead of sleeping fixed times.
//! - [`Traffic`]: keep-alive clients hammering the proxy, counting every failure.
//! - [`oidc::Provider`]: a real OpenID provider (Node's oidc-provider); [`browser::Browser`]: a
//!   cookie-jar client that follows redirects hop by hop; [`chromium`]: headless Chromium.

pub mod browser;
pub mod chromium;
pub mod dns;
pub mod dockerignore;
pub mod grpc;
pub mod introspection;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod netns;
pub mod oidc;
pub mod otlp;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod server;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use proxy::{free_port, Proxy, BIN};
pub use upstream::{Echo, Upstream};

/// Run `check` until it returns `Ok`, every 50ms, for at most `timeout`; panic with the last
/// error after that.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A client for the proxy and the admin endpoint: no system proxy, bounded waits.
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

/// The builder behind [`client`], to add settings.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
}

/// GET `url` and give the status and the upstream's echo (panics when the body is not one).
pub async fn get_echo(http: &reqwest::Client, url: &str) -> Echo {
    let resp = http.get(url).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not an echo ({e}): {text}"))
}

/// A config with the upstreams in `pool_yaml` (a [`pool`] named `pool` among them) and one
/// route `all` taking every request to `pool`.
pub fn one_route(pool_yaml: &str) -> String {
    format!(
        "upstreams:\n{pool_yaml}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n"
    )
}

/// The YAML for one upstream pool over `targets`, with more settings in `extra` (each line
/// starting at the pool's field indent, e.g. `"balance: random"`).
pub fn pool(name: &str, targets: &[String], extra: &[&str]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let mut s = format!("  - name: {name}\n    targets: [{}]\n", list.join(", "));
    for line in extra {
        for l in line.lines() {
            s.push_str(&format!("    {l}\n"));
        }
    }
    s
}

/// Addresses of `upstreams`, as strings.
pub fn addrs(upstreams: &[Upstream]) -> Vec<String> {
    upstreams.iter().map(|u| u.addr().to_string()).collect()
}

/// `n` upstreams (`u0`, `u1`, ...) as the [`pool`] `pool` with `extra` settings, behind
/// [`one_route`]: the upstreams, and the proxy started over them.
pub async fn pool_behind_proxy(n: usize, extra: &[&str]) -> (Vec<Upstream>, Proxy) {
    let ups = Upstream::start_many("u", n).await;
    let proxy = Proxy::start(&one_route(&pool("pool", &addrs(&ups), extra))).await;
    (ups, proxy)
}

/// Keep-alive clients sending requests in a loop until stopped, counting each outcome.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Start `clients` keep-alive reqwest clients and as many raw HTTP/1.1 connections, each
    /// GETting `path` of `proxy` in a loop until stopped. A failure is anything but a 200
    /// whose body names an upstream; for a raw connection, also its being closed by the
    /// proxy (no connection may be dropped, and reqwest alone would quietly reconnect).
    pub fn start(proxy: &Proxy, path: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
            let url = proxy.url(path);
            tasks.push(tokio::spawn(async move {
                let http = client_builder().pool_max_idle_per_host(1).build().unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match http.get(&url).send().await {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.text().await {
                                Ok(body) if status == 200 && body.contains("\"upstream\"") => {
                                    Ok(())
                                }
                                Ok(body) => Err(format!("{status}: {body}")),
                                Err(e) => Err(format!("{status}: body: {e}")),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    match outcome {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        for _ in 0..clients {
            let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
            let addr = proxy.addr();
            let request = format!("GET {path} HTTP/1.1\r\nHost: traffic.test\r\n\r\n");
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<tokio::net::TcpStream> = None;
                while !stop.load(Ordering::SeqCst) {
                    let stream = match conn.as_mut() {
                        Some(s) => s,
                        None => match tokio::net::TcpStream::connect(addr).await {
                            Ok(s) => conn.insert(s),
                            Err(e) => {
                                failures.lock().unwrap().push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    use tokio::io::AsyncWriteExt;
                    let outcome = match stream.write_all(request.as_bytes()).await {
                        Err(e) => Err(format!("raw write: {e}")),
                        Ok(()) => match raw::try_read_response(stream).await {
                            Err(e) => Err(format!("raw connection broken: {e}")),
                            Ok(r)
                                if r.header("connection").is_some_and(|c| c.contains("close")) =>
                            {
                                Err(format!("the proxy closed a keep-alive connection: {r:?}"))
                            }
                            Ok(r)
                                if r.status == 200
                                    && String::from_utf8_lossy(&r.body)
                                        .contains("\"upstream\"") =>
                            {
                                Ok(())
                            }
                            Ok(r) => Err(format!("raw: {r:?}")),
                        },
                    };
                    match outcome {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            conn = None;
                        }
                    }
                }
            }));
        }
        Traffic {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Requests that succeeded so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Wait until `n` more requests succeeded (so traffic is really flowing).
    pub async fn wait_for_more(&self, n: usize) {
        let start = self.ok();
        eventually("traffic to flow", Duration::from_secs(10), || async {
            if self.ok() >= start + n {
                Ok(())
            } else {
                Err(format!(
                    "{} ok, {:?}",
                    self.ok() - start,
                    self.failures.lock().unwrap()
                ))
            }
        })
        .await;
    }

    /// Stop every client; give (successes, failures).
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

/// An address that accepts no connection and refuses none: its accept queue is full, so a
/// SYN goes unanswered and a connect hangs until the connecting side gives up. The way to
/// test connect timeouts on 127.0.0.1.
pub struct Blackhole {
    addr: std::net::SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

impl Blackhole {
    /// Make one.
    pub fn new() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Backlog 0: Linux queues one connection, then drops further SYNs.
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => queued.push(s),
                Err(_) => {
                    return Blackhole {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    }
                }
            }
        }
        panic!("the accept queue of {addr} never filled up");
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}
