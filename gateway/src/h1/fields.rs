//! Field lines as the codec sees them: spans of a connection's buffer, and the few names the
//! gateway acts on, told apart once per line.

use std::ops::Range;

/// A stretch of a connection's read buffer. Heads are parsed in place; what the request path
/// reads of them are spans, so nothing is copied or allocated per field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub start: u32,
    /// Offset after the last byte.
    pub end: u32,
}

impl Span {
    /// The span of `part`, a slice of `buf`.
    pub fn of(buf: &[u8], part: &[u8]) -> Self {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        Self {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes it covers in `buf`.
    pub fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.range()]
    }

    /// As a range.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Whether it covers no byte.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// What a field's name means to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Passed on as it is.
    Other,
    /// `Host`.
    Host,
    /// `Date`.
    Date,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Upgrade`.
    Upgrade,
    /// `Expect`.
    Expect,
    /// Other hop-by-hop fields (RFC 9110 section 7.6.1): `TE`, `Keep-Alive`,
    /// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`. (`Trailer` is passed
    /// on: chunked bodies are relayed with their trailers.)
    HopByHop,
    /// `Cookie`.
    Cookie,
    /// `X-Forwarded-For`.
    ForwardedFor,
    /// `X-Forwarded-Proto`.
    ForwardedProto,
    /// The other fields only a proxy sets: those in which it vouches for the client
    /// (`Forwarded`, `X-Real-IP`, `X-Forwarded-Host` and any other `X-Forwarded-*`, the
    /// client-IP fields of CDNs and balancers: `X-Client-IP`, `True-Client-IP`,
    /// `CF-Connecting-IP`, ...), for the client's certificate (`X-SSL-*`, `X-ARR-ClientCert`,
    /// `X-Client-Cert`), and those in which it hands on the URL, host, prefix or scheme it
    /// rewrote (`X-Original-URL`, `X-Rewrite-URL`, `X-Script-Name`, `X-Scheme`, ...: IIS,
    /// Symfony, Flask and Tornado serve by them instead of the request's own, which would put a
    /// request routed by one path on another), and Envoy's `X-Envoy-*`. Kept only from a
    /// trusted peer.
    ForwardedOther,
    /// `traceparent`.
    TraceParent,
    /// `X-HTTP-Method-Override`, `X-HTTP-Method` or `X-Method-Override`: the method many
    /// frameworks execute instead of the request's ([`router_rules::RequestView::method_overrides`]).
    MethodOverride,
    /// `grpc-timeout`, a gRPC client's deadline.
    GrpcTimeout,
    /// `X-Unitgate-Hop`, another gateway's signed marker.
    HopMarker,
    /// Any other `X-Unitgate-*`: only the gateway sets them.
    Internal,
    /// A name with an underscore: never passed on (nginx's default too). CGI and the servers
    /// that follow it read `X_Unitgate_Unit` as `X-Unitgate-Unit`, so it would pass for a field
    /// the gateway sets or rewrites.
    Underscored,
}

impl Kind {
    /// The kind of field `name` (any case).
    pub fn of(name: &[u8]) -> Self {
        let is = |known: &[u8]| eq_lowercase(name, known);
        match name.len() {
            2 if is(b"te") => Kind::HopByHop,
            4 if is(b"host") => Kind::Host,
            4 if is(b"date") => Kind::Date,
            6 if is(b"cookie") => Kind::Cookie,
            6 if is(b"expect") => Kind::Expect,
            7 if is(b"upgrade") => Kind::Upgrade,
            10 if is(b"connection") => Kind::Connection,
            10 if is(b"keep-alive") => Kind::HopByHop,
            11 if is(b"traceparent") => Kind::TraceParent,
            12 if is(b"grpc-timeout") => Kind::GrpcTimeout,
            14 if is(b"content-length") => Kind::ContentLength,
            14 if is(b"x-unitgate-hop") => Kind::HopMarker,
            15 if is(b"x-forwarded-for") => Kind::ForwardedFor,
            16 if is(b"proxy-connection") => Kind::HopByHop,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Kind::ForwardedProto,
            18 if is(b"proxy-authenticate") => Kind::HopByHop,
            19 if is(b"proxy-authorization") => Kind::HopByHop,
            13 if is(b"x-http-method") => Kind::MethodOverride,
            17 if is(b"x-method-override") => Kind::MethodOverride,
            22 if is(b"x-http-method-override") => Kind::MethodOverride,
            // Client addresses vouched for.
            9 if is(b"forwarded") || is(b"x-real-ip") || is(b"client-ip") => Kind::ForwardedOther,
            11 if is(b"x-client-ip") || is(b"x-forwarded") => Kind::ForwardedOther,
            13 if is(b"forwarded-for") || is(b"fly-client-ip") => Kind::ForwardedOther,
            14 if is(b"true-client-ip") || is(b"x-proxyuser-ip") => Kind::ForwardedOther,
            16 if is(b"cf-connecting-ip") || is(b"fastly-client-ip") || is(b"x-azure-clientip") => {
                Kind::ForwardedOther
            }
            19 if is(b"x-cluster-client-ip") || is(b"x-appengine-user-ip") => Kind::ForwardedOther,
            25 if is(b"cloudfront-viewer-address") => Kind::ForwardedOther,
            // URLs, hosts, prefixes and schemes rewritten.
            6 if is(b"x-host") => Kind::ForwardedOther,
            8 if is(b"x-scheme") => Kind::ForwardedOther,
            13 if is(b"x-rewrite-url") || is(b"x-script-name") => Kind::ForwardedOther,
            14 if is(b"x-original-url") || is(b"x-original-uri") => Kind::ForwardedOther,
            15 if is(b"x-original-host") || is(b"front-end-https") => Kind::ForwardedOther,
            20 if is(b"x-http-host-override") => Kind::ForwardedOther,
            // Client certificates a TLS-terminating proxy checked.
            13 if is(b"x-client-cert") => Kind::ForwardedOther,
            15 if is(b"ssl-client-cert") || is(b"x-client-verify") => Kind::ForwardedOther,
            n if n > 1 && name[0] | 0x20 == b'x' && name[1] == b'-' => Self::of_x_prefixed(name),
            _ => Kind::Other,
        }
    }

