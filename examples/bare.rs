//! A bare Pingora proxy: every request goes to one upstream, nothing else happens. It is the
//! floor the framework allows, the baseline `benches/load.rs` measures Portcullis against.
//!
//! ```sh
//! cargo run --release --example bare -- --listen 127.0.0.1:8090 --upstream 127.0.0.1:8091
//! ```
//!
//! Flags (or the environment variables in brackets): `--listen ADDR` (`BARE_LISTEN`, default
//! `127.0.0.1:8090`), `--upstream ADDR` (`BARE_UPSTREAM`, default `127.0.0.1:8091`),
//! `--threads N` (`BARE_THREADS`, default 1), `--upstream-tls SNI` (`BARE_UPSTREAM_TLS`: TLS to
//! the upstream, its certificate checked for SNI against Pingora's default trust, the system's
//! store or `SSL_CERT_FILE`), `--upstream-h2c` (`BARE_UPSTREAM_H2C=1`: HTTP/2 by prior knowledge
//! to a plaintext upstream, as a Portcullis pool with `protocol: h2c` does: ALPN h2 only on the
//! peer, and Portcullis's cap of streams per connection). Pingora's defaults otherwise: same
//! dependency, same features as Portcullis, no settings tuned, so the comparison is like for
//! like.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::server::configuration::ServerConf;

/// The allocator Portcullis runs with, so that the floor differs from Portcullis only in what
/// the proxy does, not in how it allocates.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    /// The SNI of a TLS upstream.
    tls: Option<String>,
    /// HTTP/2 by prior knowledge to a plaintext upstream.
    h2c: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = match &self.tls {
            Some(sni) => HttpPeer::new(self.upstream, true, sni.clone()),
            None => HttpPeer::new(self.upstream, false, String::new()),
        };
        if self.h2c {
            // What `protocol: h2c` sets (`PoolSettings::apply_protocol`): a plaintext peer
            // whose ALPN allows only h2 gets HTTP/2 at once.
            peer.options.alpn = ALPN::H2;
            peer.options.max_h2_streams = portcullis::upstream::MAX_H2_STREAMS;
        }
        Ok(Box::new(peer))
    }
}

/// `--name value` from the command line, else the environment variable, else the default.
fn setting(args: &[String], flag: &str, env: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "bare [--listen ADDR] [--upstream ADDR] [--threads N] [--upstream-tls SNI | --upstream-h2c]"
        );
        return;
    }
    let listen = setting(&args, "--listen", "BARE_LISTEN", "127.0.0.1:8090");
    let upstream: SocketAddr = setting(&args, "--upstream", "BARE_UPSTREAM", "127.0.0.1:8091")
        .parse()
        .expect("--upstream must be ip:port");
    let tls =
        Some(setting(&args, "--upstream-tls", "BARE_UPSTREAM_TLS", "")).filter(|s| !s.is_empty());
    let h2c = args.iter().any(|a| a == "--upstream-h2c")
        || std::env::var("BARE_UPSTREAM_H2C").is_ok_and(|v| v == "1");
    assert!(
        !(h2c && tls.is_some()),
        "--upstream-h2c is plaintext HTTP/2: not with --upstream-tls"
    );
    let threads: usize = setting(&args, "--threads", "BARE_THREADS", "1")
        .parse()
        .expect("--threads must be a number");

    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let wire = match (&tls, h2c) {
        (Some(_), _) => "TLS",
        (None, true) => "h2c",
        (None, false) => "plain",
    };
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream, tls, h2c });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    eprintln!("bare: {listen} -> {upstream} ({wire}), {threads} worker thread(s)");
    server.run_forever();
}
