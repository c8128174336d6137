//! The serde structs of each config section. Defaults are named functions so that the
//! documented default and the real one cannot drift apart.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::limits::RateLimitConfig;
use super::values::Dur;

/// A listener for client traffic.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind.
    pub address: String,
    /// Serve TLS (with HTTP/2 by ALPN) when set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept plaintext HTTP/2 by prior knowledge (a connection that opens with the HTTP/2
    /// preface) beside HTTP/1.1. Plaintext listeners only: TLS offers h2 by ALPN.
    #[serde(default)]
    pub h2c: bool,
    /// Answer every request with 308 to the same host and path on https.
    #[serde(default)]
    pub redirect_to_https: bool,
}

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind; keep it on loopback or a private network.
    pub address: String,
}

/// What `/readyz` waits for besides a loaded config and bound listeners. Pools and issuers are
/// the same on every node, so by default their state does not make a node unready (that would
/// only empty the Service); name them here to opt in.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// Upstreams that must have a healthy target.
    #[serde(default)]
    pub require_pools: Vec<String>,
    /// Issuers whose keys must be loaded.
    #[serde(default)]
    pub require_issuers: Vec<String>,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads; default: the number of cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(default = "default_grace_period")]
    pub grace_period: Dur,
    /// Request line plus headers larger than this are refused with 431.
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: usize,
    /// What happens to client headers whose names contain `_`.
    #[serde(default)]
    pub headers_with_underscores: HeadersWithUnderscores,
    /// `X-HTTP-Method-Override`, `X-HTTP-Method` and `X-Method-Override`: removed, or used
    /// for routing and forwarded.
    #[serde(default)]
    pub method_override_headers: MethodOverrideHeaders,
    /// Most client connections open at once; beyond it new ones are closed at once.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most client connections open at once from one client IP (the socket's).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Idle keep-alive connections are closed after this; `0s` turns keep-alive off.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Time a client has to send complete request headers (slowloris).
    #[serde(default = "default_request_header_timeout")]
    pub request_header_timeout: Dur,
    /// Where host-name targets are looked up; default: the system's resolver settings.
    #[serde(default)]
    pub dns: super::DnsConfig,
    /// How long a revocation (`POST /revoke`, a session logout) is held, here and in Redis:
    /// longer than any token or session issued before it lives.
    #[serde(default = "default_revocation_ttl")]
    pub revocation_ttl: Dur,
    /// Most revocations held; at the cap a new one evicts the oldest.
    #[serde(default = "default_max_revocations")]
    pub max_revocations: usize,
}

/// What happens to client request headers whose names contain `_`
/// (`server.headers_with_underscores`). CGI, WSGI, Rack and PHP read `X_User_Id` and
/// `X-User-Id` as the same variable, `HTTP_X_USER_ID`.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadersWithUnderscores {
    /// Remove every one before forwarding (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// Forward them, except those that, with `_` read as `-`, name a header Portcullis sets
    /// or strips: those are always removed.
    Allow,
}

/// What Portcullis does with the headers that ask a backend to take a request as another
/// method (Symfony, Laravel and others honour them on `POST`).
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MethodOverrideHeaders {
    /// Removed before the request goes upstream, so a method policy cannot be walked
    /// around.
    #[default]
    Strip,
    /// Forwarded; the route is matched, and its policy applied, with the overriding method.
    Honor,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: None,
            grace_period: default_grace_period(),
            max_request_header_bytes: default_max_request_header_bytes(),
            headers_with_underscores: HeadersWithUnderscores::default(),
            method_override_headers: MethodOverrideHeaders::default(),
            max_connections: None,
            max_connections_per_ip: None,
            keepalive_timeout: default_keepalive_timeout(),
            request_header_timeout: default_request_header_timeout(),
            dns: super::DnsConfig::default(),
            revocation_ttl: default_revocation_ttl(),
            max_revocations: default_max_revocations(),
        }
    }
}

/// A day: longer than access tokens and most sessions live.
fn default_revocation_ttl() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

/// About 100 bytes each: 10 MB at the cap.
fn default_max_revocations() -> usize {
    100_000
}

/// Pingora's own keep-alive default.
fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

/// HAProxy's and nginx's order of magnitude: ample for a real client, short for slowloris.
fn default_request_header_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_grace_period() -> Dur {
    Dur(Duration::from_secs(30))
}

