//! Authentication at the edge: issuers and their keys, token verification, the verified-token
//! cache and per-route policies.
//!
//! The proxy hands a request and the route's [`Policy`] to [`Auth::authenticate`] and gets
//! an identity or a reason to refuse; it never looks inside a token itself. Nothing in this
//! module logs a token or a secret.

pub mod cache;
pub mod crypto;
pub mod identity;
pub mod issuer;
pub mod keys;
pub mod token;
pub mod tools;

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;
use jsonwebtoken::Algorithm;

use crate::config::{AuthPolicyConfig, Config, IssuerConfig, Issues};
pub use cache::TokenCache;
pub use identity::{Fact, Facts, Identity, Projection};
pub use issuer::{Issuer, KeyRefresher, KeySource};
use token::TokenSource;

/// Declares [`TokenFault`]: each variant with its label and its message in one line, so
/// that a label cannot drift from the variant it names.
macro_rules! token_faults {
    ($($(#[$doc:meta])* $variant:ident => $label:literal, $message:literal;)+) => {
        /// Why a token is not valid. The label goes into metrics (`reason`); the message is
        /// the `error_description` the client reads, safe to show: it says nothing of the
        /// token or the keys.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum TokenFault {
            $($(#[$doc])* $variant,)+
        }

        impl TokenFault {
            /// Every fault, in declaration order.
            pub const ALL: &'static [TokenFault] = &[$(TokenFault::$variant,)+];

            /// Its metric label.
            pub fn label(self) -> &'static str {
                match self {
                    $(TokenFault::$variant => $label,)+
                }
            }

            /// What the client is told.
            pub fn message(self) -> &'static str {
                match self {
                    $(TokenFault::$variant => $message,)+
                }
            }
        }
    };
}

token_faults! {
    /// Not three base64url parts of JSON as RFC 7519 has them, a claim named twice, a
    /// registered claim of the wrong type.
    Malformed => "malformed", "the token is malformed";
    /// Longer than the bound, refused before any parsing.
    TooLarge => "too_large", "the token is too large";
    /// `exp` is past, beyond the issuer's leeway.
    Expired => "expired", "the token has expired";
    /// `nbf` is ahead, beyond the leeway.
    NotYetValid => "not_yet_valid", "the token is not valid yet";
    /// `iat` is ahead, beyond the leeway.
    IssuedInFuture => "issued_in_future", "the token was issued in the future";
    /// `aud` names none of the issuer's audiences.
    BadAudience => "bad_audience", "the token is not for this audience";
    /// `iss` is none of the route's issuers.
    UntrustedIssuer => "untrusted_issuer", "the token issuer is not accepted";
    /// `alg` is not one the key or the issuer allows (`none` among them).
    BadAlgorithm => "bad_algorithm", "the token algorithm is not allowed";
    /// No key of the issuer matches the `kid` (or the algorithm, without one).
    UnknownKey => "unknown_key", "the token signing key is unknown";
    /// No candidate key verifies the signature.
    BadSignature => "bad_signature", "the token signature is invalid";
    /// A `crit` header (RFC 7515 section 4.1.11), none of which Portcullis understands.
    UnsupportedCritical => "unsupported_critical", "the token has an unsupported critical header";
    /// `exp` (or `aud`, where the issuer lists audiences) is missing.
    MissingClaim => "missing_claim", "the token lacks a required claim";
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No token where the route looks for one.
    MissingToken,
    /// Malformed credentials (several Authorization headers, a bad bearer value).
    InvalidRequest,
    /// The token is not valid.
    InvalidToken(TokenFault),
    /// The token lacks a scope the route requires.
    InsufficientScope,
    /// The token's claims do not satisfy the route.
    ClaimsMismatch,
    /// The issuer's keys have not been fetched yet.
    KeysUnavailable,
}

impl AuthError {
    /// Every value [`AuthError::reason`] gives.
    pub fn reasons() -> impl Iterator<Item = &'static str> {
        [
            "missing_token",
            "invalid_request",
            "insufficient_scope",
            "claims_mismatch",
            "keys_unavailable",
        ]
        .into_iter()
        .chain(TokenFault::ALL.iter().map(|f| f.label()))
    }

    /// A short label for metrics and logs: the token fault's own for an invalid token.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidRequest => "invalid_request",
            AuthError::InvalidToken(fault) => fault.label(),
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::ClaimsMismatch => "claims_mismatch",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// What a route requires of a token, compiled.
pub struct Policy {
    /// Accepted issuers.
    pub issuers: Vec<Arc<Issuer>>,
    /// Required scopes, as facts of the projection.
    pub scopes: Facts,
    /// The required scopes joined by spaces, for `WWW-Authenticate`.
    pub scope_text: String,
    /// Required claim values, as facts of the projection.
    pub claims: Facts,
    /// Where the token is looked for.
    pub sources: Vec<TokenSource>,
    /// Claims forwarded: projection slot and header.
    pub forward: Vec<(usize, HeaderName)>,
    /// Remove Authorization before forwarding.
    pub strip_authorization: bool,
}

impl Policy {
    /// Whether `identity` satisfies scopes and claims.
    ///
    /// # Errors
    /// [`AuthError::InsufficientScope`] or [`AuthError::ClaimsMismatch`].
    pub fn permits(&self, identity: &Identity) -> Result<(), AuthError> {
        if !identity.holds(&self.scopes) {
            return Err(AuthError::InsufficientScope);
        }
        if !identity.holds(&self.claims) {
            return Err(AuthError::ClaimsMismatch);
        }
        Ok(())
    }
}

/// The authentication state of one config generation.
pub struct Auth {
    /// Issuers, in config order.
    pub issuers: Vec<Arc<Issuer>>,
    /// Verified tokens.
    pub cache: Arc<TokenCache>,
    /// The claim paths routes use.
    pub projection: Arc<Projection>,
    /// Every header any route forwards a claim in: removed from every client request.
    pub identity_headers: Vec<HeaderName>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            issuers: Vec::new(),
            cache: Arc::new(TokenCache::new(&Default::default())),
            projection: Arc::default(),
            identity_headers: Vec::new(),
        }
    }
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
        if let Err(e) = issuer::check_fetch_url(&ic.issuer) {
            issues.push(
                format!("{path}.issuer"),
                format!("discovery needs an issuer URL: {e}"),
            );
            return None;
        }
        return Some((KeySource::Discovery(ic.issuer.clone()), None));
    }
    if let Some(uri) = &ic.jwks_uri {
        if let Err(e) = issuer::check_fetch_url(uri) {
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
    /// Refresh the gauges read off this state rather than counted as things happen: each
    /// issuer's key set age and staleness, the token cache's size. Called before each scrape.
    pub fn observe(&self) {
        let m = &*crate::metrics::METRICS;
        for issuer in &self.issuers {
            if let Some(keys) = issuer.keys() {
                let age = keys.loaded_at.elapsed().map_or(0, |d| d.as_secs());
                m.jwks_age
                    .with_label_values(&[&issuer.name])
                    .set(i64::try_from(age).unwrap_or(i64::MAX));
                m.jwks_keys
                    .with_label_values(&[&issuer.name])
                    .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
            }
            m.jwks_stale
                .with_label_values(&[&issuer.name])
                .set(i64::from(issuer.is_stale()));
        }
        m.token_cache_entries
            .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
    }

    /// The commit step of a reload, once this state serves in place of `old`: the series of
    /// issuers it no longer has are dropped.
    pub fn commit(&self, old: Option<&Auth>) {
        let m = &*crate::metrics::METRICS;
        for gone in old
            .into_iter()
            .flat_map(|o| o.issuers.iter())
            .filter(|o| !self.issuers.iter().any(|i| i.name == o.name))
        {
            let name = [gone.name.as_str()];
            let _ = m.jwks_age.remove_label_values(&name);
            let _ = m.jwks_keys.remove_label_values(&name);
            let _ = m.jwks_stale.remove_label_values(&name);
            for outcome in ["success", "error"] {
                let _ = m.jwks_fetches.remove_label_values(&[name[0], outcome]);
            }
        }
    }
}

impl Auth {
    /// Build the issuers, the projection and the cache. Issuers whose settings did not change
    /// are taken from `previous` with their keys; so is the cache when what it holds still
    /// fits.
    pub fn build(config: &Config, previous: Option<&Auth>, issues: &mut Issues<'_>) -> Auth {
        crypto::install();
        let mut issuers = Vec::new();
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
            let Some((source, secret)) = issuer_source(ic, &path, issues) else {
                continue;
            };
            let Some(allowed) = allowed_algorithms(ic, &source, &path, issues) else {
                continue;
            };
            let key = Issuer::carry_key_of(ic, secret.as_deref());
            let kept = crate::carry::kept(previous.into_iter().flat_map(|p| &p.issuers), &key);
            match kept {
                Some(old) => issuers.push(old),
                None => match Issuer::new(ic, source, allowed, secret.as_deref()) {
                    Ok(issuer) => issuers.push(Arc::new(issuer)),
                    Err(e) => issues.push(path, e),
                },
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
        let projection = Arc::new(projection);
        let key = (config.token_cache.clone(), Arc::clone(&projection));
        let cache = crate::carry::kept(previous.map(|p| &p.cache), &key).unwrap_or_else(|| {
            Arc::new(TokenCache::new(&config.token_cache).for_claims(Arc::clone(&projection)))
        });
        if config.token_cache.max_tokens == 0 {
            issues.push("token_cache.max_tokens", "must be at least 1");
        }
        Auth {
            issuers,
            cache,
            projection,
            identity_headers,
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
        if pc.issuers.is_empty() {
            issues.push(format!("{path}.issuers"), "name at least one issuer");
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
        })
    }

    /// Authenticate a request for a route with `policy`.
    ///
    /// # Errors
    /// [`AuthError`] saying why the request may not pass.
    pub async fn authenticate(
        &self,
        policy: &Policy,
        req: &pingora::http::RequestHeader,
    ) -> Result<Identity, AuthError> {
        let token = token::extract(req, &policy.sources)?;
        let key = match self.check_cached(policy, token) {
            Cached::Hit(result) => return result,
            Cached::Miss(key) => key,
        };
        let Some(token) = std::str::from_utf8(token)
            .ok()
            .filter(|t| token::is_well_formed(t))
        else {
            // RFC 6750: a malformed bearer credential is a bad request; a cookie or query
            // value that cannot be a token is just not a valid token.
            return Err(if req.headers.contains_key(http::header::AUTHORIZATION) {
                AuthError::InvalidRequest
            } else {
                AuthError::InvalidToken(TokenFault::Malformed)
            });
        };
        let identity = token::verify(token, &policy.issuers, &self.projection).await?;
        let identity = self.cache.insert(key, identity);
        policy.permits(&identity)?;
        Ok(identity)
    }

    /// The fast path: a token verified before, still signed by a key in its issuer's set.
    /// No signature check, no parsing, no allocation.
    pub fn check_cached(&self, policy: &Policy, token: &[u8]) -> Cached {
        if token.len() > token::MAX_TOKEN_BYTES {
            return Cached::Hit(Err(AuthError::InvalidToken(TokenFault::TooLarge)));
        }
        let key = self.cache.key(token);
        if let Some(identity) = self.cache.get(key) {
            match policy
                .issuers
                .iter()
                .find(|i| i.id == u64::from(identity.issuer_id()))
            {
                Some(issuer) if issuer.has_key(identity.key_fingerprint()) => {
                    return Cached::Hit(policy.permits(&identity).map(|()| identity));
                }
                // Its key left the set: forget it and verify again (which will fail).
                Some(_) => self.cache.remove(key),
                // Verified for another route's issuer: check it against this route's.
                None => {}
            }
        }
        Cached::Miss(key)
    }
}

/// The fact that the claim in `slot` is one of `accepted`.
fn claim_fact(slot: usize, accepted: &[String]) -> Fact {
    Fact::Claim {
        slot,
        accepted: accepted.iter().map(|v| v.as_str().into()).collect(),
    }
}

/// The outcome of [`Auth::check_cached`].
pub enum Cached {
    /// The cache decided.
    Hit(Result<Identity, AuthError>),
    /// Not in the cache; the token's cache key, for inserting after verification.
    Miss(u128),
}

#[cfg(test)]
mod tests;
