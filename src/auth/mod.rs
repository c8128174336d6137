//! Authentication at the edge: issuers and their keys, token verification, the verified-token
//! cache and per-route policies.
//!
//! The proxy hands a request and the route's [`Policy`] to [`Auth::authenticate`] and gets
//! an identity or a reason to refuse; it never looks inside a token itself. Nothing in this
//! module logs a token or a secret.

pub mod cache;
pub mod compile;
pub mod crypto;
pub mod fetch;
pub mod identity;
pub mod introspect;
pub mod issuer;
pub mod keys;
pub mod token;
pub mod tools;

use std::sync::Arc;

use http::HeaderName;

pub use cache::TokenCache;
pub use identity::{Fact, Facts, Identity, Projection};
pub use introspect::Introspector;
pub use issuer::{Endpoints, Issuer, KeyRefresher, KeySource};
use token::TokenSource;

use crate::revocation::{Kind, Revocations, Tag};

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
    /// The issuer's introspection endpoint says the (opaque) token is not active: expired,
    /// revoked, unknown, or not an access token.
    Inactive => "inactive", "the token is not active";
    /// Its `sub`, `sid` or `jti` was revoked after it was issued ([`crate::revocation`]).
    Revoked => "revoked", "the token has been revoked";
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
    /// A browser session's store or provider cannot be reached.
    SessionUnavailable,
    /// An opaque token could not be introspected: the endpoint is unknown, unreachable, slow,
    /// or answered something else than an RFC 7662 answer.
    IntrospectionUnavailable,
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
            "session_unavailable",
            "introspection_unavailable",
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
            AuthError::SessionUnavailable => "session_unavailable",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
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
    /// On a browser session, send its access token upstream as `Authorization: Bearer`.
    pub forward_access_token: bool,
    /// Where an opaque (non-JWT) token is introspected: the one issuer of the route with
    /// `introspection:`, if any. Without one, every token is verified as a JWT.
    pub introspector: Option<Arc<Introspector>>,
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
    /// Introspection of opaque tokens, one per issuer with `introspection:`.
    pub introspectors: Vec<Arc<Introspector>>,
    /// The claims the access log records (`access_log.claims`): name and projection slot.
    pub log_claims: Vec<(Box<str>, usize)>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            issuers: Vec::new(),
            cache: Arc::new(TokenCache::new(&Default::default())),
            projection: Arc::default(),
            identity_headers: Vec::new(),
            introspectors: Vec::new(),
            log_claims: Vec::new(),
        }
    }
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
        for introspector in &self.introspectors {
            m.introspection_cache_entries
                .with_label_values(&[&introspector.issuer.name])
                .set(i64::try_from(introspector.len()).unwrap_or(i64::MAX));
        }
    }

    /// The commit step of a reload, once this state serves in place of `old`: the series of
    /// issuers it no longer has are dropped; those of its introspecting issuers appear.
    pub fn commit(&self, old: Option<&Auth>) {
        let m = &*crate::metrics::METRICS;
        for introspector in &self.introspectors {
            introspector.register();
        }
        for issuer in &self.issuers {
            for result in ["success", "error"] {
                m.jwks_fetches.with_label_values(&[&issuer.name, result]);
            }
        }
        for gone in old
            .into_iter()
            .flat_map(|o| o.introspectors.iter())
            .filter(|o| {
                !self
                    .introspectors
                    .iter()
                    .any(|i| i.issuer.name == o.issuer.name)
            })
        {
            Introspector::forget(&gone.issuer.name);
        }
        for gone in old
            .into_iter()
            .flat_map(|o| o.issuers.iter())
            .filter(|o| !self.issuers.iter().any(|i| i.name == o.name))
        {
            let name = [gone.name.as_str()];
            let _ = m.jwks_age.remove_label_values(&name);
            let _ = m.jwks_keys.remove_label_values(&name);
            let _ = m.jwks_stale.remove_label_values(&name);
            for result in ["success", "error"] {
                let _ = m.jwks_fetches.remove_label_values(&[name[0], result]);
            }
        }
    }
}

impl Auth {
    /// Authenticate a request for a route with `policy`.
    ///
    /// # Errors
    /// [`AuthError`] saying why the request may not pass.
    pub async fn authenticate(
        &self,
        policy: &Policy,
        req: &pingora::http::RequestHeader,
        revocations: &Revocations,
    ) -> Result<Identity, AuthError> {
        let token = token::extract(req, &policy.sources)?;
        if let Some(introspector) = &policy.introspector {
            if !token::looks_like_jwt(token) {
                crate::trace::notes::note_check("introspection");
                return introspect(policy, introspector, req, token, revocations).await;
            }
        }
        let key = match self.check_cached(policy, token, revocations) {
            Cached::Hit(result) => {
                crate::trace::notes::note_check("cache_hit");
                return result;
            }
            Cached::Miss(key) => key,
        };
        crate::trace::notes::note_check("verification");
        let Some(token) = std::str::from_utf8(token)
            .ok()
            .filter(|t| token::is_well_formed(t))
        else {
            return Err(malformed(req));
        };
        let identity = token::verify(token, &policy.issuers, &self.projection).await?;
        // Cached even when revoked: its next use is refused without a signature check.
        let identity = self.cache.insert(key, identity);
        if revoked(revocations, &identity) {
            return Err(REVOKED);
        }
        policy.permits(&identity)?;
        Ok(identity)
    }

    /// The fast path: a token verified before, still signed by a key in its issuer's set,
    /// and not revoked since (one atomic load while nothing is revoked). No signature check,
    /// no parsing, no allocation.
    pub fn check_cached(&self, policy: &Policy, token: &[u8], revocations: &Revocations) -> Cached {
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
                    if revoked(revocations, &identity) {
                        return Cached::Hit(Err(REVOKED));
                    }
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

/// Why a credential that cannot be a token is refused. RFC 6750: a malformed bearer
/// credential is a bad request; a cookie or query value that cannot be a token is just not
/// a valid token.
fn malformed(req: &pingora::http::RequestHeader) -> AuthError {
    if req.headers.contains_key(http::header::AUTHORIZATION) {
        AuthError::InvalidRequest
    } else {
        AuthError::InvalidToken(TokenFault::Malformed)
    }
}

/// Check an opaque token by introspection, then the route's scopes and claims.
async fn introspect(
    policy: &Policy,
    introspector: &Introspector,
    req: &pingora::http::RequestHeader,
    token: &[u8],
    revocations: &Revocations,
) -> Result<Identity, AuthError> {
    if token.len() > token::MAX_TOKEN_BYTES {
        return Err(AuthError::InvalidToken(TokenFault::TooLarge));
    }
    let Some(token) = std::str::from_utf8(token)
        .ok()
        .filter(|t| token::is_well_formed(t))
    else {
        return Err(malformed(req));
    };
    let identity = introspector.check(token).await?;
    if revoked(revocations, &identity) {
        return Err(REVOKED);
    }
    policy.permits(&identity)?;
    Ok(identity)
}

const REVOKED: AuthError = AuthError::InvalidToken(TokenFault::Revoked);

/// Whether `identity`'s `sub`, `sid` or `jti` was revoked after it was issued. One atomic
/// load while nothing is revoked.
#[inline]
fn revoked(revocations: &Revocations, identity: &Identity) -> bool {
    revocations.refuses_with(identity.issued_at(), |kind| match kind {
        Kind::Sub => identity.claim(identity::SUB_SLOT).map(Tag::of),
        Kind::Sid => identity.sid_tag(),
        Kind::Jti => identity.jti_tag(),
    })
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
