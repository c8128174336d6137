//! jsonwebtoken's `CryptoProvider`, on ring.
//!
//! ring is already in the binary through rustls; this keeps one crypto stack (no aws-lc, no
//! RustCrypto RSA). Verifiers check that the key's family matches the algorithm before any
//! maths, so an HMAC algorithm can never be run with a public key as its secret.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::signature::{self as sig, KeyPair};
use signature::{Signer, Verifier};

/// The provider; installed once per process by [`install`].
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_components_from_private_key,
        compute_digest,
    },
};

/// Make ring jsonwebtoken's provider for this process. Safe to call more than once.
pub fn install() {
    // Fails only when already installed, which is what we want.
    let _ = RING_PROVIDER.install_default();
}

fn sig_error(e: impl std::error::Error + Send + Sync + 'static) -> signature::Error {
    signature::Error::from_source(e)
}

#[derive(Debug)]
struct Unspecified;
impl std::fmt::Display for Unspecified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("signature operation failed")
    }
}
impl std::error::Error for Unspecified {}

fn unspecified(_: ring::error::Unspecified) -> signature::Error {
    sig_error(Unspecified)
}

/// What a verifier holds: the public key material in the form ring wants.
enum PublicKey {
    /// An RSA modulus and exponent, validated and prepared once ([`prepare_rsa`]).
    Rsa(sig::RsaPreparedPublicKey),
    /// Public key bytes as ring's `UnparsedPublicKey` takes them (EC point, Ed25519 key,
    /// RSA DER, which ring parses strictly itself).
    Bytes(Vec<u8>),
    /// An HMAC secret.
    Hmac(ring::hmac::Key),
}

struct RingVerifier {
    alg: Algorithm,
    key: PublicKey,
}

/// A key made ready, once, to check one algorithm's signatures: an RSA key validated and
/// its Montgomery constants computed, an EC or Ed25519 key's bytes held as ring takes them.
pub struct KeyVerifier(RingVerifier);

impl KeyVerifier {
    /// Prepare `key` for `alg`.
    ///
    /// # Errors
    /// jsonwebtoken's error when the key is not of `alg`'s family (`InvalidAlgorithm`) or
    /// ring rejects it (a modulus outside 1024–8192 bits, a bad exponent). A key under 2048
    /// bits is refused when its set is read (`keys.rs`), and by every verification.
    pub fn new(alg: Algorithm, key: &DecodingKey) -> Result<KeyVerifier> {
        ring_verifier(alg, key).map(KeyVerifier)
    }

    /// Whether `signature` (raw bytes, not base64) signs `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.check(message, signature).is_ok()
    }
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        self.check(msg, signature)
    }
}

impl RingVerifier {
    fn check(&self, msg: &[u8], signature: &[u8]) -> std::result::Result<(), signature::Error> {
        match &self.key {
            PublicKey::Hmac(key) => ring::hmac::verify(key, msg, signature).map_err(unspecified),
            PublicKey::Rsa(key) => {
                let params = rsa_parameters(self.alg).ok_or_else(|| sig_error(Unspecified))?;
                key.verify(params, msg, signature).map_err(unspecified)
            }
            PublicKey::Bytes(bytes) => {
                let params: &'static dyn sig::VerificationAlgorithm = match self.alg {
                    Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
                    Algorithm::EdDSA => &sig::ED25519,
                    alg => rsa_parameters(alg).ok_or_else(|| sig_error(Unspecified))?,
                };
                sig::UnparsedPublicKey::new(params, bytes)
                    .verify(msg, signature)
                    .map_err(unspecified)
            }
        }
    }
}

/// ring's parameters for an RSA algorithm (keys of 2048 bits and more only).
fn rsa_parameters(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// The RSA key of modulus `n` and exponent `e` (big-endian), validated and its Montgomery
/// constants computed: a third of a 2048-bit verification, done once per key and algorithm
/// when its key set is read ([`KeyVerifier::new`]), never per token.
///
/// # Errors
/// ring's reason when it rejects the key (too small, too large, a bad exponent).
fn prepare_rsa(
    n: &[u8],
    e: &[u8],
) -> std::result::Result<sig::RsaPreparedPublicKey, ring::error::KeyRejected> {
    // Leading zero bytes do not change the key; ring refuses them, so drop them here.
    sig::RsaPreparedPublicKey::new(trim_zeros(n), trim_zeros(e))
}

fn trim_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    &v[start..]
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(ring_verifier(*alg, key)?))
}