    /// The kind of a name starting with `x-` that no whole name above matched, by its prefix.
    fn of_x_prefixed(name: &[u8]) -> Self {
        let prefixed = |prefix: &[u8]| {
            name.len() > prefix.len() && eq_lowercase(&name[..prefix.len()], prefix)
        };
        if prefixed(b"x-unitgate-") {
            Kind::Internal
        } else if prefixed(b"x-forwarded-")
            // nginx's and IIS ARR's client certificate fields (`X-SSL-Client-Cert`,
            // `X-ARR-ClientCert`), and Envoy's own (`X-Envoy-Retry-On`: a sidecar that counts
            // the gateway as internal would take a client's word for them).
            || prefixed(b"x-ssl-")
            || prefixed(b"x-arr-")
            || prefixed(b"x-envoy-")
        {
            Kind::ForwardedOther
        } else {
            Kind::Other
        }
    }

    /// The kind of a request's field `name`: as [`Kind::of`], and [`Kind::Underscored`] for
    /// an other name with an underscore (a response's pass as they are).
    pub fn of_request_field(name: &[u8]) -> Self {
        match Kind::of(name) {
            Kind::Other if name.contains(&b'_') => Kind::Underscored,
            kind => kind,
        }
    }

    /// Whether the field describes this connection only and is never passed on.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Kind::Connection | Kind::Upgrade | Kind::TransferEncoding | Kind::HopByHop
        )
    }
}

