//! A real OTLP/HTTP receiver: it takes `POST /v1/traces` with protobuf bodies, decodes each
//! `ExportTraceServiceRequest` with the official `opentelemetry-proto` definitions and keeps
//! every span (and every raw body, to search for what must never be exported). It can be made
//! to hang: it then reads requests and never answers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::Server;

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Got {
    /// `service.name`.
    pub service: String,
    /// The span.
    pub span: Span,
}

impl Got {
    /// Its trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Its span id, 16 hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Its parent's span id, 16 hex digits; empty for a root.
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// Attribute `key` as text (strings as they are, numbers and booleans written out).
    pub fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<Got>>,
    bodies: Mutex<Vec<Vec<u8>>>,
    requests: AtomicUsize,
    hang: AtomicBool,
}

/// The receiver. Dropping it stops it.
pub struct Receiver {
    server: Server,
    state: Arc<State>,
}

impl Receiver {
    /// Listen on a free port of 127.0.0.1.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(State::default());
        let server = {
            let state = Arc::clone(&state);
            Server::start(listener, "otlp receiver", move |stream| {
                answer(stream, Arc::clone(&state))
            })
        };
        Receiver { server, state }
    }

    /// `http://127.0.0.1:port/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.server.addr())
    }

    /// From now on read each request and never answer it.
    pub fn hang(&self) {
        self.state.hang.store(true, Ordering::SeqCst);
    }

    /// Export requests that arrived (answered or not).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Got> {
        self.state.spans.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id` (32 hex digits).
    pub fn trace(&self, trace_id: &str) -> Vec<Got> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_id)
            .collect()
    }

    /// Every request body received, concatenated.
    pub fn raw(&self) -> Vec<u8> {
        self.state.bodies.lock().unwrap().concat()
    }
}

async fn answer(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(8192);
    let (head, length) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                break (n, length);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return,
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < head + length {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    if state.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let body = &buf[head..head + length];
    let (status, reply) = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            state.bodies.lock().unwrap().push(body.to_vec());
            let mut spans = state.spans.lock().unwrap();
            for rs in request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        spans.push(Got {
                            service: service.clone(),
                            span,
                        });
                    }
                }
            }
            (200, "OK")
        }
        Err(_) => (400, "Bad Request"),
    };
    let head = format!(
        "HTTP/1.1 {status} {reply}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
}
