//! What a reload keeps, decided one way for every piece of state.
//!
//! A limiter's buckets, a pool's target health and in-flight cap, an issuer's keys and the
//! token cache live across reloads in the objects that hold them. Each such object names,
//! as its [`Carry::Key`], exactly the settings that define it; a domain's compile step
//! computes the key the new config gives and keeps the serving generation's object when
//! [`kept`] finds one with an equal key, and builds a new one otherwise. So a setting that
//! is part of the key resets the state when it changes, and one that is not never does:
//!
//! | state | kept when these are unchanged |
//! |---|---|
//! | a limiter's buckets | route name, limit kind, rate, burst, scope, claim, `max_keys` |
//! | a pool's in-flight cap | pool name, fixed limit or adaptive `min` and `max` |
//! | a target's health | pool name, address, the target as written |
//! | a host name's resolved addresses | pool name, host name, port |
//! | an issuer's keys | every setting of the issuer, and its secret |
//! | the token cache | `token_cache:` and the claims the routes use |
//! | an issuer's introspection cache | the issuer kept, its client secret, the claims routes use |
//! | the tracing export queue | `tracing.otlp_endpoint`, `tracing.service_name` |
//! | a route's edge cache (objects, LRU, purge index) | route name, `cache.max_bytes` |

use std::sync::Arc;

/// State that a reload may keep.
pub trait Carry {
    /// The settings that define it.
    type Key: PartialEq;

    /// Its key.
    fn carry_key(&self) -> Self::Key;
}

/// The one among `previous` whose key is `key`: the state to keep.
pub fn kept<'a, T: Carry + 'a>(
    previous: impl IntoIterator<Item = &'a Arc<T>>,
    key: &T::Key,
) -> Option<Arc<T>> {
    previous
        .into_iter()
        .find(|old| old.carry_key() == *key)
        .map(Arc::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bucket {
        name: &'static str,
        rate: u32,
    }

    impl Carry for Bucket {
        type Key = (&'static str, u32);
        fn carry_key(&self) -> Self::Key {
            (self.name, self.rate)
        }
    }

    #[test]
    fn only_an_equal_key_is_kept() {
        let old = [
            Arc::new(Bucket { name: "a", rate: 1 }),
            Arc::new(Bucket { name: "b", rate: 2 }),
        ];
        let kept_b = kept(&old, &("b", 2)).unwrap();
        assert!(Arc::ptr_eq(&kept_b, &old[1]));
        assert!(kept(&old, &("b", 3)).is_none(), "a changed setting resets");
        assert!(kept(&old, &("c", 2)).is_none());
        assert!(kept(&[] as &[Arc<Bucket>], &("a", 1)).is_none());
    }
}
