//! Upstream pools: targets, their health, and picking one for a request.
//!
//! A pool's targets as configured ([`Spec`]) are fixed addresses or host names; its members
//! ([`Members`]: the targets with an address now, and the balancer over them) are rebuilt off
//! the request path whenever a name's addresses change ([`dns`]) and swapped in atomically.
//! Selection uses pingora-load-balancing's algorithms, with each target's weight; health is
//! our own per-target state so that it can outlive a config reload or a DNS change (a target
//! that stays keeps its `Arc<Target>`). This module never talks HTTP to a client and never
//! decides routing.

pub mod compile;
pub mod dns;
pub mod forwarding;
pub mod health;
mod members;
pub mod outlier;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Balance, Protocol};
use crate::metrics::METRICS;

pub use dns::{DnsRefresher, Name, Resolving};
pub use health::{HealthProbe, HealthSupervisor};
pub use members::Members;

/// One target of a pool, with the health state its probes keep.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The address as written for a fixed target; `host:port@ip:port` for an address of a
    /// host name. For logs and labels.
    pub label: String,
    /// The target as written in the config: a probe's `Host`.
    pub written: String,
    healthy: AtomicBool,
    successes: AtomicUsize,
    failures: AtomicUsize,
    /// Milliseconds since [`health::epoch`] when the next probe is due.
    next_probe_ms: AtomicU64,
    probing: AtomicBool,
    pool: String,
    /// Its passive health: ejected after failing requests in a row.
    pub outlier: outlier::Outlier,
    /// Its health gauge, registered by [`Target::register`] or the first flip, never by
    /// building it.
    gauge: std::sync::OnceLock<prometheus::IntGauge>,
    /// Its request series, registered by [`Target::register`] or its first request.
    series: std::sync::OnceLock<telemetry::TargetSeries>,
}

impl Target {
    fn new(pool: &str, addr: SocketAddr, label: String, written: &str) -> Target {
        Target {
            addr,
            label,
            written: written.to_string(),
            // A new target serves until probes say otherwise, so a fresh start does not
            // wait a full probe cycle before taking traffic.
            healthy: AtomicBool::new(true),
            successes: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            next_probe_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            pool: pool.to_string(),
            outlier: outlier::Outlier::default(),
            gauge: std::sync::OnceLock::new(),
            series: std::sync::OnceLock::new(),
        }
    }

    /// Make its health gauge exist, set to its health now: the commit step of a reload.
    pub fn register(&self) {
        self.set_gauge();
        self.series();
    }

    /// Its request series.
    pub fn series(&self) -> &telemetry::TargetSeries {
        self.series
            .get_or_init(|| telemetry::TargetSeries::new(&self.pool, &self.label))
    }

    /// Drop its series: the commit step of a reload that removed it.
    fn forget(&self) {
        let _ = METRICS
            .target_healthy
            .remove_label_values(&[&self.pool, &self.label]);
        if let Some(series) = self.series.get() {
            series.forget();
        }
    }

    fn set_gauge(&self) {
        self.gauge
            .get_or_init(|| {
                METRICS
                    .target_healthy
                    .with_label_values(&[&self.pool, &self.label])
            })
            .set(i64::from(self.probe_healthy()));
    }

    /// Take traffic again and forget the probe history: for a target whose pool has no
    /// health check any more, since without one every target counts as healthy.
    pub fn assume_healthy(&self) {
        self.successes.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Relaxed);
        self.set_gauge();
    }

    /// Whether the target takes traffic: its probes say it is healthy and it is not ejected.
    pub fn is_healthy(&self) -> bool {
        self.probe_healthy() && !self.ejected()
    }

    /// Whether its active probes say it is healthy (always, without probes).
    pub fn probe_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether it is ejected now; brings it back (and says so) once its time is up. The clock
    /// is read only for a target that was ejected.
    fn ejected(&self) -> bool {
        if !self.outlier.may_be_ejected() {
            return false;
        }
        let now = health::now_ms();
        if self.outlier.is_ejected(now) {
            return true;
        }
        if self.outlier.readmit(now, false) {
            tracing::info!(upstream = %self.pool, target = %self.label, "target back from ejection: its time is up");
        }
        false
    }

    /// Record a probe result; returns `Some(new_state)` when the target flipped.
    fn observe(&self, ok: bool, healthy_after: usize, unhealthy_after: usize) -> Option<bool> {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            if self.outlier.readmit(health::now_ms(), true) {
                tracing::info!(upstream = %self.pool, target = %self.label, "target back from ejection: its probe passed");
            }
            let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.probe_healthy() && n >= healthy_after {
                self.healthy.store(true, Ordering::Relaxed);
                self.set_gauge();
                return Some(true);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.probe_healthy() && n >= unhealthy_after {
                self.healthy.store(false, Ordering::Relaxed);
                self.set_gauge();
                return Some(false);
            }
        }
        None
    }
}

