//! Host-name targets: their last resolved addresses ([`Name`]) and the background service
//! that resolves them again when due ([`DnsRefresher`]).
//!
//! Compiling a config never resolves: a name starts with no address and its pool has no
//! member for it until the first lookup answers. Lookups go through hickory-resolver on the
//! service's tokio runtime, never a blocking `getaddrinfo` on a worker, and never on the
//! request path. A name is looked up again after its pool's `dns_refresh` or the answer's
//! TTL, whichever is shorter, and never sooner than [`MIN_REFRESH`]; a failed lookup keeps
//! the last good addresses and is tried again after [`RETRY_AFTER_FAILURE`] at most.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Pool;
use crate::metrics::METRICS;

/// No name is looked up more often than this, whatever its TTL or `dns_refresh`.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// A failed lookup is tried again after this, or after `dns_refresh` when shorter.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Longest a lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A host-name target of a pool, with its last resolved addresses. It lives across reloads
/// while its pool, host and port stay (its [`Carry`](crate::carry::Carry) key), so a reload
/// does not empty a pool.
pub struct Name {
    pool: String,
    /// The host name, lowercase.
    pub host: String,
    /// The port its addresses serve on.
    pub port: u16,
    /// `host:port`, the `name` label of its metrics.
    pub label: String,
    addrs: ArcSwap<Vec<IpAddr>>,
    /// One more each time `addrs` changes.
    version: AtomicU64,
    /// Milliseconds since [`EPOCH`] when the next lookup is due.
    due_ms: AtomicU64,
    resolving: AtomicBool,
}

impl Name {
    /// A name not resolved yet, due for a lookup now.
    pub fn new(pool: String, host: String, port: u16) -> Name {
        Name {
            label: format!("{host}:{port}"),
            pool,
            host,
            port,
            addrs: ArcSwap::from_pointee(Vec::new()),
            version: AtomicU64::new(0),
            due_ms: AtomicU64::new(0),
            resolving: AtomicBool::new(false),
        }
    }

    /// The addresses of the last successful lookup; empty before the first.
    pub fn addresses(&self) -> Arc<Vec<IpAddr>> {
        self.addrs.load_full()
    }

    /// Changes each time the addresses do.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Record a successful lookup's addresses; whether they differ from the last ones.
    pub fn set_addresses(&self, mut ips: Vec<IpAddr>) -> bool {
        ips.sort_unstable();
        ips.dedup();
        if **self.addrs.load() == ips {
            return false;
        }
        self.addrs.store(Arc::new(ips));
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    fn register(&self) {
        for result in ["success", "failure"] {
            METRICS
                .dns_lookups
                .with_label_values(&[&self.pool, &self.label, result]);
        }
        self.set_gauge();
    }

    fn set_gauge(&self) {
        METRICS
            .dns_addresses
            .with_label_values(&[&self.pool, &self.label])
            .set(i64::try_from(self.addrs.load().len()).unwrap_or(i64::MAX));
    }

    fn forget(&self) {
        for result in ["success", "failure"] {
            let _ = METRICS
                .dns_lookups
                .remove_label_values(&[&self.pool, &self.label, result]);
        }
        let _ = METRICS
            .dns_addresses
            .remove_label_values(&[&self.pool, &self.label]);
    }
}

/// A name's resolved addresses are kept across a reload when its pool, host and port are.
impl crate::carry::Carry for Name {
    type Key = (String, String, u16);

    fn carry_key(&self) -> Self::Key {
        (self.pool.clone(), self.host.clone(), self.port)
    }
}

/// The DNS part of the commit step: the lookup series of new names appear at zero, those
/// of names gone are dropped.
pub(super) fn commit(old: &[Arc<Pool>], new: &[Arc<Pool>]) {
    for pool in new {
        for name in pool.names() {
            name.register();
        }
    }
    for pool in old {
        for name in pool.names() {
            let kept = new
                .iter()
                .flat_map(|p| p.names())
                .any(|n| Arc::ptr_eq(n, name));
            if !kept {
                name.forget();
            }
        }
    }
}

/// Where names are looked up (`server.dns`), compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolving {
    /// The name servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

impl Resolving {
    /// A resolver for these settings.
    ///
    /// # Errors
    /// A message when the system's resolver settings cannot be read.
    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| e.to_string())?
        } else {
            let mut group = Vec::with_capacity(self.nameservers.len() * 2);
            for addr in &self.nameservers {
                group.push(NameServerConfig::new(*addr, Protocol::Udp));
                group.push(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            let config =
                ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(group));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let opts = builder.options_mut();
        // A host name stands for all its addresses.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // No cache: each lookup asks the server, so `dns_refresh` holds even when the TTL
        // is longer, and the TTL of each answer is the record's.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        Ok(builder.build())
    }
}

