//! What the gateway reads from and writes to headers: one pass over a request's headers finds
//! everything the request path asks of them ([`RequestHeaders`]); then framing checks,
//! hop-by-hop and internal header removal, forwarding headers and W3C trace context.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::hop::HOP_HEADER;

/// Headers the gateway sets for upstreams; any a client sends are removed.
pub const INTERNAL_PREFIX: &str = "x-unitgate-";

// Header names used on every request, parsed once.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_UNITGATE_UNIT: HeaderName = HeaderName::from_static("x-unitgate-unit");
pub(crate) const X_UNITGATE_SLOT: HeaderName = HeaderName::from_static("x-unitgate-slot");
pub(crate) const X_UNITGATE_REGION: HeaderName = HeaderName::from_static("x-unitgate-region");
pub(crate) const X_UNITGATE_CLASS: HeaderName = HeaderName::from_static("x-unitgate-class");
pub(crate) const X_UNITGATE_TABLE_VERSION: HeaderName =
    HeaderName::from_static("x-unitgate-table-version");
pub(crate) const X_UNITGATE_KEY: HeaderName = HeaderName::from_static("x-unitgate-key");
pub(crate) const X_UNITGATE_STRESS: HeaderName = HeaderName::from_static("x-unitgate-stress");
pub(crate) const X_UNITGATE_HOP: HeaderName = HeaderName::from_static(HOP_HEADER);

/// Headers that are hop-by-hop whatever `Connection` says (RFC 9110 7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// `name`'s place in [`HOP_BY_HOP`], if it is there. Matching the name's text (lengths first)
/// costs a fraction of comparing it with each of the eight names in turn.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "te" => Some(1),
        "trailer" => Some(2),
        "transfer-encoding" => Some(3),
        "proxy-authenticate" => Some(4),
        "upgrade" => Some(5),
        "keep-alive" => Some(6),
        "proxy-connection" => Some(7),
        _ => None,
    }
}

/// What the request path needs to know of a request's headers, found in one pass over them
/// rather than one map lookup per question.
#[derive(Default)]
pub struct RequestHeaders {
    /// The first `Content-Length` value.
    content_length: Option<HeaderValue>,
    /// A later `Content-Length` differs from the first.
    content_lengths_differ: bool,
    /// `Transfer-Encoding` headers, and whether the first is exactly `chunked`.
    transfer_encodings: usize,
    chunked: bool,
    /// The incoming `traceparent`, if any.
    pub traceparent: Option<HeaderValue>,
    /// The hop marker, if any.
    pub hop: Option<HeaderValue>,
    /// The stress-test marker is there.
    pub stress: bool,
    /// Some `X-Unitgate-*` header, or a name with an underscore, is there (to be removed:
    /// servers that read `_` as `-` would take `X_Unitgate_Unit` for the gateway's own).
    pub internal: bool,
    /// Some hop-by-hop header is there (to be removed).
    pub hop_by_hop: bool,
    /// `Upgrade` is there, and `Connection` lists `upgrade`.
    upgrade: bool,
    connection_upgrade: bool,
    /// `Upgrade` lists `h2c`.
    h2c: bool,
    /// The first `Host`, and how many there are.
    pub host: Option<HeaderValue>,
    pub hosts: usize,
    /// How many `Cookie` headers there are.
    pub cookies: usize,
    /// `X-Forwarded-For` / `X-Forwarded-Proto` are there.
    pub forwarded_for: bool,
    pub forwarded_proto: bool,
    /// `Forwarded`, `X-Real-IP` or another `X-Forwarded-*` is there.
    pub forwarded_other: bool,
    /// Some value starts or ends with whitespace, or holds NUL, CR or LF: malformed in
    /// HTTP/2 (RFC 9113 section 8.2.1), and a strict next hop would refuse it.
    pub malformed_value: bool,
}

/// A field value HTTP/2 calls malformed (RFC 9113 section 8.2.1): whitespace at either end, or
/// NUL, CR or LF anywhere. hyper's HTTP/1 parser trims the ends and refuses the rest already;
/// its HTTP/2 server passes them on.
fn is_malformed_value(value: &[u8]) -> bool {
    matches!(value.first(), Some(b' ' | b'\t'))
        || matches!(value.last(), Some(b' ' | b'\t'))
        || value.iter().any(|b| matches!(b, b'\0' | b'\r' | b'\n'))
}

