//! The serde structs of rate limits (`rate_limit:` of a route) and of `cluster:`, which
//! shares them between nodes.

use std::time::Duration;

use serde::Deserialize;

use super::values::{Dur, Rate};

/// Where a limit's buckets live.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// In this node only.
    #[default]
    Local,
    /// Shared by every node through Redis (needs `cluster:`).
    Cluster,
}

/// One token-bucket limit.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained rate.
    pub rate: Rate,
    /// Requests allowed at once on a full bucket.
    pub burst: u64,
    /// `local` (default) or `cluster`.
    #[serde(default)]
    pub scope: LimitScope,
    /// Send `RateLimit-Policy` and `RateLimit` on allowed responses too (always on 429).
    #[serde(default)]
    pub headers: bool,
    /// For `per_user`: the claim (dotted path) that names the user. Default `sub`.
    #[serde(default)]
    pub claim: Option<String>,
    /// Most keys (clients, users) tracked; past it, the buckets nearest full go first.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
}

impl LimitConfig {
    /// The settings that define its buckets (everything but `headers`): a reload that
    /// changes only whether headers are sent keeps the buckets.
    pub fn bucket_settings(&self) -> (Rate, u64, LimitScope, Option<String>, u64) {
        (
            self.rate,
            self.burst,
            self.scope,
            self.claim.clone(),
            self.max_keys,
        )
    }
}

fn default_max_keys() -> u64 {
    1_000_000
}

/// A route's rate limits.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Per client IP, before authentication: protects the verifier too.
    #[serde(default)]
    pub per_ip: Option<LimitConfig>,
    /// Per user (a claim of the verified token), after authentication.
    #[serde(default)]
    pub per_user: Option<LimitConfig>,
    /// For the whole route.
    #[serde(default)]
    pub per_route: Option<LimitConfig>,
    /// Failed token checks per client IP; once spent, the IP is refused before any check.
    #[serde(default)]
    pub auth_failures_per_ip: Option<LimitConfig>,
}

/// Limits shared across a fleet through Redis.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port/db`.
    pub redis: String,
    /// How often each node reconciles its buckets with Redis.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
}

fn default_sync_interval() -> Dur {
    Dur(Duration::from_millis(100))
}
