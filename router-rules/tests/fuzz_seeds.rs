//! Replays the fuzz seed corpus on stable, and every prefix of each seed, so CI exercises the
//! parser's error paths without a nightly toolchain. No input may panic.

use std::path::Path;

#[test]
fn seed_corpus_and_its_prefixes_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/parse_validate");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("seed corpus exists")
        .flatten()
    {
        let bytes = std::fs::read(entry.path()).expect("readable");
        seeds += 1;
        for end in (0..=bytes.len()).rev().step_by(3) {
            if let Ok(text) = std::str::from_utf8(&bytes[..end]) {
                let _ = router_rules::load_yaml(text);
                let _ = router_rules::load_json(text);
            }
        }
    }
    assert!(seeds >= 10, "seed corpus too small: {seeds}");
}

#[test]
fn alias_bombs_are_refused_quickly() {
    // Billion laughs: each level doubles; the parser's budget must refuse it, not expand it.
    let mut yaml = String::from("a0: &a0 [x, x]\n");
    for i in 1..40 {
        yaml += &format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1);
    }
    assert!(router_rules::load_yaml(&yaml).is_err());
}
