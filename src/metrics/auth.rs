//! Authentication: token checks, key sets, the token cache and introspection.

/// `portcullis_auth_decisions_total{route,result,reason}`: token checks, `allowed` or `denied`.
pub const AUTH_DECISIONS_TOTAL: &str = "portcullis_auth_decisions_total";
/// `portcullis_jwks_fetches_total{issuer,result}`: key set fetches, `success` or `error`; both
/// from zero for every issuer.
pub const JWKS_FETCHES_TOTAL: &str = "portcullis_jwks_fetches_total";
/// `portcullis_jwks_age_seconds{issuer}`: age of the keys in use.
pub const JWKS_AGE_SECONDS: &str = "portcullis_jwks_age_seconds";
/// `portcullis_jwks_keys{issuer}`: keys in use.
pub const JWKS_KEYS: &str = "portcullis_jwks_keys";
/// `portcullis_jwks_stale{issuer}`: 1 while the last fetch failed and older keys serve.
pub const JWKS_STALE: &str = "portcullis_jwks_stale";
/// `portcullis_token_cache_requests_total{result}`: verified-token cache `hit` or `miss`.
pub const TOKEN_CACHE_REQUESTS_TOTAL: &str = "portcullis_token_cache_requests_total";
/// `portcullis_token_cache_entries`: tokens held in the cache.
pub const TOKEN_CACHE_ENTRIES: &str = "portcullis_token_cache_entries";
/// `portcullis_session_introspections_total{issuer,result}`: RFC 7662 introspections, by
/// outcome: `active`, `inactive` (or active but refused by the issuer's checks), `error` (no
/// endpoint known yet, unreachable, timed out, not 200, not an answer).
pub const SESSION_INTROSPECTIONS_TOTAL: &str = "portcullis_session_introspections_total";
/// `portcullis_session_introspection_cache_requests_total{issuer,result}`: lookups of opaque
/// tokens in the introspection cache, `hit` or `miss`.
pub const SESSION_INTROSPECTION_CACHE_REQUESTS_TOTAL: &str =
    "portcullis_session_introspection_cache_requests_total";
/// `portcullis_session_introspection_cache_entries{issuer}`: answers held.
pub const SESSION_INTROSPECTION_CACHE_ENTRIES: &str =
    "portcullis_session_introspection_cache_entries";
