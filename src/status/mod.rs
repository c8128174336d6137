//! The status page of the admin listener (`GET /`) and its data (`GET /status.json`): what
//! the serving generation routes where and under which policy and limits, each pool's
//! targets and their health, each issuer's keys, and the last reloads.
//!
//! [`Status::of`] reads a snapshot; [`page`] writes it as one HTML page that refreshes
//! itself. Everything shown comes from the config and the live state, and never a secret:
//! no client secret, no environment value, no key material (only key ids), no URL's user
//! part or query.

pub mod page;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{AuthConfig, Config, IssuerConfig, RouteConfig, UpstreamConfig};
use crate::generation::Generation;
use crate::reload::ReloadRecord;

/// The build, as `/status.json` and the page name it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the page shows, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The build's version.
    pub version: &'static str,
    /// The generation serving.
    pub generation: u64,
    /// Seconds since the process started serving.
    pub uptime_seconds: u64,
    /// When this was read, in Unix seconds.
    pub now: u64,
    /// Routes, in config order.
    pub routes: Vec<RouteStatus>,
    /// Pools, in config order.
    pub pools: Vec<PoolStatus>,
    /// Issuers, in config order.
    pub issuers: Vec<IssuerStatus>,
    /// The last reloads, newest first.
    pub reloads: Vec<ReloadRecord>,
}

/// A route: what it takes, where it sends it, what it asks of a request.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// Its name.
    pub name: String,
    /// The host it takes; `None` for any.
    pub host: Option<String>,
    /// Its path prefix.
    pub path_prefix: String,
    /// Its methods; empty for any.
    pub methods: Vec<String>,
    /// Its pool.
    pub upstream: String,
    /// What it asks of a request.
    pub auth: AuthStatus,
    /// Its rate limits.
    pub limits: Vec<LimitStatus>,
}

/// A route's policy.
#[derive(Debug, Clone, Serialize)]
pub struct AuthStatus {
    /// `none`, `jwt`, `jwt+introspection`, `session`, or `session+jwt`.
    pub kind: String,
    /// Accepted issuers, by name.
    pub issuers: Vec<String>,
    /// The audiences those issuers accept.
    pub audiences: Vec<String>,
    /// Required scopes.
    pub scopes: Vec<String>,
    /// Required claims, as `claim=value|value`.
    pub claims: Vec<String>,
    /// The browser session it takes, by name.
    pub session: Option<String>,
}

/// One rate limit of a route.
#[derive(Debug, Clone, Serialize)]
pub struct LimitStatus {
    /// `per_ip`, `per_user`, `per_route`, `auth_failures_per_ip`.
    pub kind: &'static str,
    /// As written: `100/s`.
    pub rate: String,
    /// Its burst.
    pub burst: u64,
    /// `local` or `cluster`.
    pub scope: &'static str,
    /// Keys (clients, users) tracked now.
    pub keys: u64,
}

/// A pool and its targets.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: String,
    /// How it picks a target.
    pub balance: &'static str,
    /// What it speaks to its targets.
    pub protocol: &'static str,
    /// Whether it speaks TLS to them.
    pub tls: bool,
    /// Its active health check (`http /healthz every 5s`); `None` without one.
    pub health_check: Option<String>,
    /// Targets taking traffic now.
    pub healthy: usize,
    /// Requests to it in flight now.
    pub in_flight: usize,
    /// Its in-flight cap, when it has one.
    pub concurrency: Option<CapStatus>,
    /// Its targets (a host name counts once per address).
    pub targets: Vec<TargetStatus>,
}

/// A pool's in-flight cap.
#[derive(Debug, Clone, Serialize)]
pub struct CapStatus {
    /// The cap now.
    pub limit: usize,
    /// Requests holding a place.
    pub in_flight: usize,
    /// Whether it adapts to the targets' latency.
    pub adaptive: bool,
}

/// One target of a pool.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// Its address (`host:port@ip:port` for an address of a host name).
    pub label: String,
    /// `up`, `down` (its probes fail) or `ejected` (it failed requests in a row).
    pub state: &'static str,
    /// What its active probes say.
    pub probe_healthy: bool,
    /// Seconds it stays ejected (rounded up); `None` when it is not.
    pub ejected_seconds: Option<u64>,
    /// Times it was ejected.
    pub ejections: u32,
}

