//! A small RFC 7662 token introspection endpoint on tokio, with the discovery document and
//! key set of its issuer: it answers each token as the test told it (unknown tokens are
//! `{"active": false}`), refuses calls without the expected client credentials (401, as a
//! provider does), counts calls per token, and can fail on purpose: a status, a delay, an
//! answer that is not RFC 7662's, or not listening at all.
//!
//! Every response closes its connection, so a stopped server refuses the very next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::Server;

/// Where tokens are introspected.
pub const INTROSPECT_PATH: &str = "/introspect";

/// How the endpoint misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Answer as told.
    Normal,
    /// Answer every call with this status and an empty JSON object.
    Status(u16),
    /// Answer 200 with this body (not an RFC 7662 answer).
    Body(String),
    /// Answer `307 Temporary Redirect` to this path of the same server, which answers as
    /// [`Mode::Normal`] would.
    Redirect(String),
}

/// One call as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The form fields of the body.
    pub form: HashMap<String, String>,
}

struct State {
    base: String,
    /// The `Basic` credentials a call must carry.
    expected_authorization: String,
    keys: Value,
    answers: Mutex<HashMap<String, Value>>,
    mode: Mutex<Mode>,
    delay_ms: AtomicU64,
    calls: Mutex<Vec<Call>>,
}

/// A running (or stopped) introspection endpoint. Dropping it stops it.
pub struct IntrospectionServer {
    server: Server,
    state: Arc<State>,
}

impl IntrospectionServer {
    /// Serve on a free port of 127.0.0.1, for client `client_id` with `secret`; `keys` is the
    /// issuer's JWKS document (for JWTs on the same routes).
    pub async fn start(client_id: &str, secret: &str, keys: Value) -> IntrospectionServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(client_id),
            form_encode(secret)
        ));
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            expected_authorization: format!("Basic {basic}"),
            keys,
            answers: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Normal),
            delay_ms: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
        });
        let server = {
            let state = Arc::clone(&state);
            Server::start(listener, "introspection server", move |stream| {
                answer(stream, Arc::clone(&state))
            })
        };
        IntrospectionServer { server, state }
    }

    /// `http://127.0.0.1:port`: the issuer URL (its discovery document names this server's
    /// introspection endpoint and key set).
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// The introspection endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}{INTROSPECT_PATH}", self.state.base)
    }

    /// The key set's URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.state.base)
    }

    /// Answer `token` with `answer` (an RFC 7662 JSON object) from now on.
    pub fn set_answer(&self, token: &str, answer: Value) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }

    /// Misbehave (or not) from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Wait this long before answering each call (counted at once, on arrival).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Calls so far that asked about `token`.
    pub fn calls_for(&self, token: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.form.get("token").map(String::as_str) == Some(token))
            .count()
    }

    /// Stop listening and cut every open connection.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        self.server.restart().await;
    }
}

/// `application/x-www-form-urlencoded`, as RFC 6749 section 2.3.1 wants the client id and
/// secret before they are joined.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Read one request (head and body), answer it, then close.
async fn answer(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(2048);
    let (path, authorization, content_type, head_len, body_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_string())
                };
                let length = header("content-length").and_then(|v| v.parse().ok());
                break (
                    req.path.unwrap_or("").to_string(),
                    header("authorization"),
                    header("content-type"),
                    n,
                    length.unwrap_or(0usize),
                );
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return,
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < head_len + body_len {
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[head_len..head_len + body_len];
    let mut extra = String::new();
    let mode = state.mode.lock().unwrap().clone();
    let redirected = matches!(&mode, Mode::Redirect(to) if *to == path);
    let (status, body) = match path.as_str() {
        "/.well-known/openid-configuration" => (
            200,
            json!({
                "issuer": state.base,
                "jwks_uri": format!("{}/jwks.json", state.base),
                "introspection_endpoint": format!("{}{INTROSPECT_PATH}", state.base),
            })
            .to_string(),
        ),
        "/jwks.json" => (200, state.keys.to_string()),
        _ if path == INTROSPECT_PATH || redirected => {
            let form: HashMap<String, String> = url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let token = form.get("token").cloned().unwrap_or_default();
            state.calls.lock().unwrap().push(Call {
                authorization: authorization.clone(),
                content_type,
                form,
            });
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match mode {
                _ if authorization.as_deref() != Some(&state.expected_authorization) => {
                    (401, json!({"error": "invalid_client"}).to_string())
                }
                Mode::Status(status) => (status, "{}".to_string()),
                Mode::Body(body) => (200, body),
                Mode::Redirect(to) if !redirected => {
                    extra = format!("location: {to}\r\n");
                    (307, String::new())
                }
                Mode::Normal | Mode::Redirect(_) => {
                    let answers = state.answers.lock().unwrap();
                    let answer = answers
                        .get(&token)
                        .cloned()
                        .unwrap_or_else(|| json!({"active": false}));
                    (200, answer.to_string())
                }
            }
        }
        _ => (404, "{}".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