fn ring_verifier(alg: Algorithm, key: &DecodingKey) -> Result<RingVerifier> {
    use jsonwebtoken::DecodingKeyKind;
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let rejected = |e: ring::error::KeyRejected| invalid(ErrorKind::InvalidRsaKey(e.to_string()));
    let public = match (alg, key.kind()) {
        (
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512,
            DecodingKeyKind::SecretOrDer(secret),
        ) => {
            let h = match alg {
                Algorithm::HS256 => ring::hmac::HMAC_SHA256,
                Algorithm::HS384 => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            PublicKey::Hmac(ring::hmac::Key::new(h, secret))
        }
        (_, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            PublicKey::Rsa(prepare_rsa(n, e).map_err(rejected)?)
        }
        (_, DecodingKeyKind::SecretOrDer(bytes)) => PublicKey::Bytes(bytes.clone()),
    };
    Ok(RingVerifier { alg, key: public })
}

enum SigningKey {
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
    Hmac(ring::hmac::Key),
}

struct RingSigner {
    alg: Algorithm,
    key: SigningKey,
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.key {
            SigningKey::Rsa(pair, encoding) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &rng, msg, &mut out)
                    .map_err(unspecified)?;
                Ok(out)
            }
            SigningKey::Ecdsa(pair) => {
                Ok(pair.sign(&rng, msg).map_err(unspecified)?.as_ref().to_vec())
            }
            SigningKey::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
            SigningKey::Hmac(key) => Ok(ring::hmac::sign(key, msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn invalid(kind: ErrorKind) -> Error {
    kind.into()
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let bytes = key.as_bytes();
    let rng = ring::rand::SystemRandom::new();
    let signing = match alg {
        Algorithm::HS256 => SigningKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)),
        Algorithm::HS384 => SigningKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA384, bytes)),
        Algorithm::HS512 => SigningKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA512, bytes)),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let encoding: &'static dyn sig::RsaEncoding = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            let pair = sig::RsaKeyPair::from_der(bytes)
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(bytes))
                .map_err(|e| invalid(ErrorKind::InvalidRsaKey(e.to_string())))?;
            SigningKey::Rsa(pair, encoding)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let params = if *alg == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = sig::EcdsaKeyPair::from_pkcs8(params, bytes, &rng)
                .map_err(|_| invalid(ErrorKind::InvalidEcdsaKey))?;
            SigningKey::Ecdsa(pair)
        }
        Algorithm::EdDSA => SigningKey::Ed25519(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| invalid(ErrorKind::InvalidEddsaKey))?,
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(RingSigner {
        alg: *alg,
        key: signing,
    }))
}

fn rsa_components(public: &ring::rsa::PublicKey) -> (Vec<u8>, Vec<u8>) {
    let c: sig::RsaPublicKeyComponents<Vec<u8>> = public.into();
    (c.n, c.e)
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let pair = sig::RsaKeyPair::from_der(der)
        .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| invalid(ErrorKind::InvalidRsaKey(e.to_string())))?;
    Ok(rsa_components(pair.public()))
}

fn rsa_components_from_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    // ring has no public-key DER parser of its own; read the PKCS#1 `RSAPublicKey` sequence.
    parse_pkcs1_public(der)
        .ok_or_else(|| invalid(ErrorKind::InvalidRsaKey("malformed RSA public key".into())))
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn parse_pkcs1_public(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = input.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first & 0x80 == 0 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (len_bytes, after) = rest.split_at(n);
            rest = after;
            len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return None;
        }
        Some(rest.split_at(len))
    }
    let (seq, _) = tlv(der, 0x30)?;
    let (n, rest) = tlv(seq, 0x02)?;
    let (e, _) = tlv(rest, 0x02)?;
    Some((trim_zeros(n).to_vec(), trim_zeros(e).to_vec()))
}

