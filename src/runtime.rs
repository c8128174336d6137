//! The compiled, ready-to-serve form of a config.
//!
//! A [`Runtime`] is built from a parsed [`Config`] in one go (addresses parsed, route table
//! compiled, pools and probes made) and is then immutable: it lives behind the reloader's
//! `ArcSwap`, and each request takes one snapshot of it for its whole life. Building never
//! touches the runtime that is serving; it only borrows state to carry over (target health).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::auth::Auth;
use crate::client_ip::ClientIps;
use crate::config::{
    AuthConfig, Balance, Config, ConfigError, HealthCheckConfig, Issues, Parsed, UpstreamConfig,
};
use crate::config::{LimitConfig, LimitScope, RouteConfig};
use crate::metrics::RouteMetrics;
use crate::proxy::headers::OwnedHeaders;
use crate::ratelimit::{Concurrency, LimitKind, Limiter, RouteLimits};
use crate::routing::{Methods, RouteMatch, RouteTable};
use crate::upstream::health::ProbeKind;
use crate::upstream::{HashOn, HealthProbe, Pool, PoolSettings};

/// A route, compiled.
pub struct Route {
    /// Its name.
    pub name: String,
    /// The pool that serves it.
    pub pool: Arc<Pool>,
    /// Its request counters.
    pub metrics: RouteMetrics,
    /// What it requires of a token; `None` for `auth: none`.
    pub policy: Option<crate::auth::Policy>,
    /// Its rate limits.
    pub limits: RouteLimits,
}

/// Everything a request needs, for one generation of the config.
pub struct Runtime {
    /// 1 for the config loaded at start, one more for each successful reload.
    pub generation: u64,
    /// The config it was built from.
    pub config: Config,
    /// Routes, in config order.
    pub routes: Vec<Route>,
    /// The lookup table over `routes`.
    pub table: RouteTable,
    /// Pools, in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Counters for requests no route took.
    pub unmatched: RouteMetrics,
    /// Requests whose request line and headers exceed this are refused with 431.
    pub max_request_header_bytes: usize,
    /// What happens to method override headers.
    pub method_override: crate::config::MethodOverrideHeaders,
    /// Connection limits and timeouts (`server.max_connections`, ...).
    pub connections: crate::connections::ConnectionLimits,
    /// Issuers, token cache and what routes need of tokens.
    pub auth: Arc<crate::auth::Auth>,
    /// Finds the client address behind trusted proxies.
    pub client_ips: ClientIps,
    /// The client headers removed from every request (identity headers, spellings with `_`).
    pub owned_headers: OwnedHeaders,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("generation", &self.generation)
            .field("routes", &self.routes.len())
            .field("pools", &self.pools.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Compile `parsed`. State of pools in `previous` carries over where targets stay.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found, each with its path and line.
    pub fn build(
        parsed: &Parsed,
        previous: Option<&Runtime>,
        generation: u64,
    ) -> Result<Runtime, ConfigError> {
        let config = &parsed.config;
        let mut issues = Issues::new(&parsed.index);
        check_process_settings(config, &mut issues);
        let auth = Auth::build(config, previous.map(|p| &*p.auth), &mut issues);
        let client_ips = build_client_ips(config, &mut issues);
        if let Some(cluster) = &config.cluster {
            if let Err(e) = redis::Client::open(cluster.redis.as_str()) {
                issues.push("cluster.redis", format!("invalid Redis URL: {e}"));
            }
            if cluster.sync_interval.0.is_zero() {
                issues.push("cluster.sync_interval", "must be more than zero");
            }
        }

        let mut pools = Vec::with_capacity(config.upstreams.len());
        let mut pool_index: HashMap<&str, usize> = HashMap::new();
        for (i, up) in config.upstreams.iter().enumerate() {
            let path = format!("upstreams[{i}]");
            if pool_index.insert(up.name.as_str(), i).is_some() {
                issues.push(
                    format!("{path}.name"),
                    format!("duplicate upstream `{}`", up.name),
                );
                continue;
            }
            let old = previous.and_then(|p| p.pools.iter().find(|old| old.name == up.name));
            if let Some(mut pool) = build_pool(up, &path, old.map(|p| &**p), &mut issues) {
                pool.concurrency = build_concurrency(up, &path, old.map(|p| &**p), &mut issues);
                pool.concurrency_config = up.concurrency.clone();
                pools.push(Arc::new(pool));
            }
        }
        let pools_by_name: HashMap<&str, &Arc<Pool>> =
            pools.iter().map(|p| (p.name.as_str(), p)).collect();

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut matches = Vec::with_capacity(config.routes.len());
        let mut names = HashSet::new();
        for (i, rc) in config.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if rc.name.is_empty() {
                issues.push(format!("{path}.name"), "a route needs a name");
            } else if !names.insert(rc.name.as_str()) {
                issues.push(
                    format!("{path}.name"),
                    format!("duplicate route `{}`", rc.name),
                );
            }
            let Some(m) = compile_match(rc, &path, &mut issues) else {
                continue;
            };
            let policy = match &rc.auth {
                Some(AuthConfig::Policy(p)) => {
                    match auth.policy(p, &format!("{path}.auth"), &mut issues) {
                        Some(policy) => Some(policy),
                        None => continue,
                    }
                }
                Some(AuthConfig::None) => None,
                None if config.issuers.is_empty() => None,
                None => {
                    issues.push(
                        format!("{path}.auth"),
                        "with issuers configured every route must say `auth:`; write `auth: none` \
                         to serve it without a token",
                    );
                    continue;
                }
            };
            let Some(pool) = pools_by_name.get(rc.upstream.as_str()) else {
                if !pool_index.contains_key(rc.upstream.as_str()) {
                    issues.push(
                        format!("{path}.upstream"),
                        format!("no upstream named `{}`", rc.upstream),
                    );
                }
                continue;
            };
            let old_route = previous.and_then(|p| p.routes.iter().find(|r| r.name == rc.name));
            let Some(limits) = build_limits(rc, &path, config, &auth, old_route, &mut issues)
            else {
                continue;
            };
            matches.push(m);
            routes.push(Route {
                name: rc.name.clone(),
                pool: Arc::clone(pool),
                metrics: RouteMetrics::new(&rc.name, policy.is_some()),
                policy,
                limits,
            });
        }
        let table = match RouteTable::build(&matches) {
            Ok(t) => t,
            Err(clashes) => {
                for (a, b) in clashes {
                    let route = |k: usize| {
                        config
                            .routes
                            .iter()
                            .position(|r| r.name == routes[k].name)
                            .unwrap_or(k)
                    };
                    issues.push(
                        format!("routes[{}].match", route(a)),
                        format!(
                            "route `{}` takes the same requests as route `{}`",
                            routes[a].name, routes[b].name
                        ),
                    );
                }
                RouteTable::default()
            }
        };
        let max_request_header_bytes = config.server.max_request_header_bytes;
        let owned_headers = OwnedHeaders::new(
            &auth.identity_headers,
            config.server.headers_with_underscores,
        );
        issues.finish(Runtime {
            generation,
            config: config.clone(),
            routes,
            table,
            pools,
            unmatched: RouteMetrics::new("", false),
            max_request_header_bytes,
            method_override: config.server.method_override_headers,
            connections: crate::connections::ConnectionLimits::from_config(&config.server),
            auth: Arc::new(auth),
            client_ips,
            owned_headers,
        })
    }

