//! Request-path costs that do not need a network: route lookup at 1, 100 and 10,000 routes
//! (also with header and query conditions on every route), and the header rewriting every
//! proxied request goes through. Before measuring, it checks that a lookup allocates nothing:
//! the global allocator counts allocations while [`allocations`] runs.
//!
//! Run: `cargo bench --bench routing` (add `-- --warm-up-time 1 --measurement-time 2` for a
//! quick pass). The README's Performance section quotes these numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use portcullis::headers;
use portcullis::routing::{self, Methods, RouteMatch, RouteTable};

/// The allocator the `portcullis` binary runs with, so that the figures are the binary's,
/// counting allocations only while [`allocations`] asks it to.
#[global_allocator]
static ALLOC: Counting = Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// mimalloc, counting calls that allocate while `COUNTING` is on.
struct Counting;

// SAFETY: every call is passed on to mimalloc unchanged; counting touches only atomics.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// How many allocations 1,000 runs of `f` make.
fn allocations<T>(mut f: impl FnMut() -> T) -> usize {
    ALLOCATED.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..1000 {
        black_box(f());
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATED.load(Ordering::SeqCst)
}

/// `routes(n)`, each with the conditions of `match_yaml` (a `match:` holding `headers:` and
/// `query:`), as a gateway that routes tenants by header has them.
fn conditioned(n: usize, match_yaml: &str) -> Vec<RouteMatch> {
    let config: portcullis::config::MatchConfig = serde_yaml::from_str(match_yaml).unwrap();
    let index = portcullis::config::LineIndex::default();
    let mut issues = portcullis::config::Issues::new(&index);
    let conditions = routing::conditions::compile(&config, "routes[0]", &mut issues).unwrap();
    routes(n)
        .into_iter()
        .map(|r| RouteMatch {
            conditions: conditions.clone(),
            ..r
        })
        .collect()
}

/// Sizes of the route tables compared.
const SIZES: [usize; 3] = [1, 100, 10_000];

/// A table of `n` routes shaped like a real API gateway's: mostly host-less
/// `/api/v1/svcNNNNN/items` prefixes, with exact-host and wildcard-host routes mixed in (one
/// in ten each) and a method list on some. With `n == 1` it is the single route
/// `/api/v1/svc00000/items`.
fn routes(n: usize) -> Vec<RouteMatch> {
    (0..n)
        .map(|i| {
            let (host, prefix) = match i % 10 {
                3 if n > 1 => (Some(format!("svc{i:05}.example.com")), "/".to_string()),
                7 if n > 1 => (
                    Some(format!("*.t{i:05}.example.com")),
                    format!("/api/v1/svc{i:05}"),
                ),
                _ => (None, format!("/api/v1/svc{i:05}/items")),
            };
            let methods = if i % 50 == 9 {
                Methods::parse(&["GET", "HEAD"]).unwrap()
            } else {
                Methods::ANY
            };
            RouteMatch {
                host,
                path_prefix: prefix,
                methods,
                conditions: Default::default(),
            }
        })
        .collect()
}

/// The host-less route with the highest number: the one inserted last.
fn last_plain_route(n: usize) -> usize {
    (0..n)
        .rev()
        .find(|&i| n == 1 || !matches!(i % 10, 3 | 7))
        .unwrap()
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in SIZES {
        let table = RouteTable::build(&routes(n)).unwrap();
        let k = last_plain_route(n);
        // The same shape of request at every size: an unknown host (every wildcard suffix
        // is tried), then a walk down the path trie through the 22-byte prefix of the last route.
        let hit = format!("/api/v1/svc{k:05}/items/8812/details");
        assert_eq!(
            table.lookup("shop.example.com", &hit, &Method::GET),
            Some(k)
        );
        let lookups = allocations(|| table.lookup("shop.example.com", &hit, &Method::GET));
        assert_eq!(lookups, 0, "a route lookup allocates");
        group.bench_with_input(BenchmarkId::new("deep_match", n), &n, |b, _| {
            b.iter(|| {
                table.lookup(
                    black_box("shop.example.com"),
                    black_box(&hit),
                    black_box(&Method::GET),
                )
            })
        });
        // Shares the long prefix but no route takes it: falls through exact host, wildcard
        // suffixes and host-less routes, and ends as a 404.
        let miss = format!("/api/v1/svc{k:05}/orders/8812");
        assert_eq!(table.lookup("shop.example.com", &miss, &Method::GET), None);
        group.bench_with_input(BenchmarkId::new("fallback_404", n), &n, |b, _| {
            b.iter(|| {
                table.lookup(
                    black_box("shop.example.com"),
                    black_box(&miss),
                    black_box(&Method::GET),
                )
            })
        });
        // Every route with a header and a query condition, the request meeting them among
        // the headers a browser sends: the lookup checks them at each candidate route.
        let table = RouteTable::build(&conditioned(
            n,
            "{ headers: { x-tenant: acme, x-beta: { present: true } }, query: { view: full } }",
        ))
        .unwrap();
        let request = client_request();
        let mut headers = request.headers.clone();
        headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
        headers.insert("x-beta", http::HeaderValue::from_static("1"));
        let facts = routing::RequestFacts {
            headers: Some(&headers),
            query: "page=2&view=full&sort=-created",
        };
        let lookup = || table.lookup_request("shop.example.com", &hit, &Method::GET, &facts);
        assert_eq!(lookup(), Some(k));
        assert_eq!(allocations(lookup), 0, "a lookup with conditions allocates");
        group.bench_with_input(BenchmarkId::new("header_match", n), &n, |b, _| {
            b.iter(|| {
                table.lookup_request(
                    black_box("shop.example.com"),
                    black_box(&hit),
                    black_box(&Method::GET),
                    black_box(&facts),
                )
            })
        });
        let table = RouteTable::build(&routes(n)).unwrap();
        // What the proxy does per request: check the target, normalise Host and path, then
        // look up (with the backend readings, for a path holding `%` or `;`).
        let target = format!("{hit}?page=2&sort=-created");
        group.bench_with_input(BenchmarkId::new("admit", n), &n, |b, _| {
            b.iter(|| {
                let target =
                    routing::request_target(black_box(target.as_bytes()), &Method::GET).unwrap();
                let host = routing::host_key(black_box("Shop.Example.com:443"));
                table.route(&host, target.path, black_box(&Method::GET))
            })
        });
    }
    group.finish();
}

/// A browser-like request as it reaches the proxy.
fn client_request() -> RequestHeader {
    let mut r = RequestHeader::build(
        "GET",
        b"/api/v1/svc00042/items/8812?page=2&sort=-created",
        None,
    )
    .unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.7,de;q=0.3"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1c2VyLTEyMyJ9.c2ln",
        ),
        ("cookie", "session=4f1c2a9d8e7b; theme=dark; consent=1"),
        ("referer", "https://app.example.com/orders"),
        ("connection", "keep-alive, x-trace-hop"),
        ("keep-alive", "timeout=5"),
        ("x-trace-hop", "1"),
        ("x-forwarded-for", "198.51.100.23"),
        ("x-request-id", "7f3e9c2a-4b1d-4e8f-9a6c-2d5b8e1f0a3c"),
    ] {
        r.append_header(k, v).unwrap();
    }
    r
}