/// Whether `name` is `known` in any ASCII case, where `known` is lowercase letters and `-` (as
/// every name [`Kind::of`] knows is). ORing 0x20 into a byte makes a capital letter lowercase
/// and turns no other byte into a lowercase letter or `-`, but CR (into `-`); field names hold
/// no CR (the parsers refuse it), and one taken for a known name would only be treated with
/// more suspicion, never passed as a name it is not. Eight bytes at a time, instead of
/// `eq_ignore_ascii_case`'s byte by byte: every field of every request and answer is looked
/// up here.
#[inline]
fn eq_lowercase(name: &[u8], known: &[u8]) -> bool {
    debug_assert!(known.iter().all(|b| b.is_ascii_lowercase() || *b == b'-'));
    if name.len() != known.len() {
        return false;
    }
    let mut name_chunks = name.chunks_exact(8);
    let mut known_chunks = known.chunks_exact(8);
    for (n, k) in (&mut name_chunks).zip(&mut known_chunks) {
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        if word(n) | 0x2020_2020_2020_2020 != word(k) {
            return false;
        }
    }
    name_chunks
        .remainder()
        .iter()
        .zip(known_chunks.remainder())
        .all(|(n, k)| n | 0x20 == *k)
}

/// Whether a request's trailers may not carry the field `name` (any case): RFC 9110 section
/// 6.5.1 keeps the fields that frame, route, forward or authenticate a message, and those that
/// control the connection, to the header section. The gateway reads and sets them there; an
/// upstream that merges trailers into the header section would otherwise take the client's
/// word for them.
pub fn is_refused_in_trailers(name: &[u8]) -> bool {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match Kind::of(name) {
        Kind::Other => {
            is(b"trailer")
                || is(b"authorization")
                || is(b"content-type")
                || is(b"content-encoding")
                || is(b"content-range")
                || is(b"max-forwards")
                || is(b"tracestate")
        }
        Kind::Date => false,
        _ => true,
    }
}

/// One field line.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name.
    pub name: Span,
    /// Its value, without surrounding whitespace.
    pub value: Span,
    /// What the name means here.
    pub kind: Kind,
}

/// Byte classes, one table lookup each instead of a chain of comparisons (these run for
/// every byte of every head).
const TOKEN: u8 = 1;
const FIELD_VALUE: u8 = 2;
const REG_NAME: u8 = 4;
const TARGET: u8 = 8;

static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alphanumeric = c.is_ascii_alphanumeric();
        let mut class = 0;
        // tchar (RFC 9110 section 5.6.2).
        if alphanumeric
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            class |= TOKEN;
        }
        // Field values: visible ASCII, space, tab and obs-text; no CTL, no DEL.
        if c == b'\t' || (c >= b' ' && c <= b'~') || c >= 0x80 {
            class |= FIELD_VALUE;
        }
        // reg-name (RFC 3986 section 3.2.2): unreserved, sub-delims, pct-encoded.
        let reg_name = alphanumeric
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        if reg_name {
            class |= REG_NAME;
        }
        // Request targets (RFC 3986 section 2): reg-name bytes and the gen-delims but `#`.
        if reg_name || matches!(c, b':' | b'/' | b'?' | b'[' | b']' | b'@') {
            class |= TARGET;
        }
        table[b] = class;
        b += 1;
    }
    table
}

impl Field {
    /// The field line `name: value`, both slices of `buf`, of the given kind.
    pub fn of(buf: &[u8], name: &[u8], value: &[u8], kind: Kind) -> Self {
        Self {
            name: Span::of(buf, name),
            value: Span::of(buf, value),
            kind,
        }
    }
}

/// `tchar` (RFC 9110 section 5.6.2).
pub fn is_token_byte(b: u8) -> bool {
    CLASSES[usize::from(b)] & TOKEN != 0
}

/// A byte a field value may hold: visible ASCII, space, tab and obs-text; no CTL, no DEL.
pub fn is_field_value_byte(b: u8) -> bool {
    CLASSES[usize::from(b)] & FIELD_VALUE != 0
}

/// A byte a request target may hold (RFC 3986 section 2): unreserved, reserved but `#`, and
/// `%`. Visible ASCII that URIs exclude (`<>"\\^`{|}`) is refused, as are spaces and CTLs.
pub fn is_target_byte(b: u8) -> bool {
    CLASSES[usize::from(b)] & TARGET != 0
}

