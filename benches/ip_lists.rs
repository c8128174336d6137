//! The cost of an `allow_ips` / `deny_ips` check on the request path, with a few entries and
//! with 100,000 (sorted ranges: one binary search per family), and of the empty lists every
//! request meets when none are configured. `cargo bench --bench ip_lists`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::config::{Issues, LineIndex};
use portcullis::ip_lists::IpRules;

/// The allocator the `portcullis` binary runs with, so that the figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rules(allow: Vec<String>, deny: Vec<String>) -> IpRules {
    let index = LineIndex::new("");
    let mut issues = Issues::new(&index);
    let rules = IpRules::compile(&allow, &deny, "", &mut issues);
    issues.finish(rules).unwrap()
}

fn bench(c: &mut Criterion) {
    let few = rules(
        vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        vec!["10.66.0.0/16".into()],
    );
    // 50,000 IPv4 /24s and 50,000 IPv6 /48s, none adjacent: 100,000 ranges to search.
    let many = rules(
        (0..50_000u32)
            .map(|i| format!("{}/24", std::net::Ipv4Addr::from((i * 2) << 8)))
            .chain((0..50_000u128).map(|i| {
                format!(
                    "{}/48",
                    std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | ((i * 2) << 80))
                )
            }))
            .collect(),
        Vec::new(),
    );
    let none = IpRules::default();
    let clients: Vec<IpAddr> = (0..1024u32)
        .map(|i| IpAddr::from(std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761) >> 8)))
        .chain((0..1024u128).map(|i| {
            IpAddr::from(std::net::Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | ((i * 37) << 80),
            ))
        }))
        .collect();
    for (name, r) in [("empty", &none), ("few", &few), ("100k", &many)] {
        let mut i = 0usize;
        c.bench_function(&format!("ip_lists/permits/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % clients.len();
                black_box(r.permits(black_box(Some(clients[i]))))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
