//! What a verified token says, kept small: only the claims the config uses.
//!
//! The config's routes name a fixed set of claim paths (forwarded, required, limited on);
//! that set is the [`Projection`], and an [`Identity`] holds the values of just those paths,
//! by slot. This keeps cached tokens small (millions fit in bounded memory) and makes the
//! per-request checks index lookups instead of JSON walks.
//!
//! Whatever the routes use, an identity also holds what the revocation check needs
//! ([`crate::revocation`]), so that a token cached before a revocation is refused on its next
//! request: `sub` is always slot [`SUB_SLOT`] of every projection (routes forward or limit on
//! it anyway), and `iat`, `sid` and `jti` come before the facts, each only when the token
//! has it (`iat` in 4 bytes, `sid` and `jti` as 8-byte keyed hashes: their text is never
//! forwarded, so it is not kept).

use http::HeaderValue;
use serde_json::{Map, Value};

use crate::revocation::Tag;

/// The slot of `sub` in every projection.
pub const SUB_SLOT: usize = 0;

/// Something a route requires of a token, decided once when the token is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// The token holds this scope (in `scope`, space separated, or `scp`, array or string).
    Scope(Box<str>),
    /// The claim in this projection slot has one of these values (any element of an array).
    Claim {
        /// Projection slot of the claim.
        slot: usize,
        /// Accepted values.
        accepted: Box<[Box<str>]>,
    },
}

/// The claim paths and facts the config uses; a path's slot and a fact's bit are their
/// positions. Slot [`SUB_SLOT`] is `sub`, always: the revocation check reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    paths: Vec<String>,
    facts: Vec<Fact>,
}

impl Default for Projection {
    /// `sub` only.
    fn default() -> Self {
        Projection {
            paths: vec!["sub".to_string()],
            facts: Vec::new(),
        }
    }
}

impl Projection {
    /// Add `path` if new and give its slot.
    pub fn slot_for(&mut self, path: &str) -> usize {
        match self.slot(path) {
            Some(i) => i,
            None => {
                self.paths.push(path.to_string());
                self.paths.len() - 1
            }
        }
    }

    /// The slot of `path`, if the config uses it.
    pub fn slot(&self, path: &str) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    /// Add `fact` if new and give its bit.
    pub fn fact_for(&mut self, fact: Fact) -> usize {
        match self.fact(&fact) {
            Some(i) => i,
            None => {
                self.facts.push(fact);
                self.facts.len() - 1
            }
        }
    }

    /// The bit of `fact`, if the config uses it.
    pub fn fact(&self, fact: &Fact) -> Option<usize> {
        self.facts.iter().position(|f| f == fact)
    }

    /// How many paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether no path is used.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// A set of facts a route requires, as bits of the projection's facts.
#[derive(Debug, Clone, Default)]
pub struct Facts(Box<[u8]>);

impl Facts {
    /// The set of the given fact bits.
    pub fn of(bits: impl IntoIterator<Item = usize>) -> Facts {
        let mut bytes: Vec<u8> = Vec::new();
        for bit in bits {
            if bytes.len() <= bit / 8 {
                bytes.resize(bit / 8 + 1, 0);
            }
            bytes[bit / 8] |= 1 << (bit % 8);
        }
        Facts(bytes.into_boxed_slice())
    }
}

/// The fixed part of an [`Identity`].
#[derive(Debug, Clone, Copy)]
struct Head {
    key_fingerprint: u64,
    until: u32,
    issuer_id: u32,
}

/// A verified token, reduced to what the config needs, in one allocation behind a thin
/// reference-counted pointer: cloning it is one atomic increment, and a cached token costs
/// its 24-byte table slot plus this (72 bytes for a short `sub`, `iat` and a few facts).
///
/// After the fixed part comes the packed data: the number of projection slots and of fact
/// bytes (`u16` each, little-endian); a byte saying which of `iat`, `sid` and `jti` follow
/// ([`HAS_IAT`], [`HAS_SID`], [`HAS_JTI`]), then those that do (`iat` as `u32`, the others as
/// their [`Tag`], `u64`); the fact bits; per slot the end offset of its value (`u16`, `NONE`
/// when the token lacks it); the values' text.
#[derive(Debug, Clone)]
pub struct Identity(triomphe::ThinArc<Head, u8>);

/// End offset of a slot the token does not have.
const NONE: u16 = u16::MAX;

/// The token has `iat` (a `u32` of seconds follows the flags byte).
const HAS_IAT: u8 = 1;
/// The token has `sid` (its [`Tag`] follows, after `iat`).
const HAS_SID: u8 = 2;
/// The token has `jti` (its [`Tag`] follows, after `sid`).
const HAS_JTI: u8 = 4;
/// Where the flags byte is.
const FLAGS_AT: usize = 4;

/// A claim that identifies (`sid`, `jti`) as text: a string as it is, a number or a boolean
/// as its JSON text (as a projected claim reads); anything else counts as absent.
fn id_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    match claims.get(name)? {
        Value::String(s) => Some(s.as_str().into()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string().into()),
        _ => None,
    }
}