/// A target's health is kept across a reload when its pool, address and spelling are.
impl crate::carry::Carry for Target {
    type Key = (String, SocketAddr, String);

    fn carry_key(&self) -> Self::Key {
        (self.pool.clone(), self.addr, self.label.clone())
    }
}

/// What a consistent-hash pool hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address.
    ClientIp,
    /// A request header's value (lowercase name).
    Header(http::HeaderName),
}

/// Settings of a pool that every request through it uses.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// How a target is picked.
    pub balance: Balance,
    /// Consistent hashing input.
    pub hash_on: HashOn,
    /// Timeouts and retries: the defaults of the routes to this pool.
    pub forwarding: forwarding::Forwarding,
    /// When targets are ejected for failing requests.
    pub outlier: outlier::OutlierPolicy,
    /// Longest time between two lookups of a host name (the record's TTL when shorter).
    pub dns_refresh: Duration,
    /// HTTP/1.1, h2 or h2c to the targets.
    pub protocol: Protocol,
}

/// Most requests one HTTP/2 connection to a target carries at once (fewer when the target's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` says so); past it another connection opens. Pingora's
/// default is 1, a connection per request in flight, which HTTP/2 exists to avoid.
pub const MAX_H2_STREAMS: usize = 100;

impl PoolSettings {
    /// Set what a connection to a target speaks on `options`. `h2c` is HTTP/2 by prior
    /// knowledge: Pingora starts HTTP/2 at once on a plaintext peer whose ALPN allows only
    /// h2 (`connectors/http/v2.rs`). `h2` offers only h2 by ALPN on a TLS peer.
    ///
    /// Pingora's connection-reuse hash leaves ALPN out but takes `max_h2_streams` in: the
    /// stream cap also keeps the connections of an HTTP/2 pool apart from those of an
    /// HTTP/1.1 pool to the same address (after a reload that changes `protocol`, too).
    pub fn apply_protocol(&self, options: &mut pingora::upstreams::peer::PeerOptions) {
        use pingora::protocols::ALPN;
        match self.protocol {
            Protocol::Http1 => options.alpn = ALPN::H1,
            Protocol::H2 | Protocol::H2c => {
                options.alpn = ALPN::H2;
                options.max_h2_streams = MAX_H2_STREAMS;
            }
        }
    }
}

/// Where a configured target is, as compiled: no name is resolved at compile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddress {
    /// An `ip:port`.
    Fixed(SocketAddr),
    /// A host name and port, resolved in the background.
    Name {
        /// The host name, lowercase.
        host: String,
        /// The port.
        port: u16,
    },
}

/// A configured target, as compiled.
#[derive(Debug, Clone)]
pub struct TargetDef {
    /// As written in the config.
    pub written: String,
    /// Its relative share of traffic (each address of a name has it).
    pub weight: usize,
    /// Where it is.
    pub address: TargetAddress,
}

/// A configured target of a serving pool.
pub struct Spec {
    /// As written in the config.
    pub written: String,
    /// Its relative share of traffic.
    pub weight: usize,
    /// Where it is.
    pub source: Source,
}

/// Where a [`Spec`]'s addresses come from.
pub enum Source {
    /// One fixed address.
    Fixed(SocketAddr),
    /// Every address a host name resolves to, as last resolved.
    Name(Arc<Name>),
}

