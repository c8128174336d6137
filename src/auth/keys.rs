//! Key sets: a JWKS parsed once into ready-to-verify keys, each knowing which algorithms it
//! may be used with.
//!
//! The algorithm a token may use is decided here, from the key (`kty`, `crv`, `alg`) and the
//! issuer's allow-list, never from the token. Keys that cannot be used safely are left out
//! with a reason: RSA under 2048 bits, `use: enc`, unknown types. Nothing here fetches.
//!
//! A token may have several candidate keys: providers list an old and a new key under one
//! `kid` during some rotations, and a token without `kid` may be signed by any key of its
//! algorithm. Each is tried, in the order the set lists them, but never more than
//! [`MAX_CANDIDATES`], so that a hostile key set cannot make one token cost many signature
//! checks.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::SystemTime;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::crypto::KeyVerifier;

/// Most keys taken from one set; providers publish a handful.
pub const MAX_KEYS: usize = 64;
/// Largest key set document accepted.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Most keys tried for one token: keys under one `kid` past this many are left out of the
/// set, and a token without `kid` is tried against the first this many keys of its algorithm.
pub const MAX_CANDIDATES: usize = 4;

/// Where in [`KeySet::keys`] the candidates for one `kid` or one algorithm are, in set order;
/// inline, so that finding them allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Slots {
    len: u8,
    at: [u8; MAX_CANDIDATES],
}

impl Slots {
    /// Add index `i`; false when full (or `i` too large, which [`MAX_KEYS`] rules out).
    fn push(&mut self, i: usize) -> bool {
        match (self.at.get_mut(usize::from(self.len)), u8::try_from(i)) {
            (Some(slot), Ok(i)) => {
                *slot = i;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    fn indexes(self) -> impl Iterator<Item = usize> {
        self.at
            .into_iter()
            .take(usize::from(self.len))
            .map(usize::from)
    }
}

/// One verification key.
pub struct Key {
    /// `kid`, when the set gives one.
    pub kid: Option<String>,
    /// The algorithms this key verifies (from the key, within the issuer's allow-list),
    /// each with the key prepared for it.
    verifiers: Vec<(Algorithm, KeyVerifier)>,
    /// Identifies the key material, so cached tokens of a key that left the set are dropped.
    pub fingerprint: u64,
}

/// The keys of one issuer at one time.
pub struct KeySet {
    keys: Vec<Key>,
    /// The keys under each `kid` (at most [`MAX_CANDIDATES`], see [`KeySet::from_jwks`]).
    by_kid: HashMap<String, Slots>,
    /// The first [`MAX_CANDIDATES`] keys of each algorithm, for tokens without `kid`.
    by_alg: Vec<(Algorithm, Slots)>,
    /// When the set was fetched or read.
    pub loaded_at: SystemTime,
}

/// Why a key set was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySetError {
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Malformed(String),
    /// Larger than [`MAX_JWKS_BYTES`].
    #[error("key set larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// It parsed, but no key in it can verify the allowed algorithms.
    #[error("no usable key ({0})")]
    NoUsableKey(String),
}

fn family_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    Ok(match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = base64_len(&rsa.n).ok_or("RSA modulus is not base64url")?;
            if n < 256 {
                return Err(format!("RSA key of {} bits is under 2048", n * 8));
            }
            vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported EC curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve".into()),
        },
        // Symmetric keys never come from a key set: a published secret is no secret.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key in a key set".into()),
        _ => return Err("unsupported key type".into()),
    })
}

/// Length in bytes of the number in a base64url string, without leading zeros.
fn base64_len(b64: &str) -> Option<usize> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()?;
    Some(bytes.iter().skip_while(|b| **b == 0).count())
}

