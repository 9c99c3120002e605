//! Routing key extraction: header, cookie, query parameter, path segment, JWT claim.
//!
//! Extraction never allocates. A key that must be decoded (percent-escapes, JWT claims) is
//! copied into a fixed inline buffer; a decoded key longer than [`MAX_DECODED_KEY_LEN`] does
//! not count as found.

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::raw::RawKeySource;
use crate::request::RequestView;

/// Longest key that can be decoded (from a JWT claim or a percent-encoded value), in bytes.
pub const MAX_DECODED_KEY_LEN: usize = 128;

/// Longest JWT payload read, in bytes after base64 decoding.
pub const MAX_JWT_PAYLOAD_LEN: usize = 4096;

/// A compiled key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Header, by lowercase name.
    Header(Box<str>),
    /// Cookie, by name.
    Cookie(Box<str>),
    /// Query parameter, by name.
    Query(Box<str>),
    /// Path segment, from 1.
    PathSegment(u32),
    /// JWT claim name.
    JwtClaim(Box<str>),
}

impl KeySource {
    /// Compile a raw key source (already validated).
    pub fn from_raw(raw: &RawKeySource) -> Self {
        match raw {
            RawKeySource::Header(name) => KeySource::Header(name.to_ascii_lowercase().into()),
            RawKeySource::Cookie(name) => KeySource::Cookie(name.as_str().into()),
            RawKeySource::Query(name) => KeySource::Query(name.as_str().into()),
            RawKeySource::PathSegment(n) => KeySource::PathSegment(*n),
            RawKeySource::JwtClaim(name) => KeySource::JwtClaim(name.as_str().into()),
        }
    }

    /// The key this source finds in `request`, if any. Empty values do not count.
    pub fn extract<'r, R: RequestView>(&self, request: &'r R) -> Option<RoutingKey<'r>> {
        match self {
            KeySource::Header(name) => request
                .header(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(RoutingKey::Borrowed),
            KeySource::Cookie(name) => request
                .header_values("cookie")
                .find_map(|line| cookie_value(line, name))
                .map(RoutingKey::Borrowed),
            KeySource::Query(name) => {
                query_value(request.query()?, name).and_then(decode_component)
            }
            KeySource::PathSegment(n) => {
                let index = usize::try_from(*n).ok()?.checked_sub(1)?;
                let segment = request
                    .path()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .nth(index)?;
                decode_component(segment)
            }
            KeySource::JwtClaim(claim) => {
                let token = bearer_token(request.header("authorization")?)?;
                jwt_claim(token, claim).map(RoutingKey::Decoded)
            }
        }
    }
}

impl fmt::Display for KeySource {
    /// `header:x-user-id`, `cookie:uid`, `query:uid`, `path_segment:2`, `jwt_claim:sub`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(name) => write!(f, "header:{name}"),
            KeySource::Cookie(name) => write!(f, "cookie:{name}"),
            KeySource::Query(name) => write!(f, "query:{name}"),
            KeySource::PathSegment(n) => write!(f, "path_segment:{n}"),
            KeySource::JwtClaim(name) => write!(f, "jwt_claim:{name}"),
        }
    }
}

/// A routing key: borrowed from the request, or decoded into an inline buffer.
#[derive(Clone, Copy)]
pub enum RoutingKey<'r> {
    /// Taken as-is from the request.
    Borrowed(&'r str),
    /// Decoded from the request.
    Decoded(DecodedKey),
}

impl RoutingKey<'_> {
    /// The key.
    pub fn as_str(&self) -> &str {
        match self {
            RoutingKey::Borrowed(s) => s,
            RoutingKey::Decoded(k) => k.as_str(),
        }
    }
}

impl fmt::Debug for RoutingKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for RoutingKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// A decoded key of at most [`MAX_DECODED_KEY_LEN`] bytes of UTF-8, stored inline.
#[derive(Clone, Copy)]
pub struct DecodedKey {
    len: u8,
    bytes: [u8; MAX_DECODED_KEY_LEN],
}

impl DecodedKey {
    fn empty() -> Self {
        Self {
            len: 0,
            bytes: [0; MAX_DECODED_KEY_LEN],
        }
    }

    fn push(&mut self, byte: u8) -> Option<()> {
        let len = usize::from(self.len);
        *self.bytes.get_mut(len)? = byte;
        self.len += 1;
        Some(())
    }

    fn from_str(s: &str) -> Option<Self> {
        let mut key = Self::empty();
        for &b in s.as_bytes() {
            key.push(b)?;
        }
        Some(key)
    }

    /// The key. Always valid UTF-8: every constructor checks it.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Write for DecodedKey {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.push(b).ok_or(fmt::Error)?;
        }
        Ok(())
    }
}

/// The value of cookie `name` in one `Cookie` header line (`a=1; b=2`).
fn cookie_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(';').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        if n.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

/// The raw (still encoded) value of the first non-empty parameter `name` in a query string.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        (n == name && !v.is_empty()).then_some(v)
    })
}

/// Percent-decode `raw` (and `+` as space) when it needs it; borrow it when it does not.
fn decode_component(raw: &str) -> Option<RoutingKey<'_>> {
    if !raw.contains(['%', '+']) {
        return Some(RoutingKey::Borrowed(raw));
    }
    let mut key = DecodedKey::empty();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        let decoded = match b {
            b'+' => b' ',
            b'%' => {
                let hi = hex_value(bytes.next()?)?;
                let lo = hex_value(bytes.next()?)?;
                hi << 4 | lo
            }
            other => other,
        };
        key.push(decoded)?;
    }
    std::str::from_utf8(&key.bytes[..usize::from(key.len)]).ok()?;
    (key.len > 0).then_some(RoutingKey::Decoded(key))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// base64url, with or without padding, as JWTs are found in the wild.
