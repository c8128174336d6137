//! A pool's members: the targets that have an address now, with the balancer over them.
//!
//! Members are immutable: a change of a host name's addresses builds new ones beside the
//! serving ones (off the request path) and the pool swaps them in at once. A request reads
//! one snapshot; building never touches it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::lb::selection::{consistent::KetamaHashing, BackendIter, BackendSelection};
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;

use super::{Source, Spec, Target};
use crate::config::Balance;

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<KetamaHashing>),
}

/// The targets of a pool that have an address now, and how one is picked.
pub struct Members {
    /// Fixed targets and each address of each resolved name, in config order.
    pub targets: Vec<Arc<Target>>,
    by_addr: HashMap<PeerAddr, usize, ahash::RandomState>,
    selector: Selector,
    /// The version of each spec's name these were built from (0 for a fixed address).
    versions: Vec<u64>,
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

impl Members {
    /// The members `specs` give now: fixed addresses, and each name's last resolved
    /// addresses (an address already listed is kept once, with its first weight). A target
    /// among `previous` with the same carry key is kept, health and all.
    ///
    /// # Errors
    /// A message when pingora could not build the balancer.
    pub(super) fn build<'a>(
        pool: &str,
        specs: &[Spec],
        balance: Balance,
        previous: impl IntoIterator<Item = &'a Arc<Target>> + Clone,
    ) -> Result<Members, String> {
        let mut by_addr = HashMap::default();
        let mut backends = Vec::with_capacity(specs.len());
        let mut targets = Vec::with_capacity(specs.len());
        let mut versions = Vec::with_capacity(specs.len());
        for spec in specs {
            // The version is read before the addresses: a change between the two leaves
            // members that look stale, and are rebuilt once more, never the reverse.
            let (version, addrs): (u64, Vec<(SocketAddr, String)>) = match &spec.source {
                Source::Fixed(addr) => (0, vec![(*addr, spec.written.clone())]),
                Source::Name(name) => {
                    let version = name.version();
                    let addrs = name
                        .addresses()
                        .iter()
                        .map(|ip| {
                            let addr = SocketAddr::new(*ip, name.port);
                            (addr, format!("{}@{addr}", spec.written))
                        })
                        .collect();
                    (version, addrs)
                }
            };
            versions.push(version);
            for (addr, label) in addrs {
                let backend = Backend {
                    addr: PeerAddr::Inet(addr),
                    weight: spec.weight,
                    ext: Default::default(),
                };
                if by_addr.contains_key(&backend.addr) {
                    continue;
                }
                let key = (pool.to_string(), addr, label);
                let target = crate::carry::kept(previous.clone(), &key)
                    .unwrap_or_else(|| Arc::new(Target::new(pool, addr, key.2, &spec.written)));
                by_addr.insert(backend.addr.clone(), targets.len());
                targets.push(target);
                backends.push(backend);
            }
        }
        let failed = || format!("upstream `{pool}`: cannot build the load balancer");
        let selector = match balance {
            Balance::RoundRobin => Selector::RoundRobin(balancer(&backends).ok_or_else(failed)?),
            Balance::Random => Selector::Random(balancer(&backends).ok_or_else(failed)?),
            Balance::ConsistentHash => {
                Selector::Consistent(balancer(&backends).ok_or_else(failed)?)
            }
        };
        Ok(Members {
            targets,
            by_addr,
            selector,
            versions,
        })
    }

    /// Whether a name of `specs` changed its addresses since these were built.
    pub(super) fn is_stale(&self, specs: &[Spec]) -> bool {
        specs.len() != self.versions.len()
            || specs
                .iter()
                .zip(&self.versions)
                .any(|(s, v)| match &s.source {
                    Source::Name(name) => name.version() != *v,
                    Source::Fixed(_) => false,
                })
    }

    /// Pick a healthy target not in `tried`, by the pool's balance mode and the targets'
    /// weights. `key` matters only for consistent hashing.
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

    /// How many targets are healthy.
    pub fn healthy_count(&self) -> usize {
        self.targets.iter().filter(|t| t.is_healthy()).count()
    }
}