impl RequestHeaders {
    /// Read `headers` once; `stress` is the stress-test marker's name.
    pub fn of(headers: &HeaderMap, stress: &HeaderName) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            if *name == header::CONTENT_LENGTH {
                match &seen.content_length {
                    None => seen.content_length = Some(value.clone()),
                    Some(first) => seen.content_lengths_differ |= first != value,
                }
            } else if *name == header::TRANSFER_ENCODING {
                seen.transfer_encodings += 1;
                seen.chunked = seen.transfer_encodings == 1
                    && value.as_bytes().eq_ignore_ascii_case(b"chunked");
                seen.hop_by_hop = true;
            } else if *name == header::HOST {
                seen.hosts += 1;
                if seen.host.is_none() {
                    seen.host = Some(value.clone());
                }
            } else if *name == header::COOKIE {
                seen.cookies += 1;
            } else if *name == header::CONNECTION {
                seen.hop_by_hop = true;
                seen.connection_upgrade |= lists_token(value, "upgrade");
            } else if *name == header::UPGRADE {
                seen.hop_by_hop = true;
                seen.upgrade = true;
                // No tunnel to HTTP/2 over cleartext: see `h1::request`.
                seen.h2c |= lists_token(value, "h2c");
            } else if hop_by_hop_index(name).is_some() {
                seen.hop_by_hop = true;
            } else if *name == TRACEPARENT {
                seen.traceparent = Some(value.clone());
            } else if *name == X_FORWARDED_FOR {
                seen.forwarded_for = true;
            } else if *name == X_FORWARDED_PROTO {
                seen.forwarded_proto = true;
            } else if is_other_forwarding(name) {
                seen.forwarded_other = true;
            } else if name.as_str().starts_with(INTERNAL_PREFIX) {
                seen.internal = true;
                if *name == X_UNITGATE_HOP {
                    seen.hop = Some(value.clone());
                }
            } else if name.as_str().contains('_') {
                seen.internal = true;
            }
            // Not `else`: the stress marker may have any name, an internal one among them.
            if name == stress {
                seen.stress = true;
            }
            seen.malformed_value |= is_malformed_value(value.as_bytes());
        }
        seen
    }

    /// Refuse what request smuggling is made of: both `Content-Length` and
    /// `Transfer-Encoding`, disagreeing or malformed `Content-Length`s, and any
    /// `Transfer-Encoding` but one plain `chunked`. The error says which.
    pub fn check_framing(&self) -> Result<(), &'static str> {
        if let Some(first) = &self.content_length {
            if self.transfer_encodings > 0 {
                return Err("both Content-Length and Transfer-Encoding");
            }
            let first = first.as_bytes();
            if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
                return Err("malformed Content-Length");
            }
            if self.content_lengths_differ {
                return Err("several Content-Length values");
            }
        }
        match self.transfer_encodings {
            0 => Ok(()),
            1 if self.chunked => Ok(()),
            _ => Err("Transfer-Encoding other than a single \"chunked\""),
        }
    }

    /// The declared body length.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length.as_ref()?.to_str().ok()?.parse().ok()
    }

    /// The request asks to switch protocols (WebSocket and the like).
    pub fn is_upgrade(&self) -> bool {
        self.upgrade && self.connection_upgrade && !self.h2c
    }
}

/// The methods the gateway forwards. Methods are case-sensitive tokens (RFC 9110 9.1): `get`
/// is not `GET`, and an extension method no upstream here is known to serve is refused rather
/// than guessed at.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Check a request's method, and its `Host` against RFC 9112 section 3.2 (HTTP/1) and RFC
/// 9113 section 8.3.1 (HTTP/2): exactly one valid `Host` in HTTP/1.1, no user info, and an
/// HTTP/2 `:authority` that agrees with any `Host`. The error is the status and what is
/// wrong.
pub fn check_request_line(
    method: &http::Method,
    version: http::Version,
    uri: &http::Uri,
    seen: &RequestHeaders,
) -> Result<(), (http::StatusCode, &'static str)> {
    use http::StatusCode;
    let method = method.as_str();
    if !METHODS.contains(&method) {
        return Err(if method.len() > 16 {
            (StatusCode::BAD_REQUEST, "method too long")
        } else {
            (StatusCode::NOT_IMPLEMENTED, "method not implemented")
        });
    }
    let authority = uri.authority();
    if authority.is_some_and(|a| a.as_str().contains('@')) {
        return Err((StatusCode::BAD_REQUEST, "user info in the request target"));
    }
    if seen.hosts > 1 {
        return Err((StatusCode::BAD_REQUEST, "several Host headers"));
    }
    let host = match &seen.host {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|h| !h.contains('@'))
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .ok_or((StatusCode::BAD_REQUEST, "invalid Host"))?,
        ),
        None => None,
    };
    match version {
        http::Version::HTTP_2 | http::Version::HTTP_3 => {
            if let (Some(authority), Some(host)) = (authority, &host)
                && authority != host
            {
                return Err((StatusCode::BAD_REQUEST, ":authority and Host disagree"));
            }
            if authority.is_none() && host.is_none() {
                return Err((StatusCode::BAD_REQUEST, "no :authority and no Host"));
            }
        }
        http::Version::HTTP_11 if host.is_none() => {
            return Err((StatusCode::BAD_REQUEST, "missing Host"));
        }
        _ => {}
    }
    Ok(())
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
fn lists_token(value: &HeaderValue, token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The comma-separated tokens of a header value, trimmed (none when it is not text).
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value.to_str().unwrap_or_default().split(',').map(str::trim)
}

