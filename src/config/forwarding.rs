//! The serde structs of how a request is forwarded: retries and timeouts, written on a pool
//! (its defaults) and on a route (overriding them field by field).

use serde::Deserialize;

use super::values::Dur;

/// `retry:` of a pool or a route. Every field is optional: on a route, what it leaves out
/// comes from its pool; on a pool, from the documented defaults.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included (default 2; 1 turns retries off).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// What is retried: `connect_failure`, `reset`, `timeout`, `502`, `503`, `504`.
    #[serde(default)]
    pub on: Option<Vec<RetryCondition>>,
    /// Time one attempt may wait for each read from the target.
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// Retries in flight may be at most this percentage of the pool's requests in flight
    /// (default 20), and at least 3 at once whatever the traffic.
    #[serde(default)]
    pub budget_percent: Option<u32>,
    /// Retry only idempotent methods (default true).
    #[serde(default)]
    pub idempotent_only: Option<bool>,
}

/// One entry of `retry.on`, as written: a name or a status code (YAML reads `503` as a number).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RetryCondition {
    /// A status code.
    Status(u16),
    /// A name.
    Name(String),
}
