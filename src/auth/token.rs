//! Finding a token in a request and verifying it.
//!
//! Verification order matters: the token's `iss` picks the issuer before any crypto, the
//! keys come from the issuer's set by `kid`, and the algorithm must be one the key allows.
//! Header fields that would make us fetch or trust keys the token points at (`jku`, `x5u`,
//! `jwk`, `x5c`) are ignored; `crit` is refused since we implement no extension.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::Algorithm;
use pingora::http::RequestHeader;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::map::Entry;
use serde_json::{Map, Value};

use super::identity::{Identity, Projection};
use super::issuer::Issuer;
use super::{AuthError, TokenFault};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where a route looks for its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// A cookie of this name.
    Cookie(String),
    /// A query parameter of this name.
    Query(String),
}

impl TokenSource {
    /// Parse `header`, `cookie:<name>` or `query:<name>`.
    ///
    /// # Errors
    /// A message for anything else.
    pub fn parse(s: &str) -> Result<TokenSource, String> {
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        match s.split_once(':') {
            None if s == "header" => Ok(TokenSource::Header),
            Some(("cookie", name)) if valid_name(name) => Ok(TokenSource::Cookie(name.into())),
            Some(("query", name)) if valid_name(name) => Ok(TokenSource::Query(name.into())),
            _ => Err(format!(
                "unknown token source `{s}`, expected `header`, `cookie:<name>` or `query:<name>`"
            )),
        }
    }
}

/// Whether `token` has only RFC 6750 `b64token` characters (a JWT's base64url and dots).
pub fn is_well_formed(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| TOKEN_CHARS[usize::from(b)])
}

/// Whether a bearer value has a JWT's shape, three parts separated by dots (RFC 7519
/// section 7.2): such a token is verified as a JWT; any other goes to introspection on a route
/// that has it.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|b| **b == b'.').count() == 2
}

/// RFC 6750's `b64token` characters, which cover a JWT's base64url and dots; a table
/// because every new token (500 bytes and more) is scanned.
static TOKEN_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    table
};

/// The token of a request, from the first source in `sources` that has one.
///
/// # Errors
/// [`AuthError::MissingToken`] when no source has one; [`AuthError::InvalidRequest`] when the
/// request carries several Authorization headers or a malformed bearer credential.
pub fn extract<'r>(req: &'r RequestHeader, sources: &[TokenSource]) -> Result<&'r [u8], AuthError> {
    for source in sources {
        let found = match source {
            TokenSource::Header => {
                let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
                let value = match (values.next(), values.next()) {
                    (Some(value), None) => value,
                    (Some(_), Some(_)) => return Err(AuthError::InvalidRequest),
                    (None, _) => continue,
                };
                // Only the scheme is read here. The token's bytes are checked (text, no
                // spaces, base64url parts) on a cache miss only: a token found in the cache
                // verified once, so it passed those checks then ([`is_well_formed`]).
                let bytes = value.as_bytes();
                let Some(space) = bytes.iter().position(|b| *b == b' ') else {
                    continue;
                };
                if !bytes[..space].eq_ignore_ascii_case(b"bearer") {
                    // Another scheme (Basic, ...) is not a bearer token.
                    continue;
                }
                let token = bytes[space..].trim_ascii();
                if token.is_empty() {
                    return Err(AuthError::InvalidRequest);
                }
                Some(token)
            }
            TokenSource::Cookie(name) => req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v.trim_matches('"').as_bytes())
                }),
            TokenSource::Query(name) => req.uri.query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                })
            }),
        };
        if let Some(token) = found.filter(|t| !t.is_empty()) {
            return Ok(token);
        }
    }
    Err(AuthError::MissingToken)
}

/// The JOSE header fields verification reads; the others (`typ`, `jku`, `jwk`, `x5u`, `x5c`,
/// ...) are ignored, never acted on.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    alg: Algorithm,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// Any `crit` is refused: we implement no extension.
    #[serde(default)]
    crit: Option<IgnoredAny>,
    /// RFC 7797's unencoded payload: `false` is refused, anything but a boolean is malformed.
    #[serde(default)]
    b64: Option<bool>,
}

