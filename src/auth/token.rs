//! Finding a token in a request and verifying it.
//!
//! Verification order matters: the token's `iss` picks the issuer before any crypto, the
//! key comes from the issuer's set by `kid`, and the algorithm must be one the key allows.
//! Header fields that would make us fetch or trust keys the token points at (`jku`, `x5u`,
//! `jwk`, `x5c`) are ignored; `crit` is refused since we implement no extension.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use pingora::http::RequestHeader;
use serde::Deserialize;

use super::identity::{Identity, Projection};
use super::issuer::Issuer;
use super::keys::Key;
use super::AuthError;

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
    !token.is_empty() && token.bytes().all(is_token_char)
}

fn is_token_char(b: u8) -> bool {
    // RFC 6750 b64token, which covers a JWT's base64url and dots.
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

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

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

/// Read `iss` from a token's payload without verifying anything, to pick the issuer.
fn peek_iss(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Peek>(&bytes).ok()?.iss
}

/// Whether the header decodes to JSON with a string `alg`.
fn header_names_alg(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("alg").is_some_and(|a| a.is_string()))
}

fn describe(kind: &ErrorKind) -> AuthError {
    AuthError::InvalidToken(match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidAudience => "the token is not for this audience",
        ErrorKind::InvalidIssuer => "the token issuer is not accepted",
        ErrorKind::InvalidSignature => "the token signature is invalid",
        ErrorKind::InvalidAlgorithm => "the token algorithm is not allowed",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
        _ => "the token is malformed",
    })
}

fn find_key<'k>(keys: &'k super::keys::KeySet, header: &jsonwebtoken::Header) -> Option<&'k Key> {
    match &header.kid {
        Some(kid) => keys.by_kid(kid),
        None => keys.only_key_for(header.alg),
    }
}

/// Verify `token` against `issuers` and reduce it to `projection`.
///
/// # Errors
/// [`AuthError::InvalidToken`] with a short reason that leaks nothing of the token or keys;
/// [`AuthError::KeysUnavailable`] when the issuer has no keys yet.
pub async fn verify(
    token: &str,
    issuers: &[Arc<Issuer>],
    projection: &Projection,
) -> Result<Identity, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::InvalidToken("the token is too large"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        // An `alg` we do not implement (`none` among them) fails the header parse; say so.
        if header_names_alg(token) {
            AuthError::InvalidToken("the token algorithm is not allowed")
        } else {
            AuthError::InvalidToken("the token is malformed")
        }
    })?;
    if header.crit.is_some() {
        return Err(AuthError::InvalidToken(
            "the token has an unsupported critical header",
        ));
    }
    let iss = peek_iss(token).ok_or(AuthError::InvalidToken("the token is malformed"))?;
    let issuer = issuers
        .iter()
        .find(|i| i.iss == iss)
        .ok_or(AuthError::InvalidToken("the token issuer is not accepted"))?;
    if !issuer.allowed.contains(&header.alg) {
        return Err(AuthError::InvalidToken(
            "the token algorithm is not allowed",
        ));
    }
    let mut keys = issuer.keys().ok_or(AuthError::KeysUnavailable)?;
    if find_key(&keys, &header).is_none() && header.kid.is_some() {
        issuer.refresh_for_unknown_kid().await;
        // Load again even when this request did not wait: the fetch it needed may have
        // finished between reading `keys` and asking.
        keys = issuer.keys().ok_or(AuthError::KeysUnavailable)?;
    }
    let key = find_key(&keys, &header)
        .ok_or(AuthError::InvalidToken("the token signing key is unknown"))?;
    if !key.algorithms.contains(&header.alg) {
        return Err(AuthError::InvalidToken(
            "the token algorithm is not allowed",
        ));
    }
    let validation = issuer
        .validation(header.alg)
        .ok_or(AuthError::InvalidToken(
            "the token algorithm is not allowed",
        ))?;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key.decoding,
        validation,
    )
    .map_err(|e| describe(e.kind()))?;
    let claims = data.claims;
    let now = super::cache::unix_now();
    match claims.get("iat") {
        None => {}
        Some(iat) => match iat.as_f64() {
            Some(iat) if iat <= (now + issuer.leeway) as f64 => {}
            Some(_) => {
                return Err(AuthError::InvalidToken(
                    "the token was issued in the future",
                ))
            }
            None => return Err(AuthError::InvalidToken("the token is malformed")),
        },
    }
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_f64())
        .filter(|v| *v >= 0.0)
        .ok_or(AuthError::InvalidToken("the token lacks a required claim"))? as u64;
    Ok(Identity::project(
        &claims,
        projection,
        issuer.id,
        key.fingerprint,
        exp,
    ))
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
