//! Resolution allocates nothing: counted by a global allocator that tallies, per thread, the
//! allocations made while armed.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use base64::Engine as _;
use router_rules::{Action, SimpleRequest, load_yaml};

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (u64, T) {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (COUNT.with(Cell::get), out)
}

#[test]
fn resolve_allocates_nothing() {
    let yaml = support::three_regions_yaml()
        .replace("      - cookie: uid\n    missing_key: reject   # 400", "      - cookie: uid\n      - query: uid\n      - path_segment: 2\n      - jwt_claim: sub\n    balance: key_affinity\n    missing_key: reject   # 400");
    let table = load_yaml(&yaml).expect("valid");
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = format!(
        "Bearer {}.{}.sig",
        engine.encode("{}"),
        engine.encode(r#"{"iss":"a","sub":"user-7"}"#)
    );
    let mut with_cookie = SimpleRequest::new("GET", "/cart");
    with_cookie.add_cookie("other", "1");
    with_cookie.add_cookie("uid", "4242");
    let cases = [
        (
            "header",
            SimpleRequest::new("GET", "/cart/1").with_header("x-user-id", "4321"),
            Action::Forward,
        ),
        (
            "string header",
            SimpleRequest::new("POST", "/order").with_header("x-user-id", "alice"),
            Action::Forward,
        ),
        ("cookie", with_cookie, Action::Forward),
        (
            "query",
            SimpleRequest::new("GET", "/cart?x=1&uid=j%C3%BCrgen"),
            Action::Forward,
        ),
        (
            "path segment",
            SimpleRequest::new("GET", "/cart/9876"),
            Action::Forward,
        ),
        (
            "jwt",
            SimpleRequest::new("GET", "/cart").with_header("authorization", &jwt),
            Action::Forward,
        ),
        (
            "missing",
            SimpleRequest::new("GET", "/order"),
            Action::MissingKey,
        ),
        (
            "p read",
            SimpleRequest::new("GET", "/item/1"),
            Action::Forward,
        ),
        (
            "p write",
            SimpleRequest::new("POST", "/item/1"),
            Action::Forward,
        ),
        (
            "no route",
            SimpleRequest::new("GET", "/nope"),
            Action::NoRoute,
        ),
    ];
    for (name, request, action) in &cases {
        let (count, (got, endpoint)) = allocations(|| {
            let decision = table.resolve(request, 1);
            let endpoint = match (decision.pool, decision.key.as_ref()) {
                (Some(pool), Some(key)) => pool
                    .affinity_order(key.as_str())
                    .next()
                    .map(|e| e.address.len()),
                _ => None,
            };
            (decision.action, endpoint)
        });
        assert_eq!(got, *action, "{name}");
        assert_eq!(count, 0, "{name}: resolve allocated {count} times");
        if *name == "header" {
            assert!(endpoint.is_some());
        }
    }
}

#[test]
fn the_counter_counts() {
    let (count, v) = allocations(|| vec![1u8; 16]);
    assert_eq!(v.len(), 16);
    assert_eq!(count, 1);
}

/// Why key affinity does not use the `consistent_hash` crate on the request path: its
/// candidate iterator allocates on every lookup (see docs/BENCHMARKS.md for timings).
#[test]
fn consistent_hash_ring_allocates_per_lookup() {
    use consistent_hash::{DefaultHash, Node, StaticHashRing};
    let ring = StaticHashRing::new(
        DefaultHash,
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .into_iter()
            .map(|e| Node::new(e).quantity(160)),
    );
    let (count, first) = allocations(|| {
        ring.calc_candidates(&"user-4321")
            .next()
            .map(|n| n.key.len())
    });
    assert!(first.is_some());
    assert!(
        count > 0,
        "the ring lookup no longer allocates: re-measure and reconsider"
    );
}
