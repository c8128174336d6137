//! The access log's own metric families beside `portcullis_access_log_dropped_total`
//! (which lives with the others in [`super`]): reopens of the file on SIGUSR1.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};

/// `portcullis_access_log_reopens_total{result}`: reopens of the access log file asked for by
/// SIGUSR1, `success` or `failure` (a failure keeps writing to the file open before).
pub const ACCESS_LOG_REOPENS_TOTAL: &str = "portcullis_access_log_reopens_total";

/// How a reopen went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReopenResult {
    /// The file at the path is open now.
    Success,
    /// It could not be opened; the old one is still written.
    Failure,
}

impl ReopenResult {
    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            ReopenResult::Success => "success",
            ReopenResult::Failure => "failure",
        }
    }
}

/// The access log's families.
pub struct AccessLogMetrics {
    reopens: IntCounterVec,
}

impl AccessLogMetrics {
    /// Count a reopen.
    pub fn reopens(&self, result: ReopenResult) {
        self.reopens.with_label_values(&[result.label()]).inc();
    }

    /// Make both `result` series exist at zero (the access log calls it when it starts).
    pub fn init(&self) {
        for result in [ReopenResult::Success, ReopenResult::Failure] {
            self.reopens.with_label_values(&[result.label()]);
        }
    }
}

/// Registered in the default registry on first use.
#[allow(clippy::expect_used)] // Registering a constant name twice is a bug found at start.
pub static ACCESS_LOG: LazyLock<AccessLogMetrics> = LazyLock::new(|| AccessLogMetrics {
    reopens: register_int_counter_vec!(
        ACCESS_LOG_REOPENS_TOTAL,
        "Reopens of the access log file on SIGUSR1, by result (success, failure).",
        &["result"]
    )
    .expect("register access log reopens"),
});