/// The members before and after a swap.
pub type Swapped = (Arc<Members>, Arc<Members>);

/// An upstream pool.
pub struct Pool {
    /// Its in-flight cap, when configured.
    pub concurrency: Option<Arc<crate::ratelimit::Concurrency>>,
    /// Its name in the config.
    pub name: String,
    /// Its targets as configured, in config order.
    pub specs: Vec<Spec>,
    /// How requests use it.
    pub settings: PoolSettings,
    /// Active health checking, when configured.
    pub probe: Option<HealthProbe>,
    /// Its requests and retries in flight.
    pub budget: forwarding::RetryBudget,
    /// TLS to the targets, when configured (`tls:`).
    pub tls: Option<Arc<tls::UpstreamTls>>,
    /// The targets with an address now, and the balancer over them.
    members: ArcSwap<Members>,
}

impl Pool {
    /// Build a pool. Names listed in `previous` keep their resolved addresses, and targets
    /// their health state; a name never resolved yet has no member until it is.
    ///
    /// # Errors
    /// A message when pingora could not build the balancer.
    pub fn new(
        name: &str,
        targets: Vec<TargetDef>,
        settings: PoolSettings,
        probe: Option<HealthProbe>,
        previous: Option<&Pool>,
    ) -> Result<Pool, String> {
        let specs: Vec<Spec> = targets
            .into_iter()
            .map(|t| Spec {
                source: match t.address {
                    TargetAddress::Fixed(addr) => Source::Fixed(addr),
                    TargetAddress::Name { host, port } => {
                        let key = (name.to_string(), host, port);
                        let old = previous.into_iter().flat_map(|p| p.names());
                        Source::Name(
                            crate::carry::kept(old, &key)
                                .unwrap_or_else(|| Arc::new(Name::new(key.0, key.1, key.2))),
                        )
                    }
                },
                written: t.written,
                weight: t.weight,
            })
            .collect();
        let old_members = previous.map(Pool::members);
        let members = Members::build(
            name,
            &specs,
            settings.balance,
            old_members.iter().flat_map(|m| &m.targets),
        )?;
        Ok(Pool {
            concurrency: None,
            name: name.to_string(),
            specs,
            settings,
            probe,
            budget: forwarding::RetryBudget::default(),
            tls: None,
            members: ArcSwap::from_pointee(members),
        })
    }

    /// The members now. A request keeps this snapshot for all its tries, so the indices it
    /// holds stay valid, and a removed target it uses lives until it is done.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// The host names among its targets.
    pub fn names(&self) -> impl Iterator<Item = &Arc<Name>> {
        self.specs.iter().filter_map(|s| match &s.source {
            Source::Name(n) => Some(n),
            Source::Fixed(_) => None,
        })
    }

    /// Rebuild the members when a name's addresses changed since they were built, carrying
    /// each staying target's health; returns the members before and after when it did.
    /// Runs off the request path (the DNS refresher), one caller at a time.
    ///
    /// # Errors
    /// A message when pingora could not build the balancer; the members stay as they were.
    pub fn refresh(&self) -> Result<Option<Swapped>, String> {
        let old = self.members();
        if !old.is_stale(&self.specs) {
            return Ok(None);
        }
        let new = Arc::new(Members::build(
            &self.name,
            &self.specs,
            self.settings.balance,
            &old.targets,
        )?);
        self.members.store(Arc::clone(&new));
        Ok(Some((old, new)))
    }

    /// Record how an attempt on `target` went: a failure (a 5xx answer, a connection that
    /// failed or broke) may eject it.
    pub fn outcome(&self, target: &Target, ok: bool) {
        if ok {
            target.outlier.success();
            return;
        }
        let policy = &self.settings.outlier;
        let now = health::now_ms();
        let room = || {
            let members = self.members();
            let out = members
                .targets
                .iter()
                .filter(|t| t.outlier.is_ejected(now))
                .count();
            out < policy.max_ejected(members.targets.len())
        };
        if let outlier::Change::Ejected(length) = target.outlier.failure(policy, now, room) {
            METRICS.ejections.with_label_values(&[&self.name]).inc();
            tracing::warn!(
                upstream = %self.name,
                target = %target.label,
                seconds = length.as_secs(),
                errors = policy.consecutive_errors,
                "target ejected: failed requests in a row"
            );
        }
    }

