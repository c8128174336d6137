//! Client connections: open, admitted, refused, slow; memory handed back.

/// `portcullis_connections_open`: client connections open now.
pub const CONNECTIONS_OPEN: &str = "portcullis_connections_open";
/// `portcullis_connections_accepted_total`: client connections admitted.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "portcullis_connections_accepted_total";
/// `portcullis_connections_refused_total{reason}`: connections closed as they arrived, by the
/// limit reached (`max_connections`, `max_connections_per_ip`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "portcullis_connections_refused_total";
/// `portcullis_connections_header_timeouts_total`: connections closed because their request
/// headers were not complete within `server.request_header_timeout`.
pub const CONNECTIONS_HEADER_TIMEOUTS_TOTAL: &str = "portcullis_connections_header_timeouts_total";
/// `portcullis_memory_releases_total`: times freed memory was handed back to the system after
/// connections closed and the proxy went quiet (see `crate::memory`).
pub const MEMORY_RELEASES_TOTAL: &str = "portcullis_memory_releases_total";
