//! Compiling `issuers:`, `token_cache:` and each route's `auth:` policy: the issuers (kept
//! with their keys when their settings are unchanged, see [`crate::carry`]), the projection
//! of the claims routes read, the token cache, and the policies.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;
use jsonwebtoken::Algorithm;

use super::crypto;
use super::identity::{Fact, Facts, Projection};
use super::introspect::Introspector;
use super::issuer::{self, Issuer, KeySource};
use super::token::TokenSource;
use super::{Auth, Policy, TokenCache};
use crate::config::{AuthPolicyConfig, Config, IntrospectionConfig, IssuerConfig, Issues};

/// An issuer's `introspection:` checked: its settings, the configured endpoint and the client
/// secret read from the environment.
struct IntrospectionPlan {
    config: IntrospectionConfig,
    endpoint: Option<reqwest::Url>,
    secret: String,
}

/// Check `ic.introspection`, pushing every problem; `None` when absent or wrong.
fn introspection_plan(
    ic: &IssuerConfig,
    path: &str,
    issues: &mut Issues<'_>,
) -> Option<IntrospectionPlan> {
    let config = ic.introspection.as_ref()?;
    let path = format!("{path}.introspection");
    let before = issues.len();
    let endpoint = match &config.endpoint {
        Some(url) => match super::fetch::check_fetch_url(url)
            .and_then(|()| reqwest::Url::parse(url).map_err(|e| e.to_string()))
        {
            Ok(url) => Some(url),
            Err(e) => {
                issues.push(format!("{path}.endpoint"), e);
                None
            }
        },
        None if !ic.discovery => {
            issues.push(
                format!("{path}.endpoint"),
                "required when the issuer has no `discovery: true` (which would name the \
                 introspection endpoint)",
            );
            None
        }
        None => None,
    };
    if config.client_id.is_empty() {
        issues.push(format!("{path}.client_id"), "must not be empty");
    }
    let var = &config.client_secret_env;
    let secret = match std::env::var(var) {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) => {
            issues.push(
                format!("{path}.client_secret_env"),
                format!("environment variable `{var}` is empty"),
            );
            String::new()
        }
        Err(_) => {
            issues.push(
                format!("{path}.client_secret_env"),
                format!("environment variable `{var}` is not set"),
            );
            String::new()
        }
    };
    if config.cache_ttl.0 < std::time::Duration::from_secs(1) {
        issues.push(format!("{path}.cache_ttl"), "must be at least 1s");
    }
    if config.timeout.0.is_zero() {
        issues.push(format!("{path}.timeout"), "must be more than zero");
    }
    if config.max_tokens == 0 {
        issues.push(format!("{path}.max_tokens"), "must be at least 1");
    }
    (issues.len() == before).then(|| IntrospectionPlan {
        config: config.clone(),
        endpoint,
        secret,
    })
}