    /// How many targets are healthy.
    pub fn healthy_count(&self) -> usize {
        self.members().healthy_count()
    }

    /// How many targets it has now (a host name counts once per address).
    pub fn target_count(&self) -> usize {
        self.members().targets.len()
    }
}

/// Fill the gauges that read the pools' live state: called at each scrape.
pub fn observe(pools: &[Arc<Pool>]) {
    for pool in pools {
        METRICS
            .healthy_targets
            .with_label_values(&[&pool.name])
            .set(i64::try_from(pool.healthy_count()).unwrap_or(i64::MAX));
    }
}

/// The commit step of a reload, once `new` serves in place of `old` (or at start, with no
/// `old`): the gauges of new targets, names and caps appear, those of targets, names and caps
/// that are gone are dropped, and a pool whose health check was removed takes every target
/// back (no probe is left to readmit one).
pub fn commit(old: &[Arc<Pool>], new: &[Arc<Pool>]) {
    for pool in new {
        let members = pool.members();
        if pool.probe.is_none() {
            for target in &members.targets {
                target.assume_healthy();
            }
        }
        for target in &members.targets {
            target.register();
        }
        if let Some(cap) = &pool.concurrency {
            cap.register();
        }
        for failure in forwarding::Failure::ALL {
            METRICS
                .upstream_retries
                .with_label_values(&[&pool.name, failure.label()]);
        }
        METRICS
            .retry_budget_exhausted
            .with_label_values(&[&pool.name]);
        METRICS.ejections.with_label_values(&[&pool.name]);
        if let Some(t) = &pool.tls {
            let before = old.iter().find(|o| o.name == pool.name);
            t.commit(&pool.name, before.and_then(|o| o.tls.as_ref()));
            for reason in tls::TlsFailure::ALL {
                METRICS
                    .upstream_tls_failures
                    .with_label_values(&[&pool.name, reason.label()]);
            }
        }
    }
    for pool in old {
        let kept = new.iter().find(|p| p.name == pool.name);
        let kept_members = kept.map(|p| p.members());
        forget_targets(
            &pool.members(),
            kept_members.as_deref().map_or(&[][..], |m| &m.targets),
        );
        if kept.is_none() {
            let _ = METRICS.healthy_targets.remove_label_values(&[&pool.name]);
            for failure in forwarding::Failure::ALL {
                let _ = METRICS
                    .upstream_retries
                    .remove_label_values(&[&pool.name, failure.label()]);
            }
            let _ = METRICS
                .retry_budget_exhausted
                .remove_label_values(&[&pool.name]);
            let _ = METRICS.ejections.remove_label_values(&[&pool.name]);
        }
        if pool.concurrency.is_some() && kept.is_none_or(|p| p.concurrency.is_none()) {
            let _ = METRICS.concurrency_limit.remove_label_values(&[&pool.name]);
            let _ = METRICS.in_flight.remove_label_values(&[&pool.name]);
        }
        if pool.tls.is_some() && kept.is_none_or(|p| p.tls.is_none()) {
            for reason in tls::TlsFailure::ALL {
                let _ = METRICS
                    .upstream_tls_failures
                    .remove_label_values(&[&pool.name, reason.label()]);
            }
        }
    }
    dns::commit(old, new);
}

