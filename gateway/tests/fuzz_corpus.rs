//! Replays the seed corpora of the HTTP/1.1 differential fuzz targets (gateway/fuzz/corpus)
//! through the same check the targets run: every seed, and every prefix of it, read by
//! `gateway::h1` and by the oracle in support/h1_oracle.rs must agree on whether it is
//! accepted and where the message ends. Seeds named `gap-*` record a disagreement where the
//! gateway is known to be wrong (`h1_diff::KNOWN_GAPS`): they must still show it, until the
//! gateway is fixed and the seed renamed.

#[path = "support/h1_diff.rs"]
mod h1_diff;
#[path = "support/h1_oracle.rs"]
mod h1_oracle;

use std::collections::BTreeSet;
use std::path::Path;

use h1_diff::Disagreement;

/// Replays `gateway/fuzz/corpus/<target>` through `check`; returns the number of seeds.
fn replay(target: &str, check: fn(&[u8]) -> Result<(), Disagreement>) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "http"))
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let gap = name.starts_with("gap-");
        match check(&bytes) {
            Ok(()) if gap => failures.push(format!(
                "{name}: the gateway and the oracle agree now: rename the seed and drop its \
                 kind from KNOWN_GAPS"
            )),
            Err(d) if gap && d.is_known_gap() => {}
            Err(d) if gap => failures.push(format!("{name}: not a known gap: {d}")),
            Err(d) => failures.push(format!("{name}: {d}")),
            Ok(()) => {}
        }
        for end in prefix_ends(bytes.len()) {
            if let Err(d) = check(&bytes[..end])
                && !d.is_known_gap()
            {
                failures.push(format!("{name}, its first {end} bytes: {d}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
    paths.len()
}

/// The prefix lengths checked of a seed of `len` bytes: all of them for small seeds; for large
/// ones (the limit seeds) the first 512 bytes, the last 16 and 64 between.
fn prefix_ends(len: usize) -> impl Iterator<Item = usize> {
    let stride = (len / 64).max(1);
    (0..len).filter(move |end| len <= 4096 || *end < 512 || len - end <= 16 || end % stride == 0)
}

#[test]
fn request_seeds_agree() {
    let seeds = replay("request_head", h1_diff::check_request);
    assert!(seeds >= 60, "request corpus too small: {seeds}");
}

#[test]
fn response_seeds_agree() {
    let seeds = replay("response_head", h1_diff::check_response);
    assert!(seeds >= 30, "response corpus too small: {seeds}");
}

#[test]
fn chunked_seeds_agree() {
    let seeds = replay("chunked", h1_diff::check_chunked);
    assert!(seeds >= 15, "chunked corpus too small: {seeds}");
}

#[test]
fn every_known_gap_has_a_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut shown = BTreeSet::new();
    for (target, check) in [
        ("request_head", h1_diff::check_request as fn(&[u8]) -> _),
        ("response_head", h1_diff::check_response),
        ("chunked", h1_diff::check_chunked),
    ] {
        for entry in std::fs::read_dir(dir.join(target))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("gap-") && name.ends_with(".http") {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                for end in prefix_ends(bytes.len()).chain([bytes.len()]) {
                    if let Err(d) = check(&bytes[..end]) {
                        shown.insert(d.kind);
                    }
                }
            }
        }
    }
    let missing: Vec<_> = h1_diff::KNOWN_GAPS
        .iter()
        .filter(|kind| !shown.contains(**kind))
        .collect();
    assert!(
        missing.is_empty(),
        "known gaps without a gap-* seed: {missing:?}"
    );
}
