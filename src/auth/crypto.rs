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
    /// RSA modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// DER `SubjectPublicKeyInfo`-less public key bytes (EC point, Ed25519 key, RSA DER).
    Bytes(Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    key: PublicKey,
    hmac: Option<ring::hmac::Key>,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        if let Some(key) = &self.hmac {
            return ring::hmac::verify(key, msg, signature).map_err(unspecified);
        }
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = rsa_parameters(self.alg).ok_or_else(|| sig_error(Unspecified))?;
                sig::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, signature)
                    .map_err(unspecified)
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

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    use jsonwebtoken::DecodingKeyKind;
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let (public, hmac) = match (alg, key.kind()) {
        (
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512,
            DecodingKeyKind::SecretOrDer(secret),
        ) => {
            let h = match alg {
                Algorithm::HS256 => ring::hmac::HMAC_SHA256,
                Algorithm::HS384 => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            (
                PublicKey::Bytes(Vec::new()),
                Some(ring::hmac::Key::new(h, secret)),
            )
        }
        (_, DecodingKeyKind::RsaModulusExponent { n, e }) => (
            PublicKey::Rsa {
                n: n.clone(),
                e: e.clone(),
            },
            None,
        ),
        (_, DecodingKeyKind::SecretOrDer(bytes)) => (PublicKey::Bytes(bytes.clone()), None),
    };
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: public,
        hmac,
    }))
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
    let strip = |v: &[u8]| {
        v.iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    Some((strip(n), strip(e)))
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
