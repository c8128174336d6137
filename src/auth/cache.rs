//! The verified-token cache: a token that verified once skips the signature check until it
//! expires (or `max_ttl` passes, whichever is first).
//!
//! Keys are a 128-bit keyed hash of the token, not the token: memory stays bounded per entry
//! whatever the token size, and no token text sits in memory longer than its request. The
//! hash keys are random per process, so a client cannot aim a collision.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;

use super::identity::Identity;
use crate::config::TokenCacheConfig;
use crate::metrics::METRICS;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct UntilExpiry {
    max_ttl: Duration,
}

impl moka::Expiry<u128, Arc<Identity>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &u128,
        value: &Arc<Identity>,
        _at: Instant,
    ) -> Option<Duration> {
        let left = Duration::from_secs(value.exp.saturating_sub(unix_now()));
        Some(left.min(self.max_ttl))
    }
}

/// The cache.
pub struct TokenCache {
    entries: Cache<u128, Arc<Identity>, ahash::RandomState>,
    low: ahash::RandomState,
    high: ahash::RandomState,
    /// The settings it was built with.
    pub config: TokenCacheConfig,
}

impl TokenCache {
    /// An empty cache.
    pub fn new(config: &TokenCacheConfig) -> TokenCache {
        let entries = Cache::builder()
            .max_capacity(config.max_tokens)
            .expire_after(UntilExpiry {
                max_ttl: config.max_ttl.0,
            })
            .build_with_hasher(ahash::RandomState::new());
        TokenCache {
            entries,
            low: ahash::RandomState::new(),
            high: ahash::RandomState::new(),
            config: config.clone(),
        }
    }

    /// The cache key of a token.
    pub fn key(&self, token: &str) -> u128 {
        (u128::from(self.high.hash_one(token)) << 64) | u128::from(self.low.hash_one(token))
    }

    /// The identity of a token seen before.
    pub fn get(&self, key: u128) -> Option<Arc<Identity>> {
        let hit = self.entries.get(&key);
        match &hit {
            Some(_) => METRICS.token_cache_hits.inc(),
            None => METRICS.token_cache_misses.inc(),
        }
        hit
    }

    /// Remember a verified token.
    pub fn insert(&self, key: u128, identity: Arc<Identity>) {
        if identity.exp > unix_now() {
            self.entries.insert(key, identity);
        }
    }

    /// Forget a token (its key left the key set).
    pub fn remove(&self, key: u128) {
        self.entries.invalidate(&key);
    }

    /// Approximate number of tokens held.
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
