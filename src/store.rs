//! A bounded map from 128-bit keys to small values that expire: the store behind the
//! verified-token cache and the rate-limit buckets.
//!
//! Both hold up to millions of entries on the request path, so an entry must cost tens of
//! bytes and a lookup tens of nanoseconds. moka, the general-purpose cache, spends about
//! 300 bytes of its own per entry (its access-order queue nodes, timestamps and `Arc`s) and
//! records every read for its eviction policy; neither fits those budgets. This store is
//! what remains once the policy is specific:
//!
//! - every value knows its **deadline** (a token's `exp`; the instant a bucket is full
//!   again), and an entry past it is worth nothing, so it is dropped at the next sweep;
//! - when a shard is full, the entries **nearest their deadline** go first: they are the
//!   ones a client loses least by (a bucket almost full anyway; a token about to expire);
//! - entries live inline in a `hashbrown` table per shard (key and value, no per-entry
//!   allocation), behind a reader-writer lock: a lookup of a known key takes the shard's
//!   read lock and nothing else;
//! - the store, not hashbrown, decides when a table grows: the shard count is chosen so that
//!   full tables are ~87% used (a million entries in 70 shards, not 64 at 48%), and a table
//!   is rebuilt rather than doubled when removed entries' tombstones use up its room.
//!
//! The keys are already keyed hashes or client addresses; the table hashes them again with a
//! per-process random key, so no client can aim entries at one shard or one probe chain.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

/// A value with a deadline, in the clock of its store's caller.
pub trait Expiring {
    /// The instant from which the value is worth nothing (it may be dropped).
    fn deadline(&self) -> u64;
}

/// Keys are stored as two words: a `u128` would be 16-byte aligned and pad every entry.
type Key = [u64; 2];

fn split(key: u128) -> Key {
    [key as u64, (key >> 64) as u64]
}

struct Table<V> {
    entries: HashTable<(Key, V)>,
    /// When the next sweep of expired entries is due.
    next_sweep: u64,
}

/// One shard, on its own cache line so that shards do not contend through false sharing.
#[repr(align(64))]
struct Shard<V>(RwLock<Table<V>>);

impl<V> Shard<V> {
    fn read(&self) -> RwLockReadGuard<'_, Table<V>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table<V>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The store.
pub struct Store<V> {
    shards: Box<[Shard<V>]>,
    /// At most this many entries per shard.
    per_shard: usize,
    /// Sweep a shard for expired entries at most this often (caller's clock units).
    sweep_every: u64,
    hasher: ahash::RandomState,
}

/// The number of buckets hashbrown gives a table asked to hold `n` entries (15 or more): a
/// power of two, of which at most seven eighths are used.
fn buckets_for(n: usize) -> usize {
    (n.saturating_mul(8) / 7).next_power_of_two()
}

/// How many shards a store of `max_entries` gets: enough that writers rarely meet (one per
/// 4,096 entries, at most 64), and, from there up to twice as many, the count whose full
/// tables leave the fewest buckets empty. A table's bucket count is a power of two; with a
/// power-of-two shard count a full store of a round size such as a million fills its
/// tables to 48%, with a fitted count to 87%. Stores under 8,192 entries keep one shard,
/// so that their bound is exact.
fn shard_count(max_entries: usize) -> usize {
    let least = (max_entries / 4096).clamp(1, 64);
    if least == 1 {
        return 1;
    }
    (least..=least * 2)
        .min_by_key(|&shards| shards.saturating_mul(buckets_for(max_entries.div_ceil(shards))))
        .unwrap_or(least)
}

impl<V: Expiring> Store<V> {
    /// A store of at most `max_entries` entries (at least one; with more than one shard,
    /// up to one more per shard), swept for expired entries at most every `sweep_every`
    /// units of the caller's clock.
    pub fn new(max_entries: u64, sweep_every: u64) -> Store<V> {
        let max_entries = usize::try_from(max_entries).unwrap_or(usize::MAX).max(1);
        let shards = shard_count(max_entries);
        Store {
            shards: (0..shards)
                .map(|_| {
                    Shard(RwLock::new(Table {
                        entries: HashTable::new(),
                        next_sweep: 0,
                    }))
                })
                .collect(),
            per_shard: max_entries.div_ceil(shards),
            sweep_every,
            hasher: ahash::RandomState::new(),
        }
    }