/// Find `path` in `claims`: a top-level key of that exact name first, then a walk through
/// nested objects by `.`.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut at = claims.get(parts.next()?)?;
    for part in parts {
        at = at.as_object()?.get(part)?;
    }
    Some(at)
}

/// A claim's values as text: one for a scalar, one per element for an array; strings as
/// they are, other values as their JSON text. `null` has none.
fn items(value: &Value) -> Vec<std::borrow::Cow<'_, str>> {
    fn text(v: &Value) -> std::borrow::Cow<'_, str> {
        match v {
            Value::String(s) => s.as_str().into(),
            other => other.to_string().into(),
        }
    }
    match value {
        Value::Null => Vec::new(),
        Value::Array(list) => list.iter().map(text).collect(),
        other => vec![text(other)],
    }
}

fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
            s.split_whitespace().collect()
        }
        (_, Some(Value::Array(list))) => list.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    }
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

impl Identity {
    /// Reduce verified `claims` to `projection`; the identity counts until `until` (seconds
    /// since the epoch: the token's `exp`, or sooner).
    pub fn project(
        claims: &Map<String, Value>,
        projection: &Projection,
        issuer_id: u64,
        key_fingerprint: u64,
        until: u64,
    ) -> Identity {
        let values: Vec<Option<Vec<std::borrow::Cow<'_, str>>>> = projection
            .paths
            .iter()
            .map(|p| lookup(claims, p).map(items).filter(|i| !i.is_empty()))
            .collect();
        let held = scopes(claims);
        let fact_bytes = projection.facts.len().div_ceil(8);
        let mut facts = vec![0u8; fact_bytes];
        for (i, fact) in projection.facts.iter().enumerate() {
            let holds = match fact {
                Fact::Scope(scope) => held.contains(&&**scope),
                Fact::Claim { slot, accepted } => values
                    .get(*slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|items| items.iter().any(|v| accepted.iter().any(|a| **a == **v))),
            };
            if holds {
                facts[i / 8] |= 1 << (i % 8);
            }
        }
        // Arrays are kept as their elements joined by `,` (their header form). Claim text
        // past 64 KiB in all is not kept: those claims count as absent.
        let mut text = String::new();
        let mut ends = Vec::with_capacity(values.len());
        for value in &values {
            let end = match value {
                Some(items) if text.len() + joined_len(items) < usize::from(NONE) => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            text.push(',');
                        }
                        text.push_str(item);
                    }
                    text.len() as u16
                }
                _ => NONE,
            };
            ends.push(end);
        }
        let slots = u16::try_from(values.len()).unwrap_or(u16::MAX);
        let fact_count = u16::try_from(fact_bytes).unwrap_or(u16::MAX);
        // A fractional `iat` counts from its whole second; past 2106, as late as u32 goes.
        let iat = claims
            .get("iat")
            .and_then(Value::as_f64)
            .filter(|t| *t >= 0.0)
            .map(|t| t.min(f64::from(u32::MAX)) as u32);
        let sid = id_claim(claims, "sid").map(|v| Tag::of(&v));
        let jti = id_claim(claims, "jti").map(|v| Tag::of(&v));
        let flags = [
            (iat.is_some(), HAS_IAT),
            (sid.is_some(), HAS_SID),
            (jti.is_some(), HAS_JTI),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .fold(0u8, |f, (_, bit)| f | bit);
        let ids = iat
            .map(|t| t.to_le_bytes().to_vec())
            .unwrap_or_default()
            .into_iter()
            .chain(
                [sid, jti]
                    .into_iter()
                    .flatten()
                    .flat_map(|t| t.to_bits().to_le_bytes()),
            );
        let data = slots
            .to_le_bytes()
            .into_iter()
            .chain(fact_count.to_le_bytes())
            .chain([flags])
            .chain(ids)
            .chain(facts)
            .chain(ends.iter().flat_map(|e| e.to_le_bytes()))
            .chain(text.bytes())
            .collect::<Vec<u8>>();
        let head = Head {
            key_fingerprint,
            until: u32::try_from(until).unwrap_or(u32::MAX),
            issuer_id: u32::try_from(issuer_id).unwrap_or(u32::MAX),
        };
        Identity(triomphe::ThinArc::from_header_and_slice(head, &data))
    }

    /// Whether `other` is this very identity (not a copy).
    pub fn is_same(&self, other: &Identity) -> bool {
        std::ptr::eq(self.0.slice.as_ptr(), other.0.slice.as_ptr())
    }

    /// Until when this verification counts, in seconds since the epoch.
    pub fn until(&self) -> u64 {
        u64::from(self.0.header.header.until)
    }

    /// Count this verification no later than `latest` (the cache's `max_ttl`).
    pub fn cap_until(&mut self, latest: u64) {
        let latest = u32::try_from(latest).unwrap_or(u32::MAX);
        let unique = self.0.with_arc_mut(|arc| {
            triomphe::Arc::get_mut(arc).map(|inner| {
                let head = inner.header_mut();
                head.until = head.until.min(latest);
            })
        });
        if unique.is_none() {
            let head = &self.0.header.header;
            let head = Head {
                until: head.until.min(latest),
                ..*head
            };
            self.0 = triomphe::ThinArc::from_header_and_slice(head, &self.0.slice);
        }
    }

    /// The issuer instance that verified it (its low 32 bits).
    pub fn issuer_id(&self) -> u32 {
        self.0.header.header.issuer_id
    }

    /// The key that verified it.
    pub fn key_fingerprint(&self) -> u64 {
        self.0.header.header.key_fingerprint
    }

    fn data(&self) -> &[u8] {
        &self.0.slice
    }

    fn flags(&self) -> u8 {
        self.data().get(FLAGS_AT).copied().unwrap_or(0)
    }

    /// Where the `iat`, `sid` and `jti` that the flags say follow would start.
    fn id_offsets(flags: u8) -> (usize, usize, usize) {
        let iat = FLAGS_AT + 1;
        let sid = iat + if flags & HAS_IAT != 0 { 4 } else { 0 };
        let jti = sid + if flags & HAS_SID != 0 { 8 } else { 0 };
        (iat, sid, jti)
    }

    /// (slots, where the fact bits start, where the ends start, where the text starts).
    fn layout(&self) -> (usize, usize, usize, usize) {
        let data = self.data();
        let slots = usize::from(read_u16(data, 0).unwrap_or(0));
        let fact_bytes = usize::from(read_u16(data, 2).unwrap_or(0));
        let flags = self.flags();
        let (_, _, jti) = Self::id_offsets(flags);
        let facts = jti + if flags & HAS_JTI != 0 { 8 } else { 0 };
        let ends = facts + fact_bytes;
        (slots, facts, ends, ends + 2 * slots)
    }

    /// Its `iat` in seconds since the epoch, if it has one.
    pub fn issued_at(&self) -> Option<u64> {
        if self.flags() & HAS_IAT == 0 {
            return None;
        }
        let (at, _, _) = Self::id_offsets(self.flags());
        let bytes = self.data().get(at..at + 4)?;
        Some(u64::from(u32::from_le_bytes(bytes.try_into().ok()?)))
    }

    fn tag_at(&self, bit: u8, at: usize) -> Option<Tag> {
        if self.flags() & bit == 0 {
            return None;
        }
        let bytes = self.data().get(at..at + 8)?;
        Tag::from_bits(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Its `sid`, hashed, if it has one.
    pub fn sid_tag(&self) -> Option<Tag> {
        let (_, at, _) = Self::id_offsets(self.flags());
        self.tag_at(HAS_SID, at)
    }

    /// Its `jti`, hashed, if it has one.
    pub fn jti_tag(&self) -> Option<Tag> {
        let (_, _, at) = Self::id_offsets(self.flags());
        self.tag_at(HAS_JTI, at)
    }

    fn end(&self, slot: usize) -> Option<usize> {
        let (slots, _, ends, _) = self.layout();
        if slot >= slots {
            return None;
        }
        let end = read_u16(self.data(), ends + slot * 2)?;
        (end != NONE).then_some(usize::from(end))
    }

    /// The value in `slot` as text (array elements joined by `,`), if the token has it.
    pub fn claim(&self, slot: usize) -> Option<&str> {
        let end = self.end(slot)?;
        // The value starts where the last present value before it ended.
        let start = (0..slot).rev().find_map(|s| self.end(s)).unwrap_or(0);
        let (_, _, _, text) = self.layout();
        let bytes = self.data().get(text + start..text + end)?;
        std::str::from_utf8(bytes).ok()
    }

    /// The value in `slot` as a header value, if it has one that can be.
    pub fn claim_header(&self, slot: usize) -> Option<HeaderValue> {
        HeaderValue::from_str(self.claim(slot)?).ok()
    }

    /// Whether the token holds every fact in `required`.
    pub fn holds(&self, required: &Facts) -> bool {
        let (_, facts, ends, _) = self.layout();
        let have = self.data().get(facts..ends).unwrap_or_default();
        required
            .0
            .iter()
            .enumerate()
            .all(|(i, want)| have.get(i).copied().unwrap_or(0) & want == *want)
    }
}

fn joined_len(items: &[std::borrow::Cow<'_, str>]) -> usize {
    items.iter().map(|i| i.len() + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projects_dotted_paths_arrays_and_facts() {
        let claims = json!({
            "sub": "alice", "scope": "orders:read orders:write",
            "org": {"tier": "gold"}, "groups": ["a", "b"], "n": 7, "odd": "bad\nvalue"
        });
        let claims = claims.as_object().unwrap();
        let mut p = Projection::default();
        let sub = p.slot_for("sub");
        let tier = p.slot_for("org.tier");
        let missing = p.slot_for("nope");
        let groups = p.slot_for("groups");
        let n = p.slot_for("n");
        let odd = p.slot_for("odd");
        let read = p.fact_for(Fact::Scope("orders:read".into()));
        let admin = p.fact_for(Fact::Scope("orders:admin".into()));
        let gold = p.fact_for(Fact::Claim {
            slot: tier,
            accepted: ["silver".into(), "gold".into()].into(),
        });
        let in_b = p.fact_for(Fact::Claim {
            slot: groups,
            accepted: ["b".into()].into(),
        });
        let platinum = p.fact_for(Fact::Claim {
            slot: tier,
            accepted: ["platinum".into()].into(),
        });
        // Facts past the first word of bits.
        for i in 0..70 {
            p.fact_for(Fact::Scope(format!("s{i}").into()));
        }
        let far = p.fact_for(Fact::Scope("orders:write".into()));
        assert!(far >= 64, "past the eighth byte of bits");
        let id = Identity::project(claims, &p, 1, 2, 3);
        assert_eq!(id.claim(sub), Some("alice"));
        assert_eq!(id.claim(tier), Some("gold"));
        assert_eq!(id.claim(missing), None);
        assert_eq!(id.claim(groups), Some("a,b"));
        assert_eq!(id.claim(n), Some("7"));
        assert_eq!(id.claim_header(n).unwrap(), "7");
        assert_eq!(id.claim(odd), Some("bad\nvalue"));
        assert!(id.claim_header(odd).is_none(), "not a header value");
        assert_eq!(id.claim(99), None);
        assert!(id.holds(&Facts::of([read, gold, in_b, far])));
        assert!(!id.holds(&Facts::of([read, admin])));
        assert!(!id.holds(&Facts::of([platinum])));
        assert!(id.holds(&Facts::default()));
        // A set naming facts past what the identity knows is not held.
        assert!(!id.holds(&Facts::of([500])));
        // `until` only comes forward, shared or not.
        let mut capped = id.clone();
        capped.cap_until(2);
        assert_eq!(
            (capped.until(), id.until()),
            (2, 3),
            "a shared identity is copied, the original left alone"
        );
        let mut alone = Identity::project(claims, &p, 1, 2, 100);
        alone.cap_until(50);
        alone.cap_until(70);
        assert_eq!(alone.until(), 50);
        assert_eq!(alone.claim(sub), Some("alice"));
    }

    #[test]
    fn scp_array_and_no_projection() {
        let claims = json!({"scp": ["a", "b"]});
        let mut p = Projection::default();
        let a = p.fact_for(Fact::Scope("a".into()));
        let b = p.fact_for(Fact::Scope("b".into()));
        let id = Identity::project(claims.as_object().unwrap(), &p, 1, 2, 3);
        assert!(id.holds(&Facts::of([a, b])));
        let bare = Identity::project(claims.as_object().unwrap(), &Projection::default(), 1, 2, 3);
        assert_eq!(bare.claim(0), None);
        assert!(bare.holds(&Facts::default()));
    }

    #[test]
    fn holds_iat_sid_and_jti_when_the_token_has_them() {
        let mut p = Projection::default();
        let org = p.slot_for("org");
        let read = p.fact_for(Fact::Scope("read".into()));
        let full = json!({"sub": "alice", "iat": 1_700_000_000.7, "sid": "s-1", "jti": 42,
                          "org": "acme", "scope": "read"});
        let id = Identity::project(full.as_object().unwrap(), &p, 1, 2, 3);
        assert_eq!(id.claim(SUB_SLOT), Some("alice"));
        assert_eq!(id.issued_at(), Some(1_700_000_000));
        assert_eq!(id.sid_tag(), Some(Tag::of("s-1")));
        assert_eq!(id.jti_tag(), Some(Tag::of("42")), "a number as its text");
        assert_eq!(id.claim(org), Some("acme"));
        assert!(id.holds(&Facts::of([read])));
        // Each absent one leaves the others where they are.
        for (claims, iat, sid, jti) in [
            (json!({"org": "acme", "scope": "read"}), None, None, None),
            (
                json!({"jti": "j", "org": "acme", "scope": "read"}),
                None,
                None,
                Some("j"),
            ),
            (
                json!({"iat": 5, "jti": "j", "org": "acme", "scope": "read"}),
                Some(5),
                None,
                Some("j"),
            ),
            (
                json!({"sid": "s", "org": "acme", "scope": "read", "iat": -1}),
                None,
                Some("s"),
                None,
            ),
            (
                json!({"sid": ["s"], "jti": null, "org": "acme", "scope": "read"}),
                None,
                None,
                None,
            ),
        ] {
            let id = Identity::project(claims.as_object().unwrap(), &p, 1, 2, 3);
            assert_eq!(id.issued_at(), iat, "{claims}");
            assert_eq!(id.sid_tag(), sid.map(Tag::of), "{claims}");
            assert_eq!(id.jti_tag(), jti.map(Tag::of), "{claims}");
            assert_eq!(id.claim(SUB_SLOT), None, "{claims}");
            assert_eq!(id.claim(org), Some("acme"), "{claims}");
            assert!(id.holds(&Facts::of([read])), "{claims}");
        }
    }

    #[test]
    fn is_one_thin_pointer() {
        assert_eq!(std::mem::size_of::<Identity>(), 8);
        assert_eq!(std::mem::size_of::<Head>(), 16);
    }
}
