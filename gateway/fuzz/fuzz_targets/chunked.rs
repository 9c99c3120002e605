#![no_main]

// The same bytes through gateway::h1 and through the oracle: fails on any disagreement that
// is not a known gap (see gateway/tests/support/h1_diff.rs).

#[path = "../../tests/support/h1_diff.rs"]
mod h1_diff;
#[path = "../../tests/support/h1_oracle.rs"]
mod h1_oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(d) = h1_diff::check_chunked(data)
        && !d.is_known_gap()
    {
        panic!("{d}\ninput: {}", h1_diff::escaped(data));
    }
});
