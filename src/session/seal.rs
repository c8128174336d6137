//! Sealing session data with AEAD (AES-256-GCM, ring): what goes into cookies, and the
//! tokens kept in Redis.
//!
//! A sealed value is base64url (no padding) of: the key's 4-byte id, a random 12-byte nonce,
//! the ciphertext and its 16-byte tag. The associated data names what the value is for
//! (`session`, `login`, ...) and the session client's name, so a value sealed for one use
//! never opens as another. The first key seals; every key opens, picked by its id: rotation
//! is adding a new key in front and dropping the old one once its cookies have expired.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;

/// One key.
struct Key {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

/// The keys of one session client: the first seals, all open.
pub struct Sealer {
    keys: Vec<Key>,
    /// A hash of the keys, to tell on reload whether they changed (never the keys).
    pub fingerprint: [u8; 8],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Random bytes from the operating system; `None` when its generator fails (it does not
/// on Linux once booted).
pub fn random<const N: usize>() -> Option<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).ok()?;
    Some(out)
}

/// Decode one key as written in the environment: 32 bytes in base64 (standard or url-safe,
/// padded or not) or in 64 hex digits.
fn decode_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        let trimmed = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .ok()?
    };
    bytes.try_into().ok()
}

impl Sealer {
    /// Keys from `text`: one or more, comma-separated.
    ///
    /// # Errors
    /// Which key (by position, never its text) is not 32 bytes.
    pub fn from_text(text: &str) -> Result<Sealer, String> {
        let mut keys = Vec::new();
        let mut all = ring::digest::Context::new(&ring::digest::SHA256);
        for (i, part) in text.split(',').enumerate() {
            let Some(raw) = decode_key(part) else {
                return Err(format!(
                    "key {} is not 32 bytes in base64 or 64 hex digits",
                    i + 1
                ));
            };
            let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
            all.update(digest.as_ref());
            let mut id = [0u8; KEY_ID_LEN];
            id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
            let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| "unusable key")?;
            keys.push(Key {
                id,
                aead: LessSafeKey::new(unbound),
            });
        }
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&all.finish().as_ref()[..8]);
        Ok(Sealer { keys, fingerprint })
    }

    /// Seal `plain` for `purpose`; `None` when no random nonce could be had.
    pub fn seal(&self, purpose: &[u8], plain: &[u8]) -> Option<String> {
        let key = self.keys.first()?;
        let nonce_bytes: [u8; NONCE_LEN] = random()?;
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(purpose),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// Open a value sealed for `purpose` by any of the keys; `None` for anything else
    /// (tampered, another purpose, a key no longer held, not base64url).
    pub fn open(&self, purpose: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        if bytes.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let key = self.keys.iter().find(|k| k.id == bytes[..KEY_ID_LEN])?;
        let nonce =
            Nonce::try_assume_unique_for_key(&bytes[KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN]).ok()?;
        let body = &mut bytes[KEY_ID_LEN + NONCE_LEN..];
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(purpose), body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
    const B: &str = "6162636465666768696a6b6c6d6e6f707172737475767778797a303132333435";

    #[test]
    fn seals_and_opens_for_one_purpose_only() {
        let sealer = Sealer::from_text(A).unwrap();
        let sealed = sealer.seal(b"session:web", b"hello").unwrap();
        assert_eq!(
            sealer.open(b"session:web", sealed.as_bytes()).unwrap(),
            b"hello"
        );
        assert!(sealer.open(b"login:web", sealed.as_bytes()).is_none());
        assert!(sealer.open(b"session:api", sealed.as_bytes()).is_none());
        // Two seals of one value differ (random nonces).
        assert_ne!(sealed, sealer.seal(b"session:web", b"hello").unwrap());
    }

    #[test]
    fn any_change_fails_to_open() {
        let sealer = Sealer::from_text(A).unwrap();
        let sealed = sealer
            .seal(b"s", b"some session data")
            .unwrap()
            .into_bytes();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(sealer.open(b"s", &bad).is_none(), "byte {i}");
        }
        assert!(sealer.open(b"s", &sealed[..sealed.len() - 1]).is_none());
        assert!(sealer.open(b"s", b"").is_none());
        assert!(sealer.open(b"s", b"not base64!").is_none());
    }

    #[test]
    fn rotation_the_first_key_seals_every_key_opens() {
        let old = Sealer::from_text(A).unwrap();
        let rotated = Sealer::from_text(&format!("{B}, {A}")).unwrap();
        let before = old.seal(b"s", b"v").unwrap();
        assert_eq!(rotated.open(b"s", before.as_bytes()).unwrap(), b"v");
        let after = rotated.seal(b"s", b"v").unwrap();
        assert!(old.open(b"s", after.as_bytes()).is_none());
        let dropped = Sealer::from_text(B).unwrap();
        assert!(dropped.open(b"s", before.as_bytes()).is_none());
        assert_ne!(old.fingerprint, rotated.fingerprint);
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(Sealer::from_text("c2hvcnQ").is_err());
        let why = Sealer::from_text(&format!("{A},nope")).unwrap_err();
        assert_eq!(why, "key 2 is not 32 bytes in base64 or 64 hex digits");
        assert!(Sealer::from_text(&format!("{A}=")).is_ok());
    }
}