/// A token's claims, each name once: a JSON object with a repeated member is refused, so
/// that no two parsers can read different values from one token (RFC 7519 section 4).
struct Claims(Map<String, Value>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Claims, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Claims, A::Error> {
                let mut claims = Map::new();
                while let Some((name, value)) = members.next_entry::<String, Value>()? {
                    match claims.entry(name) {
                        Entry::Vacant(slot) => {
                            slot.insert(value);
                        }
                        Entry::Occupied(_) => {
                            return Err(serde::de::Error::custom("a claim is repeated"));
                        }
                    }
                }
                Ok(Claims(claims))
            }
        }
        d.deserialize_map(Members)
    }
}

const MALFORMED: AuthError = AuthError::InvalidToken(TokenFault::Malformed);
const NOT_ALLOWED: AuthError = AuthError::InvalidToken(TokenFault::BadAlgorithm);
const LACKS_CLAIM: AuthError = AuthError::InvalidToken(TokenFault::MissingClaim);

fn b64_decode(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

/// Whether the header decodes to JSON with a string `alg`.
fn header_names_alg(header: &str) -> bool {
    b64_decode(header)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.get("alg").is_some_and(Value::is_string))
}

/// A NumericDate (RFC 7519) as whole seconds: a non-negative integer, or a non-negative
/// fraction rounded; anything else (a string, `null`, a negative number) is `None`.
pub(super) fn numeric_date(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        let f = n.as_f64().filter(|_| n.is_f64())?;
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
    })
}

/// Whether `aud` (a string or an array of strings) names one of `audiences`; `None` when it
/// is neither.
pub(super) fn audience_matches(aud: &Value, audiences: &[String]) -> Option<bool> {
    let accepted = |a: &str| audiences.iter().any(|x| x == a);
    match aud {
        Value::String(a) => Some(accepted(a)),
        Value::Array(all) => all
            .iter()
            .try_fold(false, |hit, a| Some(hit | accepted(a.as_str()?))),
        _ => None,
    }
}

/// Check a verified token's claims against its issuer: `exp` and (when the issuer names
/// audiences) `aud` are required; `exp`, `nbf` and `iat` are held to the clock within the
/// issuer's leeway. Returns `exp`. `iss`, also required, was checked when it picked the
/// issuer.
///
/// The checks and their order are jsonwebtoken's `Validation` (a test holds them to it),
/// done on the one parse of the claims that the identity is built from.
fn check_claims(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    audiences: &[String],
    now: u64,
) -> Result<u64, AuthError> {
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(LACKS_CLAIM)?;
    check_claims_but_exp(claims, issuer, audiences, now, exp)
}

/// [`check_claims`] once `exp` is known.
fn check_claims_but_exp(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    audiences: &[String],
    now: u64,
    exp: u64,
) -> Result<u64, AuthError> {
    // `None` when there is no `aud` (or it is neither a string nor strings), else whether it
    // names one of the issuer's audiences; only asked when the issuer names some.
    let aud = (!audiences.is_empty()).then(|| {
        claims
            .get("aud")
            .and_then(|a| audience_matches(a, audiences))
    });
    if aud == Some(None) {
        return Err(LACKS_CLAIM);
    }
    let nbf = match claims.get("nbf") {
        None => None,
        Some(v) => Some(numeric_date(v).ok_or(MALFORMED)?),
    };
    // The leeway may be as large as the config accepts (u64::MAX seconds): saturate.
    let latest = now.saturating_add(issuer.leeway);
    if exp < now.saturating_sub(issuer.leeway) {
        return Err(AuthError::InvalidToken(TokenFault::Expired));
    }
    if nbf.is_some_and(|nbf| nbf > latest) {
        return Err(AuthError::InvalidToken(TokenFault::NotYetValid));
    }
    if aud == Some(Some(false)) {
        return Err(AuthError::InvalidToken(TokenFault::BadAudience));
    }
    match claims.get("iat") {
        None => {}
        Some(iat) => match iat.as_f64() {
            #[allow(clippy::cast_precision_loss)]
            Some(iat) if iat <= latest as f64 => {}
            Some(_) => return Err(AuthError::InvalidToken(TokenFault::IssuedInFuture)),
            None => return Err(MALFORMED),
        },
    }
    Ok(exp)
}

