//! Request body limits (`max_body_bytes`; issue 18 part C): a `Content-Length` over the limit
//! is refused with 413 before any upstream connection; a chunked body (or an HTTP/2 body
//! without `content-length`) is cut at the limit: 413 while the upstream has not answered,
//! and the upstream's connection is closed before the body ends; a body that fits arrives
//! byte-exact; `0` is no limit; the top-level value is the default a route can override.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::proxy::ProxyBuilder;
use crate::support::{eventually, raw, Proxy};

/// What the recording upstream saw on one connection.
#[derive(Clone, Default)]
struct Conn {
    /// Request heads that arrived.
    heads: usize,
    /// Body bytes of the current (last) request, decoded from its framing.
    body: Vec<u8>,
    /// Requests whose body arrived whole (and were answered).
    complete: usize,
    /// The connection ended while a request body was still coming.
    cut: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("heads", &self.heads)
            .field("body_len", &self.body.len())
            .field("complete", &self.complete)
            .field("cut", &self.cut)
            .finish()
    }
}

/// An HTTP/1.1 upstream that records every connection and every body byte as it arrives, and
/// answers only once a body is whole: `200` with the body's length as text.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    /// The bodies of the requests answered, in order.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&conns);
        let done = Arc::clone(&bodies);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conns = Arc::clone(&shared);
                let done = Arc::clone(&done);
                let i = {
                    let mut c = conns.lock().unwrap();
                    c.push(Conn::default());
                    c.len() - 1
                };
                tokio::spawn(serve(stream, conns, done, i));
            }
        });
        Recorder {
            addr,
            conns,
            bodies,
            task,
        }
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }

    /// The body of the last request answered.
    fn last_body(&self) -> Vec<u8> {
        self.bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Wait until the last connection has `n` body bytes of its current request.
    async fn wait_body(&self, n: usize) {
        eventually("body bytes upstream", Duration::from_secs(10), || async {
            let got = self.conns().last().map_or(0, |c| c.body.len());
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} bytes"))
            }
        })
        .await;
    }

    /// Wait until the last connection is cut, and give what it saw.
    async fn wait_cut(&self) -> Conn {
        eventually(
            "the upstream connection cut",
            Duration::from_secs(10),
            || async {
                match self.conns().last() {
                    Some(c) if c.cut => Ok(c.clone()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    }
}

async fn serve(
    mut stream: TcpStream,
    conns: Arc<Mutex<Vec<Conn>>>,
    answered: Arc<Mutex<Vec<Vec<u8>>>>,
    i: usize,
) {
    let mut buf = Vec::new();
    let update = |f: &mut dyn FnMut(&mut Conn)| f(&mut conns.lock().unwrap()[i]);
    // Read more into `buf`; false at the end of the stream.
    async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    loop {
        let (head_len, length, chunked) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut slots);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let get = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                };
                let length = get("content-length").and_then(|v| v.trim().parse().ok());
                let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                break (n, length.unwrap_or(0), chunked);
            }
            if !more(&mut stream, &mut buf).await {
                return;
            }
        };
        buf.drain(..head_len);
        update(&mut |c| {
            c.heads += 1;
            c.body.clear();
        });
        // The body, recorded as it arrives.
        let done = if chunked {
            let mut ok = false;
            'chunks: loop {
                let line_end = loop {
                    if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    if !more(&mut stream, &mut buf).await {
                        break 'chunks;
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
                buf.drain(..line_end + 2);
                if size == 0 {
                    while buf.len() < 2 {
                        if !more(&mut stream, &mut buf).await {
                            break 'chunks;
                        }
                    }
                    buf.drain(..2);
                    ok = true;
                    break;
                }
                let mut left = size;
                while left > 0 {
                    if buf.is_empty() && !more(&mut stream, &mut buf).await {
                        break 'chunks;
                    }
                    let take = left.min(buf.len());
                    let piece: Vec<u8> = buf.drain(..take).collect();
                    update(&mut |c| c.body.extend_from_slice(&piece));
                    left -= take;
                }
                while buf.len() < 2 {
                    if !more(&mut stream, &mut buf).await {
                        break 'chunks;
                    }
                }
                buf.drain(..2);
            }
            ok
        } else {
            let mut left = length;
            let mut ok = true;
            while left > 0 {
                if buf.is_empty() && !more(&mut stream, &mut buf).await {
                    ok = false;
                    break;
                }
                let take = left.min(buf.len());
                let piece: Vec<u8> = buf.drain(..take).collect();
                update(&mut |c| c.body.extend_from_slice(&piece));
                left -= take;
            }
            ok
        };
        if !done {
            update(&mut |c| c.cut = true);
            return;
        }
        let body = conns.lock().unwrap()[i].body.clone();
        let len = body.len().to_string();
        answered.lock().unwrap().push(body);
        update(&mut |c| c.complete += 1);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{len}",
            len.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A proxy with `top` (top-level lines, such as `max_body_bytes: 1000`) over one recorder:
/// route `limited` (`/limited`, the top-level limit), `own` (`/own`, 5000), `open` (`/open`, 0).
async fn limited(
    top: &str,
    builder: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
) -> (Proxy, Recorder) {
    let up = Recorder::start().await;
    let body = format!(
        "{top}upstreams:\n  - name: rec\n    targets: [\"{}\"]\nroutes:\n  \
         - name: limited\n    match: {{ path_prefix: /limited }}\n    upstream: rec\n  \
         - name: own\n    match: {{ path_prefix: /own }}\n    upstream: rec\n    max_body_bytes: 5000\n  \
         - name: open\n    match: {{ path_prefix: /open }}\n    upstream: rec\n    max_body_bytes: 0\n",
        up.addr
    );
    (builder(Proxy::builder(&body)).start().await, up)
}

/// Bytes 0, 1, ... 255, 0, ... of length `n` (every byte value, so a changed byte shows).
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A POST with a `Content-Length` body, on its own connection; the response. The body is
/// written while the response is read, so a refusal mid-body is read, not a broken pipe.
async fn post(proxy: &Proxy, path: &str, body: &[u8]) -> raw::RawResponse {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&req).await;
        write
    });
    let resp = read_response(&mut read).await;
    drop(writer.await);
    resp
}

