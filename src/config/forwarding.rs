//! The serde structs of how a request is forwarded: retries and timeouts, written on a pool
//! (its defaults) and on a route (overriding them field by field), and a pool's passive
//! health (`outlier:`), which learns from the same attempts.

use serde::Deserialize;

use super::values::Dur;

/// `retry:` of a pool or a route. Every field is optional: on a route, what it leaves out
/// comes from its pool; on a pool, from the documented defaults.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum RetryCondition {
    /// A status code.
    Status(u16),
    /// A name.
    Name(String),
}

/// `outlier:` of a pool: passive health, from what requests see. Absent: the defaults.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx answers or connection failures in a row that eject a target (default 5; 0: off).
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    /// A first ejection's length; the n-th in a row lasts n times it (default 30s).
    #[serde(default)]
    pub base_ejection: Option<Dur>,
    /// Most of the pool, in percent, ejected at once (default 50).
    #[serde(default)]
    pub max_ejected_percent: Option<u32>,
}
