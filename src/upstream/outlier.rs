//! Passive health: outlier ejection from what requests see.
//!
//! A target whose answers are 5xx, or whose connections fail, `consecutive_errors` times in a
//! row is taken out of rotation for `base_ejection` times the number of times in a row it was
//! ejected, as long as no more than `max_ejected_percent` of its pool is out at once. It comes
//! back when the time is up, or earlier when its active probe passes. This is Envoy's
//! consecutive-5xx outlier detection; active probes ([`super::health`]) remain the other half.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{Issues, OutlierConfig};

/// A pool's outlier settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject a target; 0 turns ejection off.
    pub consecutive_errors: u32,
    /// Time out for a first ejection; the n-th in a row lasts n times this.
    pub base_ejection: Duration,
    /// Most of the pool, in percent, out at once.
    pub max_ejected_percent: u32,
}

/// The defaults: 5 errors, 30 s, half the pool.
pub const DEFAULT_OUTLIER: OutlierPolicy = OutlierPolicy {
    consecutive_errors: 5,
    base_ejection: Duration::from_secs(30),
    max_ejected_percent: 50,
};

/// A longest ejection, however many times in a row: ten times the base.
const MAX_MULTIPLIER: u32 = 10;

impl OutlierPolicy {
    /// How many of `targets` may be out at once.
    pub fn max_ejected(&self, targets: usize) -> usize {
        targets.saturating_mul(self.max_ejected_percent as usize) / 100
    }
}

/// Compile a pool's `outlier:` (absent: the defaults).
pub fn compile(
    config: Option<&OutlierConfig>,
    path: &str,
    issues: &mut Issues<'_>,
) -> OutlierPolicy {
    let Some(c) = config else {
        return DEFAULT_OUTLIER;
    };
    let policy = OutlierPolicy {
        consecutive_errors: c
            .consecutive_errors
            .unwrap_or(DEFAULT_OUTLIER.consecutive_errors),
        base_ejection: c
            .base_ejection
            .map_or(DEFAULT_OUTLIER.base_ejection, |d| d.0),
        max_ejected_percent: c
            .max_ejected_percent
            .unwrap_or(DEFAULT_OUTLIER.max_ejected_percent),
    };
    if policy.base_ejection.is_zero() {
        issues.push(format!("{path}.base_ejection"), "must be more than zero");
    }
    if policy.max_ejected_percent > 100 {
        issues.push(format!("{path}.max_ejected_percent"), "at most 100");
    }
    policy
}

/// What an outcome did to a target's ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// It was taken out, for this long.
    Ejected(Duration),
}

/// One target's passive health.
#[derive(Debug, Default)]
pub struct Outlier {
    /// Errors in a row.
    errors: AtomicU32,
    /// Milliseconds on the health clock until which it is out; 0 when it is in.
    until_ms: AtomicU64,
    /// When its last ejection ended (or ends), for telling whether the next one is "in a row".
    last_until_ms: AtomicU64,
    /// Ejections in a row.
    ejections: AtomicU32,
    /// Ejections since it joined, for the status page.
    ejected_total: AtomicU32,
}

impl Outlier {
    /// Whether it is out at `now_ms`. The clock is read by the caller only when
    /// [`Outlier::may_be_ejected`] says so, which keeps the common path free of it.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// How long it stays out after `now_ms`; `None` when it is in.
    pub fn ejected_for_ms(&self, now_ms: u64) -> Option<u64> {
        let until = self.until_ms.load(Ordering::Relaxed);
        (until != 0 && now_ms < until).then(|| until - now_ms)
    }

    /// How many times it was ejected since it joined (kept across reloads with the target).
    pub fn ejections(&self) -> u32 {
        self.ejected_total.load(Ordering::Relaxed)
    }

    /// Whether it was ejected and has not been seen back yet: the cheap check before reading
    /// the clock.
    pub fn may_be_ejected(&self) -> bool {
        self.until_ms.load(Ordering::Relaxed) != 0
    }

    /// Clear an ejection whose time is up (or any, with `force`, when a probe passed);
    /// `true` when this call brought it back, so that one caller logs the return.
    pub fn readmit(&self, now_ms: u64, force: bool) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        if until == 0 || (!force && now_ms < until) {
            return false;
        }
        self.errors.store(0, Ordering::Relaxed);
        self.until_ms
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// An attempt went well: the errors in a row start over. No clock, one load when there
    /// were none.
    pub fn success(&self) {
        if self.errors.load(Ordering::Relaxed) != 0 {
            self.errors.store(0, Ordering::Relaxed);
        }
    }