/// The background service that resolves every pool's host names when due and swaps a pool's
/// members when its addresses changed.
pub struct DnsRefresher {
    pools: Arc<ArcSwap<Vec<Arc<Pool>>>>,
    settings: Arc<ArcSwap<Resolving>>,
    tick: Duration,
}

impl DnsRefresher {
    /// Resolve the names of `pools` with `settings`, as each reload publishes them.
    pub fn new(
        pools: Arc<ArcSwap<Vec<Arc<Pool>>>>,
        settings: Arc<ArcSwap<Resolving>>,
    ) -> DnsRefresher {
        DnsRefresher {
            pools,
            settings,
            tick: Duration::from_millis(100),
        }
    }
}

/// The resolver in use, and the settings it was made from.
type Current = (Arc<Resolving>, Result<TokioResolver, String>);

impl DnsRefresher {
    fn step(&self, current: &mut Option<Current>) {
        let pools = self.pools.load();
        if pools.iter().all(|p| p.names().next().is_none()) {
            return;
        }
        let settings = self.settings.load_full();
        if current.as_ref().is_none_or(|(s, _)| **s != *settings) {
            let resolver = settings.resolver();
            if let Err(e) = &resolver {
                tracing::error!(error = %e, "cannot set up the DNS resolver");
            }
            *current = Some((settings, resolver));
        }
        let Some((_, resolver)) = current.as_ref() else {
            return;
        };
        let now = now_ms();
        for pool in pools.iter() {
            for name in pool.names() {
                if name.due_ms.load(Ordering::Relaxed) > now
                    || name
                        .resolving
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                {
                    continue;
                }
                tokio::spawn(lookup(
                    resolver.clone(),
                    Arc::clone(name),
                    pool.settings.dns_refresh,
                ));
            }
            match pool.refresh() {
                Ok(Some((old, new))) => {
                    for target in &new.targets {
                        target.register();
                    }
                    super::forget_targets(&old, &new.targets);
                    tracing::info!(
                        upstream = %pool.name,
                        targets = ?new.targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
                        "upstream targets changed"
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(upstream = %pool.name, error = %e, "cannot update targets")
                }
            }
        }
    }
}

/// Look `name` up once, record the answer and when the next lookup is due.
async fn lookup(resolver: Result<TokioResolver, String>, name: Arc<Name>, refresh: Duration) {
    let answer = match resolver {
        Ok(resolver) => {
            match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name.host.as_str())).await
            {
                Ok(Ok(found)) => {
                    let ips: Vec<IpAddr> = found.iter().collect();
                    let ttl = found
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    if ips.is_empty() {
                        Err("no address".to_string())
                    } else {
                        Ok((ips, ttl))
                    }
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        }
        Err(e) => Err(e),
    };
    let labels = |result| [name.pool.as_str(), name.label.as_str(), result];
    let next = match answer {
        Ok((ips, ttl)) => {
            METRICS
                .dns_lookups
                .with_label_values(&labels("success"))
                .inc();
            if name.set_addresses(ips) {
                tracing::info!(
                    upstream = %name.pool,
                    name = %name.label,
                    addresses = ?name.addresses(),
                    "host name resolved to new addresses"
                );
            }
            name.set_gauge();
            refresh.min(ttl)
        }
        Err(e) => {
            METRICS
                .dns_lookups
                .with_label_values(&labels("failure"))
                .inc();
            let kept = name.addresses().len();
            tracing::warn!(
                upstream = %name.pool,
                name = %name.label,
                error = %e,
                kept,
                "host name lookup failed; the last good addresses stay"
            );
            refresh.min(RETRY_AFTER_FAILURE)
        }
    };
    name.due_ms
        .store(now_ms() + millis(next.max(MIN_REFRESH)), Ordering::Relaxed);
    name.resolving.store(false, Ordering::Release);
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut current = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => self.step(&mut current),
            }
        }
    }
}
