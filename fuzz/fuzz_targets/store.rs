//! The store behind the token cache and the rate-limit buckets, driven by a sequence of
//! operations decoded from the input and checked against a plain map.
//!
//! Invariants: the store never holds more than its bound; a value read back is the last
//! one written for that key (never an older one, never another key's); an entry just
//! inserted is there; and an entry that disappears without a `remove` had expired or was
//! among those nearest their deadline.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use portcullis::store::{Expiring, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    deadline: u64,
    tag: u64,
}

impl Expiring for Entry {
    fn deadline(&self) -> u64 {
        self.deadline
    }
}

fn key(b: u8) -> u128 {
    u128::from(b).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
}

fuzz_target!(|data: &[u8]| {
    let [bound, sweep, ops @ ..] = data else {
        return;
    };
    let max_entries = u64::from(*bound % 64) + 1;
    let store: Store<Entry> = Store::new(max_entries, u64::from(*sweep % 16));
    // What was last written for each key that has not been removed.
    let mut model: HashMap<u128, Entry> = HashMap::new();
    let mut now = 0u64;
    let mut tag = 0u64;
    for op in ops.chunks_exact(3) {
        let (k, arg) = (key(op[1]), u64::from(op[2]));
        tag += 1;
        let held_before: Vec<(u128, Entry)> = model
            .iter()
            .filter(|(k, _)| store.get(**k, |_| ()).is_some())
            .map(|(k, v)| (*k, *v))
            .collect();
        match op[0] % 6 {
            0 => {
                let e = Entry {
                    deadline: now + arg,
                    tag,
                };
                store.insert(k, e, now);
                model.insert(k, e);
                assert_eq!(
                    store.get(k, |v| *v),
                    Some(e),
                    "an entry just inserted is gone"
                );
            }
            1 => {
                let e = Entry {
                    deadline: now + arg,
                    tag,
                };
                let held = store.get(k, |v| *v);
                let got = store.get_or_insert(k, now, || e, |v| *v);
                match held {
                    Some(v) => assert_eq!(got, v, "get_or_insert replaced a held value"),
                    None => {
                        assert_eq!(got, e);
                        model.insert(k, e);
                    }
                }
            }
            2 => {
                store.remove(k);
                model.remove(&k);
                assert_eq!(store.get(k, |v| *v), None, "a removed entry is still there");
            }
            3 => store.sweep_due(now),
            4 => now += arg,
            _ => now += arg << 8,
        }
        // Bounded; with one shard (stores under 8,192 entries), exactly.
        assert!(
            store.len() as u64 <= max_entries,
            "{} entries, bound {max_entries}",
            store.len()
        );
        // Only the latest value of a key is ever read back.
        for k in model.keys().chain([&k]) {
            if let Some(v) = store.get(*k, |v| *v) {
                assert_eq!(
                    model.get(k),
                    Some(&v),
                    "a value that was not the last written"
                );
            }
        }
        // What went without a remove had expired, or was nearest its deadline.
        let survivors: Vec<u64> = held_before
            .iter()
            .filter(|(k, _)| store.get(*k, |_| ()).is_some())
            .map(|(_, e)| e.deadline)
            .collect();
        let nearest_kept = survivors.iter().copied().min().unwrap_or(u64::MAX);
        for (lost, e) in &held_before {
            if *lost != k && store.get(*lost, |_| ()).is_none() {
                assert!(
                    e.deadline <= now || e.deadline <= nearest_kept,
                    "evicted deadline {} while {nearest_kept} stayed (now {now})",
                    e.deadline
                );
            }
        }
    }
});
