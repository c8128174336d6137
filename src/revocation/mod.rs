//! Revocation: subjects, sessions and tokens refused from a point in time on, whatever their
//! signature says.
//!
//! [`Revocations`] is process state, not config: the server makes one at start and hands it
//! to the proxy, the admin endpoint and the [`sync::RevocationSync`] service, so a reload
//! never touches it. It holds entries `(kind, value) → revoked at` (whole seconds since the
//! epoch), for the kinds `sub`, `sid` and `jti`.
//!
//! # The API (for bearer tokens and browser sessions alike)
//!
//! - [`Revocations::revoke`]`(Revocation::Sub(..) | Sid(..) | Jti(..)) -> Result<u64, RevokeError>`
//!   applies the revocation on this node before it returns (the time it took effect is the
//!   `Ok` value) and queues it for the fleet: with `cluster.redis`, the sync service persists
//!   it in Redis and publishes it to every node at once, or as soon as Redis answers again.
//! - [`Revocations::refuses`]`(sub, sid, jti, issued_at_secs) -> bool`: whether something
//!   with these ids, issued at `issued_at_secs`, is revoked: true when any of the given ids
//!   has an entry whose time is not before the issue time (`issued_at <= revoked_at`; a token
//!   issued in the very second of a revocation is refused, since whole seconds cannot tell
//!   which came first). `None` for the issue time counts as issued before every revocation.
//!   While nothing is revoked this is one atomic load; otherwise one hash per id given and
//!   one lookup per kind that has entries.
//! - [`Revocations::refuses_with`] is the same with each id's [`Tag`] (its keyed hash) given
//!   by a closure, asked only for kinds that have entries: a cached token's
//!   [`crate::auth::Identity`] keeps its `sub` as text and its `sid` and `jti` as tags, so the
//!   verified-token cache honours a revocation on the very next request.
//!
//! # Bounds
//!
//! Entries live `server.revocation_ttl` (default 24 h) after their time and are then dropped
//! (swept every second): size it above the longest life of a token or session issued before
//! a revocation. At most `server.max_revocations` entries are held; at the cap a new entry
//! evicts the oldest one (the one whose tokens are most likely expired already), counted in
//! `portcullis_session_revocations_evicted_total` and logged (at most once a minute).
//!
//! This module never logs a revoked value (a user id is personal data), only its kind.

pub mod sync;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::METRICS;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A subject (`sub`): every token and session of the user.
    Sub,
    /// A session at the provider (`sid`): the tokens and sessions of one login.
    Sid,
    /// One token (`jti`).
    Jti,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Sub, Kind::Sid, Kind::Jti];

    /// Its name: the claim, the admin endpoint's field, the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Sub => "sub",
            Kind::Sid => "sid",
            Kind::Jti => "jti",
        }
    }

    /// The kind named `label`.
    pub fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == label)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A revocation: every token and session of this subject, provider session or token id
/// issued before it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// By `sub`.
    Sub(String),
    /// By `sid`.
    Sid(String),
    /// By `jti`.
    Jti(String),
}

impl Revocation {
    /// The revocation of `value` as `kind`.
    pub fn new(kind: Kind, value: impl Into<String>) -> Revocation {
        let value = value.into();
        match kind {
            Kind::Sub => Revocation::Sub(value),
            Kind::Sid => Revocation::Sid(value),
            Kind::Jti => Revocation::Jti(value),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Revocation::Sub(_) => Kind::Sub,
            Revocation::Sid(_) => Kind::Sid,
            Revocation::Jti(_) => Kind::Jti,
        }
    }

    /// The id it names.
    pub fn value(&self) -> &str {
        match self {
            Revocation::Sub(v) | Revocation::Sid(v) | Revocation::Jti(v) => v,
        }
    }

    /// Whether the value may be held: not empty, at most [`MAX_VALUE_BYTES`].
    ///
    /// # Errors
    /// [`RevokeError`] saying what is wrong.
    pub fn check(&self) -> Result<(), RevokeError> {
        let value = self.value();
        if value.is_empty() {
            Err(RevokeError::Empty)
        } else if value.len() > MAX_VALUE_BYTES {
            Err(RevokeError::TooLong)
        } else {
            Ok(())
        }
    }
}

