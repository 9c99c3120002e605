//! Routing key -> slot. These functions are part of the table format's contract: services that
//! enforce unit protection compute the same slot, so they never change (a new function gets a
//! new name in [`crate::raw::StringSlotFunction`]).

use std::hash::Hasher;

use fnv::FnvHasher;

/// Longest digit string treated as a number: every 19-digit string fits in a `u64`.
const MAX_NUMERIC_DIGITS: usize = 19;

/// The slot of `key` in a space of `count` slots (`count > 0`).
///
/// Keys of 1 to 19 ASCII digits are numbers: `slot = key mod count` (`"007"` is 7). Every other
/// key: `slot = fnv1a_64(key bytes) mod count`.
#[inline]
pub fn slot_of(key: &str, count: u32) -> u32 {
    let count = u64::from(count.max(1));
    let slot = match numeric_value(key) {
        Some(n) => n % count,
        None => fnv1a_64(key.as_bytes()) % count,
    };
    // Lossless: slot < count <= u32::MAX.
    slot as u32
}

/// The key as a number, when it is one by the table's definition.
#[inline]
pub fn numeric_value(key: &str) -> Option<u64> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NUMERIC_DIGITS {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// 64-bit FNV-1a of `bytes`.
#[inline]
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hasher = FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_published_vectors() {
        // Reference values from the FNV specification's test suite.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn frozen_slots_for_string_keys() {
        // These values are the contract with every service that computes slots itself.
        assert_eq!(
            slot_of("alice", 10_000),
            (fnv1a_64(b"alice") % 10_000) as u32
        );
        assert_eq!(slot_of("", 10_000), (0xcbf29ce484222325u64 % 10_000) as u32);
        assert_eq!(slot_of("foobar", 10_000), 6_968);
    }

    #[test]
    fn numeric_keys_use_modulo() {
        assert_eq!(slot_of("12345", 10_000), 2_345);
        assert_eq!(slot_of("007", 10_000), 7);
        assert_eq!(slot_of("9999999999999999999", 10_000), 9_999);
        // 20 digits do not fit the numeric rule and are hashed.
        let twenty = "12345678901234567890";
        assert_eq!(
            slot_of(twenty, 10_000),
            (fnv1a_64(twenty.as_bytes()) % 10_000) as u32
        );
        assert_eq!(slot_of("-5", 10_000), (fnv1a_64(b"-5") % 10_000) as u32);
    }
}
