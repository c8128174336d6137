//! GCRA, the token bucket as one timestamp: a bucket is the theoretical arrival time (TAT) of
//! the next request, in nanoseconds on a process-local monotonic clock, updated with one
//! compare-and-swap. No locks, no allocation, no background refill.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds on the limiter clock.
pub fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One bucket: 12 bytes, held inline in its store.
#[derive(Debug, Default)]
pub struct Bucket {
    tat: AtomicU64,
    /// Admissions not yet reported to the cluster.
    pub(crate) pending: AtomicU32,
}

impl crate::store::Expiring for Bucket {
    /// A bucket is full again, and as good as a new one, once its TAT has passed.
    fn deadline(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }
}

/// The answer of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Requests left at once after this one.
    pub remaining: u64,
    /// Nanoseconds until one more request would pass (0 when allowed).
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
}

impl Verdict {
    /// Whole seconds until a request would pass, for `Retry-After` (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ns.div_ceil(1_000_000_000).max(1)
    }
}

/// A bucket's shape: one request per `emission_ns`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nanoseconds between requests at the sustained rate.
    pub emission_ns: u64,
    /// Requests allowed at once.
    pub burst: u64,
}

impl Shape {
    /// The time a full bucket lasts: `burst` emissions.
    pub fn tolerance_ns(self) -> u64 {
        self.emission_ns.saturating_mul(self.burst)
    }
}

impl Bucket {
    /// Take one request from the bucket if it has one.
    pub fn check(&self, shape: Shape, now: u64) -> Verdict {
        let tolerance = shape.tolerance_ns();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(shape.emission_ns);
            let ahead = next - now;
            if ahead > tolerance {
                let used = tat.max(now) - now;
                return Verdict {
                    allowed: false,
                    remaining: 0,
                    retry_after_ns: ahead - tolerance,
                    reset_ns: used,
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Verdict {
                        allowed: true,
                        remaining: (tolerance - ahead) / shape.emission_ns.max(1),
                        retry_after_ns: 0,
                        reset_ns: ahead,
                    }
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether a request would be refused now, without taking anything.
    pub fn is_empty(&self, shape: Shape, now: u64) -> Option<u64> {
        let tat = self.tat.load(Ordering::Relaxed);
        let ahead = tat.max(now).saturating_add(shape.emission_ns) - now;
        (ahead > shape.tolerance_ns()).then(|| ahead - shape.tolerance_ns())
    }

    /// Set the bucket to be `ahead_ns` past `now` (the cluster's view).
    pub(crate) fn set_ahead(&self, now: u64, ahead_ns: u64) {
        self.tat
            .store(now.saturating_add(ahead_ns), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_refill_at_rate() {
        // 10/s, burst 5.
        let shape = Shape {
            emission_ns: 100 * MS,
            burst: 5,
        };
        let b = Bucket::default();
        let t0 = 1_000 * MS;
        for left in (0..5).rev() {
            let v = b.check(shape, t0);
            assert!(v.allowed);
            assert_eq!(v.remaining, left);
        }
        let refused = b.check(shape, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, 100 * MS);
        assert_eq!(refused.reset_ns, 500 * MS);
        assert!(b.is_empty(shape, t0).is_some());
        // One emission later exactly one more passes.
        assert!(b.check(shape, t0 + 100 * MS).allowed);
        assert!(!b.check(shape, t0 + 100 * MS).allowed);
        // After the whole tolerance the bucket is full again.
        let later = t0 + 700 * MS;
        assert_eq!(b.check(shape, later).remaining, 4);
    }

    #[test]
    fn concurrent_checks_never_over_admit() {
        let shape = Shape {
            emission_ns: 1_000 * MS,
            burst: 1000,
        };
        let b = std::sync::Arc::new(Bucket::default());
        let now = 5_000 * MS;
        let admitted: u64 = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|_| b.check(shape, now).allowed).count() as u64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 1000);
    }
}
