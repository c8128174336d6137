//! The compiled, ready-to-serve form of a config.
//!
//! A [`Generation`] is built from a parsed [`Config`] in one go (addresses parsed, route table
//! compiled, pools and probes made) and is then immutable: it lives behind the reloader's
//! `ArcSwap`, and each request takes one snapshot of it for its whole life. Building never
//! touches the generation that is serving; it only borrows state to carry over (target
//! health, buckets, caps, keys).
//!
//! Each domain compiles its own section in its own module: [`crate::settings::check`],
//! [`ClientIps::compile`], [`crate::auth::Auth::build`], [`upstream::compile`],
//! [`ratelimit::compile`], [`routing::compile_match`]. This module holds the generation type
//! and the order they run in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Auth;
use crate::client_ip::ClientIps;
use crate::config::{AuthConfig, Config, ConfigError, Issues, Parsed};
use crate::headers::OwnedHeaders;
use crate::metrics::RouteMetrics;
use crate::ratelimit::cluster::ClusterPart;
use crate::ratelimit::{self, RouteLimits};
use crate::revocation::RevocationPart;
use crate::routing::{self, RouteTable};
use crate::settings::ConnectionLimits;
use crate::upstream::{self, Pool};

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
    /// The browser session it takes (`auth: { session: NAME }`).
    pub session: Option<Arc<crate::session::Client>>,
    /// Its rate limits.
    pub limits: RouteLimits,
    /// Its timeouts and retries (its own over its pool's).
    pub forwarding: upstream::forwarding::Forwarding,
    /// Its header edits, rewrite and redirect.
    pub edits: crate::edits::RouteEdits,
    /// Its `cors:`, answered at the edge.
    pub cors: Option<crate::cors::Cors>,
    /// Its `allow_ips` / `deny_ips`.
    pub ip_rules: crate::ip_lists::IpRules,
    /// Its edge cache (`cache:`).
    pub cache: Option<crate::cache::RouteCache>,
    /// The largest request body it takes, in bytes; `None`: no limit.
    pub max_body_bytes: Option<u64>,
}