    /// An attempt failed at `now_ms`. `room` says whether the pool can have one more target
    /// out; it is asked only when this failure would eject.
    pub fn failure(
        &self,
        policy: &OutlierPolicy,
        now_ms: u64,
        room: impl FnOnce() -> bool,
    ) -> Change {
        if policy.consecutive_errors == 0 {
            return Change::None;
        }
        let n = self
            .errors
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < policy.consecutive_errors || self.is_ejected(now_ms) || !room() {
            return Change::None;
        }
        // In a row: the last ejection ended less than its own length ago.
        let last_until = self.last_until_ms.load(Ordering::Relaxed);
        let last_len = ms(policy.base_ejection)
            .saturating_mul(u64::from(self.ejections.load(Ordering::Relaxed)));
        if last_until == 0 || now_ms > last_until.saturating_add(last_len) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let times = (self.ejections.fetch_add(1, Ordering::Relaxed) + 1).min(MAX_MULTIPLIER);
        let length = policy.base_ejection.saturating_mul(times);
        let until = now_ms.saturating_add(ms(length)).max(1);
        self.errors.store(0, Ordering::Relaxed);
        self.last_until_ms.store(until, Ordering::Relaxed);
        self.until_ms.store(until, Ordering::Relaxed);
        self.ejected_total.fetch_add(1, Ordering::Relaxed);
        Change::Ejected(length)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: OutlierPolicy = OutlierPolicy {
        consecutive_errors: 3,
        base_ejection: Duration::from_secs(10),
        max_ejected_percent: 50,
    };

    #[test]
    fn errors_in_a_row_eject_and_a_success_between_them_does_not() {
        let o = Outlier::default();
        let now = 1_000;
        assert_eq!(o.failure(&POLICY, now, || true), Change::None);
        assert_eq!(o.failure(&POLICY, now, || true), Change::None);
        o.success();
        assert_eq!(o.failure(&POLICY, now, || true), Change::None);
        assert_eq!(o.failure(&POLICY, now, || true), Change::None);
        assert!(!o.is_ejected(now));
        assert_eq!(
            o.failure(&POLICY, now, || true),
            Change::Ejected(Duration::from_secs(10))
        );
        assert!(o.is_ejected(now + 9_999));
        assert!(!o.is_ejected(now + 10_000));
    }

    #[test]
    fn no_room_in_the_pool_no_ejection() {
        let o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.failure(&POLICY, 1_000, || false), Change::None);
        }
        assert!(!o.may_be_ejected());
    }

    #[test]
    fn ejections_in_a_row_last_longer_and_a_quiet_spell_resets_them() {
        let o = Outlier::default();
        let mut now = 1_000;
        let eject = |now: u64| {
            for _ in 0..2 {
                o.failure(&POLICY, now, || true);
            }
            o.failure(&POLICY, now, || true)
        };
        assert_eq!(eject(now), Change::Ejected(Duration::from_secs(10)));
        now += 10_000;
        assert!(o.readmit(now, false));
        assert_eq!(eject(now), Change::Ejected(Duration::from_secs(20)));
        now += 20_000;
        assert!(o.readmit(now, false));
        // Back for longer than its last ejection: the next one starts over.
        now += 60_000;
        assert_eq!(eject(now), Change::Ejected(Duration::from_secs(10)));
    }

    #[test]
    fn a_passing_probe_readmits_early_once() {
        let o = Outlier::default();
        for _ in 0..3 {
            o.failure(&POLICY, 1_000, || true);
        }
        assert!(!o.readmit(2_000, false), "time is not up");
        assert!(o.readmit(2_000, true));
        assert!(!o.readmit(2_000, true), "only one caller brings it back");
        assert!(!o.is_ejected(2_000));
    }

    #[test]
    fn max_ejected_rounds_down() {
        assert_eq!(POLICY.max_ejected(1), 0);
        assert_eq!(POLICY.max_ejected(2), 1);
        assert_eq!(POLICY.max_ejected(5), 2);
    }

    #[test]
    fn zero_errors_turns_it_off() {
        let off = OutlierPolicy {
            consecutive_errors: 0,
            ..POLICY
        };
        let o = Outlier::default();
        for _ in 0..100 {
            assert_eq!(o.failure(&off, 1_000, || true), Change::None);
        }
    }
}