const JWT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The claim `claim` of a JWT's payload, as a string (numbers are written in decimal).
fn jwt_claim(token: &str, claim: &str) -> Option<DecodedKey> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?; // a JWS has a third (signature) part
    let mut buf = [0u8; MAX_JWT_PAYLOAD_LEN];
    if payload.len() / 4 * 3 > MAX_JWT_PAYLOAD_LEN {
        return None;
    }
    let len = JWT_BASE64.decode_slice(payload, &mut buf).ok()?;
    let mut de = serde_json::Deserializer::from_slice(&buf[..len]);
    ClaimSeed { claim }.deserialize(&mut de).ok().flatten()
}

/// Finds one claim in a JSON object without building the object.
struct ClaimSeed<'c> {
    claim: &'c str,
}

impl<'de> DeserializeSeed<'de> for ClaimSeed<'_> {
    type Value = Option<DecodedKey>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimSeed<'_> {
    type Value = Option<DecodedKey>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_claim) = map.next_key_seed(KeyIs(self.claim))? {
            if is_claim && found.is_none() {
                found = map.next_value_seed(ClaimValue)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares a map key with a name, without keeping the key.
struct KeyIs<'c>(&'c str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a claim name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// A claim value usable as a key: a string, or an integer written in decimal.
struct ClaimValue;

impl<'de> DeserializeSeed<'de> for ClaimValue {
    type Value = Option<DecodedKey>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ClaimValue {
    type Value = Option<DecodedKey>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer claim")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(DecodedKey::from_str(v).filter(|k| k.len > 0))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let mut key = DecodedKey::empty();
        Ok(fmt::Write::write_fmt(&mut key, format_args!("{v}"))
            .ok()
            .map(|()| key))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let mut key = DecodedKey::empty();
        Ok(fmt::Write::write_fmt(&mut key, format_args!("{v}"))
            .ok()
            .map(|()| key))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::SimpleRequest;

    fn key(source: &RawKeySource, request: &SimpleRequest) -> Option<String> {
        KeySource::from_raw(source)
            .extract(request)
            .map(|k| k.as_str().to_owned())
    }

    fn jwt(payload: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "Bearer {}.{}.sig",
            engine.encode(r#"{"alg":"none"}"#),
            engine.encode(payload)
        )
    }

    #[test]
    fn header_is_case_insensitive_and_trimmed() {
        let r = SimpleRequest::new("GET", "/").with_header("X-User-Id", " 42 ");
        assert_eq!(
            key(&RawKeySource::Header("x-user-id".into()), &r),
            Some("42".into())
        );
        let empty = SimpleRequest::new("GET", "/").with_header("x-user-id", "  ");
        assert_eq!(key(&RawKeySource::Header("X-User-Id".into()), &empty), None);
    }

    #[test]
    fn cookies_across_headers_and_quotes() {
        let mut r = SimpleRequest::new("GET", "/");
        r.add_header("cookie", "a=1; uidx=9");
        r.add_header("cookie", "b=2; uid=\"77\"");
        assert_eq!(
            key(&RawKeySource::Cookie("uid".into()), &r),
            Some("77".into())
        );
        assert_eq!(key(&RawKeySource::Cookie("c".into()), &r), None);
    }

    #[test]
    fn query_values_are_decoded() {
        let r = SimpleRequest::new("GET", "/x?a=1&uid=j%C3%BCrgen+x&uid=2");
        assert_eq!(
            key(&RawKeySource::Query("uid".into()), &r),
            Some("jürgen x".into())
        );
        let bad = SimpleRequest::new("GET", "/x?uid=%ZZ");
        assert_eq!(key(&RawKeySource::Query("uid".into()), &bad), None);
        let long = format!("/x?uid=%41{}", "a".repeat(MAX_DECODED_KEY_LEN));
        assert_eq!(
            key(
                &RawKeySource::Query("uid".into()),
                &SimpleRequest::new("GET", &long)
            ),
            None
        );
    }

    #[test]
    fn path_segments_count_from_one() {
        let r = SimpleRequest::new("GET", "/order/42/items");
        assert_eq!(key(&RawKeySource::PathSegment(2), &r), Some("42".into()));
        assert_eq!(key(&RawKeySource::PathSegment(4), &r), None);
        assert_eq!(key(&RawKeySource::PathSegment(0), &r), None);
    }

    #[test]
    fn jwt_claims_strings_and_numbers() {
        let source = RawKeySource::JwtClaim("sub".into());
        let r = SimpleRequest::new("GET", "/")
            .with_header("authorization", &jwt(r#"{"iss":"x","sub":"u-9"}"#));
        assert_eq!(key(&source, &r), Some("u-9".into()));
        let r = SimpleRequest::new("GET", "/")
            .with_header("authorization", &jwt(r#"{"sub":12345,"n":{"sub":1}}"#));
        assert_eq!(key(&source, &r), Some("12345".into()));
        let r =
            SimpleRequest::new("GET", "/").with_header("authorization", &jwt(r#"{"sub":true}"#));
        assert_eq!(key(&source, &r), None);
        let r = SimpleRequest::new("GET", "/").with_header("authorization", "Bearer not-a-jwt");
        assert_eq!(key(&source, &r), None);
        let r = SimpleRequest::new("GET", "/").with_header("authorization", "Basic abc");
        assert_eq!(key(&source, &r), None);
    }
}