/// Headers a claim may never be forwarded in.
const RESERVED_HEADERS: [&str; 12] = [
    "authorization",
    "cookie",
    "host",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

fn issuer_source(
    ic: &IssuerConfig,
    path: &str,
    issues: &mut Issues<'_>,
) -> Option<(KeySource, Option<Vec<u8>>)> {
    let given = [
        ic.discovery,
        ic.jwks_uri.is_some(),
        ic.jwks_file.is_some(),
        ic.hmac_secret_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        issues.push(
            path,
            "give exactly one of `discovery: true`, `jwks_uri`, `jwks_file`, `hmac_secret_env`",
        );
        return None;
    }
    if ic.discovery {
        if let Err(e) = super::fetch::check_fetch_url(&ic.issuer) {
            issues.push(
                format!("{path}.issuer"),
                format!("discovery needs an issuer URL: {e}"),
            );
            return None;
        }
        return Some((KeySource::Discovery(ic.issuer.clone()), None));
    }
    if let Some(uri) = &ic.jwks_uri {
        if let Err(e) = super::fetch::check_fetch_url(uri) {
            issues.push(format!("{path}.jwks_uri"), e);
            return None;
        }
        return Some((KeySource::Uri(uri.clone()), None));
    }
    if let Some(file) = &ic.jwks_file {
        return Some((KeySource::File(file.clone()), None));
    }
    let var = ic.hmac_secret_env.as_deref().unwrap_or_default();
    match std::env::var(var) {
        Ok(secret) if secret.len() >= 32 => Some((KeySource::Secret, Some(secret.into_bytes()))),
        Ok(_) => {
            issues.push(
                format!("{path}.hmac_secret_env"),
                format!("the secret in `{var}` is shorter than 32 bytes"),
            );
            None
        }
        Err(_) => {
            issues.push(
                format!("{path}.hmac_secret_env"),
                format!("environment variable `{var}` is not set"),
            );
            None
        }
    }
}

fn allowed_algorithms(
    ic: &IssuerConfig,
    source: &KeySource,
    path: &str,
    issues: &mut Issues<'_>,
) -> Option<Vec<Algorithm>> {
    let family: &[Algorithm] = if *source == KeySource::Secret {
        &issuer::HMAC
    } else {
        &issuer::ASYMMETRIC
    };
    let Some(names) = &ic.algorithms else {
        return Some(family.to_vec());
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, name) in names.iter().enumerate() {
        match issuer::parse_algorithm(name) {
            Some(alg) if family.contains(&alg) => out.push(alg),
            Some(_) if *source == KeySource::Secret => {
                issues.push(
                    format!("{path}.algorithms[{i}]"),
                    format!(
                        "`{name}` needs a public key; an HMAC issuer allows only HS256/384/512"
                    ),
                );
                ok = false;
            }
            Some(_) => {
                issues.push(
                    format!("{path}.algorithms[{i}]"),
                    format!("`{name}` needs `hmac_secret_env`"),
                );
                ok = false;
            }
            None => {
                issues.push(
                    format!("{path}.algorithms[{i}]"),
                    format!("unknown algorithm `{name}`"),
                );
                ok = false;
            }
        }
    }
    if ok && out.is_empty() {
        issues.push(
            format!("{path}.algorithms"),
            "leave it out to allow every algorithm of the key type",
        );
        return None;
    }
    ok.then_some(out)
}

impl Auth {
    /// Build the issuers, the projection and the cache. Issuers whose settings did not change
    /// are taken from `previous` with their keys; so is the cache when what it holds still
    /// fits.
    pub fn build(config: &Config, previous: Option<&Auth>, issues: &mut Issues<'_>) -> Auth {
        crypto::install();
        let mut issuers = Vec::new();
        let mut plans: Vec<(Arc<super::Issuer>, IntrospectionPlan)> = Vec::new();
        let mut names = HashSet::new();
        for (i, ic) in config.issuers.iter().enumerate() {
            let path = format!("issuers[{i}]");
            if ic.name.is_empty() || !names.insert(ic.name.as_str()) {
                issues.push(
                    format!("{path}.name"),
                    format!("issuer name `{}` is empty or used twice", ic.name),
                );
                continue;
            }
            if ic.issuer.is_empty() {
                issues.push(format!("{path}.issuer"), "must be the `iss` of the tokens");
                continue;
            }
            for (field, d) in [
                ("jwks_refresh", ic.jwks_refresh),
                ("jwks_min_refresh", ic.jwks_min_refresh),
                ("fetch_timeout", ic.fetch_timeout),
            ] {
                if d.0.is_zero() {
                    issues.push(format!("{path}.{field}"), "must be more than zero");
                }
            }
            if ic.jwks_min_refresh.0 > ic.jwks_refresh.0 {
                issues.push(
                    format!("{path}.jwks_min_refresh"),
                    "must not exceed jwks_refresh",
                );
            }
            let plan = introspection_plan(ic, &path, issues);
            let Some((source, secret)) = issuer_source(ic, &path, issues) else {
                continue;
            };
            let Some(allowed) = allowed_algorithms(ic, &source, &path, issues) else {
                continue;
            };
            if ic.ca_file.is_some() && matches!(source, KeySource::File(_) | KeySource::Secret) {
                issues.push(
                    format!("{path}.ca_file"),
                    "only for keys fetched over HTTPS (`discovery` or `jwks_uri`)",
                );
                continue;
            }
            let trust = match super::fetch::Trust::load(ic.ca_file.as_deref()) {
                Ok(trust) => trust,
                Err(e) => {
                    issues.push(format!("{path}.ca_file"), e);
                    continue;
                }
            };
            let key = Issuer::carry_key_of(ic, secret.as_deref(), &trust);
            let old = previous.into_iter().flat_map(|p| &p.issuers);
            match crate::carry::kept(old.clone(), &key) {
                Some(old) => issuers.push(old),
                None => match Issuer::new(ic, source, allowed, secret.as_deref(), trust) {
                    Ok(issuer) => {
                        if let Some(old) = old.into_iter().find(|o| o.name == ic.name) {
                            issuer.start_with_keys_of(old);
                        }
                        issuers.push(Arc::new(issuer));
                    }
                    Err(e) => issues.push(path, e),
                },
            }
            if let (Some(plan), Some(issuer)) = (plan, issuers.last()) {
                if issuer.name == ic.name {
                    plans.push((Arc::clone(issuer), plan));
                }
            }
        }

        let mut projection = Projection::default();
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        for rc in &config.routes {
            if let Some(user) = rc.rate_limit.as_ref().and_then(|r| r.per_user.as_ref()) {
                projection.slot_for(user.claim.as_deref().unwrap_or("sub"));
            }
            if let Some(crate::config::AuthConfig::Policy(p)) = &rc.auth {
                for (claim, rule) in &p.require_claims {
                    let slot = projection.slot_for(claim);
                    projection.fact_for(claim_fact(slot, &rule.0));
                }
                for claim in p.forward_claims.keys() {
                    projection.slot_for(claim);
                }
                for scope in &p.require_scopes {
                    projection.fact_for(Fact::Scope(scope.as_str().into()));
                }
                for header in p.forward_claims.values() {
                    if let Ok(name) = HeaderName::from_bytes(header.as_bytes()) {
                        if !identity_headers.contains(&name) {
                            identity_headers.push(name);
                        }
                    }
                }
            }
        }
        // The claims header edits name (`{claim.NAME}`).
        for claim in crate::config::edits::header_claims(config) {
            projection.slot_for(claim);
        }
        // The claims the access log records: held by every identity like any other.
        let log_claims = config
            .access_log
            .claims
            .iter()
            .map(|claim| (claim.as_str().into(), projection.slot_for(claim)))
            .collect();
        let projection = Arc::new(projection);
        let key = (config.token_cache.clone(), Arc::clone(&projection));
        let cache = crate::carry::kept(previous.map(|p| &p.cache), &key).unwrap_or_else(|| {
            Arc::new(TokenCache::new(&config.token_cache).for_claims(Arc::clone(&projection)))
        });
        if config.token_cache.max_tokens == 0 {
            issues.push("token_cache.max_tokens", "must be at least 1");
        }
        let introspectors = plans
            .into_iter()
            .map(|(issuer, plan)| {
                let key = Introspector::carry_key_of(&issuer, &plan.secret, &projection);
                let old = previous.into_iter().flat_map(|p| &p.introspectors);
                crate::carry::kept(old, &key).unwrap_or_else(|| {
                    Arc::new(Introspector::new(
                        issuer,
                        &plan.config,
                        plan.endpoint,
                        &plan.secret,
                        Arc::clone(&projection),
                    ))
                })
            })
            .collect();
        Auth {
            issuers,
            cache,
            projection,
            identity_headers,
            introspectors,
            log_claims,
        }
    }

    /// Compile a route's policy.
    pub fn policy(
        &self,
        pc: &AuthPolicyConfig,
        path: &str,
        issues: &mut Issues<'_>,
    ) -> Option<Policy> {
        let before = issues.len();
        if pc.issuers.is_empty() && pc.session.is_none() {
            issues.push(
                format!("{path}.issuers"),
                "name at least one issuer, or a `session`",
            );
        }
        if pc.forward_access_token && pc.session.is_none() {
            issues.push(
                format!("{path}.forward_access_token"),
                "forwards a session's access token: it needs `session`",
            );
        }
        let mut issuers = Vec::new();
        for (i, name) in pc.issuers.iter().enumerate() {
            match self.issuers.iter().find(|x| &x.name == name) {
                Some(x) => issuers.push(Arc::clone(x)),
                None => issues.push(
                    format!("{path}.issuers[{i}]"),
                    format!("no issuer named `{name}`"),
                ),
            }
        }
        for (i, scope) in pc.require_scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) || scope.contains('"') {
                issues.push(
                    format!("{path}.require_scopes[{i}]"),
                    format!("`{scope}` is not a scope token"),
                );
            }
        }
        let sources = match &pc.token_from {
            None => vec![TokenSource::Header],
            Some(list) if list.is_empty() => {
                issues.push(
                    format!("{path}.token_from"),
                    "leave it out for the default `[header]`",
                );
                Vec::new()
            }
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    TokenSource::parse(s)
                        .map_err(|e| issues.push(format!("{path}.token_from[{i}]"), e))
                        .ok()
                })
                .collect(),
        };
        let mut forward = Vec::new();
        for (claim, header) in &pc.forward_claims {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name)
                    if RESERVED_HEADERS.contains(&name.as_str())
                        || name.as_str().starts_with("x-forwarded-") =>
                {
                    issues.push(
                        format!("{path}.forward_claims.{claim}"),
                        format!("`{header}` cannot carry a claim"),
                    );
                }
                // CGI and its heirs read `X_User` as `X-User`: a client could send the other
                // spelling, and many proxies drop such names on the way.
                Ok(name) if name.as_str().contains('_') => issues.push(
                    format!("{path}.forward_claims.{claim}"),
                    format!("`{header}` cannot carry a claim: write it with `-`, not `_`"),
                ),
                Ok(name) => {
                    if let Some(slot) = self.projection.slot(claim) {
                        forward.push((slot, name));
                    }
                }
                Err(_) => issues.push(
                    format!("{path}.forward_claims.{claim}"),
                    format!("`{header}` is not a header name"),
                ),
            }
        }
        let p = &self.projection;
        let claims = Facts::of(
            pc.require_claims
                .iter()
                .filter_map(|(claim, rule)| p.fact(&claim_fact(p.slot(claim)?, &rule.0))),
        );
        let scopes = Facts::of(
            pc.require_scopes
                .iter()
                .filter_map(|s| p.fact(&Fact::Scope(s.as_str().into()))),
        );
        let mut introspecting = self
            .introspectors
            .iter()
            .filter(|x| issuers.iter().any(|i| Arc::ptr_eq(i, &x.issuer)));
        let introspector = introspecting.next().cloned();
        if introspecting.next().is_some() {
            issues.push(
                format!("{path}.issuers"),
                "at most one of a route's issuers may have `introspection:`: an opaque token \
                 does not name its issuer",
            );
        }
        if issues.len() != before {
            return None;
        }
        Some(Policy {
            issuers,
            scopes,
            scope_text: pc.require_scopes.join(" "),
            claims,
            sources,
            forward,
            strip_authorization: pc.strip_authorization,
            forward_access_token: pc.forward_access_token,
            introspector,
        })
    }
}

/// The fact that the claim in `slot` is one of `accepted`.
fn claim_fact(slot: usize, accepted: &[String]) -> Fact {
    Fact::Claim {
        slot,
        accepted: accepted.iter().map(|v| v.as_str().into()).collect(),
    }
}
