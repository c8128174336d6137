//! Memory per million keys: one million rate-limit buckets and one million cached tokens,
//! filled through the library API, measured as resident memory before and after.
//! `cargo bench --bench memory` prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis::auth::{Fact, Identity, Projection, TokenCache};
use portcullis::config::{LimitConfig, LimitScope, Rate, TokenCacheConfig};
use portcullis::ratelimit::{LimitKind, Limiter};

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

fn main() {
    let n = entries();
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
    let limiter_bytes = rss_bytes().saturating_sub(before);

    let short = fill_tokens(n, |i| format!("user-{i:08}"));
    // The same with a UUID-sized `sub` (36 characters), as many identity providers issue.
    let uuid = fill_tokens(n, |i| format!("{i:08x}-5f2c-4b7e-9a1d-3c6e8f0b2a4d"));

    println!("| what | entries | resident memory | per entry |");
    println!("|---|---|---|---|");
    println!(
        "| rate-limit buckets (per_ip) | {keys} | {:.1} MiB | {} B |",
        mib(limiter_bytes),
        limiter_bytes / keys.max(1)
    );
    for (what, (tokens, bytes)) in [("13-character", short), ("36-character", uuid)] {
        println!(
            "| cached tokens ({what} `sub` forwarded, one scope required) | {tokens} | {:.1} MiB | {} B |",
            mib(bytes),
            bytes / tokens.max(1)
        );
    }
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
    let bytes = rss_bytes().saturating_sub(before);
    // Kept, so that the next fill measures only its own memory.
    std::mem::forget(cache);
    (tokens, bytes)
}
