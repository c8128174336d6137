//! Active health checks of upstream targets.
//!
//! One background task walks the pools of the config now serving and starts a probe for each
//! target whose interval has passed. Probes are pingora-load-balancing's TCP and HTTP checks;
//! the thresholds and the state are ours ([`super::Target`]), so they survive reloads. Probes
//! never touch client requests.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Pool, Target};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process's health clock started.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// How a pool's targets are probed.
pub struct HealthProbe {
    /// One check for each target as written (HTTP, its `Host`), or one shared by all (TCP,
    /// or HTTP with a fixed Host, written `""`).
    checks: Vec<(String, Box<dyn HealthCheck + Send + Sync>)>,
    /// Time between probes of one target.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Successes in a row that make a target healthy.
    pub healthy_after: usize,
    /// Failures in a row that make a target unhealthy.
    pub unhealthy_after: usize,
}

/// The kind of probe.
pub enum ProbeKind {
    /// Open a TCP connection.
    Tcp,
    /// `GET path` and expect `status`.
    Http {
        /// Path to request.
        path: String,
        /// Status that counts as healthy.
        status: u16,
        /// Host header; the target address when `None`.
        host: Option<String>,
    },
}

impl HealthProbe {
    /// Build a probe for a pool whose targets are written as `targets`. An HTTP probe without
    /// a configured host sends each target its own address as `Host`, as HTTP/1.1 requires.
    /// With `tls`, an HTTP probe speaks HTTPS with the pool's own TLS settings (SNI, trust,
    /// client certificate), one check per target so that each gets the SNI its requests get.
    ///
    /// # Errors
    /// A message when the HTTP probe's path or host cannot form a request.
    pub fn new(
        kind: ProbeKind,
        interval: Duration,
        timeout: Duration,
        healthy_after: usize,
        unhealthy_after: usize,
        targets: &[String],
        tls: Option<&super::tls::UpstreamTls>,
    ) -> Result<HealthProbe, String> {
        let checks: Vec<(String, Box<dyn HealthCheck + Send + Sync>)> = match kind {
            ProbeKind::Tcp => {
                let mut tcp = TcpHealthCheck::new();
                tcp.peer_template.options.connection_timeout = Some(timeout);
                tcp.peer_template.options.total_connection_timeout = Some(timeout);
                vec![(String::new(), tcp)]
            }
            ProbeKind::Http { path, status, host } => match (host, tls) {
                (Some(host), None) => {
                    vec![(
                        String::new(),
                        http_check(&path, status, &host, timeout, None)?,
                    )]
                }
                (host, tls) => targets
                    .iter()
                    .map(|t| {
                        // Pingora puts each target's address in place of this one.
                        let peer = tls.map(|tls| tls.peer(([0, 0, 0, 0], 1).into(), t));
                        let host = host.as_deref().unwrap_or(t);
                        Ok((t.clone(), http_check(&path, status, host, timeout, peer)?))
                    })
                    .collect::<Result<_, String>>()?,
            },
        };
        Ok(HealthProbe {
            checks,
            interval,
            timeout,
            healthy_after,
            unhealthy_after,
        })
    }

    /// The check for a target written `written`.
    fn check_for(&self, written: &str) -> Option<&(dyn HealthCheck + Send + Sync)> {
        self.checks
            .iter()
            .find(|(w, _)| w == written)
            .or_else(|| self.checks.first())
            .map(|(_, c)| &**c)
    }
}

fn http_check(
    path: &str,
    status: u16,
    host: &str,
    timeout: Duration,
    tls_peer: Option<pingora::prelude::HttpPeer>,
) -> Result<Box<dyn HealthCheck + Send + Sync>, String> {
    let mut check = HttpHealthCheck::new(host, false);
    if let Some(peer) = tls_peer {
        check.peer_template = peer;
    }
    check.peer_template.options.connection_timeout = Some(timeout);
    check.peer_template.options.read_timeout = Some(timeout);
    check.req = pingora::http::RequestHeader::build("GET", path.as_bytes(), None)
        .map_err(|e| format!("invalid health check path `{path}`: {e}"))?;
    check
        .req
        .insert_header("Host", host)
        .map_err(|e| format!("invalid health check host `{host}`: {e}"))?;
    check
        .req
        .insert_header("User-Agent", "portcullis-health-check")
        .map_err(|e| e.to_string())?;
    check.validator = Some(Box::new(move |resp| {
        if resp.status.as_u16() == status {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::Custom("unexpected status"),
                format!("status {} (expected {status})", resp.status.as_u16()),
            )
        }
    }));
    Ok(Box::new(check))
}

/// Probe `target` of `pool` once and record the result.
async fn probe(pool: Arc<Pool>, target: Arc<Target>) {
    let Some(probe) = pool.probe.as_ref() else {
        target.probing.store(false, Ordering::Release);
        return;
    };
    let backend = Backend {
        addr: PeerAddr::Inet(target.addr),
        weight: 1,
        ext: Default::default(),
    };
    let ok = match probe.check_for(&target.written) {
        Some(check) => matches!(
            tokio::time::timeout(probe.timeout, check.check(&backend)).await,
            Ok(Ok(()))
        ),
        None => false,
    };
    if let Some(healthy) = target.observe(ok, probe.healthy_after, probe.unhealthy_after) {
        if healthy {
            tracing::info!(upstream = %pool.name, target = %target.label, "target is healthy again");
        } else {
            tracing::warn!(upstream = %pool.name, target = %target.label, "target is unhealthy");
        }
    }
    target
        .next_probe_ms
        .store(now_ms() + millis(probe.interval), Ordering::Relaxed);
    target.probing.store(false, Ordering::Release);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The background service that runs every pool's probes.
pub struct HealthSupervisor {
    pools: Arc<arc_swap::ArcSwap<Vec<Arc<Pool>>>>,
    tick: Duration,
}

impl HealthSupervisor {
    /// Probe `pools`, as each reload publishes them.
    pub fn new(pools: Arc<arc_swap::ArcSwap<Vec<Arc<Pool>>>>) -> Self {
        Self {
            pools,
            tick: Duration::from_millis(100),
        }
    }

    /// Start every probe that is due now.
    pub fn run_due_probes(&self) {
        let pools = self.pools.load();
        let now = now_ms();
        for pool in pools.iter() {
            if pool.probe.is_none() {
                continue;
            }
            // The members now: targets a DNS change added are probed from their first tick.
            for target in &pool.members().targets {
                if target.next_probe_ms.load(Ordering::Relaxed) > now {
                    continue;
                }
                if target
                    .probing
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                tokio::spawn(probe(Arc::clone(pool), Arc::clone(target)));
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthSupervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => self.run_due_probes(),
            }
        }
    }
}
