//! Upstream pools: targets, their health, and picking one for a request.
//!
//! Selection uses pingora-load-balancing's algorithms; health is our own per-target state so
//! that it can outlive a config reload (a target that stays keeps its `Arc<Target>`). This
//! module never talks HTTP to a client and never decides routing.

pub mod compile;
pub mod forwarding;
pub mod health;
pub mod outlier;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::lb::selection::{consistent::KetamaHashing, BackendIter, BackendSelection};
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;

use crate::config::Balance;
use crate::metrics::METRICS;

pub use health::{HealthProbe, HealthSupervisor};

/// One target of a pool, with the health state its probes keep.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The address as written, for logs and labels.
    pub label: String,
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
    fn new(pool: &str, addr: SocketAddr, label: String) -> Target {
        Target {
            addr,
            label,
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

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<KetamaHashing>),
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
}

/// An upstream pool.
pub struct Pool {
    /// Its in-flight cap, when configured.
    pub concurrency: Option<Arc<crate::ratelimit::Concurrency>>,
    /// Its name in the config.
    pub name: String,
    /// Its targets, in config order.
    pub targets: Vec<Arc<Target>>,
    /// How requests use it.
    pub settings: PoolSettings,
    /// Active health checking, when configured.
    pub probe: Option<HealthProbe>,
    /// Its requests and retries in flight.
    pub budget: forwarding::RetryBudget,
    by_addr: HashMap<PeerAddr, usize, ahash::RandomState>,
    selector: Selector,
}

/// Build a pingora load balancer over fixed backends without an async context.
fn balancer<S>(backends: &[Backend]) -> Option<LoadBalancer<S>>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let set = backends.iter().cloned().collect();
    let lb = LoadBalancer::<S>::from_backends(Backends::new(discovery::Static::new(set)));
    // Static discovery never waits, so one poll finishes the update.
    let ready = {
        let mut update = std::pin::pin!(lb.update());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(
            update.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Ok(()))
        )
    };
    ready.then_some(lb)
}

use std::future::Future;

impl Pool {
    /// Build a pool. Targets listed in `previous` keep their health state.
    ///
    /// # Errors
    /// A message when pingora could not build the balancer.
    pub fn new(
        name: &str,
        targets: Vec<(SocketAddr, String)>,
        settings: PoolSettings,
        probe: Option<HealthProbe>,
        previous: Option<&Pool>,
    ) -> Result<Pool, String> {
        let mut by_addr = HashMap::default();
        let mut backends = Vec::with_capacity(targets.len());
        let mut kept = Vec::with_capacity(targets.len());
        for (i, (addr, label)) in targets.into_iter().enumerate() {
            let key = (name.to_string(), addr, label.clone());
            kept.push(
                match crate::carry::kept(previous.into_iter().flat_map(|p| &p.targets), &key) {
                    Some(t) => t,
                    None => Arc::new(Target::new(name, addr, label)),
                },
            );
            let backend = Backend {
                addr: PeerAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            };
            by_addr.insert(backend.addr.clone(), i);
            backends.push(backend);
        }
        let failed = || format!("upstream `{name}`: cannot build the load balancer");
        let selector = match settings.balance {
            Balance::RoundRobin => Selector::RoundRobin(balancer(&backends).ok_or_else(failed)?),
            Balance::Random => Selector::Random(balancer(&backends).ok_or_else(failed)?),
            Balance::ConsistentHash => {
                Selector::Consistent(balancer(&backends).ok_or_else(failed)?)
            }
        };
        Ok(Pool {
            concurrency: None,
            name: name.to_string(),
            targets: kept,
            settings,
            probe,
            budget: forwarding::RetryBudget::default(),
            by_addr,
            selector,
        })
    }

