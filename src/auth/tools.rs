//! Developer tools: mint a test token, inspect a token, make a development key.
//!
//! For `portcullis token` and the demo's built-in issuer. Inspecting never verifies and never
//! touches the network; minting signs with ring through jsonwebtoken like everything else.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{self as sig, KeyPair};
use serde_json::{json, Map, Value};

use super::cache::unix_now;

/// Why a tool failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The key file is not a PEM private key we can use.
    #[error("unusable key: {0}")]
    Key(String),
    /// The claims are not a JSON object.
    #[error("claims must be a JSON object: {0}")]
    Claims(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The token is not a JWT.
    #[error("not a JWT: {0}")]
    Token(String),
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The DER inside the first PEM block of `pem`.
pub(crate) fn pem_der(pem: &str) -> Result<(String, Vec<u8>), ToolError> {
    let begin = pem
        .find("-----BEGIN ")
        .ok_or_else(|| ToolError::Key("no PEM block".into()))?;
    let rest = &pem[begin + 11..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| ToolError::Key("malformed PEM header".into()))?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end = rest
        .find("-----END ")
        .ok_or_else(|| ToolError::Key("no PEM end line".into()))?;
    let b64: String = rest[body_start..end].split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ToolError::Key(e.to_string()))?;
    Ok((label, der))
}

/// The algorithm a private key signs with by default, and the key for jsonwebtoken.
fn signing_key(pem: &str) -> Result<(Algorithm, EncodingKey), ToolError> {
    let (label, der) = pem_der(pem)?;
    if label == "RSA PRIVATE KEY" {
        sig::RsaKeyPair::from_der(&der).map_err(|e| ToolError::Key(e.to_string()))?;
        return Ok((Algorithm::RS256, EncodingKey::from_rsa_der(&der)));
    }
    if label != "PRIVATE KEY" {
        return Err(ToolError::Key(format!(
            "`{label}` is not a private key (want PKCS#8 or PKCS#1)"
        )));
    }
    let rng = ring::rand::SystemRandom::new();
    if sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).is_ok() {
        return Ok((Algorithm::EdDSA, EncodingKey::from_ed_der(&der)));
    }
    if sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).is_ok() {
        return Ok((Algorithm::ES256, EncodingKey::from_ec_der(&der)));
    }
    if sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &der, &rng).is_ok() {
        return Ok((Algorithm::ES384, EncodingKey::from_ec_der(&der)));
    }
    if sig::RsaKeyPair::from_pkcs8(&der).is_ok() {
        return Ok((Algorithm::RS256, EncodingKey::from_rsa_der(&der)));
    }
    Err(ToolError::Key(
        "not an RSA, P-256, P-384 or Ed25519 private key".into(),
    ))
}

fn with_defaults(claims: &str) -> Result<Map<String, Value>, ToolError> {
    let mut claims: Map<String, Value> =
        serde_json::from_str(claims).map_err(|e| ToolError::Claims(e.to_string()))?;
    let now = unix_now();
    claims.entry("iat").or_insert(json!(now));
    claims.entry("exp").or_insert(json!(now + 3600));
    Ok(claims)
}

/// Sign `claims` (a JSON object; `iat` and `exp` = now + 1h are added when absent) with the
/// PEM private key `pem`. `alg` overrides the key's default algorithm (e.g. PS256 for RSA).
///
/// # Errors
/// [`ToolError`] for an unusable key, bad claims or an algorithm the key cannot sign.
pub fn mint(
    pem: &str,
    claims: &str,
    alg: Option<Algorithm>,
    kid: Option<&str>,
) -> Result<String, ToolError> {
    super::crypto::install();
    let (default_alg, key) = signing_key(pem)?;
    let mut header = Header::new(alg.unwrap_or(default_alg));
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &with_defaults(claims)?, &key)
        .map_err(|e| ToolError::Sign(e.to_string()))
}

/// Sign `claims` with an HMAC secret.
///
/// # Errors
/// [`ToolError`] for bad claims or a non-HMAC algorithm.
pub fn mint_hmac(
    secret: &[u8],
    claims: &str,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<String, ToolError> {
    super::crypto::install();
    let key = EncodingKey::from_secret(secret).map_err(|e| ToolError::Key(e.to_string()))?;
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &with_defaults(claims)?, &key)
        .map_err(|e| ToolError::Sign(e.to_string()))
}