/// Everything a request needs, for one generation of the config.
pub struct Generation {
    /// 1 for the config loaded at start, one more for each successful reload.
    pub number: u64,
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
    pub connections: ConnectionLimits,
    /// Issuers, token cache and what routes need of tokens.
    pub auth: Arc<crate::auth::Auth>,
    /// Browser-session clients.
    pub sessions: Arc<crate::session::Sessions>,
    /// Finds the client address behind trusted proxies.
    pub client_ips: ClientIps,
    /// The client headers removed from every request (identity headers, spellings with `_`).
    pub owned_headers: OwnedHeaders,
    /// Where host-name targets are looked up (`server.dns`).
    pub dns: Arc<upstream::Resolving>,
    /// The TLS listeners' certificates, read again at each reload.
    pub listener_certs: Vec<Arc<crate::tls::ListenerCert>>,
    /// `tracing:`; `None` makes no span and leaves `traceparent` alone.
    pub tracing: Option<crate::trace::Tracing>,
    /// `server_header` and the listeners that redirect to https.
    pub edits: crate::edits::Edits,
    /// The top-level `allow_ips` / `deny_ips`, checked before routing.
    pub ip_rules: crate::ip_lists::IpRules,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.number)
            .field("routes", &self.routes.len())
            .field("pools", &self.pools.len())
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// Compile `parsed`. State of pools in `previous` carries over where targets stay.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found, each with its path and line.
    pub fn build(
        parsed: &Parsed,
        previous: Option<&Generation>,
        number: u64,
    ) -> Result<Generation, ConfigError> {
        let config = &parsed.config;
        let mut issues = Issues::new(&parsed.index);
        crate::settings::check(config, &mut issues);
        let listener_certs = crate::tls::compile_listeners(
            config,
            previous.map_or(&[][..], |p| &p.listener_certs),
            &mut issues,
        );
        let auth = Auth::build(config, previous.map(|p| &*p.auth), &mut issues);
        let sessions = crate::session::Sessions::build(
            config,
            &auth,
            previous.map(|p| &*p.sessions),
            &mut issues,
        );
        let client_ips = ClientIps::compile(&config.client_ip, &mut issues);
        let ip_rules =
            crate::ip_lists::IpRules::compile(&config.allow_ips, &config.deny_ips, "", &mut issues);
        ratelimit::compile::check_cluster(config, &mut issues);
        let dns = upstream::compile::resolving(&config.server.dns, &mut issues);
        let tracing = crate::trace::compile(
            config.tracing.as_ref(),
            previous.and_then(|p| p.tracing.as_ref()),
            &mut issues,
        );

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
            if let Some(mut pool) =
                upstream::compile::pool(up, &path, old.map(|p| &**p), &mut issues)
            {
                pool.concurrency =
                    ratelimit::compile::concurrency(up, &path, old.map(|p| &**p), &mut issues);
                pools.push(Arc::new(pool));
            }
        }
        let pools_by_name: HashMap<&str, &Arc<Pool>> =
            pools.iter().map(|p| (p.name.as_str(), p)).collect();
        let edits = crate::edits::compile::top(
            config,
            &auth.identity_headers,
            &auth.projection,
            &mut issues,
        );

        let owned_headers = OwnedHeaders::new(
            &auth.identity_headers,
            config.server.headers_with_underscores,
            config.server.method_override_headers,
        );
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
            let Some(m) = routing::compile_match(rc, &path, &mut issues) else {
                continue;
            };
            // The client's value of a header Portcullis removes is not one to route on.
            for name in m
                .conditions
                .header_names()
                .filter(|n| owned_headers.owns(n))
            {
                issues.push(
                    format!("{path}.match.headers.{name}"),
                    "Portcullis owns this header and removes it from client requests",
                );
            }
            let policy = match &rc.auth {
                Some(AuthConfig::Policy(p)) => {
                    match auth.policy(p, &format!("{path}.auth"), &mut issues) {
                        Some(policy) => Some(policy),
                        None => continue,
                    }
                }
                Some(AuthConfig::None) => None,
                None if config.issuers.is_empty() && config.sessions.is_empty() => None,
                // Answered before authentication: see `crate::edits::compile::route`.
                None if rc.redirect.is_some() => None,
                None => {
                    issues.push(
                        format!("{path}.auth"),
                        "with issuers configured every route must say `auth:`; write `auth: none` \
                         to serve it without a token",
                    );
                    continue;
                }
            };
            let session = match &rc.auth {
                Some(AuthConfig::Policy(p)) => match &p.session {
                    Some(name) => match sessions.get(name) {
                        Some(client) => Some(Arc::clone(client)),
                        None => {
                            if !config.sessions.iter().any(|s| &s.name == name) {
                                issues.push(
                                    format!("{path}.auth.session"),
                                    format!("no session named `{name}`"),
                                );
                            }
                            continue;
                        }
                    },
                    None => None,
                },
                _ => None,
            };
            let redirect_pool;
            let pool = if crate::edits::compile::forwarded(rc, &path, &mut issues) {
                let Some(pool) = pools_by_name.get(rc.upstream.as_str()) else {
                    if !pool_index.contains_key(rc.upstream.as_str()) {
                        issues.push(
                            format!("{path}.upstream"),
                            format!("no upstream named `{}`", rc.upstream),
                        );
                    }
                    continue;
                };
                *pool
            } else {
                match crate::edits::compile::no_pool() {
                    Ok(p) => {
                        redirect_pool = Arc::new(p);
                        &redirect_pool
                    }
                    Err(e) => {
                        issues.push(path, e);
                        continue;
                    }
                }
            };
            let route_edits = crate::edits::compile::route(
                rc,
                &path,
                &m.path_prefix,
                &edits,
                &auth.identity_headers,
                &auth.projection,
                &mut issues,
            );
            let old_route = previous.and_then(|p| p.routes.iter().find(|r| r.name == rc.name));
            let Some(limits) = ratelimit::compile::route_limits(
                rc,
                &path,
                config,
                &auth.projection,
                old_route.map(|r| &r.limits),
                &mut issues,
            ) else {
                continue;
            };
            let forwarding =
                upstream::forwarding::route(rc, &pool.settings.forwarding, &path, &mut issues);
            let cors = rc
                .cors
                .as_ref()
                .and_then(|c| crate::cors::Cors::compile(c, &format!("{path}.cors"), &mut issues));
            let ip_rules = crate::ip_lists::IpRules::compile(
                &rc.allow_ips,
                &rc.deny_ips,
                &format!("{path}."),
                &mut issues,
            );
            let cache = crate::cache::compile(
                rc,
                &path,
                previous.into_iter().flat_map(|p| p.cache_tiers()),
                &mut issues,
            );
            let methods = m.methods.names();
            matches.push(m);
            routes.push(Route {
                name: rc.name.clone(),
                pool: Arc::clone(pool),
                metrics: RouteMetrics::new(&rc.name, policy.is_some(), &methods),
                policy,
                session,
                limits,
                forwarding,
                edits: route_edits,
                cors,
                ip_rules,
                cache,
                max_body_bytes: Some(rc.max_body_bytes.unwrap_or(config.max_body_bytes))
                    .filter(|&n| n > 0),
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
        issues.finish(Generation {
            number,
            config: config.clone(),
            routes,
            table,
            pools,
            unmatched: RouteMetrics::new("", false, &[]),
            max_request_header_bytes,
            method_override: config.server.method_override_headers,
            connections: ConnectionLimits::from_config(&config.server),
            auth: Arc::new(auth),
            sessions: Arc::new(sessions),
            client_ips,
            owned_headers,
            dns: Arc::new(dns),
            listener_certs,
            tracing,
            edits: edits.edits,
            ip_rules,
        })
    }

    /// Compile config text; for tests.
    ///
    /// # Errors
    /// As [`Generation::compile`].
    pub fn from_yaml(text: &str) -> Result<Generation, ConfigError> {
        Generation::compile(text, None, None, 1)
    }

    /// Parse and compile config text read from `file` (relative paths in it are resolved
    /// against the file's folder), reporting everything wrong in one go: the shape errors of
    /// every section and list item, and the meaning errors of every part whose shape is
    /// valid (compiled without the malformed parts).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every issue, each with its path and line.
    pub fn compile(
        text: &str,
        file: Option<&std::path::Path>,
        previous: Option<&Generation>,
        number: u64,
    ) -> Result<Generation, ConfigError> {
        let mut shaped = Config::parse_shaped(text)?;
        if let Some(base) = file.and_then(std::path::Path::parent) {
            shaped.parsed.config.resolve_paths(base);
        }
        let built = Generation::build(&shaped.parsed, previous, number);
        shaped.finish(built)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

impl Generation {
    /// The commit step, run once this generation serves in place of `old` (or at start, with
    /// no `old`), and never for a generation that was refused: each domain applies the
    /// effects its compile left out. Metric series of new routes, limits, targets and caps
    /// appear (at zero); those of routes, limits, targets, caps and issuers that are gone
    /// are dropped, so a renamed route's series move to the new name.
    pub fn commit(&self, old: Option<&Generation>) {
        self.unmatched.register([]);
        for cert in &self.listener_certs {
            cert.commit();
        }
        for route in &self.routes {
            route.metrics.register(crate::auth::AuthError::reasons());
            for limiter in route.limits.all() {
                limiter.register();
            }
        }
        upstream::commit(old.map_or(&[][..], |o| &o.pools), &self.pools);
        self.auth.commit(old.map(|o| &*o.auth));
        self.sessions.commit(old.map(|o| &*o.sessions));
        if self.tracing.is_some() {
            crate::metrics::tracing::register();
        }
        crate::cache::commit(
            old.into_iter().flat_map(|o| o.cache_tiers()),
            self.cache_tiers(),
        );
        let Some(old) = old else { return };
        for route in &old.routes {
            match self.routes.iter().find(|r| r.name == route.name) {
                None => route.metrics.forget(
                    crate::auth::AuthError::reasons(),
                    &ratelimit::LimitKind::ALL.map(ratelimit::LimitKind::name),
                ),
                Some(kept) => {
                    if route.policy.is_some() && kept.policy.is_none() {
                        crate::metrics::forget_auth_decisions(
                            &route.name,
                            crate::auth::AuthError::reasons(),
                        );
                    }
                    for limiter in route.limits.all() {
                        if !kept.limits.all().any(|l| l.kind == limiter.kind) {
                            ratelimit::Limiter::forget(&route.name, limiter.kind);
                        }
                    }
                }
            }
        }
    }
}

/// What the background services and the connection gate read of the serving generation,
/// each its own part, so that none of them needs the reloader: [`Parts::publish`] stores a
/// new generation's parts once it serves (the commit step of a reload).
#[derive(Clone)]
pub struct Parts {
    /// The issuers, for the key refresher.
    pub issuers: Arc<ArcSwap<Vec<Arc<crate::auth::Issuer>>>>,
    /// The pools, for the health supervisor and the DNS refresher.
    pub pools: Arc<ArcSwap<Vec<Arc<Pool>>>>,
    /// `server.dns`, for the DNS refresher.
    pub dns: Arc<ArcSwap<upstream::Resolving>>,
    /// `cluster:` and the cluster-scoped limiters, for cluster sync.
    pub cluster: Arc<ArcSwap<ClusterPart>>,
    /// The connection limits and timeouts, for the connection gate.
    pub connections: Arc<ArcSwap<ConnectionLimits>>,
    /// The TLS listeners' certificates, for their handshakes.
    pub listener_certs: Arc<ArcSwap<Vec<Arc<crate::tls::ListenerCert>>>>,
    /// `cluster.redis` and the revocation bounds, for the revocation list and its sync.
    pub revocation: Arc<ArcSwap<RevocationPart>>,
    /// The span pipeline of `tracing:`, for the trace exporter.
    pub tracing: Arc<arc_swap::ArcSwapOption<crate::trace::Pipeline>>,
}

impl Parts {
    /// The parts of `generation`.
    pub fn of(generation: &Generation) -> Parts {
        Parts {
            issuers: Arc::new(ArcSwap::from_pointee(generation.auth.issuers.clone())),
            pools: Arc::new(ArcSwap::from_pointee(generation.pools.clone())),
            dns: Arc::new(ArcSwap::new(Arc::clone(&generation.dns))),
            cluster: Arc::new(ArcSwap::from_pointee(generation.cluster_part())),
            connections: Arc::new(ArcSwap::from_pointee(generation.connections)),
            listener_certs: Arc::new(ArcSwap::from_pointee(generation.listener_certs.clone())),
            revocation: Arc::new(ArcSwap::from_pointee(RevocationPart::of(
                &generation.config,
            ))),
            tracing: Arc::new(arc_swap::ArcSwapOption::new(generation.trace_pipeline())),
        }
    }

    /// Publish `generation`'s parts in place of the ones before.
    pub fn publish(&self, generation: &Generation) {
        self.issuers
            .store(Arc::new(generation.auth.issuers.clone()));
        self.pools.store(Arc::new(generation.pools.clone()));
        self.dns.store(Arc::clone(&generation.dns));
        self.cluster.store(Arc::new(generation.cluster_part()));
        self.connections.store(Arc::new(generation.connections));
        self.listener_certs
            .store(Arc::new(generation.listener_certs.clone()));
        self.revocation
            .store(Arc::new(RevocationPart::of(&generation.config)));
        self.tracing.store(generation.trace_pipeline());
    }
}

impl Generation {
    /// The tiers of its cache routes.
    pub fn cache_tiers(&self) -> impl Iterator<Item = &Arc<crate::cache::Tier>> + Clone {
        self.routes
            .iter()
            .filter_map(|r| r.cache.as_ref().map(|c| &c.tier))
    }

    fn trace_pipeline(&self) -> Option<Arc<crate::trace::Pipeline>> {
        self.tracing.as_ref().map(|t| Arc::clone(&t.pipeline))
    }

    fn cluster_part(&self) -> ClusterPart {
        ClusterPart {
            cluster: self.config.cluster.clone(),
            limiters: self
                .routes
                .iter()
                .flat_map(|r| r.limits.all())
                .filter(|l| l.cluster.is_some())
                .cloned()
                .collect(),
        }
    }
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
        let rt = Generation::from_yaml(BASE).unwrap();
        assert_eq!(rt.routes.len(), 1);
        assert_eq!(rt.pools[0].target_count(), 2);
        assert!(rt.pools[0].probe.is_some());
        let i = rt
            .table
            .lookup("x", "/v1/orders/1", &http::Method::GET)
            .unwrap();
        assert_eq!(rt.routes[i].name, "orders");
    }

    #[test]
    fn connection_settings_compile_and_zero_limits_are_refused() {
        let rt = Generation::from_yaml(&format!(
            "server:\n  max_connections: 10\n  max_connections_per_ip: 2\n  \
             keepalive_timeout: 5s\n  request_header_timeout: 3s\n{BASE}"
        ))
        .unwrap();
        let c = rt.connections;
        assert_eq!((c.max, c.max_per_ip), (Some(10), Some(2)));
        assert_eq!(c.keepalive, std::time::Duration::from_secs(5));
        assert_eq!(c.request_header_timeout, std::time::Duration::from_secs(3));
        let defaults = Generation::from_yaml(BASE).unwrap().connections;
        assert_eq!((defaults.max, defaults.max_per_ip), (None, None));
        assert_eq!(defaults.keepalive, std::time::Duration::from_secs(60));
        assert_eq!(
            defaults.request_header_timeout,
            std::time::Duration::from_secs(10)
        );

        let err = Generation::from_yaml(&format!(
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
        let err = Generation::from_yaml(text).unwrap_err();
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

    /// `protocol` and `h2c`: h2c both ways is accepted; `h2` needs TLS to the targets, and
    /// `h2c` on a TLS listener means nothing (TLS offers h2 by ALPN).
    #[test]
    fn http2_settings() {
        let text = "
listeners:
  - { address: \"127.0.0.1:8080\", h2c: true }
upstreams:
  - name: grpc
    targets: [\"127.0.0.1:9003\"]
    protocol: h2c
  - name: web
    targets: [\"127.0.0.1:9004\"]
routes:
  - name: grpc
    match: { path_prefix: /pkg.Svc/ }
    upstream: grpc
  - name: web
    upstream: web
";
        let rt = Generation::from_yaml(text).unwrap();
        assert!(rt.config.listeners[0].h2c);
        assert_eq!(rt.pools[0].settings.protocol, crate::config::Protocol::H2c);
        assert_eq!(
            rt.pools[1].settings.protocol,
            crate::config::Protocol::Http1
        );

        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        let text = format!(
            "
listeners:
  - address: \"127.0.0.1:8443\"
    tls: {{ cert: \"{}\", key: \"{}\" }}
    h2c: true
upstreams:
  - name: grpc
    targets: [\"127.0.0.1:9003\"]
    protocol: h2
routes:
  - name: grpc
    upstream: grpc
",
            cert.display(),
            key.display()
        );
        let err = Generation::from_yaml(&text).unwrap_err();
        let got: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("listeners[0].h2c"), "{got:?}");
        assert!(
            got[0].contains("a TLS listener offers h2 by ALPN"),
            "{got:?}"
        );
        assert!(got[1].contains("upstreams[0].protocol"), "{got:?}");
        assert!(got[1].contains("needs `tls`"), "{got:?}");

        let err = Generation::from_yaml(
            "upstreams:\n  - name: a\n    targets: [\"127.0.0.1:1\"]\n    protocol: http2\nroutes:\n  - name: r\n    upstream: a\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("upstreams[0].protocol"), "{err}");
    }

    /// Shape and meaning errors come out together; what only follows from a part left out
    /// (a whole section, or one list item) does not.
    #[test]
    fn meaning_errors_come_with_shape_errors() {
        let messages = |text: &str| -> Vec<String> {
            Generation::from_yaml(text)
                .unwrap_err()
                .issues()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let whole_section = messages(
            "upstreams: { name: a }\nroutes:\n  - name: r\n    upstream: a\nreadiness:\n  require_issuers: [nobody]\n",
        );
        assert_eq!(whole_section.len(), 2, "{whole_section:?}");
        assert!(whole_section[0].starts_with("line 1: upstreams: invalid type"));
        assert_eq!(
            whole_section[1],
            "line 6: readiness.require_issuers[0]: no issuer named `nobody`"
        );
        let one_item = messages(
            "upstreams:\n  - name: a\n    targets: [\"127.0.0.1:1\"]\n    weight: 2\n  - name: b\n    targets: [\"127.0.0.1:2\"]\nroutes:\n  - name: r\n    upstream: a\n  - name: s\n    upstream: c\n  - name: t\n    upstream: b\n",
        );
        assert_eq!(one_item.len(), 2, "{one_item:?}");
        assert!(
            one_item[0].starts_with("line 4: upstreams[0].weight: unknown field `weight`"),
            "{one_item:?}"
        );
        // `routes[0]` names the malformed upstream `a`: not reported; `t` after it keeps its
        // index although `a` was left out of the compiled config.
        assert_eq!(
            one_item[1],
            "line 11: routes[1].upstream: no upstream named `c`"
        );
    }

    #[test]
    fn unknown_upstream_and_duplicates() {
        let text = format!(
            "{BASE}  - name: orders\n    match: {{ path_prefix: /v1/orders, methods: [GET] }}\n    upstream: nope\n"
        );
        let err = Generation::from_yaml(&text).unwrap_err();
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
    fn readiness_names_must_exist() {
        let ok = format!("readiness: {{ require_pools: [orders] }}\n{BASE}");
        let generation = Generation::from_yaml(&ok).unwrap();
        assert_eq!(generation.config.readiness.require_pools, ["orders"]);
        let text = format!(
            "readiness: {{ require_pools: [orders, ordres], require_issuers: [corp] }}\n{BASE}"
        );
        let err = Generation::from_yaml(&text).unwrap_err();
        let msgs: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "line 1: readiness.require_pools[1]: no upstream named `ordres`",
                "line 1: readiness.require_issuers[0]: no issuer named `corp`",
            ],
            "{err}"
        );
    }

    #[test]
    fn overlapping_routes_are_refused() {
        let text = format!(
            "{BASE}  - name: again\n    match: {{ path_prefix: /v1/orders }}\n    upstream: orders\n"
        );
        let err = Generation::from_yaml(&text).unwrap_err();
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
        let err = Generation::from_yaml(text).unwrap_err().to_string();
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
        let old = Generation::from_yaml(text).unwrap();
        let changed = text
            .replace("rate: 9/s, burst: 9", "rate: 10/s, burst: 10")
            .replace("rate: 5/s, burst: 5", "rate: 5/s, burst: 5, headers: true");
        let parsed = Config::parse(&changed).unwrap();
        let new = Generation::build(&parsed, Some(&old), 2).unwrap();
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

    /// A kept route that stops checking tokens loses its token-check series at the commit.
    #[test]
    fn a_route_that_stops_checking_tokens_loses_its_auth_series() {
        let config = |auth: &str| {
            format!(
                "issuers:\n  - name: files\n    issuer: https://files.test/\n    jwks_file: {}/config/keys/example-jwks.json\n    audiences: [api]\nupstreams:\n  - name: u\n    targets: [\"127.0.0.1:9\"]\nroutes:\n  - name: stops-checking\n    match: {{ path_prefix: / }}\n    upstream: u\n    auth: {auth}\n",
                env!("CARGO_MANIFEST_DIR")
            )
        };
        let series = || {
            crate::metrics::render().lines().any(|l| {
                l.starts_with("portcullis_auth_decisions_total") && l.contains("stops-checking")
            })
        };
        let first = Generation::from_yaml(&config("{ issuers: [files] }")).unwrap();
        first.commit(None);
        assert!(series(), "a route with a policy has its allowed series");
        let second = Generation::from_yaml(&config("none")).unwrap();
        assert!(series(), "compiling changes nothing");
        second.commit(Some(&first));
        assert!(!series(), "the commit dropped them");
    }
}
