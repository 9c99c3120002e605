//! Properties that hold for every valid table.

mod support;

use proptest::prelude::*;
use router_rules::{
    Action, CompiledTable, DecisionReport, KeyError, SimpleRequest, diff, load_yaml,
};

/// A random valid table: regions, units with contiguous ranges (a random split of the slot
/// space, shuffled among units so ranges are not in unit order), one center.
fn table_yaml() -> impl Strategy<Value = String> {
    (1u32..=20_000, 1usize..=4, 1usize..=12)
        .prop_flat_map(|(slots, regions, units)| {
            let units = units.min(slots as usize);
            (
                Just(slots),
                Just(regions),
                proptest::collection::btree_set(1..slots.max(2), units - 1..=units - 1),
                proptest::collection::vec(0..regions, units),
                0..units,
                Just(units),
            )
        })
        .prop_filter("enough cut points", |(slots, _, cuts, _, _, units)| {
            cuts.len() == units - 1 && cuts.iter().all(|c| c < slots)
        })
        .prop_map(|(slots, regions, cuts, unit_regions, center, _)| {
            let mut bounds = vec![0u32];
            bounds.extend(cuts.iter().copied());
            bounds.push(slots);
            let mut y = format!("version: 1\nslots: {{ count: {slots} }}\nregions:\n");
            for r in 0..regions {
                y += &format!("  - name: r{r}\n    gateways: [\"127.0.0.1:{}\"]\n    pools: {{ app: [\"10.0.{r}.1:80\", \"10.0.{r}.2:80\"], cat: [\"10.1.{r}.1:80\"] }}\n", 8000 + r);
            }
            y += "units:\n";
            // Declare units in reverse so that range order differs from declaration order.
            for (u, region) in unit_regions.iter().enumerate().rev() {
                y += &format!(
                    "  - name: u{u}\n    slots: [[{}, {}]]\n    region: r{region}\n    center: {}\n",
                    bounds[u],
                    bounds[u + 1] - 1,
                    u == center
                );
            }
            y += "routes:\n  - name: app\n    match: { path_prefix: /app }\n    service: app\n    class: C\n    balance: key_affinity\n    key: [{ header: X-User-Id }, { cookie: uid }, { query: uid }]\n";
            y += "  - name: cat\n    match: { path_prefix: /cat }\n    service: cat\n    class: P\n";
            y
        })
}

