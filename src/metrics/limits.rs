//! Rate limits and the cluster that shares them.

/// `portcullis_ratelimit_decisions_total{route,limit,result}`: limit checks, `allowed` or `denied`.
pub const RATELIMIT_DECISIONS_TOTAL: &str = "portcullis_ratelimit_decisions_total";
/// `portcullis_cluster_redis_up`: 1 while Redis answers the limit sync.
pub const CLUSTER_REDIS_UP: &str = "portcullis_cluster_redis_up";
/// `portcullis_cluster_nodes`: nodes sharing the cluster limits, as last seen in Redis.
pub const CLUSTER_NODES: &str = "portcullis_cluster_nodes";
/// `portcullis_cluster_sync_errors_total`: failed syncs with Redis.
pub const CLUSTER_SYNC_ERRORS_TOTAL: &str = "portcullis_cluster_sync_errors_total";
