//! The process's own settings: listener addresses, the admin endpoint and
//! `server:`. Those read once at start (listeners, admin, threads) are checked at every
//! compile all the same, so that `check` reports them; a reload that changes them keeps the
//! old values and says so.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, Issues};

/// Check the process settings: listener and admin addresses (parsed, none twice, the admin
/// apart) and the `server:` numbers that have a floor. Listener certificates are compiled by
/// [`crate::tls::compile_listeners`].
pub fn check(config: &Config, issues: &mut Issues<'_>) {
    let mut seen = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}].address");
        match l.address.parse::<SocketAddr>() {
            Ok(addr) => {
                if !seen.insert(addr) {
                    issues.push(path, format!("address `{}` is listed twice", l.address));
                }
            }
            Err(_) => issues.push(path, format!("`{}` is not an `ip:port` address", l.address)),
        }
        if l.h2c && l.tls.is_some() {
            issues.push(
                format!("listeners[{i}].h2c"),
                "h2c is plaintext HTTP/2; a TLS listener offers h2 by ALPN already",
            );
        }
    }
    if let Some(admin) = &config.admin {
        match admin.address.parse::<SocketAddr>() {
            Ok(addr) if seen.contains(&addr) => issues.push(
                "admin.address",
                format!("`{}` is also a proxy listener", admin.address),
            ),
            Ok(_) => {}
            Err(_) => issues.push(
                "admin.address",
                format!("`{}` is not an `ip:port` address", admin.address),
            ),
        }
    }
    if config.server.threads == Some(0) {
        issues.push("server.threads", "must be at least 1");
    }
    if config.server.max_request_header_bytes < 1024 {
        issues.push("server.max_request_header_bytes", "must be at least 1024");
    }
    for (field, value) in [
        ("server.max_connections", config.server.max_connections),
        (
            "server.max_connections_per_ip",
            config.server.max_connections_per_ip,
        ),
    ] {
        if value == Some(0) {
            issues.push(field, "must be at least 1 (leave it out for no limit)");
        }
    }
    if config.server.request_header_timeout.0.is_zero() {
        issues.push("server.request_header_timeout", "must be more than 0");
    }
    if config.server.revocation_ttl.0 < Duration::from_secs(1) {
        issues.push("server.revocation_ttl", "must be at least 1s");
    }
    if config.server.max_revocations == 0 {
        issues.push("server.max_revocations", "must be at least 1");
    }
    check_readiness(config, issues);
}

/// Every pool and issuer `readiness:` names must exist: a misspelt name would otherwise wait
/// for nothing, or make a node that is fine look unready.
fn check_readiness(config: &Config, issues: &mut Issues<'_>) {
    let pools: HashSet<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    let issuers: HashSet<&str> = config.issuers.iter().map(|i| i.name.as_str()).collect();
    for (field, names, known, what) in [
        (
            "require_pools",
            &config.readiness.require_pools,
            &pools,
            "upstream",
        ),
        (
            "require_issuers",
            &config.readiness.require_issuers,
            &issuers,
            "issuer",
        ),
    ] {
        for (i, name) in names.iter().enumerate() {
            if !known.contains(name.as_str()) {
                issues.push(
                    format!("readiness.{field}[{i}]"),
                    format!("no {what} named `{name}`"),
                );
            }
        }
    }
}

/// The connection settings of one config generation, compiled from `server:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; `None`: no limit.
    pub max: Option<usize>,
    /// Most connections open at once from one client IP; `None`: no limit.
    pub max_per_ip: Option<usize>,
    /// How long an idle connection waits for its next request (`keepalive_timeout`).
    pub keepalive: Duration,
    /// The same for Pingora, which counts whole seconds and reads 0 as "forever": rounded
    /// up, `None` for no keep-alive (`keepalive_timeout: 0s`). Pingora applies it to each
    /// read of a request's headers.
    pub keepalive_secs: Option<u64>,
    /// Time a request's headers may take: from the start of the connection for its first
    /// request, from the first byte for the next ones.
    pub request_header_timeout: Duration,
}

impl ConnectionLimits {
    /// Compile the `server:` fields.
    pub fn from_config(server: &crate::config::ServerConfig) -> ConnectionLimits {
        let keepalive = server.keepalive_timeout.0;
        let keepalive_secs = if keepalive.is_zero() {
            None
        } else {
            Some(keepalive.as_secs() + u64::from(keepalive.subsec_nanos() > 0))
        };
        ConnectionLimits {
            max: server.max_connections,
            max_per_ip: server.max_connections_per_ip,
            keepalive,
            keepalive_secs,
            request_header_timeout: server.request_header_timeout.0,
        }
    }
}