/// `Forwarded`, `X-Real-IP`, an `X-Forwarded-*` other than `-For` and `-Proto`, a CDN's
/// client-IP field or a rewritten URL: fields only a proxy sets, kept only from a trusted peer
/// (`h1::fields::Kind::ForwardedOther` lists them and says why).
pub fn is_other_forwarding(name: &HeaderName) -> bool {
    crate::h1::fields::Kind::of(name.as_str().as_bytes()) == crate::h1::fields::Kind::ForwardedOther
}

/// Remove every `X-Unitgate-*` header (only the gateway may set them) and every name with an
/// underscore (which some servers read as the same name with `-`).
pub fn strip_internal_headers(headers: &mut HeaderMap) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(INTERNAL_PREFIX) || name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers, keeping `Upgrade` for protocol switches. `Host` stays whatever
/// `Connection` lists: it is never hop-by-hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One scan of the names finds which fixed hop-by-hop headers are present (most messages
    // carry at most `Connection`); only those are removed.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    // `Connection` goes whatever it says (a protocol switch gets a new one below); the
    // headers it names go too, besides the usual tokens that name none.
    let mut listed: Vec<HeaderName> = Vec::new();
    if present[0]
        && let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION)
    {
        for value in connection.remove_entry_mult().1 {
            let bytes = value.as_bytes();
            if bytes.eq_ignore_ascii_case(b"keep-alive") || bytes.eq_ignore_ascii_case(b"close") {
                continue;
            }
            for token in tokens(&value) {
                let usual = ["keep-alive", "close", "upgrade", "host", ""]
                    .iter()
                    .any(|u| token.eq_ignore_ascii_case(u));
                if !usual && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present).skip(1) {
        let kept = keep_upgrade && *name == header::UPGRADE;
        if present && !kept {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `value` as a header value, percent-encoding bytes a header cannot carry.
pub fn header_safe(value: &str) -> HeaderValue {
    if value.bytes().all(is_plain_key_byte)
        && let Ok(header) = HeaderValue::from_str(value)
    {
        return header;
    }
    let mut encoded = Vec::with_capacity(value.len() * 3);
    write_header_safe(&mut encoded, value);
    HeaderValue::from_bytes(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A key byte written as it is. `%` is always encoded, so a key's header value names exactly
/// one key: a literal `%00` is `%2500`, a decoded NUL `%00`.
fn is_plain_key_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'%'
}

/// Append [`header_safe`]'s value for `value` to `out`.
pub fn write_header_safe(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if is_plain_key_byte(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
}

/// W3C trace context: the trace id is kept across every hop; each gateway is a span.
#[derive(Clone, Copy)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    trace_id: [u8; 32],
    /// 2 lowercase hex digits.
    flags: [u8; 2],
}

impl TraceParent {
    /// The trace `incoming` (a `traceparent` value) belongs to, or a new one when it is absent
    /// or malformed.
    pub fn continue_or_start(incoming: Option<&[u8]>) -> Self {
        let incoming = incoming.and_then(|v| {
            // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
            let v = v.trim_ascii();
            let lower_hex = |s: &[u8]| {
                s.iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            };
            let ok = v.len() == 55
                && v.starts_with(b"00-")
                && v[35] == b'-'
                && v[52] == b'-'
                && lower_hex(&v[3..35])
                && lower_hex(&v[36..52])
                && lower_hex(&v[53..55])
                && v[3..35].iter().any(|b| *b != b'0')
                && v[36..52].iter().any(|b| *b != b'0');
            ok.then(|| Self {
                trace_id: v[3..35].try_into().unwrap_or([b'0'; 32]),
                flags: v[53..55].try_into().unwrap_or(*b"01"),
            })
        });
        incoming.unwrap_or_else(|| {
            let mut trace_id = [0u8; 32];
            hex_into(&mut trace_id[..16], fastrand::u64(1..));
            hex_into(&mut trace_id[16..], fastrand::u64(..));
            Self {
                trace_id,
                flags: *b"01",
            }
        })
    }

    /// The trace id, for logs.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// The `traceparent` to send on: same trace, this gateway's span as parent.
    pub fn child(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.child_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// [`TraceParent::child`] as bytes, for the codec's heads.
    pub fn child_bytes(&self) -> [u8; 55] {
        let mut value = [0u8; 55];
        value[..3].copy_from_slice(b"00-");
        value[3..35].copy_from_slice(&self.trace_id);
        value[35] = b'-';
        hex_into(&mut value[36..52], fastrand::u64(1..));
        value[52] = b'-';
        value[53..].copy_from_slice(&self.flags);
        value
    }
}

/// Write `n` as 16 lowercase hex digits into `out`.
fn hex_into(out: &mut [u8], n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().take(16).enumerate() {
        *byte = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_header_names_exactly_one_key() {
        let cases = [
            ("4321", "4321"),
            ("%00", "%2500"),
            ("\u{0}", "%00"),
            ("a b", "a%20b"),
            ("j\u{fc}rgen", "j%C3%BCrgen"),
        ];
        for (key, header) in cases {
            assert_eq!(
                super::header_safe(key).to_str().ok(),
                Some(header),
                "{key:?}"
            );
        }
    }

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    fn framing(pairs: &[(&str, &str)]) -> Result<(), &'static str> {
        RequestHeaders::of(&headers(pairs), &X_UNITGATE_STRESS).check_framing()
    }

    #[test]
    fn framing_checks() {
        assert!(framing(&[("content-length", "5")]).is_ok());
        assert!(framing(&[("transfer-encoding", "chunked")]).is_ok());
        assert!(framing(&[("content-length", "5"), ("transfer-encoding", "chunked")]).is_err());
        assert!(framing(&[("transfer-encoding", "chunked"), ("content-length", "5")]).is_err());
        assert!(framing(&[("content-length", "5"), ("content-length", "6")]).is_err());
        assert!(framing(&[("content-length", "5"), ("content-length", "5")]).is_ok());
        assert!(framing(&[("content-length", "+5")]).is_err());
        assert!(framing(&[("transfer-encoding", "xchunked")]).is_err());
        assert!(framing(&[("transfer-encoding", "gzip, chunked")]).is_err());
        assert!(
            framing(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .is_err()
        );
    }

    #[test]
    fn one_pass_finds_what_the_request_path_asks() {
        let seen = RequestHeaders::of(
            &headers(&[
                ("Host", "shop"),
                ("Connection", "keep-alive, Upgrade"),
                ("Upgrade", "websocket"),
                ("X-Unitgate-Hop", "forged"),
                ("X-Load-Test", "1"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("X-Forwarded-For", "10.0.0.1"),
                ("Content-Length", "12"),
            ]),
            &HeaderName::from_static("x-load-test"),
        );
        assert!(seen.host.is_some() && seen.hop_by_hop && seen.internal && seen.stress);
        assert!(seen.is_upgrade());
        assert!(seen.forwarded_for && !seen.forwarded_proto);
        assert_eq!(
            seen.hop.as_ref().map(|v| v.as_bytes()),
            Some(&b"forged"[..])
        );
        assert!(seen.traceparent.is_some());
        assert_eq!(seen.content_length(), Some(12));
        let plain = RequestHeaders::of(
            &headers(&[("host", "shop"), ("x-user-id", "7")]),
            &X_UNITGATE_STRESS,
        );
        assert!(!plain.hop_by_hop && !plain.internal && !plain.stress && !plain.is_upgrade());
        // The stress marker may be an internal name, too.
        let internal_marker =
            RequestHeaders::of(&headers(&[("x-unitgate-stress", "1")]), &X_UNITGATE_STRESS);
        assert!(internal_marker.stress && internal_marker.internal);
    }

    #[test]
    fn hop_by_hop_names_are_found_by_text() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::HOST), None);
        assert_eq!(hop_by_hop_index(&X_UNITGATE_HOP), None);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private, host"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("x-user-id", "7"),
            ("host", "shop"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-user-id"]);
        let mut plain = headers(&[("x-user-id", "7"), ("host", "a")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
        let mut upgrade = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(upgrade["connection"], "upgrade");
        assert_eq!(upgrade["upgrade"], "websocket");
    }

    #[test]
    fn trace_context_is_kept_or_made() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let kept = TraceParent::continue_or_start(Some(incoming.as_bytes()));
        assert_eq!(kept.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            kept.child()
                .to_str()
                .unwrap_or_default()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        let made = TraceParent::continue_or_start(Some(b"garbage"));
        assert_eq!(made.trace_id().len(), 32);
        assert!(made.trace_id().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
