//! A real identity provider's key endpoint on tokio: it serves `/jwks.json` and
//! `/.well-known/openid-configuration`, counts every fetch per path, and can swap its key set
//! (rotation), answer slowly, send `Cache-Control: max-age`, name another issuer in its
//! discovery document, answer a path with a redirect, stop listening and come back on the
//! same port.
//!
//! Every response closes its connection, so a stopped server refuses the very next fetch
//! instead of leaving a pooled connection behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::Server;

/// Where the key set is served.
pub const JWKS_PATH: &str = "/jwks.json";
/// Where the discovery document is served.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The public JWK of PEM private key `pem` under `kid`, without `alg` (so an RSA key verifies
/// both RS* and PS*; the other types have one algorithm anyway).
pub fn jwk(pem: &str, kid: &str) -> Value {
    portcullis::auth::tools::public_jwk(pem, kid, false).unwrap()
}

/// A JWKS document of `(pem, kid)` pairs.
pub fn key_set(keys: &[(&str, &str)]) -> Value {
    json!({ "keys": keys.iter().map(|(pem, kid)| jwk(pem, kid)).collect::<Vec<_>>() })
}

struct State {
    base: String,
    keys: Mutex<Value>,
    /// The `issuer` the discovery document names; `None`: the server's own base URL.
    discovery_issuer: Mutex<Option<String>>,
    max_age: Mutex<Option<u64>>,
    /// Paths answered with `302 Found` to this location instead.
    redirects: Mutex<HashMap<String, String>>,
    delay_ms: AtomicU64,
    fetches: Mutex<HashMap<String, usize>>,
}

/// A running (or stopped) key server. Dropping it stops it.
pub struct JwksServer {
    server: Server,
    state: Arc<State>,
}

impl JwksServer {
    /// Serve `keys` (a JWKS document) on a free port of 127.0.0.1.
    pub async fn start(keys: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            keys: Mutex::new(keys),
            discovery_issuer: Mutex::new(None),
            max_age: Mutex::new(None),
            redirects: Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            fetches: Mutex::new(HashMap::new()),
        });
        let server = {
            let state = Arc::clone(&state);
            Server::start(listener, "key server", move |stream| {
                answer(stream, Arc::clone(&state))
            })
        };
        JwksServer { server, state }
    }

    /// `http://127.0.0.1:port`: the issuer URL for discovery.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// The key set's URL.
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.state.base)
    }

    /// Serve `keys` from now on.
    pub fn set_keys(&self, keys: Value) {
        *self.state.keys.lock().unwrap() = keys;
    }

    /// Name `issuer` in the discovery document instead of the server's own URL.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        *self.state.discovery_issuer.lock().unwrap() = Some(issuer.to_string());
    }

    /// Send `Cache-Control: max-age=N` with the key set (`None`: no such header).
    pub fn set_max_age(&self, seconds: Option<u64>) {
        *self.state.max_age.lock().unwrap() = seconds;
    }

    /// Answer `path` with `302 Found` to `location` from now on (`None`: serve it again).
    pub fn set_redirect(&self, path: &str, location: Option<&str>) {
        let mut redirects = self.state.redirects.lock().unwrap();
        match location {
            Some(l) => redirects.insert(path.to_string(), l.to_string()),
            None => redirects.remove(path),
        };
    }

    /// Wait this long before answering each request (counted at once, on arrival).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    /// Requests for `path` so far.
    pub fn fetches(&self, path: &str) -> usize {
        self.state
            .fetches
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests for the key set so far.
    pub fn jwks_fetches(&self) -> usize {
        self.fetches(JWKS_PATH)
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

/// Read one request head and answer it, then close.
async fn answer(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(2048);
    let path = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("").to_string(),
            Ok(httparse::Status::Partial) => {}
            Err(_) => return,
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let path = path.split('?').next().unwrap_or("").to_string();
    *state
        .fetches
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut extra = String::new();
    let redirect = state.redirects.lock().unwrap().get(&path).cloned();
    let (status, body) = match path.as_str() {
        _ if redirect.is_some() => {
            extra = format!("location: {}\r\n", redirect.as_deref().unwrap_or(""));
            (302, String::new())
        }
        JWKS_PATH => {
            if let Some(age) = *state.max_age.lock().unwrap() {
                extra = format!("cache-control: public, max-age={age}\r\n");
            }
            (200, state.keys.lock().unwrap().to_string())
        }
        DISCOVERY_PATH => {
            let issuer = state
                .discovery_issuer
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| state.base.clone());
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{}{JWKS_PATH}", state.base),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            (200, doc.to_string())
        }
        _ => (404, "{\"error\":\"not found\"}".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        match status {
            200 => "OK",
            302 => "Found",
            _ => "Not Found",
        },
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
