//! A host that is not loopback, of the test's own making: a network namespace joined to this
//! one by a veth pair, with a real HTTP server (python3's `http.server`) inside serving files.
//!
//! Tests may send traffic only to loopback or into a namespace they create; this is that
//! namespace. Its /30 is drawn from 198.18.0.0/15 (RFC 2544, benchmarking) anew for each
//! server, and its names carry the process id and a counter, so parallel tests and runs do not
//! meet. Dropping the server stops python and deletes the veth pair and the namespace.
//!
//! Needs root and iproute2's `ip netns`; without them the test fails saying so, never passes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::eventually;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The port the server listens on inside its namespace (the namespace is its own).
const PORT: u16 = 8000;

/// An HTTP server at a non-loopback address in a namespace of its own.
pub struct NetnsServer {
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
    python: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Run `ip args`; panic with a clear message when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("this test needs iproute2's `ip` (network namespaces): cannot run `ip`: {e}")
    });
    assert!(
        out.status.success(),
        "this test needs `ip netns` and veth pairs (root, iproute2): `ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A /30 of 198.18.0.0/15 no interface here uses yet: (host side, namespace side).
fn free_pair() -> (Ipv4Addr, Ipv4Addr) {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    loop {
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + fastrand::u32(0..1 << 15) * 4;
        let (host, ns) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        if !used.contains(&format!(" {host}/")) && !used.contains(&format!(" {ns}/")) {
            return (host, ns);
        }
    }
}

impl NetnsServer {
    /// Serve `files` (path under the root, content) at `http://ADDR:8000/` inside a new
    /// namespace; returns once the server answers.
    pub async fn start(files: &[(&str, &str)]) -> NetnsServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root).unwrap();
        for (path, content) in files {
            let file = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (host_addr, addr) = free_pair();
        // Interface names have at most 15 bytes.
        let tag = format!("{:x}x{n:x}", pid % 0x10_0000);
        let mut server = NetnsServer {
            ns: format!("portcullis-it-{pid}-{n}"),
            host_if: format!("pch{tag}"),
            addr,
            python: None,
            log: dir.path().join("http.log"),
            _dir: dir,
        };
        let ns_if = format!("pcn{tag}");
        ip(&["netns", "add", &server.ns]);
        ip(&[
            "link",
            "add",
            &server.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            &server.ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &server.host_if,
        ]);
        ip(&["link", "set", &server.host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", server.ns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["addr", "add", &format!("{addr}/30"), "dev", &ns_if]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);

        let log = std::fs::File::create(&server.log).unwrap();
        let python = Command::new("ip")
            .args([
                "netns",
                "exec",
                &server.ns,
                "python3",
                "-u",
                "-m",
                "http.server",
            ])
            .args([
                "--bind",
                &addr.to_string(),
                &PORT.to_string(),
                "--directory",
            ])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3's http.server in a namespace: {e}"));
        server.python = Some(python);
        let to = SocketAddr::from((addr, PORT));
        eventually(
            "the namespace's HTTP server",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(to)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        server
    }

    /// `http://ADDR:8000{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{PORT}{path}", self.addr)
    }

    /// HTTP requests the server has logged (python logs every one it answers).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") || l.contains("\"HEAD "))
            .count()
    }
}

impl Drop for NetnsServer {
    fn drop(&mut self) {
        if let Some(mut python) = self.python.take() {
            let _ = python.kill();
            let _ = python.wait();
        }
        // Deleting one end of a veth pair deletes both; the namespace goes last.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
