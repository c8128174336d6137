//! Memory per million keys: one million rate-limit buckets and one million cached tokens,
//! filled through the library API, each in a process of its own, measured as resident memory
//! before and after.
//! `cargo bench --bench memory` prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis::auth::{Fact, Identity, Projection, TokenCache};
use portcullis::config::{LimitConfig, LimitScope, Rate, TokenCacheConfig};
use portcullis::ratelimit::{LimitKind, Limiter};

/// The allocator the `portcullis` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A million under `cargo bench`; a thousand as the smoke run of `cargo test --all-targets`.
fn entries() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        1_000
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A case: its id (how the parent names it to the child), its row's label, and the fill that
/// gives back the entries held and the resident memory they added.
type Case = (&'static str, &'static str, fn(u64) -> (u64, u64));

/// The cases, each measured in a process of its own: a fill that ran before in the same
/// process would leave memory the allocator keeps (or hands to the next fill), and the
/// before/after difference would no longer be the case's own.
const CASES: [Case; 3] = [
    ("buckets", "rate-limit buckets (per_ip)", fill_buckets),
    (
        "tokens-13",
        "cached tokens (13-character `sub` forwarded, one scope required)",
        |n| fill_tokens(n, |i| format!("user-{i:08}")),
    ),
    (
        "tokens-36",
        "cached tokens (36-character `sub` forwarded, one scope required)",
        // A UUID-sized `sub`, as many identity providers issue.
        |n| fill_tokens(n, |i| format!("{i:08x}-5f2c-4b7e-9a1d-3c6e8f0b2a4d")),
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(id) = args
        .iter()
        .position(|a| a == "--case")
        .and_then(|i| args.get(i + 1))
    {
        // A child: fill, then report `entries bytes` on stdout.
        let (_, _, fill) = CASES
            .iter()
            .find(|(case, _, _)| case == id)
            .unwrap_or_else(|| panic!("unknown case {id}"));
        let (held, bytes) = fill(entries());
        println!("{held} {bytes}");
        return;
    }
    let me = std::env::current_exe().expect("the bench's own path");
    println!("| what | entries | resident memory | per entry |");
    println!("|---|---|---|---|");
    for (case, what, _) in CASES {
        // The child gets the same arguments (`--bench` decides the size) and the case.
        let out = std::process::Command::new(&me)
            .args(&args[1..])
            .args(["--case", case])
            .output()
            .expect("run a memory case");
        assert!(out.status.success(), "memory case {case} failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        let (held, bytes) = (fields.next().unwrap(), fields.next().unwrap());
        assert!(held > 0, "memory case {case} held nothing");
        println!(
            "| {what} | {held} | {:.1} MiB | {} B |",
            mib(bytes),
            bytes / held
        );
    }
}

/// Fill a per-IP limiter with `n` keys; give back the keys held and the resident memory
/// they added.
fn fill_buckets(n: u64) -> (u64, u64) {
    let before = rss_bytes();
    let limiter = Limiter::new(
        "memory",
        LimitKind::PerIp,
        &LimitConfig {
            // Slow enough that no bucket is full again (and dropped) while the store fills.
            rate: Rate {
                count: 10,
                per: Duration::from_secs(3600),
            },
            burst: 20,
            scope: LimitScope::Local,
            headers: false,
            claim: None,
            max_keys: 2 * n,
        },
    );
    for k in 0..u128::from(n) {
        limiter.check(k);
    }
    let keys = limiter.key_count();
    (keys, rss_bytes().saturating_sub(before))
}

/// Fill a token cache with `n` identities whose `sub` is `sub(i)`; give back the tokens held
/// and the resident memory they added.
fn fill_tokens(n: u64, sub: impl Fn(u64) -> String) -> (u64, u64) {
    let before = rss_bytes();
    let cache = TokenCache::new(&TokenCacheConfig {
        max_tokens: 2 * n,
        max_ttl: portcullis::config::Dur(Duration::from_secs(3600)),
    });
    // A typical route: it forwards `sub` and requires one scope.
    let mut projection = Projection::default();
    projection.slot_for("sub");
    projection.fact_for(Fact::Scope("orders:read".into()));
    let exp = portcullis::auth::cache::unix_now() + 3600;
    for i in 0..n {
        let claims = serde_json::json!({"sub": sub(i), "scope": "orders:read orders:write"});
        let id = Identity::project(claims.as_object().unwrap(), &projection, 1, 1, exp);
        cache.insert(cache.key(format!("token-{i}")), id);
    }
    let tokens = cache.len();
    (tokens, rss_bytes().saturating_sub(before))
}
