//! Routing key extraction: header, cookie, query parameter, path segment, JWT claim.
//!
//! Extraction never allocates. A key that must be decoded (percent-escapes, JWT claims) is
//! copied into a fixed inline buffer. A key that is there but cannot be used is an error, not
//! a missing key: longer than [`MAX_KEY_LEN`] bytes once decoded (whatever its source), not
//! decodable, or ambiguous — its source given twice (two `X-User-Id` headers, two `uid`
//! cookies or query parameters), where the gateway would route by one while the upstream
//! may read another.

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::raw::RawKeySource;
use crate::request::RequestView;

/// Longest routing key, in bytes after decoding, from any source.
pub const MAX_KEY_LEN: usize = 128;

/// Why a key that is present cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Longer than [`MAX_KEY_LEN`] bytes once decoded.
    TooLong,
    /// Bad percent-encoding, or not UTF-8 once decoded.
    Undecodable,
    /// The source appears more than once.
    Ambiguous,
    /// Not 1 to 19 ASCII digits, on a route whose `key_format` is `digits`.
    NotDigits,
}

impl KeyError {
    /// `too_long`, `undecodable`, `ambiguous`, `not_digits`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyError::TooLong => "too_long",
            KeyError::Undecodable => "undecodable",
            KeyError::Ambiguous => "ambiguous",
            KeyError::NotDigits => "not_digits",
        }
    }

    /// What is wrong, for the client.
    pub fn message(self) -> &'static str {
        match self {
            KeyError::TooLong => "the routing key is longer than 128 bytes",
            KeyError::Undecodable => "the routing key is not valid percent-encoded UTF-8",
            KeyError::Ambiguous => "the routing key is given more than once",
            KeyError::NotDigits => {
                "the routing key is not 1 to 19 ASCII digits, as this route's key_format asks"
            }
        }
    }
}

/// What a key source found: nothing, a key, or a key that cannot be used.
pub type Extracted<'r> = Result<Option<RoutingKey<'r>>, KeyError>;

/// A found key, checked against [`MAX_KEY_LEN`].
fn borrowed(value: &str) -> Extracted<'_> {
    if value.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    Ok(Some(RoutingKey::Borrowed(value)))
}