/// 32 KiB: above what browsers send with large cookies, far below Pingora's own 1 MiB cap.
pub fn default_max_request_header_bytes() -> usize {
    32 * 1024
}

/// A route.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// The pool that serves it; left out only on a `redirect` route.
    #[serde(default)]
    pub upstream: String,
    /// Authentication; `none` lets every request through.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Rate limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Retries, field by field over its pool's.
    #[serde(default)]
    pub retry: Option<super::forwarding::RetryConfig>,
    /// The whole request, first byte to last; default: its pool's.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Time to connect to a target; default: its pool's.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Longest wait for each read from the target; default: its pool's.
    #[serde(default)]
    pub read_timeout: Option<Dur>,
    /// Request headers changed on the way upstream, after the top-level ones.
    #[serde(default)]
    pub request_headers: Option<super::HeaderEditsConfig>,
    /// Response headers changed on the way back, after the top-level ones.
    #[serde(default)]
    pub response_headers: Option<super::HeaderEditsConfig>,
    /// The path and `Host` sent upstream.
    #[serde(default)]
    pub rewrite: Option<super::RewriteConfig>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<super::RedirectConfig>,
    /// CORS answered at the edge: preflights and the headers of actual responses.
    #[serde(default)]
    pub cors: Option<super::CorsConfig>,
    /// Client addresses and CIDRs allowed on this route; empty: all (see `deny_ips`).
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Client addresses and CIDRs refused on this route (403 `ip_denied`).
    #[serde(default)]
    pub deny_ips: Vec<String>,
    /// The edge cache (`auth: none` routes only).
    #[serde(default)]
    pub cache: Option<super::CacheConfig>,
    /// The largest request body it takes, in bytes; `0`: no limit. Default: the top-level
    /// `max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

/// What requests a route takes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host or `*.example.com`; absent: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix; the longest matching one wins. Default `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Methods; absent: any method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Headers the request must carry: name (any case) to an exact value or
    /// `{ present: true }`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, super::matching::HeaderMatchConfig>,
    /// Query parameters the request must carry, name to exact (decoded) value.
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, super::matching::QueryMatchConfig>,
}

/// A route's authentication: `none`, or a policy.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthConfig {
    /// No authentication.
    None,
    /// A valid token from one of the listed issuers, with scopes and claims.
    Policy(AuthPolicyConfig),
}

impl<'de> Deserialize<'de> for AuthConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AuthConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none` or a policy such as `{ issuers: [corp] }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AuthConfig, E> {
                match s {
                    "none" => Ok(AuthConfig::None),
                    other => Err(E::custom(format!(
                        "unknown auth `{other}`, expected `none` or a policy"
                    ))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AuthConfig, A::Error> {
                AuthPolicyConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(AuthConfig::Policy)
            }
        }
        d.deserialize_any(V)
    }
}

/// What a route requires of a token.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicyConfig {
    /// Issuers (by name) whose tokens are accepted; the token's `iss` picks one.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// A browser session (by name, from `sessions:`) is accepted; with `issuers` too, a
    /// bearer token is tried first when the request has one.
    #[serde(default)]
    pub session: Option<String>,
    /// On a session, send `Authorization: Bearer <the session's access token>` upstream.
    #[serde(default)]
    pub forward_access_token: bool,
    /// Scopes the token must hold, from `scope` (space separated) or `scp` (array).
    #[serde(default)]
    pub require_scopes: Vec<String>,
    /// Claims the token must have: a value, or a list of accepted values. Dotted paths reach
    /// into objects (`org.tier`).
    #[serde(default)]
    pub require_claims: std::collections::BTreeMap<String, ClaimRule>,
    /// Where to look for the token, in order: `header` (Authorization: Bearer),
    /// `cookie:<name>`, `query:<name>`. Default `[header]`.
    #[serde(default)]
    pub token_from: Option<Vec<String>>,
    /// Claims forwarded to the upstream, as `claim: Header-Name`.
    #[serde(default)]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// Remove the Authorization header before forwarding.
    #[serde(default)]
    pub strip_authorization: bool,
}

/// Accepted values of a required claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule(pub Vec<String>);