/// The longest id a revocation may name.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Why a revocation was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// The id is empty.
    #[error("the value is empty")]
    Empty,
    /// The id is longer than [`MAX_VALUE_BYTES`].
    #[error("the value is longer than 1024 bytes")]
    TooLong,
}

/// Keys of the id hashes, random per process: no client can aim two ids at one tag.
static TAG_KEYS: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);

/// An id (`sub`, `sid` or `jti`) hashed with keys random per process: 8 bytes whatever its
/// length, what the list is keyed by and what a cached token keeps of its `sid` and `jti`.
/// Two different ids share a tag with odds of 2^-63 per pair; a shared tag could only refuse a
/// token, never let one through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(u64);

impl Tag {
    /// The tag of `id`.
    pub fn of(id: &str) -> Tag {
        // Never 0, so that 0 can never be read back as a tag.
        Tag(TAG_KEYS.hash_one(id) | 1)
    }

    /// Its bits, to store.
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// A tag stored with [`Tag::to_bits`] (in this process); `None` for 0.
    pub fn from_bits(bits: u64) -> Option<Tag> {
        (bits != 0).then_some(Tag(bits))
    }
}

/// Tags are hashes already: the table uses them as they are.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One held revocation.
#[derive(Debug, Clone)]
struct Entry {
    /// When it took effect, seconds since the epoch.
    at: u64,
    /// The id, for the fleet (Redis holds ids, since each node's tags are its own).
    value: Arc<str>,
}

type TagMap = HashMap<u64, Entry, BuildHasherDefault<TagHasher>>;

/// The entries, by kind and tag. Never changed once published: a writer copies it.
#[derive(Clone, Default)]
struct Table {
    maps: [TagMap; 3],
    /// The earliest `at` held (`u64::MAX` when empty), so a sweep with nothing due is free.
    oldest: u64,
}

impl Table {
    fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    fn at(&self, kind: Kind, tag: u64) -> Option<u64> {
        self.maps[kind.index()].get(&tag).map(|e| e.at)
    }

