//! Each cache route's bounds: its own LRU over `max_bytes` and its index of stored URLs (for
//! purges), reached from the one eviction manager pingora-cache is given for the process.
//!
//! pingora-cache wants its eviction manager `'static`; one per route would have to be leaked
//! at every reload that changes a cache. So the process has one [`Dispatch`], and each
//! stored entry's key names its route's [`Tier`] (by the tier's id, at the start of the key's
//! user tag): the dispatch forwards to that tier's LRU, and an entry whose tier is gone (its
//! route removed or its cache changed by a reload) is evicted as soon as it is admitted.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::cache::eviction::{simple_lru, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey};
use pingora::cache::{CacheEntryKey, CacheEntryKeyRef};
use pingora::Result;

use crate::metrics::cache::CacheSeries;

/// One cache route's LRU and index; kept across reloads while its route's name and
/// `max_bytes` stay (see [`crate::carry`]).
pub struct Tier {
    /// Unique in the process: the start of every key this tier stores.
    pub id: u64,
    /// The route's name (metric label).
    pub route: String,
    /// Its `max_bytes`.
    pub max_bytes: usize,
    lru: simple_lru::Manager,
    /// URL (host, path and query) to the keys stored for it (one per `Vary` variant). Holds
    /// only what the LRU holds, so it is bounded as the LRU is.
    index: Mutex<BTreeMap<Box<str>, Vec<CompactCacheKey>>>,
    /// Its series, set when a generation with it commits.
    pub series: OnceLock<CacheSeries>,
}

impl crate::carry::Carry for Tier {
    type Key = (String, usize);
    fn carry_key(&self) -> Self::Key {
        (self.route.clone(), self.max_bytes)
    }
}

/// The URL an entry's user tag carries after the tier id.
fn url_of(key: &CompactCacheKey) -> &str {
    key.user_tag.split_once(' ').map_or("", |(_, url)| url)
}

fn tier_id(key: &CompactCacheKey) -> Option<u64> {
    let (id, _) = key.user_tag.split_once(' ')?;
    u64::from_str_radix(id, 16).ok()
}

impl Tier {
    /// A new, empty tier for route `route`.
    pub fn new(id: u64, route: &str, max_bytes: usize) -> Tier {
        Tier {
            id,
            route: route.to_string(),
            max_bytes,
            lru: simple_lru::Manager::new(max_bytes),
            index: Mutex::new(BTreeMap::new()),
            series: OnceLock::new(),
        }
    }

    /// Body bytes held.
    pub fn bytes(&self) -> usize {
        self.lru.total_size()
    }

    fn show_bytes(&self) {
        if let Some(s) = self.series.get() {
            s.bytes.set(i64::try_from(self.bytes()).unwrap_or(i64::MAX));
        }
    }

    fn indexed(&self, key: &CompactCacheKey) {
        if let Ok(mut index) = self.index.lock() {
            let keys = index.entry(url_of(key).into()).or_default();
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }

    fn unindexed(&self, key: &CompactCacheKey) {
        if let Ok(mut index) = self.index.lock() {
            let url = url_of(key);
            if let Some(keys) = index.get_mut(url) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    index.remove(url);
                }
            }
        }
    }

    fn evicted(&self, victims: &[CacheEntryKey]) {
        for victim in victims {
            self.unindexed(victim.key());
        }
        if let Some(s) = self.series.get() {
            s.evictions.inc_by(victims.len() as u64);
        }
        self.show_bytes();
    }

    /// Take out every key stored for `url` (`prefix: false`) or for any URL starting with it:
    /// gone from the LRU and the index; the caller removes them from the store.
    pub fn take(&self, url: &str, prefix: bool) -> Vec<CompactCacheKey> {
        let Ok(mut index) = self.index.lock() else {
            return Vec::new();
        };
        let urls: Vec<Box<str>> = if prefix {
            index
                .range::<str, _>((Bound::Included(url), Bound::Unbounded))
                .take_while(|(u, _)| u.starts_with(url))
                .map(|(u, _)| u.clone())
                .collect()
        } else {
            index
                .get_key_value(url)
                .map(|(u, _)| u.clone())
                .into_iter()
                .collect()
        };
        let mut keys = Vec::new();
        for u in urls {
            keys.extend(index.remove(&u).unwrap_or_default());
        }
        drop(index);
        for key in &keys {
            self.lru.remove(CacheEntryKeyRef::from_entry_id(key, None));
        }
        self.show_bytes();
        keys
    }

    /// Every key held (the tier is going away).
    pub fn take_all(&self) -> Vec<CompactCacheKey> {
        self.take("", true)
    }
}