/// The one item `items` yields, if any; two or more are ambiguous.
fn only<T>(mut items: impl Iterator<Item = T>) -> Result<Option<T>, KeyError> {
    match (items.next(), items.next()) {
        (first, None) => Ok(first),
        (Some(_), Some(_)) => Err(KeyError::Ambiguous),
        (None, Some(_)) => Ok(None),
    }
}

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

    /// The key this source finds in `request`: none (empty values do not count), one, or
    /// one that cannot be used ([`KeyError`]).
    pub fn extract<'r, R: RequestView>(&self, request: &'r R) -> Extracted<'r> {
        match self {
            KeySource::Header(name) => {
                let values = request
                    .header_values(name)
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                match only(values)? {
                    Some(value) => borrowed(value),
                    None => Ok(None),
                }
            }
            KeySource::Cookie(name) => {
                let values = request
                    .header_values("cookie")
                    .flat_map(|line| cookie_values(line, name));
                match only(values)? {
                    Some(value) => borrowed(value),
                    None => Ok(None),
                }
            }
            KeySource::Query(name) => match request.query() {
                Some(query) => match only(query_values(query, name))? {
                    Some(value) => decode_component(value),
                    None => Ok(None),
                },
                None => Ok(None),
            },
            KeySource::PathSegment(n) => {
                let Some(index) = usize::try_from(*n).ok().and_then(|n| n.checked_sub(1)) else {
                    return Ok(None);
                };
                match request
                    .path()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .nth(index)
                {
                    // Without its parameters (`42;jsessionid=x` is `42` to servers that drop
                    // them, such as Tomcat and Jetty).
                    Some(segment) => {
                        decode_component(segment.split(';').next().unwrap_or_default())
                    }
                    None => Ok(None),
                }
            }
            KeySource::JwtClaim(claim) => {
                match request.header("authorization").and_then(bearer_token) {
                    Some(token) => Ok(jwt_claim(token, claim)?.map(RoutingKey::Decoded)),
                    None => Ok(None),
                }
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

/// A decoded key of at most [`MAX_KEY_LEN`] bytes of UTF-8, stored inline.
#[derive(Clone, Copy)]
pub struct DecodedKey {
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

impl DecodedKey {
    fn empty() -> Self {
        Self {
            len: 0,
            bytes: [0; MAX_KEY_LEN],
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

/// The values of cookie `name` in one `Cookie` header line (`a=1; b=2`).
fn cookie_values<'a, 'n>(
    line: &'a str,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    line.split(';').filter_map(move |pair| {
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

/// The raw (still encoded) non-empty values of parameter `name` in a query string: every one
/// some server would read as that parameter. Names match percent-decoded and in any case
/// (PHP and Rack decode names, ASP.NET matches them case-insensitively), and `;` separates
/// pairs as `&` does (Rack 2, older Go and Python), so that `?uid=1&u%69d=7000` or
/// `?uid=1;uid=7000` is two values, refused as ambiguous, not the key `1`.
fn query_values<'a, 'n>(
    query: &'a str,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    query.split(['&', ';']).filter_map(move |pair| {
        let (n, v) = pair.split_once('=')?;
        (names_parameter(n, name) && !v.is_empty()).then_some(v)
    })
}

/// Whether `raw`, a parameter name as sent, decodes (`%XX`, `+`) to `name` in any case.
/// Allocates nothing: this runs for every request keyed by a query parameter.
fn names_parameter(raw: &str, name: &str) -> bool {
    if !raw.contains(['%', '+']) {
        return raw.eq_ignore_ascii_case(name);
    }
    let mut raw = raw.bytes();
    let mut want = name.bytes();
    loop {
        let got = match raw.next() {
            None => return want.next().is_none(),
            Some(b'+') => b' ',
            Some(b'%') => match (
                raw.next().and_then(hex_value),
                raw.next().and_then(hex_value),
            ) {
                (Some(hi), Some(lo)) => hi << 4 | lo,
                _ => return false,
            },
            Some(b) => b,
        };
        if !want.next().is_some_and(|w| w.eq_ignore_ascii_case(&got)) {
            return false;
        }
    }
}

/// Percent-decode `raw` (and `+` as space) when it needs it; borrow it when it does not.
fn decode_component(raw: &str) -> Extracted<'_> {
    if !raw.contains(['%', '+']) {
        return borrowed(raw);
    }
    let mut key = DecodedKey::empty();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        let decoded = match b {
            b'+' => b' ',
            b'%' => {
                let mut hex = || {
                    bytes
                        .next()
                        .and_then(hex_value)
                        .ok_or(KeyError::Undecodable)
                };
                let hi = hex()?;
                let lo = hex()?;
                hi << 4 | lo
            }
            other => other,
        };
        key.push(decoded).ok_or(KeyError::TooLong)?;
    }
    std::str::from_utf8(&key.bytes[..usize::from(key.len)]).map_err(|_| KeyError::Undecodable)?;
    Ok((key.len > 0).then_some(RoutingKey::Decoded(key)))
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

/// The claim `claim` of a JWT's payload, as a string (numbers are written in decimal). A
/// token that is not a JWT has no claim; a claim too long for a key is [`KeyError::TooLong`].
fn jwt_claim(token: &str, claim: &str) -> Result<Option<DecodedKey>, KeyError> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let mut buf = [0u8; MAX_JWT_PAYLOAD_LEN];
    if payload.len() / 4 * 3 > MAX_JWT_PAYLOAD_LEN {
        return Ok(None);
    }
    let Ok(len) = JWT_BASE64.decode_slice(payload, &mut buf) else {
        return Ok(None);
    };
    let mut de = serde_json::Deserializer::from_slice(&buf[..len]);
    ClaimSeed { claim }
        .deserialize(&mut de)
        .ok()
        .flatten()
        .transpose()
}

/// A claim's value: usable as a key, or too long for one.
type Claim = Option<Result<DecodedKey, KeyError>>;

/// Finds one claim in a JSON object without building the object.
struct ClaimSeed<'c> {
    claim: &'c str,
}

impl<'de> DeserializeSeed<'de> for ClaimSeed<'_> {
    type Value = Claim;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimSeed<'_> {
    type Value = Claim;

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
    type Value = Claim;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ClaimValue {
    type Value = Claim;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer claim")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.is_empty() {
            return Ok(None);
        }
        Ok(Some(DecodedKey::from_str(v).ok_or(KeyError::TooLong)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let mut key = DecodedKey::empty();
        Ok(fmt::Write::write_fmt(&mut key, format_args!("{v}"))
            .ok()
            .map(|()| Ok(key)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let mut key = DecodedKey::empty();
        Ok(fmt::Write::write_fmt(&mut key, format_args!("{v}"))
            .ok()
            .map(|()| Ok(key)))
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
            .expect("a usable key or none")
            .map(|k| k.as_str().to_owned())
    }

    fn error(source: &RawKeySource, request: &SimpleRequest) -> KeyError {
        KeySource::from_raw(source)
            .extract(request)
            .expect_err("an unusable key")
    }

    #[test]
    fn one_length_limit_for_every_source_after_decoding() {
        let long = "a".repeat(MAX_KEY_LEN + 1);
        let header = SimpleRequest::new("GET", "/").with_header("x-user-id", &long);
        assert_eq!(
            error(&RawKeySource::Header("x-user-id".into()), &header),
            KeyError::TooLong
        );
        let cookie = SimpleRequest::new("GET", "/").with_header("cookie", &format!("uid={long}"));
        assert_eq!(
            error(&RawKeySource::Cookie("uid".into()), &cookie),
            KeyError::TooLong
        );
        let plain = SimpleRequest::new("GET", &format!("/x?uid={long}"));
        assert_eq!(
            error(&RawKeySource::Query("uid".into()), &plain),
            KeyError::TooLong
        );
        // 128 bytes once decoded is fine, whatever it took to write them.
        let encoded = format!("/x?uid=%41{}", "a".repeat(MAX_KEY_LEN - 1));
        assert_eq!(
            key(
                &RawKeySource::Query("uid".into()),
                &SimpleRequest::new("GET", &encoded)
            )
            .map(|k| k.len()),
            Some(MAX_KEY_LEN)
        );
        let jwt_long = SimpleRequest::new("GET", "/")
            .with_header("authorization", &jwt(&format!(r#"{{"sub":"{long}"}}"#)));
        assert_eq!(
            error(&RawKeySource::JwtClaim("sub".into()), &jwt_long),
            KeyError::TooLong
        );
    }

    #[test]
    fn a_source_given_twice_is_ambiguous() {
        let mut two_headers = SimpleRequest::new("GET", "/");
        two_headers.add_header("x-user-id", "1");
        two_headers.add_header("x-user-id", "2");
        assert_eq!(
            error(&RawKeySource::Header("x-user-id".into()), &two_headers),
            KeyError::Ambiguous
        );
        let mut two_cookies = SimpleRequest::new("GET", "/");
        two_cookies.add_header("cookie", "uid=1");
        two_cookies.add_header("cookie", "a=b; uid=2");
        assert_eq!(
            error(&RawKeySource::Cookie("uid".into()), &two_cookies),
            KeyError::Ambiguous
        );
        let one_line = SimpleRequest::new("GET", "/").with_header("cookie", "uid=1; uid=2");
        assert_eq!(
            error(&RawKeySource::Cookie("uid".into()), &one_line),
            KeyError::Ambiguous
        );
        let query = SimpleRequest::new("GET", "/x?uid=1&uid=2");
        assert_eq!(
            error(&RawKeySource::Query("uid".into()), &query),
            KeyError::Ambiguous
        );
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
        let r = SimpleRequest::new("GET", "/x?a=1&uid=j%C3%BCrgen+x&uid=");
        assert_eq!(
            key(&RawKeySource::Query("uid".into()), &r),
            Some("jürgen x".into())
        );
        let bad = SimpleRequest::new("GET", "/x?uid=%ZZ");
        assert_eq!(
            error(&RawKeySource::Query("uid".into()), &bad),
            KeyError::Undecodable
        );
        // Every spelling a server reads as `uid` counts: two values are ambiguous.
        for query in [
            "uid=1&u%69d=7000",
            "uid=1;uid=7000",
            "uid=1&UID=7000",
            "u%49d=1&uid=2",
        ] {
            let r = SimpleRequest::new("POST", &format!("/x?{query}"));
            assert_eq!(
                error(&RawKeySource::Query("uid".into()), &r),
                KeyError::Ambiguous,
                "{query}"
            );
        }
        let spelled = SimpleRequest::new("POST", "/x?U%69D=7000&uidx=1");
        assert_eq!(
            key(&RawKeySource::Query("uid".into()), &spelled),
            Some("7000".into())
        );
        let long = format!("/x?uid=%41{}", "a".repeat(MAX_KEY_LEN));
        assert_eq!(
            error(
                &RawKeySource::Query("uid".into()),
                &SimpleRequest::new("GET", &long)
            ),
            KeyError::TooLong
        );
    }

    #[test]
    fn path_segments_count_from_one() {
        let r = SimpleRequest::new("GET", "/order/42/items");
        assert_eq!(key(&RawKeySource::PathSegment(2), &r), Some("42".into()));
        assert_eq!(key(&RawKeySource::PathSegment(4), &r), None);
        assert_eq!(key(&RawKeySource::PathSegment(0), &r), None);
        // Without the segment's parameters, as servers that drop them read it.
        let r = SimpleRequest::new("GET", "/order/42;jsessionid=x/items");
        assert_eq!(key(&RawKeySource::PathSegment(2), &r), Some("42".into()));
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