    /// Pick a healthy target not in `tried`, by the pool's balance mode. `key` matters only
    /// for consistent hashing.
    pub fn select(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        // One target: nothing to balance (Pingora's selection would allocate its
        // seen-set on every request for the same answer).
        if let [only] = self.targets.as_slice() {
            return (only.is_healthy() && tried.is_empty()).then_some(0);
        }
        let accept = |b: &Backend, _: bool| {
            self.by_addr
                .get(&b.addr)
                .is_some_and(|&i| self.targets[i].is_healthy() && !tried.contains(&i))
        };
        let max = self.targets.len().saturating_mul(2).max(8);
        let picked = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, max, accept),
            Selector::Random(lb) => lb.select_with(key, max, accept),
            Selector::Consistent(lb) => lb.select_with(key, max, accept),
        };
        match picked {
            Some(b) => self.by_addr.get(&b.addr).copied(),
            // The algorithms bound their search; make sure a healthy target is never missed.
            None => (0..self.targets.len())
                .find(|i| self.targets[*i].is_healthy() && !tried.contains(i)),
        }
    }

    /// Whether a healthy target not in `tried` is left, that is, whether a retry could go
    /// anywhere.
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        self.targets
            .iter()
            .enumerate()
            .any(|(i, t)| t.is_healthy() && !tried.contains(&i))
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
            let out = self
                .targets
                .iter()
                .filter(|t| t.outlier.is_ejected(now))
                .count();
            out < policy.max_ejected(self.targets.len())
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
        self.targets.iter().filter(|t| t.is_healthy()).count()
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
/// `old`): the gauges of new targets and caps appear, those of targets and caps that are gone
/// are dropped, and a pool whose health check was removed takes every target back (no probe
/// is left to readmit one).
pub fn commit(old: &[Arc<Pool>], new: &[Arc<Pool>]) {
    for pool in new {
        if pool.probe.is_none() {
            for target in &pool.targets {
                target.assume_healthy();
            }
        }
        for target in &pool.targets {
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
    }
    for pool in old {
        let kept = new.iter().find(|p| p.name == pool.name);
        for target in &pool.targets {
            if !kept.is_some_and(|p| p.targets.iter().any(|t| Arc::ptr_eq(t, target))) {
                target.forget();
            }
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(balance: Balance, n: usize) -> Pool {
        let targets = (0..n)
            .map(|i| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                (addr, addr.to_string())
            })
            .collect();
        let settings = PoolSettings {
            balance,
            hash_on: HashOn::ClientIp,
            forwarding: forwarding::Forwarding {
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                timeout: None,
                retry: forwarding::DEFAULT_RETRY,
            },
            outlier: outlier::DEFAULT_OUTLIER,
        };
        Pool::new(
            &format!("test-{balance:?}-{n}"),
            targets,
            settings,
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn round_robin_spreads_and_skips_unhealthy() {
        let p = pool(Balance::RoundRobin, 3);
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[p.select(b"", &[]).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        for _ in 0..3 {
            p.targets[1].observe(false, 2, 3);
        }
        assert!(!p.targets[1].is_healthy());
        for _ in 0..30 {
            assert_ne!(p.select(b"", &[]), Some(1));
        }
        assert_eq!(p.healthy_count(), 2);
    }

    #[test]
    fn every_mode_respects_tried_and_health() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let p = pool(balance, 4);
            for t in &p.targets[..3] {
                for _ in 0..3 {
                    t.observe(false, 1, 3);
                }
            }
            assert_eq!(p.select(b"k", &[]), Some(3), "{balance:?}");
            assert_eq!(p.select(b"k", &[3]), None, "{balance:?}");
        }
    }

    #[test]
    fn a_single_target_pool() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let p = pool(balance, 1);
            assert_eq!(p.select(b"k", &[]), Some(0));
            assert_eq!(p.select(b"k", &[0]), None);
            for _ in 0..3 {
                p.targets[0].observe(false, 1, 3);
            }
            assert_eq!(p.select(b"k", &[]), None);
        }
    }

    /// A key keeps its target from call to call, whatever other keys are sent in between,
    /// and keys spread over the targets: a selector blind to the key sends them all to one
    /// target (or, rotating, moves each key). A target going down moves only its own keys.
    #[test]
    fn consistent_hash_is_sticky() {
        let p = pool(Balance::ConsistentHash, 5);
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
        let t = &p.targets[0];
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
            old.targets[0].observe(false, 2, 3);
        }
        let targets = old
            .targets
            .iter()
            .map(|t| (t.addr, t.label.clone()))
            .collect();
        let new = Pool::new(&old.name, targets, old.settings.clone(), None, Some(&old)).unwrap();
        assert!(!new.targets[0].is_healthy());
        assert!(new.targets[1].is_healthy());
    }
}
