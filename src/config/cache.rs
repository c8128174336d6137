//! `routes[].cache`: the edge cache of a public route, its bounds and its default freshness.

use serde::Deserialize;

use super::values::Dur;

/// `cache: { max_bytes, max_object_bytes, default_ttl }` on an `auth: none` route.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The bodies this route's cache holds at most; the least recently used go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// A larger response is passed through and not stored.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: usize,
    /// How long a response without `Cache-Control` freshness or `Expires` stays fresh (only
    /// statuses RFC 9111 calls heuristically cacheable); absent: such responses are not stored.
    #[serde(default)]
    pub default_ttl: Option<Dur>,
}

/// 64 MiB.
fn default_max_bytes() -> usize {
    64 * 1024 * 1024
}

/// 1 MiB.
fn default_max_object_bytes() -> usize {
    1024 * 1024
}