impl<'de> Deserialize<'de> for ClaimRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use super::values::scalar;
        let value = serde_yaml::Value::deserialize(d)?;
        let values = match &value {
            serde_yaml::Value::Sequence(items) => {
                items.iter().map(scalar).collect::<Option<Vec<_>>>()
            }
            other => scalar(other).map(|s| vec![s]),
        };
        match values {
            Some(v) if !v.is_empty() => Ok(ClaimRule(v)),
            _ => Err(de::Error::custom(
                "expected a value or a non-empty list of values (strings, numbers or booleans)",
            )),
        }
    }
}

/// An identity provider whose tokens Portcullis verifies.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Name that routes refer to.
    pub name: String,
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// Find `jwks_uri` through `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Where the key set is fetched.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A key set file, for sites without network access to the provider.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Environment variable holding an HMAC secret (HS256/384/512); never the file itself.
    #[serde(default)]
    pub hmac_secret_env: Option<String>,
    /// The token's `aud` must hold one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed algorithms; default: every asymmetric one (with a secret: every HMAC one).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Background refresh of the key set; a `Cache-Control: max-age` is honoured between
    /// `jwks_min_refresh` and this.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// Floor between fetches caused by an unknown `kid`, and first retry after a failure.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: Dur,
    /// Time one discovery or key set fetch may take.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Dur,
    /// PEM CA certificates trusted for this issuer's fetches, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// RFC 7662 introspection of this issuer's opaque (non-JWT) access tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

/// How an issuer's opaque access tokens are checked: RFC 7662 token introspection.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint; without it, the `introspection_endpoint` of the issuer's
    /// discovery document.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The client Portcullis authenticates as (HTTP Basic, RFC 6749 section 2.3.1).
    pub client_id: String,
    /// Environment variable holding the client's secret; never the file itself.
    pub client_secret_env: String,
    /// Longest an active answer is trusted (never past the token's `exp`).
    #[serde(default = "default_introspection_cache_ttl")]
    pub cache_ttl: Dur,
    /// Time one introspection call may take.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Dur,
    /// Most answers held; past it, those nearest their end are dropped first.
    #[serde(default = "default_introspection_max_tokens")]
    pub max_tokens: u64,
}

fn default_introspection_cache_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_introspection_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_introspection_max_tokens() -> u64 {
    100_000
}

fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_jwks_min_refresh() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_fetch_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// How the client address is found.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed; empty: use the socket address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// IPv6 clients are grouped by this prefix length for per-IP limits.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            ipv6_prefix: default_ipv6_prefix(),
        }
    }
}

fn default_ipv6_prefix() -> u8 {
    64
}

/// An upstream pool's in-flight cap.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// A fixed cap.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Move the cap with the pool's measured latency.
    #[serde(default)]
    pub adaptive: bool,
    /// Adaptive: the lowest cap.
    #[serde(default = "default_concurrency_min")]
    pub min: usize,
    /// Adaptive: the highest cap.
    #[serde(default = "default_concurrency_max")]
    pub max: usize,
}

fn default_concurrency_min() -> usize {
    8
}
fn default_concurrency_max() -> usize {
    1000
}

/// The verified-token cache.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Most tokens held; past it, the tokens nearest their expiry are dropped first.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
    /// Longest a verified token is trusted without checking its signature again.
    #[serde(default = "default_token_ttl")]
    pub max_ttl: Dur,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_tokens: default_max_tokens(),
            max_ttl: default_token_ttl(),
        }
    }
}

fn default_max_tokens() -> u64 {
    100_000
}
fn default_token_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::Rate;

    #[test]
    fn rates() {
        let r: Rate = serde_yaml::from_str("50/s").unwrap();
        assert_eq!((r.count, r.per), (50, Duration::from_secs(1)));
        let r: Rate = serde_yaml::from_str("10/min").unwrap();
        assert_eq!(r.per, Duration::from_secs(60));
        assert!(serde_yaml::from_str::<Rate>("0/s").is_err());
        assert!(serde_yaml::from_str::<Rate>("5/day").is_err());
        assert!(serde_yaml::from_str::<Rate>("fast").is_err());
    }

    #[test]
    fn durations_need_units() {
        let d: Dur = serde_yaml::from_str("500ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(500));
        let d: Dur = serde_yaml::from_str("10m").unwrap();
        assert_eq!(d.0, Duration::from_secs(600));
        let err = serde_yaml::from_str::<Dur>("5").unwrap_err().to_string();
        assert!(err.contains("needs a unit"), "{err}");
        assert!(serde_yaml::from_str::<Dur>("soon").is_err());
    }
}
