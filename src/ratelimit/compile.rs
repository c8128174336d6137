//! Compiling rate limits and concurrency caps from the config, keeping the serving
//! generation's state where the settings that define it are unchanged.

use std::sync::Arc;

use super::{Concurrency, LimitKind, Limiter, RouteLimits};
use crate::auth::Projection;
use crate::carry::kept;
use crate::config::{
    AuthConfig, Config, Issues, LimitConfig, LimitScope, RouteConfig, UpstreamConfig,
};
use crate::upstream::Pool;

/// Check `cluster:`: the Redis URL parses and the sync interval is not zero.
pub fn check_cluster(config: &Config, issues: &mut Issues<'_>) {
    if let Some(cluster) = &config.cluster {
        if let Err(e) = redis::Client::open(cluster.redis.as_str()) {
            issues.push("cluster.redis", format!("invalid Redis URL: {e}"));
        }
        if cluster.sync_interval.0.is_zero() {
            issues.push("cluster.sync_interval", "must be more than zero");
        }
    }
}

/// Compile a pool's `concurrency:` cap. The serving cap (with its in-flight count and, when
/// adaptive, what it learned) carries over when the settings are unchanged.
pub fn concurrency(
    up: &UpstreamConfig,
    path: &str,
    previous: Option<&Pool>,
    issues: &mut Issues<'_>,
) -> Option<Arc<Concurrency>> {
    let c = up.concurrency.as_ref()?;
    let path = format!("{path}.concurrency");
    let key = (
        up.name.clone(),
        c.limit.filter(|_| !c.adaptive),
        c.adaptive.then_some((c.min, c.max)),
    );
    let kept = kept(previous.and_then(|p| p.concurrency.as_ref()), &key);
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

/// Compile a route's `rate_limit:`. A limiter whose settings are unchanged carries over
/// from `previous`, the limits of the route of the same name in the serving generation,
/// with its buckets.
pub fn route_limits(
    rc: &RouteConfig,
    path: &str,
    config: &Config,
    projection: &Projection,
    previous: Option<&RouteLimits>,
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
        let key = (rc.name.clone(), kind, lc.bucket_settings());
        let kept = kept(previous.into_iter().flat_map(RouteLimits::all), &key);
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
        match (has_policy, projection.slot(claim), limiter) {
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
