//! Giving memory back to the system once the proxy has gone quiet after connections closed.
//!
//! The allocator the binary installs (mimalloc, `src/main.rs`) returns freed pages to the
//! system lazily, on a later allocation by the thread that owns them. After a burst of
//! connections closes and no traffic follows, nothing allocates: the process keeps its peak
//! resident memory for good (1.9× and 2.4× its earlier size in the idle-connections case of
//! the load bench). [`Housekeeper`] watches for that state, connections closed and then a
//! whole tick with no connection opened or closed and no request, and then runs the
//! binary's release hook ([`set_release`]) once on every worker thread of the proxy, the
//! threads that own the freed pages, and once on its own thread.
//!
//! It never runs while the proxy has traffic, at most once a tick, and not at all without a
//! hook (the library's tests run on the system allocator).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::METRICS;

/// How often the housekeeper looks. A release follows one to two ticks after the last
/// connection closed and the traffic stopped.
pub const TICK: Duration = Duration::from_secs(5);

/// The longest a worker waits for the others to take their share of a release, so that no
/// worker runs two and another none. Reached only if a worker is busy, which the quiet
/// condition makes rare.
const MEET_TIMEOUT: Duration = Duration::from_millis(20);

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Install the allocator's "give freed memory back" call, run on each thread that may own
/// freed memory. Set once by the binary, which chose the allocator; later calls do nothing.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// What the proxy's connection code tells the housekeeper: the runtime its connections run
/// on, and how many have closed.
#[derive(Debug, Default)]
pub struct Activity {
    workers: OnceLock<tokio::runtime::Handle>,
    closed: AtomicU64,
}

impl Activity {
    /// Remember the runtime the calling task runs on (the proxy's); only the first call counts.
    pub fn note_runtime(&self) {
        if self.workers.get().is_none() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let _ = self.workers.set(handle);
            }
        }
    }

    /// A connection closed.
    pub fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters that move with any traffic; equal snapshots a tick apart mean a quiet tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Snapshot {
    accepted: u64,
    closed: u64,
    requests: u64,
}

/// The sum of every series of a counter family.
fn counter_sum(family: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    family
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

/// The background service that runs the release hook when the proxy has gone quiet.
pub struct Housekeeper {
    activity: Arc<Activity>,
    requests: fn() -> u64,
}

impl Housekeeper {
    /// Watch `activity`, shared with the proxy's [`crate::connections::Connections`], and
    /// `requests`, the count of requests started (the proxy's; passed in, as the proxy's
    /// connection code already depends on this module). Not the sum of
    /// `portcullis_requests_total`: collecting that family costs a pass over every route,
    /// method and code series (2.8 million of them with 10,000 routes: a third of all the
    /// instructions a loaded proxy ran).
    pub fn new(activity: Arc<Activity>, requests: fn() -> u64) -> Housekeeper {
        Housekeeper { activity, requests }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: counter_sum(&METRICS.connections_accepted),
            closed: self.activity.closed.load(Ordering::Relaxed),
            requests: (self.requests)(),
        }
    }

    /// Run `release` once on each worker of the proxy's runtime, and once here for good
    /// measure (on its own, from this thread, it gave back almost nothing: 2.27× against
    /// 0.92× of the memory before 2,000 TLS connections opened and closed).
    async fn release_everywhere(&self, release: fn()) {
        let started = std::time::Instant::now();
        if let Some(handle) = self.activity.workers.get() {
            let workers = handle.metrics().num_workers();
            let meet = Arc::new(Meet::new(workers));
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let meet = Arc::clone(&meet);
                    handle.spawn(async move {
                        release();
                        // Work-stealing workers: holding this one until the others have
                        // taken theirs puts one task on each.
                        meet.arrive_and_wait(MEET_TIMEOUT);
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        }
        release();
        METRICS.memory_releases.inc();
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            "freed memory handed back to the system"
        );
    }
}

#[async_trait]
impl BackgroundService for Housekeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(&release) = RELEASE.get() else {
            return;
        };
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = self.snapshot();
        let mut released_at = seen.closed;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            let now = self.snapshot();
            if now != seen {
                seen = now;
                continue;
            }
            if now.closed != released_at {
                released_at = now.closed;
                self.release_everywhere(release).await;
            }
        }
    }
}

/// A bounded rendezvous of `expected` tasks.
struct Meet {
    arrived: Mutex<usize>,
    all: Condvar,
    expected: usize,
}

impl Meet {
    fn new(expected: usize) -> Meet {
        Meet {
            arrived: Mutex::new(0),
            all: Condvar::new(),
            expected,
        }
    }

    fn arrive_and_wait(&self, timeout: Duration) {
        let mut arrived = self.arrived.lock().unwrap_or_else(|e| e.into_inner());
        *arrived += 1;
        if *arrived >= self.expected {
            self.all.notify_all();
            return;
        }
        let _ = self
            .all
            .wait_timeout_while(arrived, timeout, |n| *n < self.expected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meeting_ends_when_all_arrive_or_at_its_timeout() {
        let meet = Arc::new(Meet::new(2));
        let other = Arc::clone(&meet);
        let t = std::thread::spawn(move || other.arrive_and_wait(Duration::from_secs(30)));
        meet.arrive_and_wait(Duration::from_secs(30));
        t.join().unwrap();
        // Alone: back after the timeout rather than never.
        Meet::new(2).arrive_and_wait(Duration::from_millis(1));
    }

    #[test]
    fn a_request_makes_a_tick_busy() {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let keeper = Housekeeper::new(Arc::default(), || STARTED.load(Ordering::Relaxed));
        let before = keeper.snapshot();
        assert_eq!(keeper.snapshot(), before, "nothing happened");
        STARTED.fetch_add(1, Ordering::Relaxed);
        assert_ne!(keeper.snapshot(), before, "a request started");
    }

    #[test]
    fn closed_connections_are_counted() {
        let activity = Activity::default();
        activity.closed();
        activity.closed();
        assert_eq!(activity.closed.load(Ordering::Relaxed), 2);
        // Outside a runtime there is none to note.
        activity.note_runtime();
        assert!(activity.workers.get().is_none());
    }
}