/// A byte of a URI host's reg-name.
fn is_reg_name_byte(b: u8) -> bool {
    CLASSES[usize::from(b)] & REG_NAME != 0
}

/// Whether every line of a head `httparse` parsed ended in CRLF (it ends a line at a bare LF
/// too; a bare CR it refuses). Every line but the last ends right before a field name or the
/// final empty line, so the two bytes before each name and the head's last four cover them
/// all, without a pass over the whole head. `start`: where the first line starts (after the
/// empty lines a server skips before a request line, each of which must be a CRLF too).
pub fn lines_end_in_crlf(raw: &[u8], start: usize, fields: &[Field]) -> bool {
    raw.ends_with(b"\r\n\r\n")
        && raw[..start].chunks(2).all(|pair| pair == b"\r\n")
        && fields.iter().all(|field| {
            let at = field.name.start as usize;
            at >= 2 && raw[at - 2..at] == *b"\r\n"
        })
}

/// The elements of a comma-separated list value, trimmed, empty ones left out (RFC 9110
/// section 5.6.1: recipients ignore them).
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
}

/// Whether a list value holds `token` (any case).
pub fn lists(value: &[u8], token: &[u8]) -> bool {
    list(value).any(|element| element.eq_ignore_ascii_case(token))
}

/// A `Content-Length` value: one decimal number, nothing else (no sign, no list, no spaces
/// inside). `None` for anything else.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0')),
    )
}