    /// Compile config text; for tests and `check`.
    ///
    /// # Errors
    /// As [`Config::parse`] and [`Runtime::build`].
    pub fn from_yaml(text: &str) -> Result<Runtime, ConfigError> {
        Runtime::build(&Config::parse(text)?, None, 1)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// Settings read once at start (listeners, admin, threads): checked here so that `check`
/// reports them; a reload that changes them keeps the old values and says so.
fn check_process_settings(config: &Config, issues: &mut Issues<'_>) {
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
        if let Some(tls) = &l.tls {
            let mut readable = true;
            for (field, file) in [("cert", &tls.cert), ("key", &tls.key)] {
                if let Err(e) = std::fs::metadata(file) {
                    readable = false;
                    issues.push(
                        format!("listeners[{i}].tls.{field}"),
                        format!("cannot read `{}`: {e}", file.display()),
                    );
                }
            }
            if readable {
                if let Err(e) = check_tls_pair(&tls.cert, &tls.key) {
                    issues.push(format!("listeners[{i}].tls"), e);
                }
            }
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
}

fn build_client_ips(config: &Config, issues: &mut Issues<'_>) -> ClientIps {
    let c = &config.client_ip;
    let mut nets = Vec::new();
    for (i, t) in c.trusted_proxies.iter().enumerate() {
        let parsed = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => issues.push(
                format!("client_ip.trusted_proxies[{i}]"),
                format!("`{t}` is not an address or CIDR"),
            ),
        }
    }
    if c.ipv6_prefix > 128 {
        issues.push("client_ip.ipv6_prefix", "must be at most 128");
    }
    ClientIps::new(nets, c.ipv6_prefix)
}

fn build_concurrency(
    up: &UpstreamConfig,
    path: &str,
    previous: Option<&Pool>,
    issues: &mut Issues<'_>,
) -> Option<Arc<Concurrency>> {
    let c = up.concurrency.as_ref()?;
    let path = format!("{path}.concurrency");
    let kept = previous
        .filter(|p| p.concurrency_config.as_ref() == Some(c))
        .and_then(|p| p.concurrency.clone());
    match (c.limit, c.adaptive) {
        (Some(_), true) => {
            issues.push(path, "give either `limit` or `adaptive: true`, not both");
            None
        }
        (None, false) => {
            issues.push(path, "give `limit: N` or `adaptive: true`");
            None
        }
        (Some(0), false) => {
            issues.push(format!("{path}.limit"), "must be at least 1");
            None
        }
        (Some(limit), false) => {
            kept.or_else(|| Some(Arc::new(Concurrency::fixed(&up.name, limit))))
        }
        (None, true) if c.min == 0 || c.min > c.max => {
            issues.push(
                format!("{path}.min"),
                "must be at least 1 and at most `max`",
            );
            None
        }
        (None, true) => {
            kept.or_else(|| Some(Arc::new(Concurrency::adaptive(&up.name, c.min, c.max))))
        }
    }
}

fn build_limits(
    rc: &RouteConfig,
    path: &str,
    config: &Config,
    auth: &Auth,
    previous: Option<&Route>,
    issues: &mut Issues<'_>,
) -> Option<RouteLimits> {
    let Some(rl) = &rc.rate_limit else {
        return Some(RouteLimits::default());
    };
    let before = issues.len();
    let has_policy = matches!(rc.auth, Some(AuthConfig::Policy(_)));
    let mut limits = RouteLimits::default();
    let mut make = |kind: LimitKind, lc: &LimitConfig| -> Option<Arc<Limiter>> {
        let field = format!("{path}.rate_limit.{}", kind.name());
        if lc.burst == 0 {
            issues.push(format!("{field}.burst"), "must be at least 1");
            return None;
        }
        if lc.max_keys == 0 {
            issues.push(format!("{field}.max_keys"), "must be at least 1");
            return None;
        }
        if lc.scope == LimitScope::Cluster && config.cluster.is_none() {
            issues.push(
                format!("{field}.scope"),
                "`scope: cluster` needs a `cluster:` section",
            );
            return None;
        }
        if lc.claim.is_some() && kind != LimitKind::PerUser {
            issues.push(format!("{field}.claim"), "only `per_user` takes a claim");
            return None;
        }
        // Buckets of an unchanged limit carry over a reload.
        let kept = previous.and_then(|r| {
            r.limits
                .all()
                .find(|l| l.kind == kind && l.config.same_buckets(lc))
                .cloned()
        });
        Some(kept.unwrap_or_else(|| Arc::new(Limiter::new(&rc.name, kind, lc))))
    };
    limits.per_ip = rl.per_ip.as_ref().and_then(|lc| make(LimitKind::PerIp, lc));
    limits.per_route = rl
        .per_route
        .as_ref()
        .and_then(|lc| make(LimitKind::PerRoute, lc));
    limits.auth_failures_per_ip = rl
        .auth_failures_per_ip
        .as_ref()
        .and_then(|lc| make(LimitKind::AuthFailuresPerIp, lc));
    if let Some(lc) = &rl.per_user {
        let limiter = make(LimitKind::PerUser, lc);
        let claim = lc.claim.as_deref().unwrap_or("sub");
        match (has_policy, auth.projection.slot(claim), limiter) {
            (false, _, _) => issues.push(
                format!("{path}.rate_limit.per_user"),
                "needs an auth policy: users are known only from a verified token",
            ),
            (true, Some(slot), Some(l)) => limits.per_user = Some((l, slot)),
            _ => {}
        }
    }
    if rl.auth_failures_per_ip.is_some() && !has_policy {
        issues.push(
            format!("{path}.rate_limit.auth_failures_per_ip"),
            "needs an auth policy: there are no token checks to fail",
        );
    }
    if issues.len() != before {
        return None;
    }
    let headers = [
        &rl.per_ip,
        &rl.per_user,
        &rl.per_route,
        &rl.auth_failures_per_ip,
    ]
    .into_iter()
    .flatten()
    .any(|lc| lc.headers);
    let policy_header = limits
        .all()
        .map(|l| l.policy_header.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    limits.headers_on_success = headers;
    limits.policy_header = http::HeaderValue::from_str(&policy_header).ok();
    Some(limits)
}

/// Load a certificate and key as the TLS listener will. Pingora loads them only when its
/// listener thread starts and panics there on a bad file, leaving a process without
/// listeners; here a bad pair is a config error that `check` reports and `run` refuses.
fn check_tls_pair(cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let Ok(Some((chain, private_key))) = pingora::tls::load_certs_and_key_files(&cert, &key) else {
        return Err(format!(
            "`{cert}` must hold a PEM certificate and `{key}` a PEM private key"
        ));
    };
    // Without a process-wide provider `ServerConfig::builder` would panic; this installs
    // the same ring provider Pingora's listener uses, once.
    pingora::tls::install_default_crypto_provider();
    pingora::tls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map(drop)
        .map_err(|e| format!("`{cert}` and `{key}` are not a usable certificate and key: {e}"))
}

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

fn build_pool(
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
    for (field, d) in [
        ("connect_timeout", up.connect_timeout),
        ("read_timeout", up.read_timeout),
    ] {
        if d.0.is_zero() {
            issues.push(format!("{path}.{field}"), "must be more than zero");
        }
    }
    let probe = up
        .health_check
        .as_ref()
        .and_then(|hc| build_probe(hc, &up.targets, &format!("{path}.health_check"), issues));
    if issues.len() != before {
        return None;
    }
    let settings = PoolSettings {
        balance: up.balance,
        hash_on,
        connect_timeout: up.connect_timeout.0,
        read_timeout: up.read_timeout.0,
        retries: up.retries,
    };
    match Pool::new(&up.name, targets, settings, probe, previous) {
        Ok(pool) => Some(pool),
        Err(e) => {
            issues.push(path, e);
            None
        }
    }
}

fn build_probe(
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

fn compile_match(
    rc: &crate::config::RouteConfig,
    path: &str,
    issues: &mut Issues<'_>,
) -> Option<RouteMatch> {
    let mut ok = true;
    let host = match rc.matcher.host.as_deref() {
        None => None,
        Some(h) => {
            let lower = h.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            let valid = !bare.is_empty()
                && !bare.contains('*')
                && !bare.contains(':')
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                issues.push(
                    format!("{path}.match.host"),
                    format!("`{h}` is not a host name or `*.domain` pattern"),
                );
                ok = false;
            }
            Some(lower)
        }
    };
    let prefix = rc.matcher.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/') {
        issues.push(format!("{path}.match.path_prefix"), "must start with `/`");
        ok = false;
    }
    let methods = match rc.matcher.methods.as_deref() {
        None => Methods::ANY,
        Some([]) => {
            issues.push(
                format!("{path}.match.methods"),
                "leave it out to allow every method",
            );
            ok = false;
            Methods::ANY
        }
        Some(list) => Methods::parse(list).unwrap_or_else(|e| {
            issues.push(format!("{path}.match.methods"), e);
            ok = false;
            Methods::ANY
        }),
    };
    ok.then_some(RouteMatch {
        host,
        path_prefix: prefix,
        methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
upstreams:
  - name: orders
    targets: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]
    health_check: { http: { path: /healthz }, interval: 1s }
routes:
  - name: orders
    match: { path_prefix: /v1/orders, methods: [GET] }
    upstream: orders
";

    #[test]
    fn builds_a_valid_config() {
        let rt = Runtime::from_yaml(BASE).unwrap();
        assert_eq!(rt.routes.len(), 1);
        assert_eq!(rt.pools[0].targets.len(), 2);
        assert!(rt.pools[0].probe.is_some());
        let i = rt
            .table
            .lookup("x", "/v1/orders/1", &http::Method::GET)
            .unwrap();
        assert_eq!(rt.routes[i].name, "orders");
    }

    #[test]
    fn connection_settings_compile_and_zero_limits_are_refused() {
        let rt = Runtime::from_yaml(&format!(
            "server:\n  max_connections: 10\n  max_connections_per_ip: 2\n  \
             keepalive_timeout: 5s\n  request_header_timeout: 3s\n{BASE}"
        ))
        .unwrap();
        let c = rt.connections;
        assert_eq!((c.max, c.max_per_ip), (Some(10), Some(2)));
        assert_eq!(c.keepalive, std::time::Duration::from_secs(5));
        assert_eq!(c.request_header_timeout, std::time::Duration::from_secs(3));
        let defaults = Runtime::from_yaml(BASE).unwrap().connections;
        assert_eq!((defaults.max, defaults.max_per_ip), (None, None));
        assert_eq!(defaults.keepalive, std::time::Duration::from_secs(60));
        assert_eq!(
            defaults.request_header_timeout,
            std::time::Duration::from_secs(10)
        );

        let err = Runtime::from_yaml(&format!(
            "server:\n  max_connections: 0\n  max_connections_per_ip: 0\n  \
             request_header_timeout: 0s\n{BASE}"
        ))
        .unwrap_err();
        let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.max_connections",
                "server.max_connections_per_ip",
                "server.request_header_timeout"
            ],
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_path_and_line() {
        let text = "
listeners:
  - address: \"nowhere\"
upstreams:
  - name: a
    targets: [\"127.0.0.1\"]
    hash_on: client_ip
routes:
  - name: r
    match: { host: \"bad host\", path_prefix: x, methods: [FETCH] }
    upstream: missing
";
        let err = Runtime::from_yaml(text).unwrap_err();
        let got: Vec<(String, Option<usize>)> = err
            .issues()
            .iter()
            .map(|i| (i.path.clone(), i.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("listeners[0].address".into(), Some(3)),
                ("upstreams[0].targets[0]".into(), Some(6)),
                ("upstreams[0].hash_on".into(), Some(7)),
                ("routes[0].match.host".into(), Some(10)),
                ("routes[0].match.path_prefix".into(), Some(10)),
                ("routes[0].match.methods".into(), Some(10)),
            ],
            "{err}"
        );
    }

    #[test]
    fn unknown_upstream_and_duplicates() {
        let text = format!(
            "{BASE}  - name: orders\n    match: {{ path_prefix: /v1/orders, methods: [GET] }}\n    upstream: nope\n"
        );
        let err = Runtime::from_yaml(&text).unwrap_err();
        let msgs: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("routes[1].name: duplicate route `orders`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("routes[1].upstream: no upstream named `nope`")),
            "{msgs:?}"
        );
    }

    #[test]
    fn overlapping_routes_are_refused() {
        let text = format!(
            "{BASE}  - name: again\n    match: {{ path_prefix: /v1/orders }}\n    upstream: orders\n"
        );
        let err = Runtime::from_yaml(&text).unwrap_err();
        assert!(
            err.to_string()
                .contains("route `again` takes the same requests as route `orders`"),
            "{err}"
        );
    }

    #[test]
    fn rate_limit_config_errors() {
        let text = "
client_ip: { trusted_proxies: [\"10.0.0.0/8\", nonsense] }
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
    concurrency: { limit: 5, adaptive: true }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    rate_limit:
      per_ip: { rate: 5/s, burst: 0 }
      per_user: { rate: 5/s, burst: 5 }
      per_route: { rate: 5/s, burst: 5, scope: cluster }
";
        let err = Runtime::from_yaml(text).unwrap_err().to_string();
        for expected in [
            "client_ip.trusted_proxies[1]: `nonsense` is not an address or CIDR",
            "upstreams[0].concurrency: give either `limit` or `adaptive: true`, not both",
            "routes[0].rate_limit.per_ip.burst: must be at least 1",
            "routes[0].rate_limit.per_user: needs an auth policy",
            "routes[0].rate_limit.per_route.scope: `scope: cluster` needs a `cluster:` section",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
    }

    #[test]
    fn reload_keeps_unchanged_limiters_and_caps() {
        let text = "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
    concurrency: { adaptive: true, min: 4, max: 50 }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    rate_limit:
      per_ip: { rate: 5/s, burst: 5 }
      per_route: { rate: 9/s, burst: 9 }
";
        let old = Runtime::from_yaml(text).unwrap();
        let changed = text
            .replace("rate: 9/s, burst: 9", "rate: 10/s, burst: 10")
            .replace("rate: 5/s, burst: 5", "rate: 5/s, burst: 5, headers: true");
        let parsed = Config::parse(&changed).unwrap();
        let new = Runtime::build(&parsed, Some(&old), 2).unwrap();
        let (o, n) = (&old.routes[0].limits, &new.routes[0].limits);
        assert!(Arc::ptr_eq(
            o.per_ip.as_ref().unwrap(),
            n.per_ip.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(
            o.per_route.as_ref().unwrap(),
            n.per_route.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            old.pools[0].concurrency.as_ref().unwrap(),
            new.pools[0].concurrency.as_ref().unwrap()
        ));
    }
}