fn upstream_response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, None).unwrap();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "1834"),
        ("cache-control", "private, max-age=0"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=60"),
        ("date", "Fri, 28 Nov 2025 17:00:00 GMT"),
        ("server", "orders/1.4"),
    ] {
        r.append_header(k, v).unwrap();
    }
    r
}

fn header_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    let req = client_request();
    let resp = upstream_response();
    // The request side, as in `upstream_request_filter`: request id, hop-by-hop removal,
    // the owned headers, X-Forwarded-*. Cloning the header is measured alone beside it.
    let owned = headers::OwnedHeaders::new(
        &[http::HeaderName::from_static("x-user-id")],
        Default::default(),
        Default::default(),
    );
    group.bench_function("request_clone_only", |b| {
        b.iter_batched(|| (), |()| black_box(req.clone()), BatchSize::SmallInput)
    });
    group.bench_function("request_rewrite", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                let id = headers::request_id(&r);
                headers::edit_request(&mut r, |parts| {
                    headers::strip_request_hop_by_hop(&mut parts.headers, false);
                    owned.strip(&mut parts.headers);
                    parts.headers.insert(headers::X_REQUEST_ID, id);
                    headers::set_forwarded(parts, Some(client), true);
                });
                r
            },
            BatchSize::SmallInput,
        )
    });
    // The response side, as in `response_filter`.
    group.bench_function("response_rewrite", |b| {
        b.iter_batched(
            || resp.clone(),
            |mut r| {
                headers::edit_response(&mut r, |parts| {
                    headers::strip_response_hop_by_hop(&mut parts.headers, parts.status);
                    parts.headers.insert(
                        headers::X_REQUEST_ID,
                        http::HeaderValue::from_static("7f3e9c2a-4b1d-4e8f-9a6c-2d5b8e1f0a3c"),
                    );
                });
                r
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("header_bytes", |b| {
        b.iter(|| headers::header_bytes(black_box(&req)))
    });
    group.finish();
}

criterion_group!(benches, route_lookup, header_rewrite);
criterion_main!(benches);
