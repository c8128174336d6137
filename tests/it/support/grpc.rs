//! A real gRPC server and client: Python grpcio (`tests/grpc/server.py` and `client.py`),
//! from the venv `make py` makes. The server is a child process killed on drop; the client
//! runs once per batch of calls and reports each call's status, details, responses and
//! metadata as JSON.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The venv's python: `PORTCULLIS_TEST_PYTHON` (the Makefile sets it), or `target/py`.
fn python() -> PathBuf {
    let path = std::env::var_os("PORTCULLIS_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: the gRPC tests need Python grpcio; `make py` installs it",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// A running grpcio server (plaintext HTTP/2) on 127.0.0.1. Dropping it kills it.
pub struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    /// Start one and wait until it listens.
    pub fn start() -> GrpcServer {
        GrpcServer::start_with(&[])
    }

    /// Start one serving TLS (h2 by ALPN) with the PEM certificate chain and key in these
    /// files.
    pub fn start_tls(cert: &Path, key: &Path) -> GrpcServer {
        GrpcServer::start_with(&["--tls".as_ref(), cert.as_os_str(), key.as_os_str()])
    }

    fn start_with(args: &[&std::ffi::OsStr]) -> GrpcServer {
        let mut child = Command::new(python())
            .arg(script("server.py"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the gRPC server said {line:?}"));
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make `calls` (see `tests/grpc/client.py`) in order on one channel to `target`: plaintext
/// HTTP/2, or TLS trusting `ca` for the name `localhost`. One result per call.
pub async fn calls(target: SocketAddr, calls: Value, ca: Option<&Path>) -> Vec<Value> {
    let mut cmd = Command::new(python());
    cmd.arg(script("client.py"))
        .arg(target.to_string())
        .arg(calls.to_string());
    if let Some(ca) = ca {
        cmd.arg("--tls").arg(ca);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the gRPC client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
