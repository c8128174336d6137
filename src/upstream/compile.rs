//! Compiling `upstreams:`: pools, their targets and probes, from the config section and the
//! serving generation's pool of the same name; and `server.dns`. Nothing here resolves a name.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::dns::{Resolving, MIN_REFRESH};
use super::health::{HealthProbe, ProbeKind};
use super::{HashOn, Pool, PoolSettings, TargetAddress, TargetDef};
use crate::config::targets::MAX_WEIGHT;
use crate::config::{Balance, DnsConfig, HealthCheckConfig, Issues, Protocol, UpstreamConfig};

/// Read a target's address: an `ip:port`, or a host name and port. Never resolves.
fn address(target: &str) -> Result<TargetAddress, String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(TargetAddress::Fixed(addr));
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err(format!("`{target}` needs a port (`host:port`)"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{target}`: `{port}` is not a port"))?;
    if host.parse::<IpAddr>().is_ok() || host.contains(':') || host.starts_with('[') {
        return Err(format!(
            "`{target}` is not an address; write an IPv6 address in brackets (`[::1]:80`)"
        ));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!("`{target}`: `{host}` is not a host name"));
    }
    Ok(TargetAddress::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Compile `server.dns`: the name servers to ask, each `ip` or `ip:port` (port 53).
pub fn resolving(dns: &DnsConfig, issues: &mut Issues<'_>) -> Resolving {
    let mut nameservers = Vec::with_capacity(dns.nameservers.len());
    for (i, ns) in dns.nameservers.iter().enumerate() {
        match ns
            .parse::<SocketAddr>()
            .or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        {
            Ok(addr) => nameservers.push(addr),
            Err(_) => issues.push(
                format!("server.dns.nameservers[{i}]"),
                format!("`{ns}` is not an `ip` or `ip:port`"),
            ),
        }
    }
    Resolving { nameservers }
}

/// Compile one `upstreams[]` entry: targets (a host name is kept as a name, resolved later
/// in the background), weights, balancing, timeouts and its probe. Health of targets and
/// addresses of names that stay carry over from `previous`, the pool of the same name in
/// the serving generation.
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
        if !(1..=MAX_WEIGHT).contains(&t.weight) {
            issues.push(
                format!("{path}.targets[{j}].weight"),
                format!("must be from 1 to {MAX_WEIGHT}"),
            );
        }
        match address(&t.address) {
            Ok(a) if !seen.insert(a.clone()) => {
                issues.push(
                    format!("{path}.targets[{j}]"),
                    format!("`{}` is listed twice", t.address),
                );
            }
            Ok(a) => targets.push(TargetDef {
                written: t.address.clone(),
                weight: usize::try_from(t.weight).unwrap_or(1),
                address: a,
            }),
            Err(e) => issues.push(format!("{path}.targets[{j}]"), e),
        }
    }
    if up.dns_refresh.0 < MIN_REFRESH {
        issues.push(format!("{path}.dns_refresh"), "must be at least 1s");
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
    let written: Vec<String> = up.targets.iter().map(|t| t.address.clone()).collect();
    // `h2` is chosen by ALPN, which needs TLS to the targets.
    if up.protocol == Protocol::H2 && up.tls.is_none() {
        issues.push(
            format!("{path}.protocol"),
            "`h2` is HTTP/2 by ALPN over TLS and needs `tls`; `h2c` is plaintext HTTP/2",
        );
    }
    let tls = up.tls.as_ref().and_then(|tls| {
        let kept = previous.and_then(|p| p.tls.as_ref());
        super::tls::compile(tls, &up.name, &format!("{path}.tls"), kept, issues)
    });
    let probe = up.health_check.as_ref().and_then(|hc| {
        let at = format!("{path}.health_check");
        probe(hc, &written, tls.as_deref(), &at, issues)
    });
    if issues.len() != before {
        return None;
    }
    let settings = PoolSettings {
        balance: up.balance,
        hash_on,
        forwarding,
        outlier,
        dns_refresh: up.dns_refresh.0,
        protocol: up.protocol,
    };
    match Pool::new(&up.name, targets, settings, probe, previous) {
        Ok(pool) => Some(Pool { tls, ..pool }),
        Err(e) => {
            issues.push(path, e);
            None
        }
    }
}

fn probe(
    hc: &HealthCheckConfig,
    targets: &[String],
    tls: Option<&super::tls::UpstreamTls>,
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
        tls,
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            issues.push(path, e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::generation::Generation;

    fn upstream(targets: &str, extra: &str) -> String {
        format!(
            "upstreams:\n  - name: u\n    targets: {targets}\n{extra}routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: u\n"
        )
    }

    /// A name compiles to a member-less name entry: nothing is resolved (`.invalid` never
    /// resolves anywhere, so a compile that tried would fail).
    #[test]
    fn names_are_never_resolved_at_compile() {
        let g = Generation::from_yaml(&upstream(
            "[\"127.0.0.1:9\", \"Backend.INVALID:80\", { address: \"canary.invalid:80\", weight: 5 }]",
            "    dns_refresh: 2s\n",
        ))
        .unwrap();
        let pool = &g.pools[0];
        assert_eq!(
            pool.target_count(),
            1,
            "only the fixed address has a member"
        );
        let names: Vec<(&str, u16)> = pool.names().map(|n| (n.host.as_str(), n.port)).collect();
        assert_eq!(names, [("backend.invalid", 80), ("canary.invalid", 80)]);
        assert_eq!(pool.specs[2].weight, 5);
        assert_eq!(pool.settings.dns_refresh, std::time::Duration::from_secs(2));
        assert!(g.dns.nameservers.is_empty());
    }

    #[test]
    fn target_and_resolver_errors() {
        let text = format!(
            "server:\n  dns: {{ nameservers: [\"127.0.0.1:5353\", \"10.0.0.1\", \"ns.example\"] }}\n{}",
            upstream(
                "[\"a.test:80\", \"A.test:80\", \"::1:80\", \"bad_host!:80\", \"x.test:http\", { address: \"b.test:80\", weight: 0 }, { address: \"c.test:80\", weight: 101 }]",
                "    dns_refresh: 500ms\n",
            )
        );
        let err = Generation::from_yaml(&text).unwrap_err();
        let got: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
        for want in [
            "server.dns.nameservers[2]: `ns.example` is not an `ip` or `ip:port`",
            "upstreams[0].targets[1]: `A.test:80` is listed twice",
            "upstreams[0].targets[2]: `::1:80` is not an address",
            "upstreams[0].targets[3]: `bad_host!:80`: `bad_host!` is not a host name",
            "upstreams[0].targets[4]: `x.test:http`: `http` is not a port",
            "upstreams[0].targets[5].weight: must be from 1 to 100",
            "upstreams[0].targets[6].weight: must be from 1 to 100",
            "upstreams[0].dns_refresh: must be at least 1s",
        ] {
            assert!(
                got.iter().any(|g| g.contains(want)),
                "no `{want}` in {got:#?}"
            );
        }
        assert_eq!(got.len(), 8, "{got:#?}");
        let ok = Generation::from_yaml(&format!(
            "server:\n  dns: {{ nameservers: [\"127.0.0.1:5353\", \"10.0.0.1\"] }}\n{}",
            upstream("[\"a.test:80\"]", "")
        ))
        .unwrap();
        assert_eq!(
            ok.dns.nameservers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
    }
}