/// An issuer and its keys.
#[derive(Debug, Clone, Serialize)]
pub struct IssuerStatus {
    /// Its name.
    pub name: String,
    /// The `iss` its tokens carry.
    pub iss: String,
    /// Where its keys come from: `discovery`, `jwks_uri ...`, `jwks_file ...`, `hmac secret`.
    pub source: String,
    /// The audiences it accepts.
    pub audiences: Vec<String>,
    /// Its keys' ids (`-` for a key without one); empty before the first fetch.
    pub key_ids: Vec<String>,
    /// Seconds since its keys were fetched or read; `None` before the first fetch.
    pub key_age_seconds: Option<u64>,
    /// Whether the last fetch failed while older keys keep serving.
    pub stale: bool,
    /// Whether it introspects opaque tokens.
    pub introspection: bool,
}

impl Status {
    /// Read `generation` and the live state it holds, with `reloads` (oldest first) and the
    /// time since the process started.
    pub fn of(generation: &Generation, reloads: Vec<ReloadRecord>, uptime: Duration) -> Status {
        let config = &generation.config;
        let now = SystemTime::now();
        let mut reloads = reloads;
        reloads.reverse();
        Status {
            version: VERSION,
            generation: generation.number,
            uptime_seconds: uptime.as_secs(),
            now: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            routes: generation
                .routes
                .iter()
                .filter_map(|route| {
                    let rc = config.routes.iter().find(|r| r.name == route.name)?;
                    Some(route_status(config, rc, route))
                })
                .collect(),
            pools: generation
                .pools
                .iter()
                .map(|pool| {
                    pool_status(config.upstreams.iter().find(|u| u.name == pool.name), pool)
                })
                .collect(),
            issuers: generation
                .auth
                .issuers
                .iter()
                .map(|issuer| issuer_status(issuer, now))
                .collect(),
            reloads,
        }
    }
}

fn route_status(
    config: &Config,
    rc: &RouteConfig,
    route: &crate::generation::Route,
) -> RouteStatus {
    let m = &rc.matcher;
    RouteStatus {
        name: route.name.clone(),
        host: m.host.clone(),
        path_prefix: m.path_prefix.clone().unwrap_or_else(|| "/".into()),
        methods: m.methods.clone().unwrap_or_default(),
        upstream: route.pool.name.clone(),
        auth: auth_status(config, rc, route),
        limits: route
            .limits
            .all()
            .map(|l| LimitStatus {
                kind: l.kind.name(),
                rate: rate_text(l.config.rate),
                burst: l.config.burst,
                scope: match l.config.scope {
                    crate::config::LimitScope::Local => "local",
                    crate::config::LimitScope::Cluster => "cluster",
                },
                keys: l.key_count(),
            })
            .collect(),
    }
}

fn auth_status(config: &Config, rc: &RouteConfig, route: &crate::generation::Route) -> AuthStatus {
    let mut status = AuthStatus {
        kind: "none".into(),
        issuers: Vec::new(),
        audiences: Vec::new(),
        scopes: Vec::new(),
        claims: Vec::new(),
        session: None,
    };
    let Some(AuthConfig::Policy(p)) = &rc.auth else {
        return status;
    };
    let jwt = match &route.policy {
        Some(policy) if policy.introspector.is_some() => "jwt+introspection",
        _ => "jwt",
    };
    status.kind = match (&p.session, p.issuers.is_empty()) {
        (Some(_), true) => "session".into(),
        (Some(_), false) => format!("session+{jwt}"),
        (None, _) => jwt.into(),
    };
    status.issuers.clone_from(&p.issuers);
    for name in &p.issuers {
        let Some(issuer) = config.issuers.iter().find(|i| &i.name == name) else {
            continue;
        };
        for aud in &issuer.audiences {
            if !status.audiences.contains(aud) {
                status.audiences.push(aud.clone());
            }
        }
    }
    status.scopes.clone_from(&p.require_scopes);
    status.claims = p
        .require_claims
        .iter()
        .map(|(claim, rule)| format!("{claim}={}", rule.0.join("|")))
        .collect();
    status.session.clone_from(&p.session);
    status
}

/// A rate as the config writes it.
fn rate_text(rate: crate::config::Rate) -> String {
    let unit = match rate.per.as_secs() {
        1 => "s".to_string(),
        60 => "min".to_string(),
        3600 => "h".to_string(),
        _ => humantime::format_duration(rate.per).to_string(),
    };
    format!("{}/{unit}", rate.count)
}