fn ec_components_from_private_key(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (params, curve, half) = match alg {
        Algorithm::ES256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let rng = ring::rand::SystemRandom::new();
    let pair = sig::EcdsaKeyPair::from_pkcs8(params, der, &rng)
        .map_err(|_| invalid(ErrorKind::InvalidEcdsaKey))?;
    let point = pair.public_key().as_ref();
    if point.len() != 1 + 2 * half || point[0] != 4 {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    let (x, y) = point[1..].split_at(half);
    Ok((curve, x.to_vec(), y.to_vec()))
}

fn ed_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| invalid(ErrorKind::InvalidEddsaKey))?
            .public_key()
            .as_ref()
            .to_vec()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    use crate::auth::tests::{RSA, RSA_B, RSA_SMALL_JWK};
    /// `openssl dgst -sha256 -sign tests/keys/rsa1024.pem` of [`SMALL_MESSAGE`].
    const SMALL_SIGNATURE: &str = "MCK0P/uukVudMNbi/TUdUYvAiFuRnD+vqNk2MCnK+CQzApSnSEjK6oCTWEMWIMHkxGAgHup1NGW1JgZIfTMceQsxreC/w+aG7gTrGNn1G1QezvogL7RYFxiOiM8Vbltdlj8olOAYzJFTwnk3jh3Zc5yJc/q7QjYcQKLgr/+L3gY=";
    const SMALL_MESSAGE: &[u8] = b"portcullis prepared rsa test";

    fn pair(pem: &str) -> sig::RsaKeyPair {
        let (_, der) = crate::auth::tools::pem_der(pem).unwrap();
        sig::RsaKeyPair::from_pkcs8(&der).unwrap()
    }

    fn sign(
        pair: &sig::RsaKeyPair,
        encoding: &'static dyn sig::RsaEncoding,
        msg: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![0; pair.public().modulus_len()];
        pair.sign(encoding, &ring::rand::SystemRandom::new(), msg, &mut out)
            .unwrap();
        out
    }

    /// ring's own verification, which parses the key on every call: the reference.
    fn reference(n: &[u8], e: &[u8], params: &sig::RsaParameters, msg: &[u8], s: &[u8]) -> bool {
        sig::RsaPublicKeyComponents { n, e }
            .verify(params, msg, s)
            .is_ok()
    }

    #[test]
    fn a_prepared_key_decides_as_ring_does_for_every_rsa_algorithm() {
        let (signer, other) = (pair(RSA), pair(RSA_B));
        let (n, e) = rsa_components(signer.public());
        let (other_n, other_e) = rsa_components(other.public());
        let prepared = prepare_rsa(&n, &e).unwrap();
        let wrong_key = prepare_rsa(&other_n, &other_e).unwrap();
        let msg = b"header.payload";
        let cases: [(Algorithm, &'static dyn sig::RsaEncoding); 6] = [
            (Algorithm::RS256, &sig::RSA_PKCS1_SHA256),
            (Algorithm::RS384, &sig::RSA_PKCS1_SHA384),
            (Algorithm::RS512, &sig::RSA_PKCS1_SHA512),
            (Algorithm::PS256, &sig::RSA_PSS_SHA256),
            (Algorithm::PS384, &sig::RSA_PSS_SHA384),
            (Algorithm::PS512, &sig::RSA_PSS_SHA512),
        ];
        for (alg, encoding) in cases {
            let params = rsa_parameters(alg).unwrap();
            let good = sign(&signer, encoding, msg);
            let mut flipped = good.clone();
            flipped[7] ^= 1;
            for (what, m, s, expect) in [
                ("valid", &msg[..], &good[..], true),
                ("another message", &b"header.payloaD"[..], &good[..], false),
                ("a changed signature", &msg[..], &flipped[..], false),
                ("a short signature", &msg[..], &good[..255], false),
                ("an empty signature", &msg[..], &[][..], false),
            ] {
                assert_eq!(
                    reference(&n, &e, params, m, s),
                    expect,
                    "{alg:?}: ring, {what}"
                );
                assert_eq!(
                    prepared.verify(params, m, s).is_ok(),
                    expect,
                    "{alg:?}: {what}"
                );
            }
            assert!(
                wrong_key.verify(params, msg, &good).is_err(),
                "{alg:?}: another key"
            );
        }
        // The signature of one padding never passes as the other.
        let pkcs1 = sign(&signer, &sig::RSA_PKCS1_SHA256, msg);
        assert!(prepared
            .verify(&sig::RSA_PSS_2048_8192_SHA256, msg, &pkcs1)
            .is_err());
    }

    #[test]
    fn a_prepared_key_keeps_each_algorithms_minimum_size() {
        let jwk: serde_json::Value = serde_json::from_str(RSA_SMALL_JWK).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let n = b64.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = b64.decode(jwk["e"].as_str().unwrap()).unwrap();
        let s = base64::engine::general_purpose::STANDARD
            .decode(SMALL_SIGNATURE)
            .unwrap();
        let key = prepare_rsa(&n, &e).unwrap();
        assert_eq!(key.modulus_bits(), 1024);
        // The signature is good: ring's legacy 1024-bit parameters accept it...
        let legacy = &sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY;
        assert!(reference(&n, &e, legacy, SMALL_MESSAGE, &s));
        assert!(key.verify(legacy, SMALL_MESSAGE, &s).is_ok());
        // ...and every parameter set Portcullis uses refuses a 1024-bit key, as ring does.
        let rs256 = rsa_parameters(Algorithm::RS256).unwrap();
        assert!(!reference(&n, &e, rs256, SMALL_MESSAGE, &s));
        assert!(key.verify(rs256, SMALL_MESSAGE, &s).is_err());
    }

    #[test]
    fn a_leading_zero_is_the_same_key_and_bad_keys_are_refused() {
        let signer = pair(RSA);
        let (n, e) = rsa_components(signer.public());
        let msg = b"header.payload";
        let good = sign(&signer, &sig::RSA_PKCS1_SHA256, msg);
        let params = rsa_parameters(Algorithm::RS256).unwrap();
        // A JWK may carry a leading zero byte; it is the same key.
        let padded = [&[0u8][..], &n].concat();
        assert!(prepare_rsa(&padded, &e)
            .unwrap()
            .verify(params, msg, &good)
            .is_ok());
        // Not a key: even modulus, too small, exponent 1.
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(prepare_rsa(&even, &e).is_err());
        assert!(prepare_rsa(&n[..64], &e).is_err());
        assert!(prepare_rsa(&n, &[1]).is_err());
    }
}
