//! A real HTTP/1.1 upstream on tokio: it answers every request with JSON describing what it
//! received (method, path, headers) and its own name, counts requests, and can be made slow,
//! made to fail its health check, stopped and started again on the same port.
//!
//! Knobs a request can turn through headers (the proxy passes them on):
//! - `x-delay-ms: N`: wait N milliseconds before answering;
//! - `x-want-hop-headers: 1`: add hop-by-hop headers to the response, which the proxy must strip;
//! - `x-want-fingerprint: 1`: answer with `Server` and `X-Powered-By`, as many backends do;
//! - `x-want-cors-headers: 1`: add CORS headers of its own (`*`, with credentials), which the
//!   proxy replaces on routes with `cors:`.
//!
//! [`Upstream::set_fault`] makes it answer a status, reset or hang instead; [`Upstream::received`]
//! then holds every request that arrived, answered or not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::Server;

/// A request as the upstream received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    /// The upstream's name.
    pub upstream: String,
    /// Request method.
    pub method: String,
    /// Request target, as sent (path and query).
    pub path: String,
    /// Headers in the order received, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Request body, as text.
    pub body: String,
}

impl Echo {
    /// Every value of header `name`, joined with `, `; `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// Whether header `name` arrived.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

struct State {
    name: String,
    hits: AtomicUsize,
    arrivals: AtomicUsize,
    health_hits: AtomicUsize,
    health_status: AtomicU16,
    delay_ms: AtomicU64,
    fault: Mutex<Fault>,
    received: Mutex<Vec<Echo>>,
}

/// How the upstream fails every request (health checks excluded) once the delay has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It answers as usual.
    None,
    /// It answers with this status (and its JSON echo).
    Status(u16),
    /// It resets the connection (RST) without answering.
    Reset,
    /// It never answers.
    Hang,
}

/// A running (or stopped) upstream server. Dropping it stops it.
pub struct Upstream {
    server: Server,
    state: Arc<State>,
}

impl Upstream {
    /// Start an upstream named `name` on a free port of 127.0.0.1.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_at(name, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// Start an upstream named `name` on `addr` (port 0: a free one); `Err` when it is taken.
    pub async fn start_at(name: &str, addr: SocketAddr) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(addr).await?;
        let state = Arc::new(State {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            arrivals: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            health_status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            received: Mutex::new(Vec::new()),
        });
        let server = {
            let state = Arc::clone(&state);
            Server::start(listener, "upstream", move |stream| {
                connection(stream, Arc::clone(&state))
            })
        };
        Ok(Upstream { server, state })
    }

    /// Start `n` upstreams named `{prefix}0`, `{prefix}1`, ...
    pub async fn start_many(prefix: &str, n: usize) -> Vec<Upstream> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(Upstream::start(&format!("{prefix}{i}")).await);
        }
        out
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests served, health checks excluded.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests whose head arrived, answered or not yet (a slow one counts at once).
    pub fn arrivals(&self) -> usize {
        self.state.arrivals.load(Ordering::SeqCst)
    }

    /// Health check requests (`GET /healthz`) served.
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// Every request received, health checks excluded.
    pub fn received(&self) -> Vec<Echo> {
        self.state.received.lock().unwrap().clone()
    }

    /// The status `/healthz` answers with (200 at start).
    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Wait this long before answering every request (health checks excluded).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    /// Fail every request (health checks excluded) this way from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// Stop listening and cut every open connection; the port refuses connections when this
    /// returns.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        self.server.restart().await;
    }
}

/// Serve one keep-alive connection until the peer closes it or asks to.
async fn connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Read until a whole head is buffered.
        let (head_len, method, path, headers) = loop {
            let mut header_slots = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut header_slots);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (
                        n,
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        headers,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let content_length: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + content_length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_len..head_len + content_length]).into_owned();
        buf.drain(..head_len + content_length);
        let close = header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));

        let (status, mut extra, payload): (u16, Vec<(&str, &str)>, Vec<u8>) =
            if path.split('?').next() == Some("/healthz") {
                state.health_hits.fetch_add(1, Ordering::SeqCst);
                // Like real HTTP/1.1 servers, refuse a request without Host (RFC 9112 3.2):
                // probes must send one.
                let status = if header("host").is_none() {
                    400
                } else {
                    state.health_status.load(Ordering::SeqCst)
                };
                (status, Vec::new(), b"{\"health\":true}".to_vec())
            } else {
                state.arrivals.fetch_add(1, Ordering::SeqCst);
                let delay = header("x-delay-ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| state.delay_ms.load(Ordering::SeqCst));
                let echo = Echo {
                    upstream: state.name.clone(),
                    method,
                    path,
                    headers: headers.clone(),
                    body,
                };
                let payload = serde_json::to_vec(&echo).unwrap();
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let fault = *state.fault.lock().unwrap();
                state.received.lock().unwrap().push(echo);
                let status = match fault {
                    Fault::None => 200,
                    Fault::Status(status) => status,
                    Fault::Reset => {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    Fault::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                };
                if status == 200 {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                }
                let mut extra = Vec::new();
                if header("x-want-hop-headers").is_some() {
                    extra.extend([
                        ("connection", "x-up-hop"),
                        ("x-up-hop", "must-not-reach-client"),
                        ("keep-alive", "timeout=30"),
                        ("proxy-authenticate", "Basic realm=\"up\""),
                    ]);
                }
                if header("x-want-fingerprint").is_some() {
                    extra.extend([("server", "gunicorn/21.2"), ("x-powered-by", "Express")]);
                }
                if header("x-want-cors-headers").is_some() {
                    extra.extend([
                        ("access-control-allow-origin", "*"),
                        ("access-control-allow-credentials", "true"),
                        ("access-control-expose-headers", "x-upstream"),
                    ]);
                }
                (status, extra, payload)
            };
        if close {
            extra.push(("connection", "close"));
        }
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: {}\r\n",
            reason(status),
            payload.len(),
            state.name
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&payload);
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