/// Whether `host` is a valid `Host` value: `uri-host [ ":" port ]` (RFC 9110 section 7.2), no
/// user info. An empty value is valid for the syntax; whether it is allowed is the caller's.
pub fn is_valid_host(host: &[u8]) -> bool {
    if host.is_empty() {
        return true;
    }
    let (literal, port) = match host.first() {
        Some(b'[') => match host.iter().position(|b| *b == b']') {
            Some(close) => match &host[close + 1..] {
                [] => (&host[..=close], &[][..]),
                [b':', port @ ..] => (&host[..=close], port),
                _ => return false,
            },
            None => return false,
        },
        _ => match host.iter().rposition(|b| *b == b':') {
            Some(colon) => (&host[..colon], &host[colon + 1..]),
            None => (host, &[][..]),
        },
    };
    let name_ok = match literal {
        // An IPv6 literal (IPvFuture is not taken).
        [b'[', inside @ .., b']'] => {
            std::str::from_utf8(inside).is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok())
        }
        // A reg-name or IPv4 address: never empty, `%` only as a percent-encoding.
        name => {
            let mut percent = false;
            for b in name {
                if !is_reg_name_byte(*b) {
                    return false;
                }
                percent |= *b == b'%';
            }
            !name.is_empty()
                && (!percent
                    || name
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b'%')
                        .all(|(at, _)| {
                            name.get(at + 1..at + 3)
                                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                        }))
        }
    };
    name_ok && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eq_lowercase` is `eq_ignore_ascii_case` for every byte but CR, at every position of a
    /// word and of the remainder.
    #[test]
    fn eq_lowercase_is_ascii_case_insensitive_equality() {
        let known = b"x-forwarded-proto";
        for at in 0..known.len() {
            for b in (0..=255u8).filter(|b| *b != b'\r') {
                let mut name = *known;
                name[at] = b;
                assert_eq!(
                    eq_lowercase(&name, known),
                    name.eq_ignore_ascii_case(known),
                    "{b:#x} at {at}"
                );
            }
        }
        assert!(eq_lowercase(b"X-FORWARDED-PROTO", known));
        assert!(!eq_lowercase(b"x-forwarded-prot", known));
        assert!(eq_lowercase(b"", b""));
    }

    #[test]
    fn names_are_told_apart_in_any_case() {
        assert_eq!(Kind::of(b"Content-Length"), Kind::ContentLength);
        assert_eq!(Kind::of(b"cONTENT-lENGTH"), Kind::ContentLength);
        assert_eq!(Kind::of(b"Content_Length"), Kind::Other);
        assert_eq!(Kind::of(b"Content-Lengt\xc8"), Kind::Other);
        assert_eq!(Kind::of(b"TRANSFER-ENCODING"), Kind::TransferEncoding);
        assert_eq!(Kind::of(b"X-Unitgate-Unit"), Kind::Internal);
        assert_eq!(Kind::of(b"x-unitgate-hop"), Kind::HopMarker);
        assert_eq!(Kind::of(b"x-unitgate-"), Kind::Other);
        assert_eq!(Kind::of(b"Content-Lengthx"), Kind::Other);
        assert!(Kind::of(b"Keep-Alive").is_hop_by_hop());
        assert_eq!(
            Kind::of_request_field(b"X_Unitgate_Unit"),
            Kind::Underscored
        );
        assert_eq!(
            Kind::of_request_field(b"x_forwarded_for"),
            Kind::Underscored
        );
        assert_eq!(Kind::of_request_field(b"x-user_id"), Kind::Underscored);
        assert_eq!(Kind::of_request_field(b"x-user-id"), Kind::Other);
        assert_eq!(Kind::of(b"x-user_id"), Kind::Other);
        // The names routing reads a method override from (router-rules keeps the list).
        for name in router_rules::METHOD_OVERRIDE_FIELDS {
            assert_eq!(Kind::of(name.as_bytes()), Kind::MethodOverride, "{name}");
            let upper = name.to_ascii_uppercase();
            assert_eq!(Kind::of(upper.as_bytes()), Kind::MethodOverride, "{upper}");
        }
        assert_eq!(Kind::of(b"X-Original-URL"), Kind::ForwardedOther);
        assert_eq!(Kind::of(b"x-forwarded-prefix"), Kind::ForwardedOther);
        assert_eq!(Kind::of(b"X-Forwarded-For"), Kind::ForwardedFor);
        assert_eq!(Kind::of(b"X-Forwarded-Host"), Kind::ForwardedOther);
        assert_eq!(Kind::of(b"forwarded"), Kind::ForwardedOther);
        assert_eq!(Kind::of(b"X-Real-IP"), Kind::ForwardedOther);
    }

    #[test]
    fn content_length_is_one_plain_number() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0042"), Some(42));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"0x5",
            b"5 5",
            b"5,5",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hosts_are_checked_as_uri_hosts() {
        for good in [
            &b"example.com"[..],
            b"a:80",
            b"[::1]:8080",
            b"127.0.0.1",
            b"",
        ] {
            assert!(is_valid_host(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"user@a"[..],
            b"a b",
            b"a:8o",
            b"[::1",
            b"[zz]",
            b"a/b",
            b"a:123456",
            b":80",
            b"a%zz",
            b"a%2",
            b"[1:2:3]",
            b"[1::2::3]",
        ] {
            assert!(!is_valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bare_line_feeds_are_found_before_any_field_and_at_the_end() {
        let field = |start: u32| Field {
            name: Span {
                start,
                end: start + 1,
            },
            value: Span {
                start,
                end: start + 1,
            },
            kind: Kind::Other,
        };
        let head = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\n";
        assert!(lines_end_in_crlf(head, 0, &[field(16), field(22)]));
        let bare = b"GET / HTTP/1.1\na: 1\r\nb: 2\r\n\r\n";
        assert!(!lines_end_in_crlf(bare, 0, &[field(15), field(21)]));
        assert!(!lines_end_in_crlf(b"GET / HTTP/1.1\r\n\n", 0, &[]));
        assert!(lines_end_in_crlf(b"\r\nGET / HTTP/1.1\r\n\r\n", 2, &[]));
        assert!(!lines_end_in_crlf(b"\nGET / HTTP/1.1\r\n\r\n", 1, &[]));
    }

    #[test]
    fn lists_skip_empty_elements() {
        assert_eq!(list(b" a ,, b,").collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
        assert!(lists(b"keep-alive, Upgrade", b"upgrade"));
    }
}
