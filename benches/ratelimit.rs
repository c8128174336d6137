//! A limiter check on a known key (the request-path cost), per-IP with many keys held, and
//! the single-bucket per-route check. `cargo bench --bench ratelimit`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::config::{LimitConfig, LimitScope, Rate};
use portcullis::ratelimit::{LimitKind, Limiter};

/// The allocator the `portcullis` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config() -> LimitConfig {
    LimitConfig {
        // Generous, so the benchmark measures allowed checks.
        rate: Rate {
            count: 1_000_000_000,
            per: Duration::from_secs(1),
        },
        burst: 1_000_000_000,
        scope: LimitScope::Local,
        headers: false,
        claim: None,
        max_keys: 2_000_000,
    }
}

fn bench(c: &mut Criterion) {
    let per_ip = Limiter::new("bench", LimitKind::PerIp, &config());
    for k in 0..100_000u128 {
        per_ip.check(k);
    }
    let mut k = 0u128;
    c.bench_function("limiter/per_ip/known_key_100k_held", |b| {
        b.iter(|| {
            k = (k + 7919) % 100_000;
            black_box(per_ip.check(black_box(k)))
        })
    });
    c.bench_function("limiter/per_ip/same_key", |b| {
        b.iter(|| black_box(per_ip.check(black_box(42))))
    });
    let per_route = Limiter::new("bench", LimitKind::PerRoute, &config());
    c.bench_function("limiter/per_route", |b| {
        b.iter(|| black_box(per_route.check(0)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
