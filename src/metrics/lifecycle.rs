//! The process and its config: reloads, the generation serving, access-log drops.

/// `portcullis_config_reloads_total{result}`: reloads, `success` or `failure`.
pub const CONFIG_RELOADS_TOTAL: &str = "portcullis_config_reloads_total";
/// `portcullis_config_generation`: which config is serving; 1 at start, +1 per reload.
pub const CONFIG_GENERATION: &str = "portcullis_config_generation";
/// `portcullis_access_log_dropped_total`: lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "portcullis_access_log_dropped_total";