    /// Drop entries older than `ttl`, then the oldest past `max`; give how many went past
    /// `max` (evicted early).
    fn bound(&mut self, now: u64, ttl: u64, max: usize) -> usize {
        let floor = now.saturating_sub(ttl);
        for map in &mut self.maps {
            map.retain(|_, e| e.at > floor);
        }
        let over = self.len().saturating_sub(max);
        if over > 0 {
            let mut times: Vec<u64> = self
                .maps
                .iter()
                .flat_map(|m| m.values().map(|e| e.at))
                .collect();
            let (_, cutoff, _) = times.select_nth_unstable(over - 1);
            let cutoff = *cutoff;
            // Everything before the cutoff goes, and entries at it until `over` have gone.
            let mut at_cutoff = over - times.iter().filter(|t| **t < cutoff).count();
            for map in &mut self.maps {
                map.retain(|_, e| {
                    if e.at < cutoff {
                        false
                    } else if e.at == cutoff && at_cutoff > 0 {
                        at_cutoff -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        self.oldest = self
            .maps
            .iter()
            .flat_map(|m| m.values().map(|e| e.at))
            .min()
            .unwrap_or(u64::MAX);
        over
    }
}

/// What revocation needs of the serving config: `cluster.redis`, `server.revocation_ttl`,
/// `server.max_revocations`. Published by each reload ([`crate::generation::Parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationPart {
    /// Where revocations are shared; `None`: this node only.
    pub redis: Option<String>,
    /// How long an entry is held.
    pub ttl: Duration,
    /// Most entries held.
    pub max_entries: usize,
}

impl RevocationPart {
    /// The part of `config`.
    pub fn of(config: &Config) -> RevocationPart {
        RevocationPart {
            redis: config.cluster.as_ref().map(|c| c.redis.clone()),
            ttl: config.server.revocation_ttl.0,
            max_entries: config.server.max_revocations,
        }
    }
}

impl Default for RevocationPart {
    fn default() -> Self {
        let server = crate::config::ServerConfig::default();
        RevocationPart {
            redis: None,
            ttl: server.revocation_ttl.0,
            max_entries: server.max_revocations,
        }
    }
}

/// A revocation made on this node, waiting to reach Redis.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its place in the queue.
    pub seq: u64,
    /// What it names.
    pub kind: Kind,
    /// The id.
    pub value: Arc<str>,
    /// When it took effect.
    pub at: u64,
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The revocation list of this process. See the module documentation.
pub struct Revocations {
    part: Arc<ArcSwap<RevocationPart>>,
    /// Whether any entry is held: all a request pays while nothing is revoked.
    any: AtomicBool,
    /// The entries; replaced whole by a writer, read without a lock.
    table: ArcSwap<Table>,
    /// One writer at a time.
    writer: Mutex<()>,
    /// Revocations made here that Redis has not taken yet.
    outbox: Mutex<VecDeque<Outgoing>>,
    next_seq: AtomicU64,
    /// Wakes the sync service when the outbox has something.
    pub(crate) outbox_ready: tokio::sync::Notify,
    /// When the cap was last logged (seconds), so a flood logs once a minute.
    cap_logged: AtomicU64,
}

impl Default for Revocations {
    /// An empty list with the default settings and no Redis (for tests and benches).
    fn default() -> Self {
        Revocations::new(Arc::new(ArcSwap::from_pointee(RevocationPart::default())))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Revocations {
    /// An empty list that follows the settings `part` holds (the serving generation's).
    pub fn new(part: Arc<ArcSwap<RevocationPart>>) -> Revocations {
        Revocations {
            part,
            any: AtomicBool::new(false),
            table: ArcSwap::from_pointee(Table {
                oldest: u64::MAX,
                ..Table::default()
            }),
            writer: Mutex::new(()),
            outbox: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            outbox_ready: tokio::sync::Notify::new(),
            cap_logged: AtomicU64::new(0),
        }
    }

    /// The settings now.
    pub fn part(&self) -> Arc<RevocationPart> {
        self.part.load_full()
    }

    /// Revoke: from now on, whatever `revocation` names and was issued before now is refused
    /// on this node (applied before this returns) and, with `cluster.redis`, on every node
    /// (the sync service publishes it at once, or when Redis answers again). Gives the time
    /// it took effect, seconds since the epoch.
    ///
    /// # Errors
    /// [`RevokeError`] when the id is empty or too long; nothing is revoked then.
    pub fn revoke(&self, revocation: Revocation) -> Result<u64, RevokeError> {
        revocation.check()?;
        let kind = revocation.kind();
        let value: Arc<str> = Arc::from(revocation.value());
        let at = unix_now();
        self.apply([(kind, Arc::clone(&value), at)]);
        METRICS
            .session_revocations
            .with_label_values(&[kind.label()])
            .inc();
        tracing::info!(kind = kind.label(), at, "revoked");
        {
            let max = self.part().max_entries.max(1);
            let mut outbox = lock(&self.outbox);
            outbox.push_back(Outgoing {
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                kind,
                value,
                at,
            });
            while outbox.len() > max {
                outbox.pop_front();
            }
            METRICS
                .session_revocations_unpublished
                .set(i64::try_from(outbox.len()).unwrap_or(i64::MAX));
        }
        self.outbox_ready.notify_one();
        Ok(at)
    }

    /// Whether something with these ids, issued at `issued_at_secs` (`None`: unknown, which
    /// counts as before every revocation), is revoked. One atomic load while nothing is.
    #[inline]
    pub fn refuses(
        &self,
        sub: Option<&str>,
        sid: Option<&str>,
        jti: Option<&str>,
        issued_at_secs: Option<u64>,
    ) -> bool {
        self.refuses_with(issued_at_secs, |kind| {
            match kind {
                Kind::Sub => sub,
                Kind::Sid => sid,
                Kind::Jti => jti,
            }
            .map(Tag::of)
        })
    }

    /// [`Revocations::refuses`] with each id's tag given by `tag_of`, asked only for the
    /// kinds that have entries (what a cached token holds: its `sub` as text, its `sid` and
    /// `jti` as tags).
    #[inline]
    pub fn refuses_with(
        &self,
        issued_at_secs: Option<u64>,
        tag_of: impl Fn(Kind) -> Option<Tag>,
    ) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let table = self.table.load();
        let issued = issued_at_secs.unwrap_or(0);
        Kind::ALL.into_iter().any(|kind| {
            let map = &table.maps[kind.index()];
            !map.is_empty()
                && tag_of(kind)
                    .and_then(|tag| map.get(&tag.0))
                    .is_some_and(|e| issued <= e.at)
        })
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Take entries made here or on other nodes: each `(kind, id, at)` is held with the later
    /// of its time and the one held before; those older than the TTL are left out. Gives how
    /// many changed the list.
    pub fn apply(&self, entries: impl IntoIterator<Item = (Kind, Arc<str>, u64)>) -> usize {
        let part = self.part();
        let ttl = part.ttl.as_secs();
        let now = unix_now();
        let _writer = lock(&self.writer);
        let current = self.table.load_full();
        let fresh: Vec<(Kind, u64, Arc<str>, u64)> = entries
            .into_iter()
            .filter(|(_, _, at)| at.saturating_add(ttl) > now)
            .map(|(kind, value, at)| (kind, Tag::of(&value).0, value, at))
            .filter(|(kind, tag, _, at)| current.at(*kind, *tag).is_none_or(|held| held < *at))
            .collect();
        if fresh.is_empty() {
            return 0;
        }
        let mut table = (*current).clone();
        for (kind, tag, value, at) in &fresh {
            table.maps[kind.index()].insert(
                *tag,
                Entry {
                    at: *at,
                    value: Arc::clone(value),
                },
            );
        }
        self.replace(table, now, &part);
        fresh.len()
    }

    /// Drop entries past the TTL, and past the cap when a reload lowered it. Cheap when
    /// nothing is due (the sync service calls it every second).
    pub fn sweep(&self) {
        let part = self.part();
        let now = unix_now();
        let current = self.table.load();
        let due = current.oldest.saturating_add(part.ttl.as_secs()) <= now
            || current.len() > part.max_entries.max(1);
        if !due {
            return;
        }
        drop(current);
        let _writer = lock(&self.writer);
        let table = (*self.table.load_full()).clone();
        self.replace(table, now, &part);
    }

    /// Bound `table` and make it the one requests read. The caller holds the writer lock.
    fn replace(&self, mut table: Table, now: u64, part: &RevocationPart) {
        let evicted = table.bound(now, part.ttl.as_secs(), part.max_entries.max(1));
        let len = table.len();
        self.table.store(Arc::new(table));
        // After the table: a request that sees `any` sees this table or a later one.
        self.any.store(len > 0, Ordering::Release);
        METRICS
            .session_revocation_entries
            .set(i64::try_from(len).unwrap_or(i64::MAX));
        if evicted > 0 {
            METRICS
                .session_revocations_evicted
                .inc_by(u64::try_from(evicted).unwrap_or(u64::MAX));
            let last = self.cap_logged.load(Ordering::Relaxed);
            if now >= last.saturating_add(60)
                && self
                    .cap_logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    max_revocations = part.max_entries,
                    evicted,
                    "the revocation list is full: the oldest revocations were dropped before \
                     server.revocation_ttl; raise server.max_revocations"
                );
            }
        }
    }

    /// Every entry held: `(kind, id, at)`.
    pub fn entries(&self) -> Vec<(Kind, Arc<str>, u64)> {
        let table = self.table.load();
        Kind::ALL
            .into_iter()
            .flat_map(|kind| {
                table.maps[kind.index()]
                    .values()
                    .map(move |e| (kind, Arc::clone(&e.value), e.at))
            })
            .collect()
    }

    /// Up to `n` revocations made here and not yet in Redis, oldest first.
    pub fn outgoing(&self, n: usize) -> Vec<Outgoing> {
        lock(&self.outbox).iter().take(n).cloned().collect()
    }

    /// Redis took every outgoing revocation up to `seq`.
    pub fn sent(&self, seq: u64) {
        let mut outbox = lock(&self.outbox);
        while outbox.front().is_some_and(|o| o.seq <= seq) {
            outbox.pop_front();
        }
        METRICS
            .session_revocations_unpublished
            .set(i64::try_from(outbox.len()).unwrap_or(i64::MAX));
    }

    /// Forget what waits for Redis (there is no Redis to send it to).
    pub fn discard_outgoing(&self) {
        let mut outbox = lock(&self.outbox);
        outbox.clear();
        METRICS.session_revocations_unpublished.set(0);
    }
}

#[cfg(test)]
mod tests;
