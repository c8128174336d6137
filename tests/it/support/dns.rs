//! A real DNS server for the tests: Debian's `dnsmasq` on 127.0.0.1 and a free port, answering
//! only from a hosts file of the test's own (`--no-resolv --no-hosts --addn-hosts`), which it
//! reads again on SIGHUP. `make deps` installs it (`dnsmasq-base`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::{eventually, free_port};

/// The binary: `/usr/sbin` is not on every user's `PATH`.
fn binary() -> String {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("dnsmasq")
        .to_string()
}

/// A running dnsmasq. Dropping it kills it.
pub struct Dnsmasq {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Dnsmasq {
    /// Start one answering `entries` (`(ip, name)` pairs) with TTL 0, and wait until it
    /// answers.
    pub async fn start(entries: &[(&str, &str)]) -> Dnsmasq {
        Dnsmasq::start_with_ttl(entries, 0).await
    }

    /// The same, its answers carrying a TTL of `ttl` seconds.
    pub async fn start_with_ttl(entries: &[(&str, &str)], ttl: u32) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq drops to `nobody` after start: its files must be readable by anyone.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut dns = Dnsmasq {
            child: None,
            dir,
            port: 0,
        };
        dns.write_hosts(entries);
        for _ in 0..4 {
            dns.port = free_port();
            let mut child = Command::new(binary())
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--log-facility=-",
                ])
                .arg(format!(
                    "--pid-file={}",
                    dns.dir.path().join("pid").display()
                ))
                .arg(format!("--port={}", dns.port))
                .arg(format!("--local-ttl={ttl}"))
                .arg(format!("--addn-hosts={}", dns.hosts().display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (apt-get install dnsmasq-base; `make deps` does)");
            tokio::time::sleep(Duration::from_millis(50)).await;
            if child.try_wait().unwrap().is_none() {
                dns.child = Some(child);
                break;
            }
        }
        assert!(dns.child.is_some(), "dnsmasq did not start");
        if let Some((_, name)) = entries.first() {
            let ips: Vec<&str> = entries
                .iter()
                .filter(|(_, n)| n == name)
                .map(|(ip, _)| *ip)
                .collect();
            dns.wait_answer(name, &ips).await;
        }
        dns
    }

    /// `127.0.0.1:port`, for `server.dns.nameservers`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn hosts(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, entries: &[(&str, &str)]) {
        let text: String = entries
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        let tmp = self.dir.path().join("hosts.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::rename(tmp, self.hosts()).unwrap();
    }

    /// Answer `entries` from now on (the file is rewritten, then SIGHUP), and wait until a
    /// lookup of `name` gives exactly `ips`.
    pub async fn set(&self, entries: &[(&str, &str)], name: &str, ips: &[&str]) {
        self.write_hosts(entries);
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_answer(name, ips).await;
    }

    /// Wait until a lookup of `name` here gives exactly `ips` (empty: no address).
    pub async fn wait_answer(&self, name: &str, ips: &[&str]) {
        let mut want: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        want.sort_unstable();
        let resolver = self.resolver();
        eventually(
            &format!("dnsmasq to answer {name} with {ips:?}"),
            Duration::from_secs(10),
            || async {
                let mut got: Vec<IpAddr> = match resolver.lookup_ip(name).await {
                    Ok(found) => found.iter().collect(),
                    Err(_) => Vec::new(),
                };
                got.sort_unstable();
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await;
    }

    fn resolver(&self) -> TokioResolver {
        let group =
            NameServerConfigGroup::from(vec![NameServerConfig::new(self.addr(), Protocol::Udp)]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        );
        builder.options_mut().cache_size = 0;
        builder.options_mut().timeout = Duration::from_millis(500);
        builder.options_mut().ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        builder.build()
    }

    /// Kill it: the port stops answering.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
