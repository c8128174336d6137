//! How a request is forwarded to a pool: the time it may take and what is retried.
//!
//! A pool's `retry:` and timeouts are its routes' defaults; a route overrides them field by
//! field. Retries are capped per pool by a budget, as Envoy's: retries in flight may be at most
//! `budget_percent` of the requests in flight, and at least [`MIN_RETRY_CONCURRENCY`], so that
//! a failing backend is not met with a retry storm while a quiet pool can still retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Issues, RetryCondition, RetryConfig, RouteConfig, UpstreamConfig};

/// Retries in flight a pool always allows, whatever its traffic (Envoy's default).
pub const MIN_RETRY_CONCURRENCY: usize = 3;

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, unreachable, timed out, TLS handshake).
    ConnectFailure,
    /// The connection broke while the request or its response headers were under way.
    Reset,
    /// A read or write on the connection timed out.
    Timeout,
    /// The target answered 502.
    Status502,
    /// The target answered 503.
    Status503,
    /// The target answered 504.
    Status504,
}

impl Failure {
    /// Every failure, in the order of [`Failure::label`]'s table.
    pub const ALL: [Failure; 6] = [
        Failure::ConnectFailure,
        Failure::Reset,
        Failure::Timeout,
        Failure::Status502,
        Failure::Status503,
        Failure::Status504,
    ];

