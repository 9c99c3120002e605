//! ns per `CompiledTable::resolve`, on the 3-region example and on a 10000-slot, 100-unit,
//! 200-route table; and endpoint choice by key affinity: rendezvous hashing (what the table
//! uses) against the `consistent_hash` crate's ring. Results: docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use consistent_hash::{DefaultHash, Node, StaticHashRing};
use criterion::{Criterion, criterion_group, criterion_main};
use router_rules::{CompiledTable, SimpleRequest, load_yaml};

/// A browser-like request: the routing header comes after the usual ones.
fn request(method: &str, target: &str, user: &str) -> SimpleRequest {
    SimpleRequest::new(method, target)
        .with_header("host", "shop.example.com")
        .with_header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .with_header("accept", "application/json")
        .with_header("accept-encoding", "gzip, br")
        .with_header("accept-language", "en-US,en;q=0.9")
        .with_header("x-request-id", "5f0c3a6e-8f7e-4d7a-9d1c-1b2f3e4d5c6b")
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header("x-user-id", user)
}

fn bench_table(
    c: &mut Criterion,
    name: &str,
    table: &CompiledTable,
    cases: &[(&str, SimpleRequest)],
) {
    let mut group = c.benchmark_group(format!("resolve/{name}"));
    for (case, req) in cases {
        group.bench_function(*case, |b| {
            b.iter(|| {
                let decision = table.resolve(black_box(req), black_box(0));
                black_box(decision.region.map(|r| r.name.len()))
            })
        });
    }
    group.finish();
}

fn resolve(c: &mut Criterion) {
    let three = load_yaml(&support::three_regions_yaml()).expect("example is valid");
    let mut cookie = request("GET", "/cart/items", "ignored");
    cookie.headers.retain(|(n, _)| n != "x-user-id");
    cookie.add_cookie("session", "abc123");
    cookie.add_cookie("uid", "4321");
    bench_table(
        c,
        "three-regions",
        &three,
        &[
            ("c-header-numeric", request("GET", "/cart/items", "4321")),
            (
                "c-header-string",
                request("POST", "/order/new", "alice@example.com"),
            ),
            ("c-cookie", cookie),
            ("p-read", request("GET", "/item/42", "4321")),
        ],
    );
    let big = load_yaml(&support::synthetic_yaml(3, 100, 200, 10_000)).expect("valid");
    bench_table(
        c,
        "100-units-200-routes",
        &big,
        &[
            ("c-header-first-route", request("GET", "/svc0/x", "4321")),
            ("c-header-last-route", request("GET", "/svc199/x", "4321")),
            ("no-route", request("GET", "/nothing/here", "4321")),
        ],
    );
}

fn affinity(c: &mut Criterion) {
    for size in [3usize, 16] {
        let endpoints: Vec<String> = (0..size).map(|i| format!("10.0.0.{i}:8080")).collect();
        let yaml = format!(
            "version: 1\nregions: [{{ name: a, pools: {{ s: [{}] }} }}]\nunits: [{{ name: u, center: true, slots: [[0, 9999]], region: a }}]\nroutes: [{{ name: r, match: {{ path_prefix: / }}, service: s, class: C, balance: key_affinity, key: [{{ header: x-user-id }}] }}]\n",
            endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let table = load_yaml(&yaml).expect("valid");
        let pool = table.regions()[0].pool(0).expect("pool");
        let mut group = c.benchmark_group(format!("affinity/{size}-endpoints"));
        group.bench_function("rendezvous-first", |b| {
            b.iter(|| {
                black_box(
                    pool.affinity_order(black_box("user-4321"))
                        .next()
                        .map(|e| e.address.len()),
                )
            })
        });
        group.bench_function("rendezvous-all", |b| {
            b.iter(|| black_box(pool.affinity_order(black_box("user-4321")).count()))
        });
        // The ring as the crate's docs build it, with 160 virtual nodes per endpoint (ketama's).
        let ring = StaticHashRing::new(
            DefaultHash,
            endpoints
                .iter()
                .map(|e| Node::new(e.as_str()).quantity(160)),
        );
        group.bench_function("consistent_hash-first", |b| {
            b.iter(|| {
                black_box(
                    ring.calc_candidates(black_box(&"user-4321"))
                        .next()
                        .map(|n| n.key.len()),
                )
            })
        });
        group.bench_function("consistent_hash-all", |b| {
            b.iter(|| black_box(ring.calc_candidates(black_box(&"user-4321")).count()))
        });
        group.finish();
    }
}

criterion_group!(benches, resolve, affinity);
criterion_main!(benches);
