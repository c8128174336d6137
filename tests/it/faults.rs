//! Whose fault is it: an upstream that breaks HTTP makes the client get a 502 (504 when it is
//! late), never the 400 that blames the client; a client that breaks HTTP still gets its 400.
//!
//! The misbehaving upstream here is a raw TCP server: it reads a request head and answers
//! with whatever bytes the request path names, as no real HTTP library would.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::server::Server;
use crate::support::{pool, raw, Proxy};

/// What the upstream answers to `path`, or `None` to close without a word.
fn answer(path: &str) -> Option<Vec<u8>> {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec();
    Some(match path {
        "/ok" => ok,
        "/garbage" => b"THIS IS NOT HTTP AT ALL\r\n\r\n".to_vec(),
        "/binary" => vec![
            0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
        ],
        "/huge-header" => {
            let mut out = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            out.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
            out.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
            out
        }
        "/many-headers" => {
            let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..400 {
                out.extend_from_slice(format!("x-h-{i}: {i}\r\n").as_bytes());
            }
            out.extend_from_slice(b"content-length: 2\r\n\r\nok");
            out
        }
        "/two-lengths" => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nokabc".to_vec()
        }
        "/listed-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 2, 5\r\n\r\nokabc".to_vec(),
        "/bad-length" => b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok".to_vec(),
        "/bad-status" => b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        "/bad-header-name" => {
            b"HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 2\r\n\r\nok".to_vec()
        }
        "/close" => return None,
        _ => ok,
    })
}

/// Read one request head from `stream` and give its path.
async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = req.parse(&buf) {
            return req.path.map(str::to_string);
        }
    }
}

/// An upstream that answers each request with [`answer`] and closes.
async fn start_faulty() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start(
        listener,
        "faulty upstream",
        |mut stream: TcpStream| async move {
            let Some(path) = read_path(&mut stream).await else {
                return;
            };
            if let Some(bytes) = answer(&path) {
                // The proxy may stop reading half way (the 2 MB header): that is its right.
                let _ = stream.write_all(&bytes).await;
            }
            let _ = stream.shutdown().await;
        },
    )
}

fn config(up: SocketAddr) -> String {
    format!(
        "upstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
        pool("pool", &[up.to_string()], &[])
    )
}

async fn get(proxy: &Proxy, path: &str) -> raw::RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw::send(proxy.addr(), req.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_http_is_a_502_not_a_400() {
    let up = start_faulty().await;
    let proxy = Proxy::start(&config(up.addr())).await;

    // Control: a valid answer passes.
    let resp = get(&proxy, "/ok").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"ok");

    for path in [
        "/garbage",
        "/binary",
        "/huge-header",
        "/many-headers",
        "/two-lengths",
        "/listed-lengths",
        "/bad-length",
        "/bad-status",
        "/bad-header-name",
    ] {
        let resp = get(&proxy, path).await;
        assert_eq!(resp.status, 502, "{path}: {resp:?}");
        let body = resp.json();
        assert_eq!(body["error"], "upstream_invalid_response", "{path}: {body}");
        assert!(resp.header("x-request-id").is_some(), "{path}: {resp:?}");
    }
    // No answer at all: the upstream failed, it did not lie.
    let resp = get(&proxy, "/close").await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.json()["error"], "upstream_error");

    // Each is logged as the upstream's fault.
    let lines = crate::support::eventually(
        "eleven access log lines",
        std::time::Duration::from_secs(5),
        || async {
            let lines = proxy.access_lines();
            if lines.len() >= 11 {
                Ok(lines)
            } else {
                Err(format!("{} lines", lines.len()))
            }
        },
    )
    .await;
    let two = lines.iter().find(|l| l["path"] == "/two-lengths").unwrap();
    assert_eq!(two["status"], 502);
    assert_eq!(two["reason"], "upstream_invalid_response");

    // A client that breaks HTTP is still the client's fault, and the proxy still serves.
    let resp = raw::send(
        proxy.addr(),
        b"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    let resp = raw::send(proxy.addr(), b"GET /ok HTTP/1.1\r\nBad Header: x\r\n\r\n").await;
    assert_eq!(resp.status, 400, "{resp:?}");
    let resp = get(&proxy, "/ok").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// A request body the client frames badly (a broken chunk) is the client's fault, even though
/// it is found while proxying to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_breaks_its_body_is_a_400() {
    let up = crate::support::Upstream::start("up").await;
    let proxy = Proxy::start(&config(up.addr())).await;
    let resp = raw::send(
        proxy.addr(),
        b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.json()["error"], "bad_request");
}

/// Pingora reports a client that sends more bytes while its body-less request is proxied as a
/// `ConnectError` from downstream: by its type alone it looks like an upstream that cannot
/// be reached (the 502 it used to get), by its source it is the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_request_are_the_clients_fault() {
    let up = crate::support::Upstream::start("up").await;
    let proxy = Proxy::start(&config(up.addr())).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Request-Id: extra-1\r\nx-delay-ms: 2000\r\n\r\n",
        )
        .await
        .unwrap();
    crate::support::eventually(
        "the request at the upstream",
        std::time::Duration::from_secs(5),
        || async {
            if up.arrivals() == 1 {
                Ok(())
            } else {
                Err(format!("{} arrivals", up.arrivals()))
            }
        },
    )
    .await;
    stream.write_all(b"GET /next HTTP/1.1\r\n").await.unwrap();
    let resp = raw::read_response(&mut stream).await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.json()["error"], "bad_request");
    let line = crate::support::eventually(
        "its access log line",
        std::time::Duration::from_secs(5),
        || async {
            proxy
                .access_lines()
                .into_iter()
                .find(|l| l["request_id"] == "extra-1")
                .ok_or_else(|| "none yet".to_string())
        },
    )
    .await;
    assert_eq!(line["reason"], "bad_request");
}
