//! A real `redis-server` on a free port of 127.0.0.1, for the cluster-wide rate limits.
//!
//! No persistence (`--save "" --appendonly no`), its files in a temp folder. It can be killed
//! and started again on the same port, as an outage looks to the proxies, or frozen and thawed,
//! as a Redis too slow to answer looks; dropping it kills it.
//!
//! `redis-server` must be on `PATH` (`make deps` installs it). When it is not, the test fails:
//! a cluster test that skipped itself would pass without proving anything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running (or killed) `redis-server`. Dropping it kills the process.
pub struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Start one on a free port and wait until it answers `PING`.
    pub async fn start() -> Redis {
        let mut last = String::new();
        // A port picked as free may be taken before redis-server binds it: try others.
        for _ in 0..4 {
            let mut redis = Redis {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().unwrap(),
            };
            match redis.spawn().await {
                Ok(()) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kill it at once (SIGKILL: no goodbye to its clients), as a crash looks.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze it (SIGSTOP): connections stay open and commands hang, as a Redis too slow to
    /// answer looks.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Let a frozen one go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} redis-server failed");
    }

    /// Start it again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn().await {
                Ok(()) => return,
                // The port may be held for a moment by a connection of the old process.
                Err(e) if Instant::now() > deadline => {
                    panic!("redis-server did not start again on {}: {e}", self.port)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Whether it answers `PING` now.
    pub fn ping(&self) -> bool {
        ping(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// Start the process on `self.port` and wait for `PING`; `Err` when it exits first.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(),
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "exited with {status} on port {}:\n{log}",
                    self.port
                ));
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer to PING on port {} after 10s", self.port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fail the test: without `redis-server` a cluster test proves nothing, so it never skips.
fn missing() -> ! {
    if std::env::var_os("CI").is_some() {
        panic!(
            "redis-server is not on PATH under CI: the cluster rate-limit tests need a real \
             Redis, and `make test` (via `make deps`) must have installed it"
        );
    }
    panic!(
        "redis-server is not on PATH: the cluster rate-limit tests need a real Redis; \
         run `make deps` to install it"
    );
}

/// Send an inline `PING` and expect `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
