//! The hop marker: how a gateway tells another that a request was forwarded by a gateway, from
//! which region, under which table version. It is authenticated with a shared secret (HMAC-SHA256)
//! so a client cannot forge it, and bound to the request's method and path.
//!
//! The same secret, which every gateway of a fleet holds, also keys the hash that the access
//! log shows instead of a routing key ([`KeyHasher`]).

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use ring::hmac;

/// The hop header.
pub const HOP_HEADER: &str = "x-unitgate-hop";

/// Most gateway-to-gateway hops a request may take: the entry gateway's forward, and one more
/// when the receiving gateway's table disagrees. A third would be a loop: `508`.
pub const MAX_HOPS: u8 = 2;

/// How far a marker's timestamp may be from this gateway's clock, in seconds.
const MAX_SKEW_S: u64 = 300;

/// What a valid marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopMarker {
    /// Region of the gateway that forwarded the request first.
    pub origin: String,
    /// Table version of the gateway that forwarded it last.
    pub version: u64,
    /// Gateway-to-gateway hops so far.
    pub hops: u8,
}

/// Why a marker was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    /// Not of the marker's form.
    #[error("malformed hop marker")]
    Malformed,
    /// The signature does not match: forged, or signed with another secret.
    #[error("hop marker signature does not match")]
    BadSignature,
    /// Signed too long ago (or in the future): replayed, or clocks far apart.
    #[error("hop marker timestamp out of range")]
    Stale,
}

/// Signs and checks hop markers.
#[derive(Clone)]
pub struct HopKey {
    key: hmac::Key,
}

impl HopKey {
    /// A key from the shared secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The header value for `marker` on a request with `method` and `path`.
    pub fn sign(&self, marker: &HopMarker, method: &str, path: &str) -> HeaderValue {
        self.sign_at(marker, method, path, now_s())
    }

    fn sign_at(&self, marker: &HopMarker, method: &str, path: &str, ts: u64) -> HeaderValue {
        let payload = format!(
            "v1 origin={} version={} hops={} ts={ts}",
            marker.origin, marker.version, marker.hops
        );
        let tag = hmac::sign(&self.key, signed_bytes(&payload, method, path).as_bytes());
        let value = format!("{payload} sig={}", hex(tag.as_ref()));
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    /// The marker in `value`, if it is authentic and fresh for this `method` and `path`.
    pub fn verify(&self, value: &[u8], method: &str, path: &str) -> Result<HopMarker, HopError> {
        self.verify_at(value, method, path, now_s())
    }

    fn verify_at(
        &self,
        value: &[u8],
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<HopMarker, HopError> {
        let text = std::str::from_utf8(value).map_err(|_| HopError::Malformed)?;
        let (payload, sig) = text.rsplit_once(" sig=").ok_or(HopError::Malformed)?;
        let sig = unhex(sig).ok_or(HopError::Malformed)?;
        hmac::verify(
            &self.key,
            signed_bytes(payload, method, path).as_bytes(),
            &sig,
        )
        .map_err(|_| HopError::BadSignature)?;
        let mut fields = payload.split(' ');
        if fields.next() != Some("v1") {
            return Err(HopError::Malformed);
        }
        let mut field = |name: &str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('='))
                .ok_or(HopError::Malformed)
        };
        let origin = field("origin")?.to_owned();
        let version = field("version")?.parse().map_err(|_| HopError::Malformed)?;
        let hops = field("hops")?.parse().map_err(|_| HopError::Malformed)?;
        let ts: u64 = field("ts")?.parse().map_err(|_| HopError::Malformed)?;
        if ts.abs_diff(now) > MAX_SKEW_S {
            return Err(HopError::Stale);
        }
        Ok(HopMarker {
            origin,
            version,
            hops,
        })
    }
}

/// Hashes routing keys for the access log (`access_log.routing_key: hashed`): the first 8
/// bytes, in hex, of HMAC-SHA256 under a key derived from the hop secret,
/// `HMAC-SHA256(hop secret, "unitgate access-log routing key v1")`. Keyed, so a line's hash
/// cannot be reversed by hashing every possible user id without the secret; derived from the
/// hop secret, so every gateway of a fleet gives a key the same hash and lines join; derived
/// rather than the secret itself, so the log key can be handed to whoever looks users up in the
/// logs without handing them the means to forge hop markers (and so a hash never doubles as a
/// marker signature: marker payloads hold newlines, the label none).
#[derive(Clone)]
pub struct KeyHasher {
    key: hmac::Key,
}

/// What the log key is derived with.
const LOG_KEY_LABEL: &[u8] = b"unitgate access-log routing key v1";

/// Bytes of the HMAC the log shows (16 hex digits: collisions stay unlikely well past a
/// billion users).
const LOG_HASH_BYTES: usize = 8;

impl KeyHasher {
    /// The hasher of a fleet whose hop secret is `secret`.
    pub fn from_hop_secret(secret: &[u8]) -> Self {
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), LOG_KEY_LABEL);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The log's name for `routing_key`.
    pub fn hash(&self, routing_key: &str) -> String {
        let tag = hmac::sign(&self.key, routing_key.as_bytes());
        hex(&tag.as_ref()[..LOG_HASH_BYTES])
    }
}

fn signed_bytes(payload: &str, method: &str, path: &str) -> String {
    format!("{payload}\n{method}\n{path}")
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> HopMarker {
        HopMarker {
            origin: "hz".into(),
            version: 12,
            hops: 1,
        }
    }

    #[test]
    fn log_hashes_are_keyed_by_the_hop_secret() {
        // The value docs/gateway.md's openssl commands give for this secret and key.
        let secret = b"0123456789abcdef0123456789abcdef";
        let hasher = KeyHasher::from_hop_secret(secret);
        assert_eq!(hasher.hash("4321"), "44cf1461577a5087");
        assert_eq!(hasher.hash("4321").len(), 16);
        assert_ne!(hasher.hash("4321"), hasher.hash("4322"));
        let other = KeyHasher::from_hop_secret(b"another secret, also 32 bytes ok");
        assert_ne!(other.hash("4321"), hasher.hash("4321"));
    }

    #[test]
    fn round_trip() {
        let key = HopKey::new(b"0123456789abcdef0123456789abcdef");
        let value = key.sign(&marker(), "GET", "/cart/1");
        assert_eq!(key.verify(value.as_bytes(), "GET", "/cart/1"), Ok(marker()));
    }

    #[test]
    fn forgeries_and_replays_fail() {
        let key = HopKey::new(b"0123456789abcdef0123456789abcdef");
        let other = HopKey::new(b"another secret, also 32 bytes ok");
        let value = key.sign(&marker(), "GET", "/cart/1");
        assert_eq!(
            other.verify(value.as_bytes(), "GET", "/cart/1"),
            Err(HopError::BadSignature)
        );
        // Bound to method and path.
        assert_eq!(
            key.verify(value.as_bytes(), "POST", "/cart/1"),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            key.verify(value.as_bytes(), "GET", "/cart/2"),
            Err(HopError::BadSignature)
        );
        // Edited fields break the signature.
        let edited = value.to_str().expect("ascii").replace("hops=1", "hops=0");
        assert_eq!(
            key.verify(edited.as_bytes(), "GET", "/cart/1"),
            Err(HopError::BadSignature)
        );
        let old = key.sign_at(&marker(), "GET", "/", 1_000);
        assert_eq!(
            key.verify_at(old.as_bytes(), "GET", "/", 1_000 + MAX_SKEW_S + 1),
            Err(HopError::Stale)
        );
        assert_eq!(key.verify(b"hops=0", "GET", "/"), Err(HopError::Malformed));
    }
}