fn key_alg(alg: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn fingerprint(value: &serde_json::Value) -> u64 {
    let mut h = DefaultHasher::new();
    for field in ["kty", "crv", "n", "e", "x", "y"] {
        if let Some(v) = value.get(field).and_then(|v| v.as_str()) {
            field.hash(&mut h);
            v.hash(&mut h);
        }
    }
    h.finish()
}

/// Parse one JWK into a key usable with `allowed`, or say why not.
fn parse_key(value: &serde_json::Value, allowed: &[Algorithm]) -> Result<Key, String> {
    let jwk: Jwk =
        serde_json::from_value(value.clone()).map_err(|e| format!("malformed key: {e}"))?;
    if let Some(PublicKeyUse::Encryption) = jwk.common.public_key_use {
        return Err("key is for encryption".into());
    }
    if let Some(PublicKeyUse::Other(u)) = &jwk.common.public_key_use {
        return Err(format!("key use `{u}` is not `sig`"));
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return Err("key_ops does not include `verify`".into());
        }
    }
    let mut algorithms = family_algorithms(&jwk)?;
    if let Some(alg) = &jwk.common.key_algorithm {
        let alg = key_alg(alg).ok_or("key `alg` is not a signature algorithm")?;
        if !algorithms.contains(&alg) {
            return Err("key `alg` does not match its type".into());
        }
        algorithms = vec![alg];
    }
    algorithms.retain(|a| allowed.contains(a));
    if algorithms.is_empty() {
        return Err("key allows no algorithm on the allow-list".into());
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        verifiers: prepare(&decoding, &algorithms).map_err(|e| format!("unusable key: {e}"))?,
        fingerprint: fingerprint(value),
    })
}

/// `key` prepared for each of `algorithms`.
fn prepare(
    key: &DecodingKey,
    algorithms: &[Algorithm],
) -> Result<Vec<(Algorithm, KeyVerifier)>, jsonwebtoken::errors::Error> {
    algorithms
        .iter()
        .map(|&alg| Ok((alg, KeyVerifier::new(alg, key)?)))
        .collect()
}

impl Key {
    /// Whether this key verifies `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.verifier(alg).is_some()
    }

    /// The key prepared for `alg`, if it verifies `alg`.
    pub fn verifier(&self, alg: Algorithm) -> Option<&KeyVerifier> {
        self.verifiers
            .iter()
            .find_map(|(a, v)| (*a == alg).then_some(v))
    }
}

