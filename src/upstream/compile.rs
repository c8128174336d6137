//! Compiling `upstreams:`: pools, their targets and probes, from the config section and the
//! serving generation's pool of the same name.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

use super::health::{HealthProbe, ProbeKind};
use super::{HashOn, Pool, PoolSettings};
use crate::config::{Balance, HealthCheckConfig, Issues, UpstreamConfig};

fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !target.contains(':') {
        return Err(format!("`{target}` needs a port (`host:port`)"));
    }
    // Host names are resolved when the config loads (and on each reload).
    target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{target}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{target}` resolves to no address"))
}

/// Compile one `upstreams[]` entry: targets resolved (a host name to its first address),
/// balancing, timeouts and its probe. Health of targets that stay carries over from
/// `previous`, the pool of the same name in the serving generation.
pub fn pool(
    up: &UpstreamConfig,
    path: &str,
    previous: Option<&Pool>,
    issues: &mut Issues<'_>,
) -> Option<Pool> {
    let before = issues.len();
    if up.name.is_empty() {
        issues.push(format!("{path}.name"), "an upstream needs a name");
    }
    if up.targets.is_empty() {
        issues.push(
            format!("{path}.targets"),
            "an upstream needs at least one target",
        );
    }
    let mut targets = Vec::with_capacity(up.targets.len());
    let mut seen = HashSet::new();
    for (j, t) in up.targets.iter().enumerate() {
        match resolve(t) {
            Ok(addr) if !seen.insert(addr) => {
                issues.push(
                    format!("{path}.targets[{j}]"),
                    format!("`{t}` is listed twice"),
                );
            }
            Ok(addr) => targets.push((addr, t.clone())),
            Err(e) => issues.push(format!("{path}.targets[{j}]"), e),
        }
    }
    let hash_on = match (up.balance, up.hash_on.as_deref()) {
        (Balance::ConsistentHash, None | Some("client_ip")) => HashOn::ClientIp,
        (Balance::ConsistentHash, Some(other)) => match other.strip_prefix("header:") {
            Some(name) => match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(h) => HashOn::Header(h),
                Err(_) => {
                    issues.push(
                        format!("{path}.hash_on"),
                        format!("invalid header name `{name}`"),
                    );
                    HashOn::ClientIp
                }
            },
            None => {
                issues.push(
                    format!("{path}.hash_on"),
                    format!("unknown `{other}`, expected `client_ip` or `header:<name>`"),
                );
                HashOn::ClientIp
            }
        },
        (_, Some(_)) => {
            issues.push(
                format!("{path}.hash_on"),
                "only used with `balance: consistent_hash`",
            );
            HashOn::ClientIp
        }
        (_, None) => HashOn::ClientIp,
    };
    let forwarding = super::forwarding::pool(up, path, issues);
    let outlier = super::outlier::compile(up.outlier.as_ref(), &format!("{path}.outlier"), issues);
    let probe = up
        .health_check
        .as_ref()
        .and_then(|hc| probe(hc, &up.targets, &format!("{path}.health_check"), issues));
    if issues.len() != before {
        return None;
    }
    let settings = PoolSettings {
        balance: up.balance,
        hash_on,
        forwarding,
        outlier,
    };
    match Pool::new(&up.name, targets, settings, probe, previous) {
        Ok(pool) => Some(pool),
        Err(e) => {
            issues.push(path, e);
            None
        }
    }
}

fn probe(
    hc: &HealthCheckConfig,
    targets: &[String],
    path: &str,
    issues: &mut Issues<'_>,
) -> Option<HealthProbe> {
    let kind = match (&hc.http, &hc.tcp) {
        (Some(http), None) => {
            if !http.path.starts_with('/') {
                issues.push(format!("{path}.http.path"), "must start with `/`");
                return None;
            }
            if !(100..=599).contains(&http.expect_status) {
                issues.push(
                    format!("{path}.http.expect_status"),
                    "must be an HTTP status",
                );
                return None;
            }
            ProbeKind::Http {
                path: http.path.clone(),
                status: http.expect_status,
                host: http.host.clone(),
            }
        }
        (None, Some(_)) => ProbeKind::Tcp,
        (Some(_), Some(_)) => {
            issues.push(path, "give either `http` or `tcp`, not both");
            return None;
        }
        (None, None) => {
            issues.push(path, "give `http: { path: ... }` or `tcp: {}`");
            return None;
        }
    };
    let mut ok = true;
    for (field, n) in [
        ("healthy_after", hc.healthy_after),
        ("unhealthy_after", hc.unhealthy_after),
    ] {
        if n == 0 {
            issues.push(format!("{path}.{field}"), "must be at least 1");
            ok = false;
        }
    }
    for (field, d) in [("interval", hc.interval), ("timeout", hc.timeout)] {
        if d.0.is_zero() {
            issues.push(format!("{path}.{field}"), "must be more than zero");
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    match HealthProbe::new(
        kind,
        hc.interval.0,
        hc.timeout.0,
        hc.healthy_after,
        hc.unhealthy_after,
        targets,
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            issues.push(path, e);
            None
        }
    }
}
