//! The in-memory tier every cache route stores into: one map for the process, keyed by
//! pingora-cache's combined key hash (which starts from the route's own id, so routes never
//! share an entry). Its bounds are not kept here but by each route's LRU ([`super::evict`]),
//! which names the entries to drop.
//!
//! Written after pingora-cache's `MemCache` (which its crate calls test-only): whole bodies
//! only (no reads of a partly written entry: concurrent misses wait on the cache lock
//! instead), the metadata kept serialized, and nothing that can panic (`MemCache` panics on
//! a revalidation whose entry was evicted meanwhile).

use std::any::Any;
use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

/// One stored response: its metadata (serialized, as pingora-cache's storages keep it) and
/// its body.
struct Entry {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
}

/// The process's cache storage.
#[derive(Default)]
pub struct Store {
    entries: RwLock<HashMap<HashBinary, Entry>>,
}

impl Store {
    /// Drop the entry of `key` (a combined hash); whether there was one.
    pub fn remove(&self, key: &HashBinary) -> bool {
        match self.entries.write() {
            Ok(mut map) => map.remove(key).is_some(),
            Err(_) => false,
        }
    }

    /// Entries held, for tests.
    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |m| m.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn poisoned() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "cache store lock poisoned")
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let map = self.entries.read().map_err(|_| poisoned())?;
        let Some(entry) = map.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&entry.meta.0, &entry.meta.1)?;
        let hit = Hit {
            end: entry.body.len(),
            body: entry.body.clone(),
            start: 0,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            store: self,
            key: key.combined_bin(),
            meta: meta.serialize()?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(if self.remove(&target.key().combined_bin()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let serialized = meta.serialize()?;
        let mut map = self.entries.write().map_err(|_| poisoned())?;
        Ok(match map.get_mut(&key.combined_bin()) {
            Some(entry) => {
                entry.meta = serialized;
                true
            }
            // Evicted or purged while it was being revalidated.
            None => false,
        })
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit: the whole body, or a range of it.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "seek past the cached body");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A miss being filled: the body collects here and is stored whole at its end (pingora-cache
/// stops the fill past the route's `max_object_bytes`).
struct Miss {
    store: &'static Store,
    key: HashBinary,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        let entry = Entry {
            meta: self.meta,
            body: self.body.freeze(),
        };
        self.store
            .entries
            .write()
            .map_err(|_| poisoned())?
            .insert(self.key, entry);
        Ok(MissFinishType::Created(size))
    }
}