impl KeySet {
    /// Parse a JWKS document, keeping the keys usable with `allowed`. A key listed twice
    /// under one `kid`, and keys under one `kid` past the first [`MAX_CANDIDATES`], are left
    /// out.
    ///
    /// # Errors
    /// [`KeySetError`] when the document is not a key set or holds no usable key. Single bad
    /// keys are skipped and returned as warnings instead.
    pub fn from_jwks(
        bytes: &[u8],
        allowed: &[Algorithm],
    ) -> Result<(KeySet, Vec<String>), KeySetError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(KeySetError::TooLarge);
        }
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| KeySetError::Malformed(e.to_string()))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| KeySetError::Malformed("no `keys` array".into()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in list.iter().enumerate() {
            if keys.len() == MAX_KEYS {
                skipped.push(format!("keys past the first {MAX_KEYS} are ignored"));
                break;
            }
            let key = parse_key(value, allowed).and_then(|key| {
                let mut same_kid = keys.iter().filter(|k: &&Key| k.kid == key.kid);
                if key.kid.is_none() {
                    Ok(key)
                } else if same_kid.clone().any(|k| k.fingerprint == key.fingerprint) {
                    Err("the same key is listed before under this kid".to_string())
                } else if same_kid.nth(MAX_CANDIDATES - 1).is_some() {
                    Err(format!(
                        "more than {MAX_CANDIDATES} keys under one kid: it would never be tried"
                    ))
                } else {
                    Ok(key)
                }
            });
            match key {
                Ok(key) => keys.push(key),
                Err(why) => {
                    let kid = value.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                    skipped.push(format!("key {i} (kid `{kid}`): {why}"));
                }
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey(skipped.join("; ")));
        }
        Ok((KeySet::new(keys), skipped))
    }

    /// A set holding one HMAC secret.
    ///
    /// # Errors
    /// When jsonwebtoken refuses the secret (empty).
    pub fn from_secret(secret: &[u8], allowed: &[Algorithm]) -> Result<KeySet, KeySetError> {
        let mut h = DefaultHasher::new();
        secret.hash(&mut h);
        let decoding = DecodingKey::from_secret(secret)
            .map_err(|e| KeySetError::NoUsableKey(e.to_string()))?;
        let key = Key {
            kid: None,
            verifiers: prepare(&decoding, allowed)
                .map_err(|e| KeySetError::NoUsableKey(e.to_string()))?,
            fingerprint: h.finish(),
        };
        Ok(KeySet::new(vec![key]))
    }

    fn new(keys: Vec<Key>) -> KeySet {
        let mut by_kid: HashMap<String, Slots> = HashMap::new();
        let mut by_alg: Vec<(Algorithm, Slots)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                // Never full: `from_jwks` keeps at most MAX_CANDIDATES keys per kid.
                by_kid.entry(kid.clone()).or_default().push(i);
            }
            for (alg, _) in &key.verifiers {
                match by_alg.iter_mut().find(|(a, _)| a == alg) {
                    Some((_, slots)) => {
                        slots.push(i);
                    }
                    None => {
                        let mut slots = Slots::default();
                        slots.push(i);
                        by_alg.push((*alg, slots));
                    }
                }
            }
        }
        KeySet {
            keys,
            by_kid,
            by_alg,
            loaded_at: SystemTime::now(),
        }
    }

    /// Whether some key is listed under `kid` (for any algorithm).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The keys a token of `alg` naming `kid` may be signed with, each prepared for `alg`, in
    /// set order and at most [`MAX_CANDIDATES`]: the keys under `kid`, or without a `kid` the
    /// keys of `alg`. Allocates nothing.
    pub fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = (&Key, &KeyVerifier)> + '_ {
        let slots = match kid {
            Some(kid) => self.by_kid.get(kid).copied(),
            None => self
                .by_alg
                .iter()
                .find_map(|(a, slots)| (*a == alg).then_some(*slots)),
        };
        slots
            .unwrap_or_default()
            .indexes()
            .filter_map(|i| self.keys.get(i))
            .filter_map(move |key| key.verifier(alg).map(|v| (key, v)))
    }

    /// Whether a key with this fingerprint is still in the set.
    pub fn contains(&self, fingerprint: u64) -> bool {
        self.keys.iter().any(|k| k.fingerprint == fingerprint)
    }

    /// Each key's `kid`, in the set's order (`None` for a key without one): public
    /// identifiers, for the status page.
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never true for a set built by this module).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tools::generate_es256;
    use serde_json::json;

    const ES256: [Algorithm; 1] = [Algorithm::ES256];

    /// `n` fresh P-256 public keys under `kid(i)`.
    fn keys(n: usize, kid: impl Fn(usize) -> String) -> Vec<serde_json::Value> {
        (0..n).map(|i| generate_es256(&kid(i)).unwrap().1).collect()
    }

    fn fingerprints<'a>(it: impl Iterator<Item = (&'a Key, &'a KeyVerifier)>) -> Vec<u64> {
        it.map(|(k, _)| k.fingerprint).collect()
    }

    #[test]
    fn keys_under_one_kid_are_candidates_in_set_order_up_to_the_bound() {
        let listed = keys(6, |_| "k".into());
        let doc = json!({ "keys": listed }).to_string();
        let (set, skipped) = KeySet::from_jwks(doc.as_bytes(), &ES256).unwrap();
        assert_eq!(set.len(), MAX_CANDIDATES);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].contains("more than 4 keys under one kid"),
            "{skipped:?}"
        );
        let want: Vec<u64> = listed[..MAX_CANDIDATES].iter().map(fingerprint).collect();
        assert_eq!(
            fingerprints(set.candidates(Some("k"), Algorithm::ES256)),
            want
        );
        // Without a kid: the keys of the algorithm, the same bound.
        assert_eq!(fingerprints(set.candidates(None, Algorithm::ES256)), want);
        // A kid with keys, none for the algorithm; an unknown kid.
        assert!(set.has_kid("k"));
        assert_eq!(set.candidates(Some("k"), Algorithm::RS256).count(), 0);
        assert!(!set.has_kid("other"));
        assert_eq!(set.candidates(Some("other"), Algorithm::ES256).count(), 0);
    }

    #[test]
    fn a_key_listed_twice_under_one_kid_counts_once() {
        let one = generate_es256("k").unwrap().1;
        let doc = json!({ "keys": [one, one, generate_es256("k").unwrap().1] }).to_string();
        let (set, skipped) = KeySet::from_jwks(doc.as_bytes(), &ES256).unwrap();
        assert_eq!(set.len(), 2);
        assert!(skipped[0].contains("listed before"), "{skipped:?}");
    }

    #[test]
    fn tokens_without_kid_try_at_most_the_bound_of_many_kids() {
        let listed = keys(6, |i| format!("k{i}"));
        let doc = json!({ "keys": listed }).to_string();
        let (set, skipped) = KeySet::from_jwks(doc.as_bytes(), &ES256).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(set.len(), 6);
        let want: Vec<u64> = listed[..MAX_CANDIDATES].iter().map(fingerprint).collect();
        assert_eq!(fingerprints(set.candidates(None, Algorithm::ES256)), want);
        assert_eq!(
            fingerprints(set.candidates(Some("k5"), Algorithm::ES256)),
            [fingerprint(&listed[5])]
        );
    }
}
