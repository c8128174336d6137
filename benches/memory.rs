//! Memory per million keys: one million rate-limit buckets and one million cached tokens,
//! filled through the library API, measured as resident memory before and after.
//! `cargo bench --bench memory` prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use portcullis::auth::{Identity, Projection, TokenCache};
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

    let before = rss_bytes();
    let cache = TokenCache::new(&TokenCacheConfig {
        max_tokens: 2 * n,
        max_ttl: portcullis::config::Dur(Duration::from_secs(3600)),
    });
    // A typical identity: sub and a scope list, as a route forwarding them holds.
    let mut projection = Projection::default();
    projection.slot_for("sub");
    let exp = portcullis::auth::cache::unix_now() + 3600;
    for i in 0..n {
        let claims =
            serde_json::json!({"sub": format!("user-{i:08}"), "scope": "orders:read orders:write"});
        let id = Identity::project(claims.as_object().unwrap(), &projection, 1, 1, exp);
        cache.insert(cache.key(&format!("token-{i}")), Arc::new(id));
    }
    let tokens = cache.len();
    let token_bytes = rss_bytes().saturating_sub(before);

    println!("| what | entries | resident memory | per entry |");
    println!("|---|---|---|---|");
    println!(
        "| rate-limit buckets (per_ip) | {keys} | {:.1} MiB | {} B |",
        mib(limiter_bytes),
        limiter_bytes / keys.max(1)
    );
    println!(
        "| cached tokens (sub + 2 scopes) | {tokens} | {:.1} MiB | {} B |",
        mib(token_bytes),
        token_bytes / tokens.max(1)
    );
}
