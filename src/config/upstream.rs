//! The serde structs of `upstreams:`: a pool, its targets' TLS and its active health checks.
//! (Targets are in [`super::targets`], retries, timeouts and outlier detection in
//! [`super::forwarding`].)

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::types::ConcurrencyConfig;
use super::values::Dur;

/// How a pool picks a target.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// A random target.
    Random,
    /// Ketama hashing on `hash_on`, so a client sticks to a target.
    ConsistentHash,
}

/// What a pool speaks to its targets.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 over TLS, chosen by ALPN.
    H2,
    /// Plaintext HTTP/2 by prior knowledge.
    H2c,
}

/// An upstream pool.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name that routes refer to.
    pub name: String,
    /// Each target: `ip:port` or `host:port` (every address of the name, re-resolved in
    /// the background), alone or as `{ address, weight }`.
    pub targets: Vec<super::TargetConfig>,
    /// Longest time between two lookups of a host-name target (shorter when the record's
    /// TTL is; never under 1 s).
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    /// Selection: `round_robin` (default), `random`, `consistent_hash`.
    #[serde(default)]
    pub balance: Balance,
    /// For `consistent_hash`: `client_ip` (default) or `header:<name>`.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// Active health checking; without it every target counts as healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Time to establish a connection to a target.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest wait for each read from the target.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    /// The whole request, first byte to last; default: no limit.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Further tries when connecting fails: the older spelling of `retry.attempts` - 1.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Retries of the routes to this pool, unless a route says otherwise.
    #[serde(default)]
    pub retry: Option<super::forwarding::RetryConfig>,
    /// In-flight cap: `{ limit: N }` or `{ adaptive: true, min, max }`.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyConfig>,
    /// Passive health: ejection of targets that fail requests in a row.
    #[serde(default)]
    pub outlier: Option<super::forwarding::OutlierConfig>,
    /// Connect to the targets over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// `http1` (default), `h2` (by ALPN over TLS) or `h2c` (plaintext HTTP/2).
    #[serde(default)]
    pub protocol: Protocol,
}

/// TLS to a pool's targets.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name sent as SNI and checked against the certificate; default: the target's host
    /// name, or its IP address (checked against the certificate's IP entries, no SNI sent).
    #[serde(default)]
    pub sni: Option<String>,
    /// Check the certificate (issuer, name, dates); `false` checks nothing.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM CA certificates trusted besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for mTLS (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_read_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_dns_refresh() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Active health checking of a pool's targets.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Probe with an HTTP request.
    #[serde(default)]
    pub http: Option<HttpCheckConfig>,
    /// Probe by opening a TCP connection.
    #[serde(default)]
    pub tcp: Option<TcpCheckConfig>,
    /// Time between probes of one target.
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    /// Time a probe may take.
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    /// Consecutive successes that make an unhealthy target healthy.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: usize,
    /// Consecutive failures that make a healthy target unhealthy.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: usize,
}

fn default_check_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_check_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_healthy_after() -> usize {
    2
}
fn default_unhealthy_after() -> usize {
    3
}

/// An HTTP probe.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckConfig {
    /// Path requested with GET.
    pub path: String,
    /// The status that counts as healthy.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// Host header of the probe; default: the target address.
    #[serde(default)]
    pub host: Option<String>,
}

fn default_expect_status() -> u16 {
    200
}

/// A TCP connect probe; it has no settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckConfig {}