/// Drop the series of `old`'s targets that are not among `kept`.
fn forget_targets(old: &Members, kept: &[Arc<Target>]) {
    for target in &old.targets {
        if !kept.iter().any(|t| Arc::ptr_eq(t, target)) {
            target.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(balance: Balance) -> PoolSettings {
        PoolSettings {
            balance,
            hash_on: HashOn::ClientIp,
            forwarding: forwarding::Forwarding {
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                timeout: None,
                retry: forwarding::DEFAULT_RETRY,
            },
            outlier: outlier::DEFAULT_OUTLIER,
            dns_refresh: Duration::from_secs(30),
            protocol: Protocol::Http1,
        }
    }

    fn fixed(port: u16, weight: usize) -> TargetDef {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        TargetDef {
            written: addr.to_string(),
            weight,
            address: TargetAddress::Fixed(addr),
        }
    }

    fn weighted(balance: Balance, weights: &[usize]) -> Pool {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| fixed(10_000 + u16::try_from(i).unwrap(), *w))
            .collect();
        Pool::new(
            &format!("test-{balance:?}-{weights:?}"),
            targets,
            settings(balance),
            None,
            None,
        )
        .unwrap()
    }

    fn pool(balance: Balance, n: usize) -> Pool {
        weighted(balance, &vec![1; n])
    }

    #[test]
    fn round_robin_spreads_and_skips_unhealthy() {
        let p = pool(Balance::RoundRobin, 3);
        let m = p.members();
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[m.select(b"", &[]).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        for _ in 0..3 {
            m.targets[1].observe(false, 2, 3);
        }
        assert!(!m.targets[1].is_healthy());
        for _ in 0..30 {
            assert_ne!(m.select(b"", &[]), Some(1));
        }
        assert_eq!(p.healthy_count(), 2);
    }

    /// Weights 1 and 3: round robin gives exactly one in four to the first, random about
    /// that, consistent hashing about that share of keys. Ignoring weights gives one in two.
    #[test]
    fn round_robin_honours_weights() {
        let rr = weighted(Balance::RoundRobin, &[1, 3]).members();
        let mut seen = [0; 2];
        for _ in 0..400 {
            seen[rr.select(b"", &[]).unwrap()] += 1;
        }
        assert_eq!(seen, [100, 300], "round robin");
    }

    #[test]
    fn random_honours_weights() {
        let random = weighted(Balance::Random, &[1, 3]).members();
        let mut seen = [0; 2];
        for _ in 0..4000 {
            seen[random.select(b"", &[]).unwrap()] += 1;
        }
        assert!((2700..3300).contains(&seen[1]), "random: {seen:?}");
    }

    #[test]
    fn consistent_hash_honours_weights() {
        let hash = weighted(Balance::ConsistentHash, &[1, 3]).members();
        let mut seen = [0; 2];
        for k in 0..2000 {
            seen[hash.select(format!("key-{k}").as_bytes(), &[]).unwrap()] += 1;
        }
        assert!((1300..1700).contains(&seen[1]), "consistent hash: {seen:?}");
    }

    #[test]
    fn every_mode_respects_tried_and_health() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let m = pool(balance, 4).members();
            for t in &m.targets[..3] {
                for _ in 0..3 {
                    t.observe(false, 1, 3);
                }
            }
            assert_eq!(m.select(b"k", &[]), Some(3), "{balance:?}");
            assert_eq!(m.select(b"k", &[3]), None, "{balance:?}");
        }
    }

    #[test]
    fn a_single_target_pool() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let m = pool(balance, 1).members();
            assert_eq!(m.select(b"k", &[]), Some(0));
            assert_eq!(m.select(b"k", &[0]), None);
            for _ in 0..3 {
                m.targets[0].observe(false, 1, 3);
            }
            assert_eq!(m.select(b"k", &[]), None);
        }
    }

    /// A key keeps its target from call to call, whatever other keys are sent in between,
    /// and keys spread over the targets: a selector blind to the key sends them all to one
    /// target (or, rotating, moves each key). A target going down moves only its own keys.
    #[test]
    fn consistent_hash_is_sticky() {
        let p = pool(Balance::ConsistentHash, 5).members();
        let keys: Vec<String> = (0..100).map(|i| format!("client-{i}")).collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|k| p.select(k.as_bytes(), &[]).unwrap())
            .collect();
        // Each key twice in a row, the keys in reverse: a rotation cannot pass for stickiness.
        for (k, was) in keys.iter().zip(&first).rev() {
            for _ in 0..2 {
                assert_eq!(p.select(k.as_bytes(), &[]), Some(*was), "{k}");
            }
        }
        let mut used = first.clone();
        used.sort_unstable();
        used.dedup();
        assert_eq!(
            used,
            [0, 1, 2, 3, 4],
            "100 keys reach every target: {first:?}"
        );
        let down = first[0];
        for _ in 0..3 {
            p.targets[down].observe(false, 1, 3);
        }
        assert!(!p.targets[down].is_healthy());
        for (k, was) in keys.iter().zip(&first) {
            let now = p.select(k.as_bytes(), &[]).unwrap();
            if *was == down {
                assert_ne!(now, down, "{k}");
            } else {
                assert_eq!(now, *was, "{k} moved although its target is up");
            }
        }
    }

    #[test]
    fn thresholds() {
        let p = pool(Balance::RoundRobin, 1);
        let m = p.members();
        let t = &m.targets[0];
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn health_carries_over_to_a_rebuilt_pool() {
        let old = pool(Balance::RoundRobin, 2);
        for _ in 0..3 {
            old.members().targets[0].observe(false, 2, 3);
        }
        let targets = vec![fixed(10_000, 1), fixed(10_001, 1)];
        let new = Pool::new(&old.name, targets, old.settings.clone(), None, Some(&old)).unwrap();
        assert!(!new.members().targets[0].is_healthy());
        assert!(new.members().targets[1].is_healthy());
    }

    fn named(host: &str) -> TargetDef {
        TargetDef {
            written: format!("{host}:8080"),
            weight: 1,
            address: TargetAddress::Name {
                host: host.to_string(),
                port: 8080,
            },
        }
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    /// A name has no member until it resolves; its addresses then become members at once,
    /// a changed answer swaps them, a target that stays keeps its health, and a request
    /// holding the old members still has the removed target.
    #[test]
    fn a_name_becomes_its_addresses() {
        let p = Pool::new(
            "named",
            vec![fixed(9000, 1), named("api.test")],
            settings(Balance::RoundRobin),
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.target_count(), 1, "an unresolved name has no member");
        assert!(p.refresh().unwrap().is_none(), "nothing changed");
        let name = Arc::clone(p.names().next().unwrap());
        assert!(name.set_addresses(vec![ip("127.0.0.3"), ip("127.0.0.2")]));
        assert!(!name.set_addresses(vec![ip("127.0.0.2"), ip("127.0.0.3")]));
        let (_, after) = p.refresh().unwrap().unwrap();
        let labels: Vec<&str> = after.targets.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "127.0.0.1:9000",
                "api.test:8080@127.0.0.2:8080",
                "api.test:8080@127.0.0.3:8080"
            ]
        );
        assert_eq!(after.targets[1].written, "api.test:8080");
        for _ in 0..3 {
            after.targets[2].observe(false, 1, 3);
        }
        let in_flight = p.members();
        name.set_addresses(vec![ip("127.0.0.3"), ip("127.0.0.4")]);
        let (_, now) = p.refresh().unwrap().unwrap();
        let addrs: Vec<String> = now.targets.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:9000", "127.0.0.3:8080", "127.0.0.4:8080"]
        );
        assert!(Arc::ptr_eq(&now.targets[1], &in_flight.targets[2]));
        assert!(
            !now.targets[1].is_healthy(),
            "health stays with the address"
        );
        assert_eq!(in_flight.targets[1].addr.to_string(), "127.0.0.2:8080");

        // A reload keeps the name's addresses and the targets' health.
        let reloaded = Pool::new(
            "named",
            vec![named("api.test"), fixed(9000, 1)],
            settings(Balance::RoundRobin),
            None,
            Some(&p),
        )
        .unwrap();
        assert!(Arc::ptr_eq(reloaded.names().next().unwrap(), &name));
        assert_eq!(reloaded.target_count(), 3);
        assert!(!reloaded.members().targets[0].is_healthy());
        // Another port is another name: it starts empty.
        let mut other = named("api.test");
        other.address = TargetAddress::Name {
            host: "api.test".into(),
            port: 9090,
        };
        let moved = Pool::new(
            "named",
            vec![other],
            settings(Balance::RoundRobin),
            None,
            Some(&p),
        )
        .unwrap();
        assert_eq!(moved.target_count(), 0);
        assert_eq!(moved.members().select(b"", &[]), None);
    }
}
