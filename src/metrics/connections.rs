//! Client connections: open, admitted, refused, slow, per listener; the certificates TLS
//! listeners serve; memory handed back.

/// `portcullis_connections_open{listener}`: client connections open now, by the listener's
/// address as the config writes it.
pub const CONNECTIONS_OPEN: &str = "portcullis_connections_open";
/// `portcullis_connections_accepted_total{listener}`: client connections admitted.
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
/// `portcullis_tls_certificate_expiry_timestamp_seconds{listener}`: the notAfter of the
/// certificate a TLS listener serves, in Unix seconds; set again when a reload replaces it.
pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "portcullis_tls_certificate_expiry_timestamp_seconds";
