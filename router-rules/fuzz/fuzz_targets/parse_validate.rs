#![no_main]

use libfuzzer_sys::fuzz_target;

// Any input: parse and validate as YAML and as JSON. Refusing is fine; panicking is not.
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = router_rules::load_yaml(text);
        let _ = router_rules::load_json(text);
    }
});