    fn locate(&self, key: u128) -> (Key, u64, &Shard<V>) {
        let key = split(key);
        let hash = self.hasher.hash_one(key);
        // The shard is the low 32 bits of the hash scaled to the shard count, which
        // depends on bits 25..32: not on the top seven, hashbrown's tag of an entry within
        // its table (a shard taken from those would leave them nearly alike in a shard,
        // and a lookup would compare keys it need not), and not on the few low bits that
        // place it in a table of a shard's size.
        let low = hash & 0xFFFF_FFFF;
        let shard = ((low * self.shards.len() as u64) >> 32) as usize;
        (key, hash, &self.shards[shard])
    }

    /// Make room in `table` for one more entry without letting hashbrown grow it. When a
    /// table has no room left, hashbrown doubles it if it is more than half full, and
    /// counts the slots of removed entries (tombstones) as full: a table emptied by
    /// sweeps and evictions would double again and again while holding no more entries.
    /// Here a table with no room is rebuilt, tombstones gone, at twice its entries but
    /// never past the size that holds `per_shard`.
    fn reserve_one(&self, table: &mut Table<V>) {
        let entries = &mut table.entries;
        if entries.len() < entries.capacity() {
            return;
        }
        let want = (entries.len() * 2)
            .min(self.per_shard)
            .max(entries.len() + 1);
        let mut fresh = HashTable::with_capacity(want);
        for e in entries.drain() {
            fresh.insert_unique(self.hasher.hash_one(e.0), e, |e| self.hasher.hash_one(e.0));
        }
        *entries = fresh;
    }

    /// Apply `f` to the value of `key`, if held.
    pub fn get<R>(&self, key: u128, f: impl FnOnce(&V) -> R) -> Option<R> {
        let (key, hash, shard) = self.locate(key);
        let table = shard.read();
        table.entries.find(hash, |e| e.0 == key).map(|e| f(&e.1))
    }

    /// Apply `f` to the value of `key`, inserting `make()` first if it is not held.
    pub fn get_or_insert<R>(
        &self,
        key: u128,
        now: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let (key, hash, shard) = self.locate(key);
        {
            let table = shard.read();
            if let Some(e) = table.entries.find(hash, |e| e.0 == key) {
                return f(&e.1);
            }
        }
        let mut table = shard.write();
        // Another thread may have inserted it between the two locks.
        if let Some(e) = table.entries.find(hash, |e| e.0 == key) {
            return f(&e.1);
        }
        self.make_room(&mut table, now);
        let e = table
            .entries
            .insert_unique(hash, (key, make()), |e| self.hasher.hash_one(e.0));
        f(&e.get().1)
    }

    /// Insert or replace the value of `key`.
    pub fn insert(&self, key: u128, value: V, now: u64) {
        let (key, hash, shard) = self.locate(key);
        let mut table = shard.write();
        if let Some(e) = table.entries.find_mut(hash, |e| e.0 == key) {
            e.1 = value;
            return;
        }
        self.make_room(&mut table, now);
        table
            .entries
            .insert_unique(hash, (key, value), |e| self.hasher.hash_one(e.0));
    }

    /// Drop `key`.
    pub fn remove(&self, key: u128) {
        let (key, hash, shard) = self.locate(key);
        let mut table = shard.write();
        if let Ok(e) = table.entries.find_entry(hash, |e| e.0 == key) {
            e.remove();
        }
    }

    /// Entries held, expired ones included until their shard is swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().entries.len()).sum()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sweep the shards whose sweep is due, each at most once per `sweep_every` however
    /// often this is called: what a metrics scrape calls before counting, so that a
    /// scrape costs what inserts would have spent on sweeping anyway, not a pass over
    /// every entry.
    pub fn sweep_due(&self, now: u64) {
        for shard in self.shards.iter() {
            if shard.read().next_sweep > now {
                continue;
            }
            let mut table = shard.write();
            if table.next_sweep <= now {
                self.sweep_table(&mut table, now);
            }
        }
    }