/// The tiers of the serving generation (and of the one before, until it commits away).
static TIERS: LazyLock<RwLock<HashMap<u64, Arc<Tier>>>> = LazyLock::new(Default::default);

/// Make `tier` reachable from its entries' keys (the commit of a generation with it).
pub fn publish(tier: &Arc<Tier>) {
    if let Ok(mut tiers) = TIERS.write() {
        tiers.insert(tier.id, Arc::clone(tier));
    }
}

/// Stop reaching tier `id` (a commit without it): what it still admits is evicted at once.
pub fn withdraw(id: u64) {
    if let Ok(mut tiers) = TIERS.write() {
        tiers.remove(&id);
    }
}

fn tier_of(key: &CompactCacheKey) -> Option<Arc<Tier>> {
    let id = tier_id(key)?;
    TIERS.read().ok()?.get(&id).cloned()
}

/// The eviction manager pingora-cache is given: forwards to the entry's tier.
pub struct Dispatch;

#[async_trait]
impl EvictionManager for Dispatch {
    fn total_size(&self) -> usize {
        TIERS
            .read()
            .map_or(0, |t| t.values().map(|t| t.lru.total_size()).sum())
    }

    fn total_items(&self) -> usize {
        TIERS
            .read()
            .map_or(0, |t| t.values().map(|t| t.lru.total_items()).sum())
    }

    fn evicted_size(&self) -> usize {
        TIERS
            .read()
            .map_or(0, |t| t.values().map(|t| t.lru.evicted_size()).sum())
    }

    fn evicted_items(&self) -> usize {
        TIERS
            .read()
            .map_or(0, |t| t.values().map(|t| t.lru.evicted_items()).sum())
    }

    fn admit(
        &self,
        item: CacheEntryKey,
        size: usize,
        fresh_until: SystemTime,
    ) -> Vec<CacheEntryKey> {
        let Some(tier) = tier_of(item.key()) else {
            return vec![item];
        };
        tier.indexed(item.key());
        let victims = tier.lru.admit(item, size, fresh_until);
        tier.evicted(&victims);
        victims
    }

    fn increment_weight(
        &self,
        item: &CacheEntryKey,
        delta: usize,
        max_weight: Option<usize>,
    ) -> Vec<CacheEntryKey> {
        let Some(tier) = tier_of(item.key()) else {
            return vec![item.clone()];
        };
        tier.indexed(item.key());
        let victims = tier.lru.increment_weight(item, delta, max_weight);
        tier.evicted(&victims);
        victims
    }

    fn remove(&self, item: CacheEntryKeyRef<'_>) {
        if let Some(tier) = tier_of(item.key()) {
            tier.unindexed(item.key());
            tier.lru.remove(item);
            tier.show_bytes();
        }
    }

    fn access(&self, item: &CacheEntryKey, size: usize, fresh_until: SystemTime) -> bool {
        tier_of(item.key()).is_some_and(|t| t.lru.access(item, size, fresh_until))
    }

    fn peek(&self, item: &CacheEntryKey) -> bool {
        tier_of(item.key()).is_some_and(|t| t.lru.peek(item))
    }

    async fn save(&self, _dir_path: &str) -> Result<()> {
        Ok(())
    }

    async fn load(&self, _dir_path: &str) -> Result<()> {
        Ok(())
    }
}

/// The hash a key is stored under.
pub fn stored_hash(key: &CompactCacheKey) -> pingora::cache::key::HashBinary {
    key.combined_bin()
}