/// Decode a token's header and claims without verifying anything.
///
/// # Errors
/// [`ToolError::Token`] when it is not three base64url parts of JSON.
pub fn inspect(token: &str) -> Result<Value, ToolError> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(ToolError::Token(format!(
            "{} parts, expected 3",
            parts.len()
        )));
    };
    let decode = |part: &str, what: &str| -> Result<Value, ToolError> {
        let bytes = B64
            .decode(part)
            .map_err(|e| ToolError::Token(format!("{what}: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| ToolError::Token(format!("{what}: {e}")))
    };
    let header = decode(header, "header")?;
    let claims = decode(payload, "claims")?;
    let now = unix_now() as i64;
    let expires_in = claims
        .get("exp")
        .and_then(Value::as_i64)
        .map(|exp| exp - now);
    Ok(json!({
        "header": header,
        "claims": claims,
        "signature_bytes": B64.decode(signature).map(|s| s.len()).unwrap_or(0),
        "expires_in_seconds": expires_in,
        "verified": false,
    }))
}

/// The public JWK of a PEM private key, with `kid`, `use: sig` and the key's default `alg`
/// unless `alg` is `None`-ed out by `with_alg = false`.
///
/// # Errors
/// [`ToolError::Key`] for an unusable key.
pub fn public_jwk(pem: &str, kid: &str, with_alg: bool) -> Result<Value, ToolError> {
    let (alg, _) = signing_key(pem)?;
    let (_, der) = pem_der(pem)?;
    let rng = ring::rand::SystemRandom::new();
    let mut jwk = match alg {
        Algorithm::RS256 => {
            let pair = sig::RsaKeyPair::from_pkcs8(&der)
                .or_else(|_| sig::RsaKeyPair::from_der(&der))
                .map_err(|e| ToolError::Key(e.to_string()))?;
            let c: sig::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
            json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let (params, crv, half) = if alg == Algorithm::ES256 {
                (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
            } else {
                (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
            };
            let pair = sig::EcdsaKeyPair::from_pkcs8(params, &der, &rng)
                .map_err(|e| ToolError::Key(e.to_string()))?;
            let (x, y) = pair.public_key().as_ref()[1..].split_at(half);
            json!({"kty": "EC", "crv": crv, "x": B64.encode(x), "y": B64.encode(y)})
        }
        _ => {
            let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|e| ToolError::Key(e.to_string()))?;
            json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref())})
        }
    };
    jwk["kid"] = kid.into();
    jwk["use"] = "sig".into();
    if with_alg {
        jwk["alg"] = format!("{alg:?}").into();
    }
    Ok(jwk)
}

/// A fresh P-256 key: its PKCS#8 PEM and its public JWK (with `kid` and `alg: ES256`).
///
/// # Errors
/// When ring cannot generate a key (no system randomness).
pub fn generate_es256(kid: &str) -> Result<(String, Value), ToolError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| ToolError::Key("cannot generate a key".into()))?;
    let pair =
        sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| ToolError::Key("cannot load the generated key".into()))?;
    let point = pair.public_key().as_ref();
    let (x, y) = point[1..].split_at(32);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": B64.encode(x), "y": B64.encode(y),
    });
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_inspect() {
        let (pem, jwk) = generate_es256("k1").unwrap();
        let token = mint(&pem, r#"{"sub":"alice","iss":"me"}"#, None, Some("k1")).unwrap();
        let seen = inspect(&token).unwrap();
        assert_eq!(seen["header"]["alg"], "ES256");
        assert_eq!(seen["header"]["kid"], "k1");
        assert_eq!(seen["claims"]["sub"], "alice");
        assert!(seen["expires_in_seconds"].as_i64().unwrap() > 3500);
        assert_eq!(jwk["kid"], "k1");
        assert!(inspect("a.b").is_err());
        assert!(mint(&pem, "[1]", None, None).is_err());
    }
}