fn load(yaml: &str) -> CompiledTable {
    match load_yaml(yaml) {
        Ok(table) => table,
        Err(error) => panic!("generated table refused:\n{}\n{yaml}", error.render("gen")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_slot_maps_to_exactly_one_unit(yaml in table_yaml()) {
        let table = load(&yaml);
        for slot in 0..table.slot_count() {
            let owners: Vec<&str> = table
                .units()
                .iter()
                .filter(|u| u.ranges.iter().any(|&(a, b)| a <= slot && slot <= b))
                .map(|u| &*u.name)
                .collect();
            prop_assert_eq!(owners.len(), 1, "slot {} owned by {:?}", slot, owners);
            prop_assert_eq!(&*table.unit_of_slot(slot).name, owners[0]);
        }
    }

    #[test]
    fn resolution_is_deterministic(yaml in table_yaml(), user in "[a-z0-9-]{1,24}", entry in 0usize..4, write in any::<bool>()) {
        let table = load(&yaml);
        let entry = entry % table.regions().len();
        let method = if write { "POST" } else { "GET" };
        let request = SimpleRequest::new(method, "/app/x").with_header("x-user-id", &user);
        let first = DecisionReport::new(&table, &table.resolve(&request, entry), method);
        let again = DecisionReport::new(&table, &table.resolve(&request.clone(), entry), method);
        prop_assert_eq!(&first, &again);
        prop_assert_eq!(first.action, Action::Forward.as_str());
        // The same key from another source lands in the same place.
        let mut by_cookie = SimpleRequest::new(method, "/app/x");
        by_cookie.add_cookie("uid", &user);
        let cookie = DecisionReport::new(&table, &table.resolve(&by_cookie, entry), method);
        prop_assert_eq!((&first.unit, &first.region, &first.endpoint), (&cookie.unit, &cookie.region, &cookie.endpoint));
    }

    #[test]
    fn numeric_keys_land_on_key_mod_slots(yaml in table_yaml(), key in 0u64..10_000_000_000_000_000_000) {
        let table = load(&yaml);
        let request = SimpleRequest::new("GET", "/app").with_header("x-user-id", &key.to_string());
        let decision = table.resolve(&request, 0);
        let expected = (key % u64::from(table.slot_count())) as u32;
        prop_assert_eq!(decision.slot, Some(expected));
        prop_assert_eq!(decision.unit.map(|u| &*u.name), Some(&*table.unit_of_slot(expected).name));
    }

    #[test]
    fn diff_of_a_table_with_itself_is_empty(yaml in table_yaml()) {
        let table = load(&yaml);
        let d = diff(&table, &table);
        prop_assert!(d.is_empty(), "{:?}", d);
        prop_assert_eq!(d.slots_changing_region, 0);
    }

    #[test]
    fn moving_one_unit_moves_exactly_its_slots(yaml in table_yaml(), pick in any::<prop::sample::Index>(), to in any::<prop::sample::Index>()) {
        let old = load(&yaml);
        prop_assume!(old.regions().len() > 1);
        let unit = pick.index(old.units().len());
        let mut raw = old.raw().clone();
        // Units are declared in reverse; find the raw entry by name.
        let name = old.units()[unit].name.to_string();
        let entry = raw.units.iter_mut().find(|u| u.name == name).expect("unit in raw table");
        let others: Vec<String> = raw.regions.iter().map(|r| r.name.clone()).filter(|r| *r != entry.region).collect();
        entry.region = others[to.index(others.len())].clone();
        raw.version += 1;
        let new = router_rules::validate(raw, None).expect("still valid");
        let d = diff(&old, &new);
        let owned: u32 = old.units()[unit].ranges.iter().map(|(a, b)| b - a + 1).sum();
        prop_assert_eq!(d.slots_changing_unit, 0);
        prop_assert_eq!(d.slots_changing_region, owned);
        prop_assert!(d.slot_moves.iter().all(|m| m.from_unit == name && m.to_unit == name && m.from_region != m.to_region));
        prop_assert_eq!(d.units.len(), 1);
        prop_assert_eq!(&d.units[0].unit, &name);
        for slot in 0..old.slot_count() {
            let moved = old.regions()[old.unit_of_slot(slot).region].name != new.regions()[new.unit_of_slot(slot).region].name;
            prop_assert_eq!(moved, *old.unit_of_slot(slot).name == name);
        }
    }
}

#[test]
fn write_freeze_and_missing_key_policies() {
    let yaml = support::three_regions_yaml().replace(
        "state: active       # write_frozen during a flip",
        "state: write_frozen",
    );
    let table = load(&yaml);
    let sz = table.region_index("sz").expect("sz");
    // 9000 is in u06, frozen: writes refused, reads flow.
    let write = SimpleRequest::new("POST", "/order").with_header("x-user-id", "9000");
    assert_eq!(table.resolve(&write, sz).action, Action::WriteFrozen);
    let read = SimpleRequest::new("GET", "/order").with_header("x-user-id", "9000");
    assert_eq!(table.resolve(&read, sz).action, Action::Forward);
    // A read whose method-override field names a write is a write (frameworks execute the
    // override), whatever its case; one naming a read stays a read.
    for (name, value) in [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", " patch "),
        ("x-method-override", "post"),
    ] {
        let overridden = read.clone().with_header(name, value);
        assert_eq!(
            table.resolve(&overridden, sz).action,
            Action::WriteFrozen,
            "{name}: {value}"
        );
    }
    // Only a value that plainly names a read leaves the request a read: frameworks read the
    // others each their own way (Express executes `DELETE, GET` as DELETE). The same holds
    // with write methods listed.
    let listed = load(&yaml.replacen(
        "version: 1\n",
        "version: 1\nwrite_methods: [POST, PUT, PATCH, DELETE]\n",
        1,
    ));
    for table in [&table, &listed] {
        for (value, action) in [
            ("head", Action::Forward),
            (" GET\t", Action::Forward),
            ("", Action::Forward),
            ("DELETE, GET", Action::WriteFrozen),
            ("GET,", Action::WriteFrozen),
            ("MERGE", Action::WriteFrozen),
            ("G E T", Action::WriteFrozen),
        ] {
            let overridden = read.clone().with_header("x-http-method-override", value);
            assert_eq!(table.resolve(&overridden, sz).action, action, "{value:?}");
        }
    }
    // Another unit's writes are untouched.
    let other = SimpleRequest::new("POST", "/order").with_header("x-user-id", "10");
    assert_eq!(table.resolve(&other, sz).action, Action::Forward);
    // No key on a reject route.
    let anonymous = SimpleRequest::new("GET", "/cart");
    let decision = table.resolve(&anonymous, sz);
    assert_eq!(decision.action, Action::MissingKey);
    assert!(decision.region.is_none());
    // No route.
    assert_eq!(
        table
            .resolve(&SimpleRequest::new("GET", "/nope"), sz)
            .action,
        Action::NoRoute
    );
}

#[test]
fn p_class_reads_stay_local_and_writes_go_to_the_center() {
    let table = load(&support::three_regions_yaml());
    let sz = table.region_index("sz").expect("sz");
    let get = SimpleRequest::new("GET", "/item/1");
    let read = table.resolve(&get, sz);
    assert_eq!(read.region.map(|r| &*r.name), Some("sz"));
    assert_eq!(read.fallback_region.map(|r| &*r.name), Some("hz"));
    assert!(!read.is_cross_region());
    let put = SimpleRequest::new("PUT", "/item/1");
    let write = table.resolve(&put, sz);
    assert_eq!(write.region.map(|r| &*r.name), Some("hz"));
    assert_eq!(write.unit.map(|u| &*u.name), Some("u01"));
    assert!(write.is_cross_region());
    let overridden = get.clone().with_header("x-http-method-override", "PUT");
    let write = table.resolve(&overridden, sz);
    assert!(write.is_write);
    assert_eq!(write.region.map(|r| &*r.name), Some("hz"));
}

#[test]
fn pinned_keys_override_slots() {
    let yaml = support::three_regions_yaml().replace(
        "    standby: hz\n    state: active",
        "    standby: hz\n    pinned_keys: [\"42\", vip-alice]\n    state: active",
    );
    let table = load(&yaml);
    let request = SimpleRequest::new("GET", "/cart").with_header("x-user-id", "42");
    let decision = table.resolve(&request, 0);
    assert_eq!(decision.unit.map(|u| &*u.name), Some("u06"));
    assert!(decision.pinned);
    assert_eq!(decision.slot, Some(42));
}

/// A route with `key_format: digits` takes only keys the slot function reads as numbers; one a
/// service might parse leniently as another number (`+7000`, `7000.0`, `0x1B58`, 20 digits
/// with leading zeros) is refused, never routed by its hash. Without it the same keys are
/// hashed, as before.
#[test]
fn digits_key_format_refuses_keys_a_service_may_read_as_another_number() {
    let base = support::three_regions_yaml();
    let yaml = base.replacen(
        "missing_key: reject   # 400 naming the sources tried",
        "missing_key: reject\n    key_format: digits",
        1,
    );
    assert_ne!(yaml, base);
    let digits = load(&yaml);
    let any = load(&base);
    for key in ["7000", "007", "9999999999999999999"] {
        let request = SimpleRequest::new("POST", "/cart").with_header("x-user-id", key);
        let d = digits.resolve(&request, 0);
        assert_eq!(d.action, Action::Forward, "{key}");
        assert_eq!(d.slot, any.resolve(&request, 0).slot, "{key}");
    }
    for key in [
        "+7000",
        "7000.0",
        "0x1B58",
        "-7000",
        "7000abc",
        "00000000000000000007000",
        "user-1",
    ] {
        let request = SimpleRequest::new("POST", "/cart").with_header("x-user-id", key);
        let d = digits.resolve(&request, 0);
        assert_eq!(
            (d.action, d.key_error, d.unit.is_none(), d.region.is_none()),
            (Action::InvalidKey, Some(KeyError::NotDigits), true, true),
            "{key}"
        );
        assert_eq!(any.resolve(&request, 0).action, Action::Forward, "{key}");
    }
    // A cookie key is held to the same format.
    let request = SimpleRequest::new("GET", "/cart").with_header("cookie", "uid=+7000");
    assert_eq!(
        digits.resolve(&request, 0).key_error,
        Some(KeyError::NotDigits)
    );
    // Only C-class routes take it.
    let p_class = base.replacen(
        "    class: P              #",
        "    key_format: digits\n    class: P              #",
        1,
    );
    assert_ne!(p_class, base);
    let Err(error) = load_yaml(&p_class) else {
        panic!("a P-class route with key_format was taken");
    };
    assert!(
        error
            .render("t")
            .contains("key_format applies to C-class routes only"),
        "{}",
        error.render("t")
    );
}

/// A route with `case_sensitive: false` takes every ASCII-case spelling of its path, as a
/// service that resolves paths without regard to case reaches one handler with all of them:
/// `/CART/1` is keyed and routed as `/cart/1`. By default case counts. A rule that ignores
/// case shadows a later one its lowercase covers, and is shadowed only by one that ignores
/// case too.
#[test]
fn case_insensitive_paths_route_every_spelling() {
    let base = support::three_regions_yaml();
    let yaml = base.replacen(
        "match: { path_prefix: /cart }",
        "match: { path_prefix: /cart, case_sensitive: false }",
        1,
    );
    assert_ne!(yaml, base);
    let ignoring = load(&yaml);
    let counting = load(&base);
    for path in ["/cart", "/CART/1", "/Cart;v=1", "/cArT/x/y"] {
        let request = SimpleRequest::new("POST", path).with_header("x-user-id", "4321");
        let d = ignoring.resolve(&request, 0);
        assert_eq!(d.route.map(|r| &*r.name), Some("cart"), "{path}");
        assert_eq!(d.slot, Some(4321), "{path}");
        let c = counting.resolve(&request, 0);
        let expected = if path.starts_with("/cart") {
            Action::Forward
        } else {
            Action::NoRoute
        };
        assert_eq!(c.action, expected, "{path} with case counting");
    }
    for path in ["/cartoon", "/CARTOON", "/car"] {
        let request = SimpleRequest::new("GET", path).with_header("x-user-id", "1");
        assert_eq!(
            ignoring.resolve(&request, 0).action,
            Action::NoRoute,
            "{path}"
        );
    }
    // A non-ASCII byte in the path is compared as it is.
    let request = SimpleRequest::new("GET", "/cärt").with_header("x-user-id", "1");
    assert_eq!(ignoring.resolve(&request, 0).action, Action::NoRoute);

    let shadowed = |first: &str, second: &str| {
        let yaml = base.replacen(
            "  - name: order\n    match: { path_prefix: /order }",
            &format!(
                "  - name: first\n    match: {first}\n    service: order\n    class: C\n    key: [{{ header: X-User-Id }}]\n  - name: order\n    match: {second}"
            ),
            1,
        );
        load_yaml(&yaml).is_err()
    };
    let ignoring_case = "{ path_prefix: /order, case_sensitive: false }";
    assert!(shadowed(ignoring_case, "{ path_prefix: /ORDER/x }"));
    assert!(shadowed(
        ignoring_case,
        "{ path_prefix: /Order, case_sensitive: false }"
    ));
    assert!(!shadowed("{ path_prefix: /order }", ignoring_case));
    assert!(!shadowed(
        "{ path_prefix: /order }",
        "{ path_prefix: /ORDER }"
    ));
}

#[test]
fn missing_key_center_and_local_policies() {
    let base = support::three_regions_yaml();
    let center = load(&base.replacen(
        "missing_key: reject   # 400 naming the sources tried",
        "missing_key: center",
        1,
    ));
    let local = load(&base.replacen(
        "missing_key: reject   # 400 naming the sources tried",
        "missing_key: local",
        1,
    ));
    let sh = center.region_index("sh").expect("sh");
    let anonymous = SimpleRequest::new("GET", "/cart");
    let c = center.resolve(&anonymous, sh);
    assert_eq!(
        (
            c.action,
            c.unit.map(|u| &*u.name),
            c.region.map(|r| &*r.name)
        ),
        (Action::Forward, Some("u01"), Some("hz"))
    );
    let l = local.resolve(&anonymous, sh);
    assert_eq!(
        (l.action, l.unit.is_none(), l.region.map(|r| &*r.name)),
        (Action::Forward, true, Some("sh"))
    );
}

#[test]
fn routes_match_in_order_with_host_and_methods() {
    let yaml = support::three_regions_yaml().replace(
        "routes:\n",
        "routes:\n  - name: admin-cart\n    match: { host: \"*.admin.example.com\", path_prefix: /cart, methods: [DELETE] }\n    service: item\n    class: P\n",
    );
    let table = load(&yaml);
    let mut request = SimpleRequest::new("DELETE", "/cart/1").with_header("x-user-id", "1");
    request.host = Some("ops.admin.example.com:443".to_owned());
    assert_eq!(
        table.match_route(&request).map(|r| &*r.name),
        Some("admin-cart")
    );
    // A fully qualified name's trailing dot names the same host (nginx and Apache agree).
    request.host = Some("ops.admin.example.com.".to_owned());
    assert_eq!(
        table.match_route(&request).map(|r| &*r.name),
        Some("admin-cart")
    );
    request.host = Some("admin.example.com".to_owned());
    assert_eq!(table.match_route(&request).map(|r| &*r.name), Some("cart"));
    let get = SimpleRequest::new("GET", "/cart/1");
    assert_eq!(table.match_route(&get).map(|r| &*r.name), Some("cart"));
    assert_eq!(
        table
            .match_route(&SimpleRequest::new("GET", "/cartoon"))
            .map(|r| &*r.name),
        None
    );
}

#[test]
fn synthetic_tables_are_valid() {
    let table = load(&support::synthetic_yaml(3, 100, 200, 10_000));
    assert_eq!(table.units().len(), 100);
    assert_eq!(table.routes().len(), 200);
    let request = SimpleRequest::new("GET", "/svc199/x").with_header("x-user-id", "77");
    assert_eq!(
        table.match_route(&request).map(|r| &*r.name),
        Some("svc199")
    );
}

#[test]
fn successors_must_grow_and_keep_the_slot_space() {
    let current = load(&support::three_regions_yaml());
    let same = load(&support::three_regions_yaml());
    let error = router_rules::check_successor(&current, &same).expect_err("same version");
    assert_eq!(
        error.problems[0].message,
        "version 1 is not greater than the version in force, 1; versions only grow"
    );
    let resized = load(
        &support::three_regions_yaml()
            .replace("version: 1", "version: 2")
            .replace("count: 10000 ", "count: 20000 ")
            .replace("[[8334, 9999]]", "[[8334, 19999]]"),
    );
    let error = router_rules::check_successor(&current, &resized).expect_err("resized");
    assert_eq!(error.problems.len(), 1);
    assert_eq!(error.problems[0].path, "slots.count");
    assert!(
        error.problems[0]
            .message
            .starts_with("slot space mismatch: 20000 slots, but the table in force has 10000")
    );
    let next = load(&support::three_regions_yaml().replace("version: 1", "version: 2"));
    assert!(router_rules::check_successor(&current, &next).is_ok());
}

/// A hostile table is refused by its sizes, before any item is looked at, and a broken one
/// lists its first problems and a count, not one line per problem.
#[test]
fn oversize_tables_and_problem_floods_are_bounded() {
    let endpoints: Vec<String> = (0..120_000)
        .map(|i| format!("\"10.{}.{}.{}:80\"", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let yaml = format!(
        "version: 1\nregions: [{{ name: r, pools: {{ app: [{}] }} }}]\nunits: [{{ name: u, center: true, slots: [[0, 9999]], region: r }}]\nroutes: [{{ name: a, match: {{ path_prefix: / }}, service: app, class: P }}]\n",
        endpoints.join(", ")
    );
    let error = router_rules::load_yaml(&yaml).expect_err("too many endpoints");
    assert_eq!(error.problems.len(), 1, "{:?}", error.problems);
    assert!(
        error.problems[0]
            .message
            .contains("120000 endpoints; at most 1024"),
        "{:?}",
        error.problems[0]
    );
    // 500 invalid endpoints, within the size limit: the first 100, then how many more.
    let bad: Vec<String> = (0..1000).map(|i| format!("\"bad host {i}\"")).collect();
    let yaml = format!(
        "version: 1\nregions: [{{ name: r, pools: {{ app: [{}] }} }}]\nunits: [{{ name: u, center: true, slots: [[0, 9999]], region: r }}]\nroutes: [{{ name: a, match: {{ path_prefix: / }}, service: app, class: P }}]\n",
        bad.join(", ")
    );
    let error = router_rules::load_yaml(&yaml).expect_err("bad endpoints");
    assert_eq!(error.problems.len(), 101);
    assert!(
        error.problems[100]
            .message
            .contains("and 900 more problem(s)"),
        "{:?}",
        error.problems[100]
    );
}