/// Verify `token` against `issuers` and reduce it to `projection`.
///
/// The token is split, and its header and claims decoded, once. The claims pick the issuer
/// before any crypto; the candidate keys come from that issuer's set by `kid` (or, without
/// one, by algorithm) and must allow the algorithm; each candidate's
/// [`super::crypto::KeyVerifier`], prepared when the key set was read, is tried in set order
/// until one holds (at most [`super::keys::MAX_CANDIDATES`]); the claims are checked only
/// after that.
///
/// # Errors
/// [`AuthError::InvalidToken`] with a short reason that leaks nothing of the token or keys;
/// [`AuthError::KeysUnavailable`] when the issuer has no keys yet.
pub async fn verify(
    token: &str,
    issuers: &[Arc<Issuer>],
    projection: &Projection,
) -> Result<Identity, AuthError> {
    let v = verify_signed(token, issuers, None).await?;
    Ok(Identity::project(
        &v.claims,
        projection,
        v.issuer.id,
        v.fingerprint,
        v.exp,
    ))
}

/// A token whose signature and claims hold.
pub struct Verified<'a> {
    /// Its claims, each name once.
    pub claims: Map<String, Value>,
    /// The issuer that signed it.
    pub issuer: &'a Arc<Issuer>,
    /// The fingerprint of the key that verified it.
    pub fingerprint: u64,
    /// Its `exp`.
    pub exp: u64,
}

/// [`verify`] without the projection: the claims, checked against the issuer, or against
/// `audiences` in place of the issuer's own (an ID token is for the client id).
///
/// # Errors
/// As [`verify`].
pub async fn verify_signed<'a>(
    token: &str,
    issuers: &'a [Arc<Issuer>],
    audiences: Option<&[String]>,
) -> Result<Verified<'a>, AuthError> {
    verify_with(token, issuers, audiences, false).await
}

/// The longest a logout token without `exp` counts after its `iat`.
pub const LOGOUT_TOKEN_MAX_AGE: u64 = 300;

/// [`verify_signed`] for an OpenID Connect back-channel logout token, for `audiences`:
/// `exp` is optional there, `iat` is required, and a token counts for at most
/// [`LOGOUT_TOKEN_MAX_AGE`] after its `iat` when it has no `exp`.
///
/// # Errors
/// As [`verify`].
pub async fn verify_logout<'a>(
    token: &str,
    issuers: &'a [Arc<Issuer>],
    audiences: &[String],
) -> Result<Verified<'a>, AuthError> {
    verify_with(token, issuers, Some(audiences), true).await
}