fn pool_status(uc: Option<&UpstreamConfig>, pool: &crate::upstream::Pool) -> PoolStatus {
    let members = pool.members();
    let now_ms = crate::upstream::health::now_ms();
    let targets = members
        .targets
        .iter()
        .map(|t| {
            let ejected_ms = t.outlier.ejected_for_ms(now_ms);
            let probe_healthy = t.probe_healthy();
            TargetStatus {
                label: t.label.clone(),
                state: match (probe_healthy, ejected_ms) {
                    (false, _) => "down",
                    (true, Some(_)) => "ejected",
                    (true, None) => "up",
                },
                probe_healthy,
                ejected_seconds: ejected_ms.map(|ms| ms.div_ceil(1000)),
                ejections: t.outlier.ejections(),
            }
        })
        .collect::<Vec<_>>();
    PoolStatus {
        name: pool.name.clone(),
        balance: match pool.settings.balance {
            crate::config::Balance::RoundRobin => "round_robin",
            crate::config::Balance::Random => "random",
            crate::config::Balance::ConsistentHash => "consistent_hash",
        },
        protocol: match pool.settings.protocol {
            crate::config::Protocol::Http1 => "http1",
            crate::config::Protocol::H2 => "h2",
            crate::config::Protocol::H2c => "h2c",
        },
        tls: pool.tls.is_some(),
        health_check: uc.and_then(|u| u.health_check.as_ref()).map(|h| {
            let kind = match &h.http {
                Some(http) => format!("http {}", http.path),
                None => "tcp".to_string(),
            };
            format!("{kind} every {}", humantime::format_duration(h.interval.0))
        }),
        healthy: targets.iter().filter(|t| t.state == "up").count(),
        in_flight: pool.budget.in_flight(),
        concurrency: pool.concurrency.as_ref().map(|c| CapStatus {
            limit: c.limit(),
            in_flight: c.in_flight(),
            adaptive: c.is_adaptive(),
        }),
        targets,
    }
}

fn issuer_status(issuer: &crate::auth::Issuer, now: SystemTime) -> IssuerStatus {
    let keys = issuer.keys();
    IssuerStatus {
        name: issuer.name.clone(),
        iss: issuer.iss.clone(),
        source: source_text(&issuer.config),
        audiences: issuer.config.audiences.clone(),
        key_ids: keys.as_ref().map_or_else(Vec::new, |k| {
            k.kids().map(|kid| kid.unwrap_or("-").to_string()).collect()
        }),
        key_age_seconds: keys
            .as_ref()
            .map(|k| now.duration_since(k.loaded_at).map_or(0, |d| d.as_secs())),
        stale: issuer.is_stale(),
        introspection: issuer.config.introspection.is_some(),
    }
}

/// Where an issuer's keys come from, with no secret: a URL loses its user part, query and
/// fragment; a secret is named by kind only.
fn source_text(config: &IssuerConfig) -> String {
    if config.hmac_secret_env.is_some() {
        return "hmac secret".into();
    }
    if let Some(file) = &config.jwks_file {
        return format!("jwks_file {}", file.display());
    }
    if let Some(uri) = &config.jwks_uri {
        return format!("jwks_uri {}", public_url(uri));
    }
    if config.discovery {
        return "discovery".into();
    }
    "-".into()
}

/// `url` without its user part, query and fragment.
fn public_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shown_keeps_no_credential() {
        assert_eq!(
            public_url("https://user:pw@idp.test/keys?token=abc#x"),
            "https://idp.test/keys"
        );
    }

    #[test]
    fn reads_routes_pools_and_limits_from_a_generation() {
        let generation = Generation::from_yaml(
            "upstreams:\n  - name: orders\n    targets: [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n    health_check: { http: { path: /healthz }, interval: 2s }\n    concurrency: { limit: 7 }\nroutes:\n  - name: orders\n    match: { host: api.test, path_prefix: /v1, methods: [GET, POST] }\n    upstream: orders\n    rate_limit:\n      per_ip: { rate: 5/min, burst: 3 }\n",
        )
        .unwrap();
        let status = Status::of(&generation, Vec::new(), Duration::from_secs(61));
        assert_eq!(status.uptime_seconds, 61);
        let route = &status.routes[0];
        assert_eq!(route.host.as_deref(), Some("api.test"));
        assert_eq!(route.path_prefix, "/v1");
        assert_eq!(route.methods, ["GET", "POST"]);
        assert_eq!(route.auth.kind, "none");
        assert_eq!(route.limits[0].kind, "per_ip");
        assert_eq!(route.limits[0].rate, "5/min");
        let pool = &status.pools[0];
        assert_eq!(pool.health_check.as_deref(), Some("http /healthz every 2s"));
        assert_eq!(pool.healthy, 2);
        assert_eq!(pool.concurrency.as_ref().map(|c| c.limit), Some(7));
        assert_eq!(pool.targets[1].label, "127.0.0.1:9002");
        assert_eq!(pool.targets[1].state, "up");
    }
}
