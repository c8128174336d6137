//! A target's own series: time to first byte and attempt duration, answers by status code,
//! connections pooled or new. Their handles are made once per target, at the commit step that
//! brings it in (or at its first use, for a target that arrived between commits), so that the
//! request path never hashes label values.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use crate::metrics::METRICS;

/// The status codes whose counters a target keeps at hand; others are looked up by label.
const COMMON_CODES: [u16; 17] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504,
];

/// The handles of one target's series.
pub struct TargetSeries {
    pool: String,
    label: String,
    first_byte: Histogram,
    duration: Histogram,
    reused: IntCounter,
    new: IntCounter,
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    /// Other codes it answered, for [`TargetSeries::forget`] (at most 900 of them).
    other_codes: Mutex<Vec<u16>>,
}

impl TargetSeries {
    /// Register the series of target `label` of pool `pool` (the counters of connections at 0).
    pub fn new(pool: &str, label: &str) -> TargetSeries {
        let m = &*METRICS;
        TargetSeries {
            pool: pool.to_string(),
            label: label.to_string(),
            first_byte: m.upstream_first_byte.with_label_values(&[pool, label]),
            duration: m
                .upstream_attempt_duration
                .with_label_values(&[pool, label]),
            reused: m
                .upstream_connections
                .with_label_values(&[pool, label, "true"]),
            new: m
                .upstream_connections
                .with_label_values(&[pool, label, "false"]),
            codes: Default::default(),
            other_codes: Mutex::new(Vec::new()),
        }
    }

    /// An attempt got its response headers after `elapsed`, with `status`.
    pub fn answered(&self, status: u16, elapsed: Duration) {
        self.first_byte.observe(elapsed.as_secs_f64());
        match COMMON_CODES.iter().position(|c| *c == status) {
            Some(i) => self.codes[i]
                .get_or_init(|| self.code_counter(status))
                .inc(),
            None => {
                if let Ok(mut seen) = self.other_codes.lock() {
                    if !seen.contains(&status) {
                        seen.push(status);
                    }
                }
                self.code_counter(status).inc();
            }
        }
    }

    /// The counter of `status`: looked up once per common code and target, at every answer
    /// for the others.
    fn code_counter(&self, status: u16) -> IntCounter {
        METRICS.upstream_responses.with_label_values(&[
            &self.pool,
            &self.label,
            &status.to_string(),
        ])
    }

    /// An attempt ended after `elapsed` (its last byte, or its failure).
    pub fn ended(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// An attempt got a connection, pooled or new.
    pub fn connected(&self, reused: bool) {
        if reused { &self.reused } else { &self.new }.inc();
    }

    /// Drop every series of this target: it is gone.
    pub fn forget(&self) {
        let m = &*METRICS;
        let (pool, label) = (self.pool.as_str(), self.label.as_str());
        let _ = m.upstream_first_byte.remove_label_values(&[pool, label]);
        let _ = m
            .upstream_attempt_duration
            .remove_label_values(&[pool, label]);
        for reused in ["true", "false"] {
            let _ = m
                .upstream_connections
                .remove_label_values(&[pool, label, reused]);
        }
        let used = COMMON_CODES
            .iter()
            .zip(&self.codes)
            .filter(|(_, c)| c.get().is_some())
            .map(|(code, _)| *code);
        let others = self
            .other_codes
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        for code in used.chain(others) {
            let _ = m
                .upstream_responses
                .remove_label_values(&[pool, label, &code.to_string()]);
        }
    }
}
