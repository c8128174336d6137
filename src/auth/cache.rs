//! The verified-token cache: a token that verified once skips the signature check until it
//! expires (or `max_ttl` passes, whichever is first).
//!
//! Keys are a 128-bit keyed hash of the token, not the token: memory stays bounded per entry
//! whatever the token size, and no token text sits in memory longer than its request. The
//! hash keys are random per process, so a client cannot aim a collision. Entries live in a
//! [`Store`]: a 24-byte table slot per token beside its [`Identity`]; past `max_tokens`
//! the tokens nearest their expiry go first.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::identity::{Identity, Projection};
use crate::config::TokenCacheConfig;
use crate::metrics::METRICS;
use crate::store::{Expiring, Store};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Expiring for Identity {
    fn deadline(&self) -> u64 {
        self.until()
    }
}

/// How often a shard of the cache is swept for expired tokens (as inserts come), seconds.
const SWEEP_EVERY_SECS: u64 = 10;

/// The cache.
pub struct TokenCache {
    entries: Store<Identity>,
    low: ahash::RandomState,
    high: ahash::RandomState,
    /// The settings it was built with.
    pub config: TokenCacheConfig,
    /// The claims its identities hold.
    projection: Arc<Projection>,
}

/// The cache is kept across a reload when its settings and the claims its identities hold
/// are unchanged.
impl crate::carry::Carry for TokenCache {
    type Key = (TokenCacheConfig, Arc<Projection>);

    fn carry_key(&self) -> Self::Key {
        (self.config.clone(), Arc::clone(&self.projection))
    }
}

impl TokenCache {
    /// An empty cache.
    pub fn new(config: &TokenCacheConfig) -> TokenCache {
        TokenCache {
            entries: Store::new(config.max_tokens, SWEEP_EVERY_SECS),
            low: ahash::RandomState::new(),
            high: ahash::RandomState::new(),
            config: config.clone(),
            projection: Arc::default(),
        }
    }

    /// The same cache, for identities that hold the claims of `projection`.
    pub fn for_claims(self, projection: Arc<Projection>) -> TokenCache {
        TokenCache { projection, ..self }
    }

    /// The cache key of a token (its bytes as the request carried them).
    pub fn key(&self, token: impl AsRef<[u8]>) -> u128 {
        let token = token.as_ref();
        (u128::from(self.high.hash_one(token)) << 64) | u128::from(self.low.hash_one(token))
    }

    /// The identity of a token seen before and not expired since.
    pub fn get(&self, key: u128) -> Option<Identity> {
        let now = unix_now();
        let hit = self
            .entries
            .get(key, |identity| {
                (identity.until() > now).then(|| identity.clone())
            })
            .flatten();
        match &hit {
            Some(_) => METRICS.token_cache_hits.inc(),
            None => METRICS.token_cache_misses.inc(),
        }
        hit
    }

    /// Remember a verified token, for no longer than `max_ttl`; give back its identity.
    pub fn insert(&self, key: u128, mut identity: Identity) -> Identity {
        let now = unix_now();
        identity.cap_until(now.saturating_add(self.config.max_ttl.0.as_secs()));
        if identity.until() > now {
            self.entries.insert(key, identity.clone(), now);
        }
        identity
    }

    /// Forget a token (its key left the key set).
    pub fn remove(&self, key: u128) {
        self.entries.remove(key);
    }

    /// Number of tokens held, after a sweep of the shards due one (each shard drops its
    /// expired tokens at most every [`SWEEP_EVERY_SECS`], on insert or here).
    pub fn len(&self) -> u64 {
        self.entries.sweep_due(unix_now());
        self.entries.len() as u64
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Projection;
    use crate::config::Dur;
    use std::time::Duration;

    fn identity(exp: u64) -> Identity {
        let claims = serde_json::json!({"sub": "alice"});
        Identity::project(
            claims.as_object().unwrap(),
            &Projection::default(),
            1,
            2,
            exp,
        )
    }

    #[test]
    fn holds_tokens_until_expiry_or_max_ttl() {
        let cache = TokenCache::new(&TokenCacheConfig {
            max_tokens: 10,
            max_ttl: Dur(Duration::from_secs(60)),
        });
        let now = unix_now();
        let a = cache.key("a");
        assert_ne!(a, cache.key("b"));
        assert!(cache.get(a).is_none());
        let held = cache.insert(a, identity(now + 3600));
        assert!(
            held.until() <= now + 61,
            "max_ttl brings the deadline forward"
        );
        assert!(cache.get(a).is_some());
        // An identity whose time has passed is never served, swept or not.
        let b = cache.key("b");
        cache.entries.insert(b, identity(now - 1), 0);
        assert!(cache.get(b).is_none());
        // Nor kept.
        let c = cache.key("c");
        cache.insert(c, identity(now));
        assert!(cache.get(c).is_none());
        // The expired one stays counted until its shard's next sweep.
        assert_eq!(cache.len(), 2);
        cache.entries.sweep_due(now + SWEEP_EVERY_SECS);
        assert_eq!(cache.len(), 1);
        cache.remove(a);
        assert!(cache.is_empty());
    }
}