    /// Its name in `retry.on` and in the `reason` label of the retry metrics.
    pub fn label(self) -> &'static str {
        match self {
            Failure::ConnectFailure => "connect_failure",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Status502 => "502",
            Failure::Status503 => "503",
            Failure::Status504 => "504",
        }
    }

    /// The failure an upstream status stands for, if it is one that can be retried.
    pub fn of_status(status: u16) -> Option<Failure> {
        match status {
            502 => Some(Failure::Status502),
            503 => Some(Failure::Status503),
            504 => Some(Failure::Status504),
            _ => None,
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Failure`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u8);

impl RetryOn {
    /// Whether `failure` is in the set.
    pub fn has(self, failure: Failure) -> bool {
        self.0 & failure.bit() != 0
    }

    const fn with(self, failure: Failure) -> RetryOn {
        RetryOn(self.0 | failure.bit())
    }
}

/// What a route retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; 1 never retries.
    pub attempts: u32,
    /// What is retried.
    pub on: RetryOn,
    /// Bound on each read of one attempt.
    pub per_try_timeout: Option<Duration>,
    /// Retries in flight as a percentage of the pool's requests in flight.
    pub budget_percent: u32,
    /// Retry only methods that are idempotent.
    pub idempotent_only: bool,
}

/// Defaults: two tries, on connect failures, resets and 503s (a draining backend), idempotent
/// methods only, 20% budget.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 2,
    on: RetryOn(0)
        .with(Failure::ConnectFailure)
        .with(Failure::Reset)
        .with(Failure::Status503),
    per_try_timeout: None,
    budget_percent: 20,
    idempotent_only: true,
};

/// Timeouts and retries of a route (or a pool's defaults for its routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// Time to connect to a target.
    pub connect_timeout: Duration,
    /// Longest wait for each read from the target.
    pub read_timeout: Duration,
    /// The whole request, from its headers read to its last byte.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: RetryPolicy,
}

impl Forwarding {
    /// The connect and read timeouts of an attempt starting now, for a request that started
    /// at `started`; `None` when the request's `timeout` has already passed.
    pub fn attempt(&self, started: Instant) -> Option<(Duration, Duration)> {
        let mut read = self.read_timeout;
        if let Some(per_try) = self.retry.per_try_timeout {
            read = read.min(per_try);
        }
        let mut connect = self.connect_timeout;
        if let Some(left) = self.left(started) {
            if left.is_zero() {
                return None;
            }
            read = read.min(left);
            connect = connect.min(left);
        }
        Some((connect, read))
    }

    /// Time left of the request's `timeout`, if it has one.
    pub fn left(&self, started: Instant) -> Option<Duration> {
        self.timeout.map(|t| t.saturating_sub(started.elapsed()))
    }
}

/// Compile a pool's timeouts and `retry:` (with the older `retries:`), its routes' defaults.
pub fn pool(up: &UpstreamConfig, path: &str, issues: &mut Issues<'_>) -> Forwarding {
    let mut retry = DEFAULT_RETRY;
    match (up.retries, &up.retry) {
        (Some(_), Some(_)) => issues.push(
            format!("{path}.retries"),
            "give `retry.attempts` or the older `retries`, not both",
        ),
        (Some(n), None) => retry.attempts = n.saturating_add(1),
        (None, Some(config)) => retry = policy(config, retry, &format!("{path}.retry"), issues),
        (None, None) => {}
    }
    let forwarding = Forwarding {
        connect_timeout: up.connect_timeout.0,
        read_timeout: up.read_timeout.0,
        timeout: up.timeout.map(|d| d.0),
        retry,
    };
    check_times(&forwarding, path, issues);
    forwarding
}

/// Compile a route's overrides over its pool's `defaults`.
pub fn route(
    rc: &RouteConfig,
    defaults: &Forwarding,
    path: &str,
    issues: &mut Issues<'_>,
) -> Forwarding {
    let forwarding = Forwarding {
        connect_timeout: rc.connect_timeout.map_or(defaults.connect_timeout, |d| d.0),
        read_timeout: rc.read_timeout.map_or(defaults.read_timeout, |d| d.0),
        timeout: rc.timeout.map(|d| d.0).or(defaults.timeout),
        retry: match &rc.retry {
            Some(config) => policy(config, defaults.retry, &format!("{path}.retry"), issues),
            None => defaults.retry,
        },
    };
    check_times(&forwarding, path, issues);
    forwarding
}

fn check_times(f: &Forwarding, path: &str, issues: &mut Issues<'_>) {
    for (field, d) in [
        ("connect_timeout", Some(f.connect_timeout)),
        ("read_timeout", Some(f.read_timeout)),
        ("timeout", f.timeout),
        ("retry.per_try_timeout", f.retry.per_try_timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            issues.push(format!("{path}.{field}"), "must be more than zero");
        }
    }
}

fn policy(
    config: &RetryConfig,
    base: RetryPolicy,
    path: &str,
    issues: &mut Issues<'_>,
) -> RetryPolicy {
    let mut policy = base;
    if let Some(n) = config.attempts {
        if n == 0 {
            issues.push(
                format!("{path}.attempts"),
                "must be at least 1 (1 never retries)",
            );
        }
        policy.attempts = n.clamp(1, 10);
        if n > 10 {
            issues.push(format!("{path}.attempts"), "at most 10");
        }
    }
    if let Some(list) = &config.on {
        let mut on = RetryOn::default();
        for (i, c) in list.iter().enumerate() {
            let found = match c {
                RetryCondition::Status(code) => Failure::of_status(*code),
                RetryCondition::Name(name) => {
                    Failure::ALL.into_iter().find(|f| f.label() == name.trim())
                }
            };
            match found {
                Some(f) => on = on.with(f),
                None => issues.push(
                    format!("{path}.on[{i}]"),
                    "expected `connect_failure`, `reset`, `timeout`, 502, 503 or 504",
                ),
            }
        }
        policy.on = on;
    }
    if let Some(d) = config.per_try_timeout {
        policy.per_try_timeout = Some(d.0);
    }
    if let Some(p) = config.budget_percent {
        if p > 100 {
            issues.push(format!("{path}.budget_percent"), "at most 100");
        }
        policy.budget_percent = p.min(100);
    }
    if let Some(b) = config.idempotent_only {
        policy.idempotent_only = b;
    }
    policy
}

/// A pool's retry budget: its requests and retries in flight.
#[derive(Debug, Default)]
pub struct RetryBudget {
    active: AtomicUsize,
    retrying: AtomicUsize,
}

impl RetryBudget {
    /// A request to the pool begins; [`RetryBudget::end`] when it ends.
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request begun with [`RetryBudget::begin`] ends; `retried` when it held a retry slot.
    pub fn end(&self, retried: bool) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        if retried {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Its requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Take a retry slot, held until [`RetryBudget::end`]; `false` when the budget is spent.
    pub fn try_retry(&self, percent: u32) -> bool {
        let active = self.active.load(Ordering::Relaxed);
        let cap = (active.saturating_mul(percent as usize) / 100).max(MIN_RETRY_CONCURRENCY);
        let before = self.retrying.fetch_add(1, Ordering::Relaxed);
        if before < cap {
            true
        } else {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_a_share_of_requests_in_flight_with_a_floor() {
        let b = RetryBudget::default();
        for _ in 0..50 {
            b.begin();
        }
        // 20% of 50 is 10.
        let taken = (0..50).filter(|_| b.try_retry(20)).count();
        assert_eq!(taken, 10);
        for _ in 0..10 {
            b.end(true);
        }
        for _ in 0..40 {
            b.end(false);
        }
        // Quiet: the floor still allows a few.
        b.begin();
        let taken = (0..10).filter(|_| b.try_retry(20)).count();
        assert_eq!(taken, MIN_RETRY_CONCURRENCY);
    }

    #[test]
    fn labels_and_statuses_agree() {
        for f in Failure::ALL {
            if let Ok(code) = f.label().parse::<u16>() {
                assert_eq!(Failure::of_status(code), Some(f));
            }
        }
        assert!(DEFAULT_RETRY.on.has(Failure::Status503));
        assert!(!DEFAULT_RETRY.on.has(Failure::Status502));
        assert!(!DEFAULT_RETRY.on.has(Failure::Timeout));
    }

    #[test]
    fn an_attempt_is_bounded_by_what_is_left_of_the_request() {
        let f = Forwarding {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(30),
            timeout: Some(Duration::from_secs(10)),
            retry: RetryPolicy {
                per_try_timeout: Some(Duration::from_secs(5)),
                ..DEFAULT_RETRY
            },
        };
        let (connect, read) = f.attempt(Instant::now()).unwrap();
        assert_eq!(connect, Duration::from_secs(1));
        assert_eq!(read, Duration::from_secs(5));
        let long_ago = Instant::now().checked_sub(Duration::from_secs(8)).unwrap();
        let (_, read) = f.attempt(long_ago).unwrap();
        assert!(read <= Duration::from_secs(2), "{read:?}");
        let too_long_ago = Instant::now().checked_sub(Duration::from_secs(11)).unwrap();
        assert_eq!(f.attempt(too_long_ago), None);
    }
}
