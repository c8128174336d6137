//! In-flight caps per upstream pool: fixed, or adaptive in the gradient style of Netflix's
//! concurrency-limits and Envoy's adaptive concurrency filter.
//!
//! The adaptive cap compares the latency of the last window with a slow-moving long-term
//! latency: when the pool slows down the ratio falls below one and the cap shrinks, shedding
//! load with an immediate 503 before the backend falls over; when latency is back the cap
//! grows again by about √cap per window. Requests over the cap never queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::METRICS;

/// How often the adaptive cap moves.
const WINDOW: Duration = Duration::from_millis(100);

struct Adaptive {
    min: usize,
    max: usize,
    window: Mutex<Window>,
    rtt_sum_ns: AtomicU64,
    samples: AtomicU64,
    peak_in_flight: AtomicUsize,
}

struct Window {
    started: Instant,
    /// Long-term latency (nanoseconds), an exponentially weighted average.
    long_ns: f64,
    /// The cap as a real number, so small steps add up.
    limit: f64,
}

/// The cap of one pool.
pub struct Concurrency {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    adaptive: Option<Adaptive>,
    pool: String,
    /// Its gauges (limit, in flight), registered by [`Concurrency::register`] or the first
    /// request, never by building it.
    gauges: std::sync::OnceLock<[prometheus::IntGauge; 2]>,
}

/// A place in the pool; frees itself when dropped.
pub struct Permit {
    pool: Arc<Concurrency>,
    started: Instant,
}

impl Permit {
    /// Free the place and, on success, report how long the upstream took.
    pub fn finish(self, ok: bool) {
        if ok {
            self.pool.record(self.started.elapsed());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.pool.gauges()[1].dec();
    }
}

/// A cap, with its in-flight count and what it learned, is kept across a reload when its
/// pool and its settings (the fixed limit, or the adaptive range) are.
impl crate::carry::Carry for Concurrency {
    type Key = (String, Option<usize>, Option<(usize, usize)>);

    fn carry_key(&self) -> Self::Key {
        match &self.adaptive {
            None => (self.pool.clone(), Some(self.limit()), None),
            Some(a) => (self.pool.clone(), None, Some((a.min, a.max))),
        }
    }
}

impl Concurrency {
    /// A fixed cap.
    pub fn fixed(pool: &str, limit: usize) -> Concurrency {
        Self::build(pool, limit, None)
    }

    /// An adaptive cap between `min` and `max`, starting at `min`.
    pub fn adaptive(pool: &str, min: usize, max: usize) -> Concurrency {
        let adaptive = Adaptive {
            min,
            max,
            window: Mutex::new(Window {
                started: Instant::now(),
                long_ns: 0.0,
                limit: min as f64,
            }),
            rtt_sum_ns: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            peak_in_flight: AtomicUsize::new(0),
        };
        Self::build(pool, min, Some(adaptive))
    }

    fn build(pool: &str, limit: usize, adaptive: Option<Adaptive>) -> Concurrency {
        Concurrency {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            adaptive,
            pool: pool.to_string(),
            gauges: std::sync::OnceLock::new(),
        }
    }

    /// Make its gauges exist, the limit set to the cap now: the commit step of a reload.
    pub fn register(&self) {
        let _ = self.gauges();
    }

    fn gauges(&self) -> &[prometheus::IntGauge; 2] {
        self.gauges.get_or_init(|| {
            let limit = METRICS.concurrency_limit.with_label_values(&[&self.pool]);
            limit.set(i64::try_from(self.limit()).unwrap_or(i64::MAX));
            [limit, METRICS.in_flight.with_label_values(&[&self.pool])]
        })
    }

    /// The cap now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether the cap adapts to the upstream's latency.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A place, or `None` when the pool is at its cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if now > self.limit() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.gauges()[1].inc();
        if let Some(a) = &self.adaptive {
            a.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        }
        Some(Permit {
            pool: Arc::clone(self),
            started: Instant::now(),
        })
    }

    fn record(&self, rtt: Duration) {
        let Some(a) = &self.adaptive else { return };
        a.rtt_sum_ns.fetch_add(
            u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        a.samples.fetch_add(1, Ordering::Relaxed);
        // One request per window moves the cap; the others go on at once.
        let Ok(mut w) = a.window.try_lock() else {
            return;
        };
        if w.started.elapsed() < WINDOW {
            return;
        }
        w.started = Instant::now();
        let samples = a.samples.swap(0, Ordering::Relaxed);
        let sum = a.rtt_sum_ns.swap(0, Ordering::Relaxed);
        let peak = a.peak_in_flight.swap(self.in_flight(), Ordering::Relaxed);
        if samples == 0 {
            return;
        }
        let short = sum as f64 / samples as f64;
        w.long_ns = if w.long_ns == 0.0 {
            short
        } else {
            // Slow to follow a slowdown, quick to follow a recovery.
            let weight = if short < w.long_ns { 0.5 } else { 0.05 };
            w.long_ns * (1.0 - weight) + short * weight
        };
        let gradient = (w.long_ns / short).clamp(0.5, 1.0);
        let queue = w.limit.sqrt();
        let mut next = w.limit * gradient + queue;
        // A pool that never came near its cap has shown nothing about a higher one.
        if (peak as f64) < w.limit / 2.0 {
            next = next.min(w.limit);
        }
        w.limit = if next < w.limit {
            w.limit * 0.8 + next * 0.2
        } else {
            next
        }
        .clamp(a.min as f64, a.max as f64);
        let limit = w.limit as usize;
        self.limit.store(limit, Ordering::Relaxed);
        self.gauges()[0].set(i64::try_from(limit).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_cap_refuses_past_the_limit_and_frees_on_drop() {
        let c = Arc::new(Concurrency::fixed("test-fixed", 2));
        let a = c.try_acquire().unwrap();
        let _b = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_none());
        drop(a);
        assert!(c.try_acquire().is_some());
    }

    fn run_window(c: &Arc<Concurrency>, rtt: Duration, n: usize) {
        let permits: Vec<_> = (0..n.min(c.limit()))
            .filter_map(|_| c.try_acquire())
            .collect();
        std::thread::sleep(WINDOW + Duration::from_millis(5));
        for p in permits {
            c.record(rtt);
            drop(p);
        }
    }

    #[test]
    fn adaptive_cap_shrinks_when_slow_and_grows_back() {
        let c = Arc::new(Concurrency::adaptive("test-adaptive", 4, 200));
        for _ in 0..15 {
            run_window(&c, Duration::from_millis(5), 1000);
        }
        let grown = c.limit();
        assert!(grown > 20, "cap did not grow under a fast pool: {grown}");
        for _ in 0..8 {
            run_window(&c, Duration::from_millis(100), 1000);
        }
        let shrunk = c.limit();
        assert!(
            shrunk < grown,
            "cap did not shrink when the pool slowed: {grown} -> {shrunk}"
        );
        for _ in 0..10 {
            run_window(&c, Duration::from_millis(5), 1000);
        }
        assert!(
            c.limit() > shrunk,
            "cap did not recover: {shrunk} -> {}",
            c.limit()
        );
    }
}