/// One response from a read half (`raw::read_response` needs the whole stream).
async fn read_response(read: &mut tokio::net::tcp::OwnedReadHalf) -> raw::RawResponse {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut buf))
        .await
        .expect("no response within 30s")
        .unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("no response: {other:?} {}", String::from_utf8_lossy(&buf)),
    };
    raw::RawResponse {
        status: resp.code.unwrap(),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: buf[n..].to_vec(),
    }
}

/// The head of a POST announcing a `length`-byte body, and nothing more: the response.
async fn announce(proxy: &Proxy, path: &str, length: usize) -> raw::RawResponse {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    raw::send(proxy.addr(), head.as_bytes()).await
}

/// Open a chunked POST to `path`: the head only.
async fn chunked_start(proxy: &Proxy, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

async fn chunk(s: &mut TcpStream, data: &[u8]) {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    // The proxy may have answered and closed already: a failed write is not the test's.
    let _ = s.write_all(&out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_is_refused_before_any_upstream_connection() {
    let (proxy, up) = limited("max_body_bytes: 1000\n", |b| b).await;
    // Refused on the head alone: the body is never waited for.
    let resp = announce(&proxy, "/limited", 1001).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "body_too_large");
    // The route's own limit over the top-level one.
    assert_eq!(announce(&proxy, "/own", 5001).await.status, 413);
    assert_eq!(post(&proxy, "/own", &payload(5001)).await.status, 413);
    assert_eq!(
        up.conns().len(),
        0,
        "no upstream connection: {:?}",
        up.conns()
    );
    let lines = proxy
        .wait_access_until("three refusals logged", |lines| {
            lines
                .iter()
                .filter(|l| l["reason"] == "body_too_large")
                .count()
                == 3
        })
        .await;
    assert!(lines.iter().all(|l| l["status"] == 413), "{lines:?}");
    assert_eq!(
        proxy
            .metric(
                "portcullis_requests_total",
                &[("route", "limited"), ("code", "413")]
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_fit_pass_byte_exact_and_zero_is_no_limit() {
    let (proxy, up) = limited("max_body_bytes: 1000\n", |b| b).await;
    let exact = payload(1000);
    let resp = post(&proxy, "/limited", &exact).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"1000"[..]));
    assert_eq!(up.last_body(), exact);
    // Chunked, exactly at the limit, in uneven pieces.
    let mut s = chunked_start(&proxy, "/limited").await;
    for piece in exact.chunks(333) {
        chunk(&mut s, piece).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = raw::read_response(&mut s).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"1000"[..]));
    assert_eq!(up.last_body(), exact);
    // The route's own limit is above the top-level one.
    let big = payload(5000);
    assert_eq!(post(&proxy, "/own", &big).await.status, 200);
    assert_eq!(up.last_body(), big);
    // `0`: no limit at all.
    let huge = payload(3 << 20);
    let resp = post(&proxy, "/open", &huge).await;
    assert_eq!(resp.status, 200);
    assert!(up.last_body() == huge, "{} bytes", up.last_body().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limit_is_ten_mebibytes() {
    let (proxy, up) = limited("", |b| b).await;
    let resp = post(&proxy, "/limited", &payload(10 << 20)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_body().len(), 10 << 20);
    assert_eq!(
        post(&proxy, "/limited", &payload((10 << 20) + 1))
            .await
            .status,
        413
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_cut_with_413() {
    let (proxy, up) = limited("max_body_bytes: 1000\n", |b| b).await;
    // Over in its first chunk: no body byte goes upstream.
    let mut s = chunked_start(&proxy, "/limited").await;
    chunk(&mut s, &payload(1001)).await;
    let resp = raw::read_response(&mut s).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "body_too_large");
    let seen = up.wait_cut().await;
    assert_eq!((seen.heads, seen.body.len(), seen.complete), (1, 0, 0));

    // Over after 600 bytes went upstream: the upstream's connection is closed mid-body.
    let mut s = chunked_start(&proxy, "/limited").await;
    chunk(&mut s, &payload(600)).await;
    up.wait_body(600).await;
    chunk(&mut s, &payload(600)).await;
    let resp = raw::read_response(&mut s).await;
    assert_eq!(resp.status, 413);
    let seen = up.wait_cut().await;
    assert_eq!((seen.body.len(), seen.complete), (600, 0));
    assert_eq!(up.conns().len(), 2, "{:?}", up.conns());
}

/// HTTP/2 from the client (h2c listener), a body without `content-length`: counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_is_counted_and_cut() {
    let (proxy, up) = limited("max_body_bytes: 1000\n", |b| b.listener("h2c: true")).await;
    let send = |path: &'static str, pieces: Vec<Vec<u8>>| {
        let addr = proxy.addr();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let req = http::Request::post(format!("http://t{path}"))
                .body(())
                .unwrap();
            let (response, mut stream) = client.send_request(req, false).unwrap();
            for piece in pieces {
                // Refused midway: the stream may be reset before all is sent.
                let _ = stream.send_data(piece.into(), false);
            }
            let _ = stream.send_data(bytes::Bytes::new(), true);
            let resp = response.await.unwrap();
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(Ok(data)) = body.data().await {
                text.extend_from_slice(&data);
            }
            (status, String::from_utf8_lossy(&text).to_string())
        }
    };
    let exact = payload(1000);
    let (status, text) = send(
        "/limited",
        vec![exact[..400].to_vec(), exact[400..].to_vec()],
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "1000"));
    assert_eq!(up.last_body(), exact);
    let (status, text) = send("/limited", vec![payload(700), payload(700)]).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    // Nothing over the limit reached the upstream, and only the first request completed there.
    let conns = up.conns();
    assert!(conns.iter().all(|c| c.body.len() <= 1000), "{conns:?}");
    assert_eq!(
        conns.iter().map(|c| c.complete).sum::<usize>(),
        1,
        "{conns:?}"
    );
}

/// A retry after the first target reset the exchange replays the body (Pingora's retry buffer)
/// through the count again: it starts from zero at each attempt, so a body that fits still fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_body_is_counted_once() {
    use crate::support::upstream::Fault;
    use crate::support::{addrs, pool, Upstream};
    let ups = Upstream::start_many("u", 2).await;
    ups[0].set_fault(Fault::Reset);
    let body = format!(
        "max_body_bytes: 1000\nupstreams:\n{}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    \
         upstream: pool\n    retry: {{ idempotent_only: false }}\n",
        pool("pool", &addrs(&ups), &[])
    );
    let proxy = Proxy::start(&body).await;
    let text: String = (0..800)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let http = crate::support::client();
    for _ in 0..4 {
        let resp = http
            .post(proxy.url("/upload"))
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    // Some first attempts met the reset after the whole body had gone there.
    assert!(!ups[0].received().is_empty());
    assert!(ups[1].received().iter().all(|e| e.body == text));
}