    fn sweep_table(&self, table: &mut Table<V>, now: u64) {
        table.entries.retain(|e| e.1.deadline() > now);
        // Give memory back after a spike (hashbrown never shrinks by itself).
        if table.entries.capacity() > 64 && table.entries.len() < table.entries.capacity() / 4 {
            table.entries.shrink_to_fit(|e| self.hasher.hash_one(e.0));
        }
        table.next_sweep = now.saturating_add(self.sweep_every);
    }

    /// Before an insert: sweep when due; when the shard is still full, drop the eighth of its
    /// entries nearest their deadline (at least one), so that inserts stay O(1) amortized
    /// however many clients arrive; then see that the table holds one more entry without
    /// hashbrown growing it ([`Store::reserve_one`]).
    fn make_room(&self, table: &mut Table<V>, now: u64) {
        if now >= table.next_sweep || table.entries.len() >= self.per_shard {
            self.sweep_table(table, now);
        }
        if table.entries.len() >= self.per_shard {
            self.evict_nearest(table);
        }
        self.reserve_one(table);
    }

    /// Drop the eighth of a full table's entries nearest their deadline (at least one), and
    /// any above `per_shard`.
    fn evict_nearest(&self, table: &mut Table<V>) {
        let len = table.entries.len();
        let mut deadlines: Vec<u64> = table.entries.iter().map(|e| e.1.deadline()).collect();
        let drop = (len / 8).max(1) + len - self.per_shard;
        let (_, nth, _) = deadlines.select_nth_unstable(drop - 1);
        let cutoff = *nth;
        // Everything before the cutoff goes, and entries at it until `drop` have gone.
        let mut at_cutoff = drop - deadlines.iter().filter(|d| **d < cutoff).count();
        table.entries.retain(|e| {
            let d = e.1.deadline();
            if d < cutoff {
                false
            } else if d == cutoff && at_cutoff > 0 {
                at_cutoff -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Expiring for u64 {
        fn deadline(&self) -> u64 {
            *self
        }
    }

    #[test]
    fn get_insert_remove() {
        let s: Store<u64> = Store::new(100, 10);
        assert_eq!(s.get(1, |v| *v), None);
        assert_eq!(s.get_or_insert(1, 0, || 50, |v| *v), 50);
        assert_eq!(s.get_or_insert(1, 0, || 99, |v| *v), 50, "kept, not remade");
        s.insert(1, 60, 0);
        assert_eq!(s.get(1, |v| *v), Some(60));
        s.insert(u128::MAX, 70, 0);
        assert_eq!(s.len(), 2);
        s.remove(1);
        assert_eq!(s.get(1, |v| *v), None);
        assert_eq!(s.get(u128::MAX, |v| *v), Some(70));
    }

    #[test]
    fn sweeps_drop_only_expired_entries() {
        let s: Store<u64> = Store::new(100, 10);
        for k in 0..10 {
            s.insert(k, 100 + k as u64, 0);
        }
        s.sweep_due(105);
        assert_eq!(s.len(), 4, "deadlines 106..=109 remain");
        // A due sweep also runs on insert.
        s.insert(50, 1_000, 200);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_due_sweep_runs_once_per_period() {
        let s: Store<u64> = Store::new(100, 10);
        s.insert(1, 1_000, 100); // sweeps at 100; the next is due at 110
        s.insert(2, 105, 100);
        s.sweep_due(106);
        assert_eq!(s.len(), 2, "not due before 110: the expired entry waits");
        s.sweep_due(110);
        assert_eq!(s.len(), 1);
        s.insert(3, 115, 110);
        s.sweep_due(119);
        assert_eq!(s.len(), 2, "swept at 110: not again before 120");
        s.sweep_due(120);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_store_drops_the_entries_nearest_their_deadline() {
        // Under 8,192 entries there is one shard (`shard_count`), so the bound is exact.
        let s: Store<u64> = Store::new(16, u64::MAX);
        for k in 0..16 {
            s.insert(k, 1_000 + k as u64, 0);
        }
        s.insert(100, 5_000, 0);
        assert!(s.len() <= 16);
        assert_eq!(s.get(0, |v| *v), None, "the nearest deadline went");
        assert_eq!(s.get(100, |v| *v), Some(5_000), "the newcomer stays");
        assert_eq!(s.get(15, |v| *v), Some(1_015), "the farthest stays");
        // Ties at the cutoff do not empty the store.
        let s: Store<u64> = Store::new(16, u64::MAX);
        for k in 0..16 {
            s.insert(k, 7, 0);
        }
        s.insert(100, 7, 0);
        assert_eq!(s.len(), 15, "two of sixteen went, then the newcomer came");
    }

    impl<V> Store<V> {
        /// The bytes of every shard's table.
        fn table_bytes(&self) -> usize {
            self.shards
                .iter()
                .map(|s| s.read().entries.allocation_size())
                .sum()
        }
    }

    #[test]
    fn a_full_store_fills_its_tables_and_churn_does_not_grow_them() {
        let max = 200_000;
        let s: Store<u64> = Store::new(max as u64, u64::MAX);
        // A slot and its control byte.
        let slot = std::mem::size_of::<(Key, u64)>() + 1;
        // Three times the bound, each key with a later deadline than the last: the store
        // evicts all along, leaving tombstones behind.
        for k in 0..3 * max as u128 {
            s.insert(k * 0x9E37_79B9_7F4A_7C15, k as u64, 0);
        }
        assert!(s.len() > max * 8 / 10, "held {}", s.len());
        let ratio = s.table_bytes() as f64 / (max * slot) as f64;
        assert!(
            ratio < 1.2,
            "tables of {ratio:.2}x the slots of a full store"
        );
    }

    #[test]
    fn shard_counts_fit_the_tables() {
        // The sizing follows hashbrown's own.
        for n in [15, 100, 1_000, 1_792, 1_793, 14_286, 14_337] {
            let table = HashTable::<(Key, u64)>::with_capacity(n);
            assert_eq!(table.capacity(), buckets_for(n) / 8 * 7, "{n}");
        }
        assert_eq!(shard_count(100), 1);
        assert_eq!(shard_count(8_191), 1);
        // Large stores, where the memory is (a power-of-two count gives 1.3x to 2.1x).
        for max in [100_000, 123_457, 1_000_000, 10_000_000, usize::MAX] {
            let shards = shard_count(max);
            let buckets = shards.saturating_mul(buckets_for(max.div_ceil(shards)));
            assert!(
                max == usize::MAX || buckets as f64 <= max as f64 * 1.2,
                "{max}: {shards} shards, {buckets} buckets"
            );
        }
    }

    #[test]
    fn many_keys_stay_within_the_bound() {
        let s: Store<u64> = Store::new(50_000, u64::MAX);
        for k in 0..200_000u128 {
            s.get_or_insert(k * 0x9E37_79B9_7F4A_7C15, 0, || k as u64, |_| ());
        }
        let shards = s.shards.len();
        assert!(shards > 1);
        assert!(s.len() <= 50_000usize.div_ceil(shards) * shards);
        // The newest keys are the ones with the farthest deadlines: they are all held.
        for k in 199_000..200_000u128 {
            assert_eq!(s.get(k * 0x9E37_79B9_7F4A_7C15, |v| *v), Some(k as u64));
        }
    }

    /// Eight threads insert, evict (by filling the store, and by `remove`) and read at once.
    /// What the store promises under that, checked while they run:
    /// - no shard holds more than its share (`per_shard`) at any moment, so the store never
    ///   holds more than `max_entries` rounded up to a multiple of the shard count;
    /// - a full shard drops the eighth of its entries nearest their deadline, so entries whose
    ///   deadlines are the farthest, fewer in all than seven eighths of one shard's share, are
    ///   never dropped: once in, every read finds them, with their value;
    /// - `get_or_insert` makes a key's value once: threads racing on an absent key all get
    ///   the value of the one that inserted it;
    /// - a read returns the value last written for its key, never another's, and nothing
    ///   after its `remove`.
    #[test]
    fn concurrent_inserts_evictions_and_reads_keep_the_bound_and_the_farthest_entries() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Barrier;

        const THREADS: u64 = 8;
        const KEPT: u64 = 1_000;
        const CHURN: u64 = 30_000;
        let max = 20_000u64;
        let s: Store<u64> = Store::new(max, 1_000);
        let (shards, per_shard) = (s.shards.len(), s.per_shard);
        assert!(
            shards > 1,
            "several shards, so that writers meet on some and not others"
        );
        assert!(
            KEPT < per_shard as u64 * 7 / 8,
            "the kept entries fit in any one shard"
        );
        let now = 10;
        // Deadlines: kept entries u64::MAX - KEPT * THREADS and up; churn between 11 and
        // 1_000_010; every churn key is one thread's own.
        let kept_key = |i: u64| (1u128 << 100) | u128::from(i);
        let churn_key = |t: u64, j: u64| (u128::from(t) << 64) | u128::from(j);
        let churn_deadline = |t: u64, j: u64| now + 1 + (t * CHURN + j) * 7_919 % 1_000_000;
        let running = AtomicBool::new(true);
        let checks = AtomicUsize::new(0);
        let start = Barrier::new(THREADS as usize + 1);
        let race = Barrier::new(THREADS as usize);
        // Each worker returns the value it got for each kept key and what it found wrong (a
        // worker does not panic: the others would wait for it at `race` for ever).
        let results: Vec<(Vec<u64>, Vec<String>)> = std::thread::scope(|scope| {
            scope.spawn(|| {
                start.wait();
                while running.load(Ordering::Relaxed) {
                    for shard in s.shards.iter() {
                        let len = shard.read().entries.len();
                        assert!(len <= per_shard, "a shard holds {len} > {per_shard}");
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            });
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (s, start, race) = (&s, &start, &race);
                    scope.spawn(move || {
                        start.wait();
                        let (mut seen, mut faults) =
                            (Vec::with_capacity(KEPT as usize), Vec::new());
                        for j in 0..CHURN {
                            let (key, deadline) = (churn_key(t, j), churn_deadline(t, j));
                            s.insert(key, deadline, now);
                            let read = s.get(key, |v| *v);
                            if read.is_some_and(|v| v != deadline) {
                                faults.push(format!("churn {key} read {read:?}, not {deadline}"));
                            }
                            if j % 3 == 0 {
                                s.remove(key);
                                if let Some(v) = s.get(key, |v| *v) {
                                    faults.push(format!("churn {key} read {v} after remove"));
                                }
                            }
                            if j % (CHURN / KEPT) == 0 {
                                // Every thread races for the same absent kept key at once.
                                let i = seen.len() as u64;
                                let made = u64::MAX - i * THREADS - t;
                                race.wait();
                                seen.push(s.get_or_insert(kept_key(i), now, || made, |v| *v));
                                let back = (j * 31 + t) % (i + 1);
                                let read = s.get(kept_key(back), |v| *v);
                                if read != Some(seen[back as usize]) {
                                    faults.push(format!("kept {back} read {read:?}"));
                                }
                            }
                        }
                        (seen, faults)
                    })
                })
                .collect();
            // The watcher stops when the workers are done, or when one failed.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&running);
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (t, (_, faults)) in results.iter().enumerate() {
            let first = &faults[..faults.len().min(5)];
            assert!(
                faults.is_empty(),
                "thread {t}, {} faults: {first:#?}",
                faults.len()
            );
        }
        let seen: Vec<&Vec<u64>> = results.iter().map(|(seen, _)| seen).collect();
        assert!(checks.load(Ordering::Relaxed) > 0);
        assert!(s.len() <= per_shard * shards);
        for i in 0..KEPT {
            let first = seen[0][i as usize];
            for (t, values) in seen.iter().enumerate() {
                assert_eq!(
                    values[i as usize], first,
                    "thread {t} saw another value of {i}"
                );
            }
            assert_eq!(s.get(kept_key(i), |v| *v), Some(first), "kept entry {i}");
        }
    }
}
