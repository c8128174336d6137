//! A fast upstream for load tests: HTTP/1.1 with keep-alive and pipelining, a fixed small
//! `200 ok` to every request, one thread. It parses with httparse and writes a canned answer,
//! so that under `benches/load.rs` the proxy, never the upstream, is the bottleneck.
//!
//! ```sh
//! cargo run --release --example upstream -- --listen 127.0.0.1:8091
//! ```
//!
//! `--listen ADDR` (or `UPSTREAM_LISTEN`; default `127.0.0.1:8091`; port 0 picks one). Prints
//! `listening on ADDR` once bound. With `--tls-listen ADDR --tls-cert PEM --tls-key PEM` it also
//! serves the same over TLS (rustls on ring, TLS 1.2 and 1.3) and prints
//! `tls listening on ADDR`. With `--h2c-listen ADDR` it also serves HTTP/2 by prior knowledge
//! (h2c, the `h2` crate's server) with the same `200 ok`, and prints `h2c listening on ADDR`.
//! HTTP/1.1 requests with a body must give `Content-Length` (the body is read and dropped); a
//! chunked body closes the connection. An HTTP/2 request's body is not read: its stream is
//! answered at once (and reset with `NO_ERROR` if the client is still sending).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
const CLOSE_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
/// Largest request head accepted; larger closes the connection.
const MAX_HEAD: usize = 64 * 1024;

/// What one parse of the buffer found.
enum Parsed {
    /// A whole request head: its length, the body length, and whether to close after it.
    Request {
        head: usize,
        body: usize,
        close: bool,
    },
    /// Not enough bytes yet.
    Partial,
    /// Not HTTP/1.x we can serve.
    Bad,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let mut body = 0;
            let mut close = req.version == Some(0);
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    match std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                    {
                        Some(n) => body = n,
                        None => return Parsed::Bad,
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Parsed::Bad;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    let v = h.value.to_ascii_lowercase();
                    if v.windows(5).any(|w| w == b"close") {
                        close = true;
                    } else if v.windows(10).any(|w| w == b"keep-alive") {
                        close = false;
                    }
                }
            }
            Parsed::Request { head, body, close }
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Parsed::Partial,
        _ => Parsed::Bad,
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // Body bytes still to drop from earlier requests.
    let mut skip = 0usize;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        let mut close = false;
        loop {
            if skip > 0 {
                let take = skip.min(buf.len() - start);
                start += take;
                skip -= take;
                if skip > 0 {
                    break;
                }
            }
            match parse(&buf[start..]) {
                Parsed::Request {
                    head,
                    body,
                    close: c,
                } => {
                    start += head;
                    skip = body;
                    if c {
                        out.extend_from_slice(CLOSE_ANSWER);
                        close = true;
                        break;
                    }
                    out.extend_from_slice(ANSWER);
                }
                Parsed::Partial => break,
                Parsed::Bad => {
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
    }
}

/// Accept on `listener` for ever, each connection through `tls` first when given.
async fn accept(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let _ = match tls {
                        None => serve(stream).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => serve(stream).await,
                            Err(e) => Err(e),
                        },
                    };
                });
            }
            // Out of file descriptors, most likely: wait a little rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// One h2c connection: answer every stream with `200 ok` as it arrives. `accept` drives the
/// connection (its frames both ways), so answering inline needs no task per stream.
async fn serve_h2c(stream: tokio::net::TcpStream) -> Result<(), h2::Error> {
    let mut conn = h2::server::handshake(stream).await?;
    while let Some(request) = conn.accept().await {
        let (_request, mut respond) = request?;
        let answer = http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("content-length", "2")
            .body(())
            .expect("a fixed response");
        let mut body = respond.send_response(answer, false)?;
        body.send_data(bytes::Bytes::from_static(b"ok"), true)?;
    }
    Ok(())
}

/// Accept h2c connections on `listener` for ever.
async fn accept_h2c(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let _ = serve_h2c(stream).await;
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .expect("--tls-cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("--tls-cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("--tls-key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "upstream [--listen ADDR] [--tls-listen ADDR --tls-cert PEM --tls-key PEM] [--h2c-listen ADDR]"
        );
        return;
    }
    let tls = flag(&args, "--tls-listen").map(|addr| {
        let cert = flag(&args, "--tls-cert").expect("--tls-cert");
        let key = flag(&args, "--tls-key").expect("--tls-key");
        (addr, acceptor(&cert, &key))
    });
    let h2c = flag(&args, "--h2c-listen");
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("UPSTREAM_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:8091".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        println!(
            "listening on {}",
            listener.local_addr().expect("local address")
        );
        if let Some((addr, acceptor)) = tls {
            let listener = TcpListener::bind(&addr).await.expect("bind");
            println!(
                "tls listening on {}",
                listener.local_addr().expect("local address")
            );
            tokio::spawn(accept(listener, Some(acceptor)));
        }
        if let Some(addr) = h2c {
            let listener = TcpListener::bind(&addr).await.expect("bind");
            println!(
                "h2c listening on {}",
                listener.local_addr().expect("local address")
            );
            tokio::spawn(accept_h2c(listener));
        }
        accept(listener, None).await;
    });
}
