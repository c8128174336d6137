//! The process and its config: the build, reloads, the generation serving, access-log drops.

use prometheus::{register_int_gauge_vec, IntGaugeVec};

/// `portcullis_config_reloads_total{result}`: reloads, `success` or `failure`.
pub const CONFIG_RELOADS_TOTAL: &str = "portcullis_config_reloads_total";
/// `portcullis_config_generation`: which config is serving; 1 at start, +1 per reload.
pub const CONFIG_GENERATION: &str = "portcullis_config_generation";
/// `portcullis_access_log_dropped_total`: lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "portcullis_access_log_dropped_total";
/// `portcullis_build_info{version,commit}`: always 1; the labels say which build runs. The
/// commit is the one `build.rs` read from git (or `PORTCULLIS_COMMIT`), `unknown` without.
pub const BUILD_INFO: &str = "portcullis_build_info";

/// The build's version and commit.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from (`unknown` when neither git nor
/// `PORTCULLIS_COMMIT` said).
pub const COMMIT: &str = env!("PORTCULLIS_COMMIT");

#[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
pub(super) fn build_info() -> IntGaugeVec {
    let info = register_int_gauge_vec!(
        BUILD_INFO,
        "Always 1; the labels say which build runs (version, and the git commit).",
        &["version", "commit"]
    )
    .expect("register build info");
    info.with_label_values(&[VERSION, COMMIT]).set(1);
    info
}