async fn verify_with<'a>(
    token: &str,
    issuers: &'a [Arc<Issuer>],
    audiences: Option<&[String]>,
    logout: bool,
) -> Result<Verified<'a>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::InvalidToken(TokenFault::TooLarge));
    }
    let mut parts = token.split('.');
    let (Some(header_part), Some(claims_part), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let header_json = b64_decode(header_part).ok_or(MALFORMED)?;
    let header = serde_json::from_slice::<JoseHeader>(&header_json).map_err(|_| {
        // An `alg` we do not implement (`none` among them) fails the header parse; say so.
        if header_names_alg(header_part) {
            NOT_ALLOWED
        } else {
            MALFORMED
        }
    })?;
    if header.crit.is_some() {
        return Err(AuthError::InvalidToken(TokenFault::UnsupportedCritical));
    }
    if header.b64 == Some(false) {
        return Err(MALFORMED);
    }
    let claims = b64_decode(claims_part)
        .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
        .ok_or(MALFORMED)?
        .0;
    let iss = claims.get("iss").and_then(Value::as_str).ok_or(MALFORMED)?;
    let issuer = issuers
        .iter()
        .find(|i| i.iss == iss)
        .ok_or(AuthError::InvalidToken(TokenFault::UntrustedIssuer))?;
    let alg = header.alg;
    if !issuer.allowed.contains(&alg) {
        return Err(NOT_ALLOWED);
    }
    let kid = header.kid.as_deref();
    let mut keys = issuer.keys().ok_or(AuthError::KeysUnavailable)?;
    if kid.is_some_and(|kid| !keys.has_kid(kid)) {
        let waited = crate::trace::notes::key_wait_start();
        let fetched = issuer.refresh_for_unknown_kid().await;
        crate::trace::notes::note_key_fetch(waited, &issuer.name, fetched);
        // Load again even when this request did not wait: the fetch it needed may have
        // finished between reading `keys` and asking.
        keys = issuer.keys().ok_or(AuthError::KeysUnavailable)?;
    }
    let mut candidates = keys.candidates(kid, alg).peekable();
    if candidates.peek().is_none() {
        return Err(match kid {
            // Keys under this kid, none for this algorithm.
            Some(kid) if keys.has_kid(kid) => NOT_ALLOWED,
            _ => AuthError::InvalidToken(TokenFault::UnknownKey),
        });
    }
    let signed = &token.as_bytes()[..header_part.len() + 1 + claims_part.len()];
    let signature = b64_decode(signature).ok_or(MALFORMED)?;
    // Usually one key; during some rotations two under one kid (see `keys::MAX_CANDIDATES`).
    let (key, _) = candidates
        .find(|(_, verifier)| verifier.verify(signed, &signature))
        .ok_or(AuthError::InvalidToken(TokenFault::BadSignature))?;
    let audiences = audiences.unwrap_or(&issuer.config.audiences);
    let now = super::cache::unix_now();
    let exp = if logout {
        let iat = claims
            .get("iat")
            .and_then(numeric_date)
            .ok_or(LACKS_CLAIM)?;
        let exp = match claims.get("exp") {
            Some(exp) => numeric_date(exp).ok_or(MALFORMED)?,
            None => iat.saturating_add(LOGOUT_TOKEN_MAX_AGE),
        };
        check_claims_but_exp(&claims, issuer, audiences, now, exp)?
    } else {
        check_claims(&claims, issuer, audiences, now)?
    };
    Ok(Verified {
        claims,
        issuer,
        fingerprint: key.fingerprint,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let sources = [TokenSource::Header];
        assert_eq!(
            extract(
                &req("/", &[("authorization", "bEaReR abc.def.ghi")]),
                &sources
            )
            .unwrap(),
            b"abc.def.ghi"
        );
        assert_eq!(
            extract(&req("/", &[("authorization", "Basic dXNlcg==")]), &sources),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            extract(&req("/", &[]), &sources),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            extract(
                &req(
                    "/",
                    &[("authorization", "Bearer a"), ("authorization", "Bearer b")]
                ),
                &sources
            ),
            Err(AuthError::InvalidRequest)
        );
        assert_eq!(
            extract(&req("/", &[("authorization", "Bearer  ")]), &sources),
            Err(AuthError::InvalidRequest)
        );
        // Refused later, on the cache miss (`is_well_formed`), not scanned here.
        assert_eq!(
            extract(&req("/", &[("authorization", "Bearer a b")]), &sources),
            Ok(&b"a b"[..])
        );
    }

    #[test]
    fn cookie_and_query_only_when_listed() {
        let r = req(
            "/x?access_token=q.q.q&x=1",
            &[("cookie", "a=1; access_token=c.c.c")],
        );
        assert_eq!(
            extract(&r, &[TokenSource::Header]),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            extract(
                &r,
                &[
                    TokenSource::Header,
                    TokenSource::Cookie("access_token".into())
                ]
            )
            .unwrap(),
            b"c.c.c"
        );
        assert_eq!(
            extract(&r, &[TokenSource::Query("access_token".into())]).unwrap(),
            b"q.q.q"
        );
    }

    #[test]
    fn sources_parse() {
        assert_eq!(TokenSource::parse("header"), Ok(TokenSource::Header));
        assert_eq!(
            TokenSource::parse("cookie:sid"),
            Ok(TokenSource::Cookie("sid".into()))
        );
        assert!(TokenSource::parse("cookie:").is_err());
        assert!(TokenSource::parse("body").is_err());
    }
}
