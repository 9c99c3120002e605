//! Request heads (RFC 9112 sections 2-3 and 6), parsed in place by `httparse` and then held to
//! the rules a server and an intermediary MUST keep: one valid `Host`, unambiguous framing,
//! targets in the form their method allows, CRLF line ends only.

use std::mem::MaybeUninit;

use super::fields::{
    Field, Kind, Span, content_length, is_target_byte, is_valid_host, lines_end_in_crlf, list,
    lists,
};

/// Methods the gateway forwards. Methods are case-sensitive tokens (RFC 9110 section 9.1):
/// `get` is not `GET`, and an extension method no upstream here is known to serve is refused
/// rather than guessed at.
const METHODS: [&[u8]; 8] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Most field lines `httparse` is given room for; `max_headers` is held below it.
pub const HEADER_ROOM: usize = 256;

/// Size limits for a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line (414 beyond it).
    pub max_line: usize,
    /// Longest head, request line and fields (431 beyond it).
    pub max_head: usize,
    /// Most field lines (431 beyond it).
    pub max_headers: usize,
}

/// How a message's body is framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    #[default]
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with what is wrong.
    Bad(&'static str),
    /// 414: the request line is longer than allowed.
    LineTooLong,
    /// 431: the head is longer than allowed.
    HeadTooLarge,
    /// 431: more field lines than allowed.
    TooManyFields,
    /// 417: an expectation other than `100-continue`.
    Expectation,
    /// 501, with what is not implemented.
    NotImplemented(&'static str),
}

impl HeadError {
    /// The status the client is answered with.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Bad(_) => 400,
            HeadError::LineTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyFields => 431,
            HeadError::Expectation => 417,
            HeadError::NotImplemented(_) => 501,
        }
    }

    /// What is wrong, for the error body.
    pub fn message(self) -> &'static str {
        match self {
            HeadError::Bad(why) | HeadError::NotImplemented(why) => why,
            HeadError::LineTooLong => "request line too long",
            HeadError::HeadTooLarge => "request head too large",
            HeadError::TooManyFields => "too many headers",
            HeadError::Expectation => "unsupported expectation",
        }
    }

    /// Whether the refusal is about framing (counted as a malformed request).
    pub fn is_malformed(self) -> bool {
        matches!(self, HeadError::Bad(_))
    }
}

/// A parsed request head: spans of the connection's buffer, and what the gateway needs to know
/// of its fields, found in the one pass that checks them.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// Bytes of the head, the final empty line included.
    pub len: usize,
    /// The method.
    pub method: Span,
    /// The request target as sent.
    pub target: Span,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// The target's path (for `OPTIONS *`, `*`).
    pub path: Span,
    /// The target's query, without `?`.
    pub query: Option<Span>,
    /// An absolute-form target's authority: it replaces `Host` (RFC 9112 section 3.2.2).
    pub authority: Option<Span>,
    /// The `Host` value.
    pub host: Option<Span>,
    /// Field lines in order.
    pub fields: Vec<Field>,
    /// How the body is framed.
    pub framing: Framing,
    /// The client closes after this request (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`).
    pub close: bool,
    /// The client asks to switch protocols (`Upgrade` listed in `Connection`).
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection` names fields besides the usual tokens: they are hop-by-hop too.
    pub connection_names_fields: bool,
    /// Some `X-Unitgate-*` field is there.
    pub internal: bool,
}

impl RequestHead {
    /// Whether `name` is listed in `Connection` (so hop-by-hop), `buf` holding the head.
    pub fn connection_lists(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_names_fields
            && self
                .fields
                .iter()
                .filter(|f| f.kind == Kind::Connection)
                .any(|f| lists(f.value.get(buf), name))
    }

    /// The host the request is for: the absolute-form authority, else `Host`.
    pub fn host_or_authority(&self) -> Option<Span> {
        self.authority.or(self.host)
    }
}

/// Parse the request head at the start of `buf` into `head`. `Ok(false)`: the head is not
/// complete yet (and within the limits so far).
pub fn parse(buf: &[u8], limits: &Limits, head: &mut RequestHead) -> Result<bool, HeadError> {
    let mut room = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_ROOM];
    let allowed = limits.max_headers.min(HEADER_ROOM);
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(buf, &mut room[..allowed]);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            let line_end = memchr::memchr(b'\n', &buf[..buf.len().min(limits.max_line + 2)]);
            if line_end.is_none() && buf.len() > limits.max_line + 1 {
                return Err(HeadError::LineTooLong);
            }
            if buf.len() >= limits.max_head {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(false);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Bad("unsupported HTTP version"));
        }
        Err(httparse::Error::Token) => return Err(HeadError::Bad("malformed request line")),
        Err(httparse::Error::HeaderName) => return Err(HeadError::Bad("malformed header name")),
        Err(httparse::Error::HeaderValue) => {
            return Err(HeadError::Bad("malformed header value"));
        }
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    let method = request.method.unwrap_or_default().as_bytes();
    let target = request.path.unwrap_or_default().as_bytes();
    if Span::of(buf, target).start as usize > limits.max_line {
        return Err(HeadError::LineTooLong);
    }
    if target.len() + method.len() + 10 > limits.max_line {
        return Err(HeadError::LineTooLong);
    }
    if !METHODS.contains(&method) {
        if method == b"CONNECT" {
            return Err(HeadError::NotImplemented("CONNECT is not supported"));
        }
        return Err(if method.len() > 16 {
            HeadError::Bad("method too long")
        } else {
            HeadError::NotImplemented("method not implemented")
        });
    }
    head.len = len;
    head.method = Span::of(buf, method);
    head.target = Span::of(buf, target);
    head.minor = request.version.unwrap_or(1);
    head.authority = None;
    head.host = None;
    head.query = None;
    head.framing = Framing::None;
    head.upgrade = false;
    head.expect_continue = false;
    head.connection_names_fields = false;
    head.internal = false;
    read_target(buf, target, method, head)?;

    head.fields.clear();
    let mut hosts = 0;
    let mut length = None;
    let mut lengths = 0;
    let mut codings = Codings::default();
    let mut listed_close = false;
    let mut listed_keep_alive = false;
    let mut upgrade_field = false;
    let mut h2c = false;
    let mut connection_upgrade = false;
    for field in request.headers.iter() {
        let value = field.value;
        let name = field.name.as_bytes();
        let line = Field::of(buf, name, value, Kind::of_request_field(name));
        match line.kind {
            Kind::Host => {
                hosts += 1;
                if !is_valid_host(value) {
                    return Err(HeadError::Bad("invalid Host"));
                }
                head.host = Some(Span::of(buf, value));
            }
            Kind::ContentLength => {
                lengths += 1;
                length =
                    Some(content_length(value).ok_or(HeadError::Bad("malformed Content-Length"))?);
            }
            Kind::TransferEncoding => codings.add(value),
            Kind::Connection => {
                for token in list(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        listed_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        listed_keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else {
                        head.connection_names_fields = true;
                    }
                }
            }
            // An upgrade to HTTP/2 over cleartext is no tunnel the gateway opens: through it a
            // client would speak HTTP/2 to the upstream past every check of the gateway's
            // (h2c smuggling); the request goes on as a plain one.
            Kind::Upgrade => {
                upgrade_field = true;
                h2c |= lists(value, b"h2c");
            }
            // A list whose only member RFC 9110 defines is `100-continue` (an empty one
            // expects nothing); any other is answered 417.
            Kind::Expect => {
                for expectation in list(value) {
                    if !expectation.eq_ignore_ascii_case(b"100-continue") {
                        return Err(HeadError::Expectation);
                    }
                    head.expect_continue = head.minor == 1;
                }
            }
            Kind::Internal | Kind::HopMarker => head.internal = true,
            _ => {}
        }
        head.fields.push(line);
    }
    // `close` anywhere in `Connection` closes; HTTP/1.0 closes unless `keep-alive` is listed
    // (on HTTP/1.1 `keep-alive` changes nothing).
    head.close = listed_close || (head.minor == 0 && !listed_keep_alive);
    // An http(s) URI has a host (RFC 9110 section 4.2.1): an empty Host leaves an
    // origin-form target without one.
    if head.authority.is_none() && head.host.is_some_and(Span::is_empty) {
        return Err(HeadError::Bad("empty Host"));
    }
    match hosts {
        0 if head.minor == 1 => return Err(HeadError::Bad("missing Host")),
        0 | 1 => {}
        _ => return Err(HeadError::Bad("several Host headers")),
    }
    // CRLF only: a bare LF is where parsers disagree on line ends.
    if !lines_end_in_crlf(&buf[..len], head.method.start as usize, &head.fields) {
        return Err(HeadError::Bad("line not ended by CRLF"));
    }
    // Upgrade is an HTTP/1.1 mechanism: a server ignores it in HTTP/1.0 (RFC 9110 7.8).
    head.upgrade = upgrade_field && connection_upgrade && head.minor == 1 && !h2c;
    head.framing = match (codings.seen, lengths) {
        (true, _) if head.minor == 0 => {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        (true, 0) => codings.framing()?,
        (true, _) => return Err(HeadError::Bad("both Content-Length and Transfer-Encoding")),
        (false, 0) => Framing::None,
        (false, 1) => match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        },
        (false, _) => return Err(HeadError::Bad("several Content-Length values")),
    };
    Ok(true)
}

/// `Transfer-Encoding`, over all its lines.
#[derive(Default)]
struct Codings {
    seen: bool,
    chunked: usize,
    last_chunked: bool,
    other: bool,
    empty: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        let mut any = false;
        for coding in list(value) {
            any = true;
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked += usize::from(chunked);
            self.other |= !chunked;
            self.last_chunked = chunked;
        }
        self.empty |= !any;
    }

    fn framing(&self) -> Result<Framing, HeadError> {
        if self.empty || !self.last_chunked || self.chunked > 1 {
            return Err(HeadError::Bad(
                "Transfer-Encoding other than a final chunked",
            ));
        }
        if self.other {
            return Err(HeadError::NotImplemented("transfer coding not implemented"));
        }
        Ok(Framing::Chunked)
    }
}

/// Find the path, query and authority of `target`, holding each form to its method (RFC 9112
/// section 3.2).
fn read_target(
    buf: &[u8],
    target: &[u8],
    method: &[u8],
    head: &mut RequestHead,
) -> Result<(), HeadError> {
    if !target.iter().all(|b| is_target_byte(*b)) {
        return Err(HeadError::Bad("invalid request target"));
    }
    let path_and_query = match target.first() {
        Some(b'/') => target,
        Some(b'*') if target.len() == 1 => {
            if method != b"OPTIONS" {
                return Err(HeadError::Bad(
                    "asterisk-form target for a method other than OPTIONS",
                ));
            }
            head.path = Span::of(buf, target);
            return Ok(());
        }
        _ => {
            let rest = strip_scheme(target).ok_or(HeadError::Bad("invalid request target"))?;
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b'?'))
                .unwrap_or(rest.len());
            let authority = &rest[..end];
            if authority.contains(&b'@') {
                return Err(HeadError::Bad("user info in the request target"));
            }
            if authority.is_empty() || !is_valid_host(authority) {
                return Err(HeadError::Bad("invalid authority in the request target"));
            }
            head.authority = Some(Span::of(buf, authority));
            &rest[end..]
        }
    };
    match memchr::memchr(b'?', path_and_query) {
        Some(at) => {
            head.path = Span::of(buf, &path_and_query[..at]);
            head.query = Some(Span::of(buf, &path_and_query[at + 1..]));
        }
        None => head.path = Span::of(buf, path_and_query),
    }
    Ok(())
}

/// `target` after `http://` or `https://` (any case); `None` for other forms.
fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_line: 8 * 1024,
        max_head: 64 * 1024,
        max_headers: 100,
    };

    fn parse_all(raw: &[u8]) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        assert!(parse(raw, &LIMITS, &mut head)?, "complete");
        Ok(head)
    }

    #[test]
    fn a_plain_request_is_read_into_spans() {
        let raw = b"POST /users/42/cart?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nX-Unitgate-Unit: u1\r\n\r\nhello";
        let head = parse_all(raw).expect("as written");
        assert_eq!(head.len, raw.len() - 5);
        assert_eq!(head.method.get(raw), b"POST");
        assert_eq!(head.path.get(raw), b"/users/42/cart");
        assert_eq!(head.query.expect("as written").get(raw), b"x=1");
        assert_eq!(head.host.expect("as written").get(raw), b"a.example");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.internal && !head.close && !head.upgrade);
    }

    #[test]
    fn partial_heads_wait_within_the_limits() {
        let mut head = RequestHead::default();
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS, &mut head),
            Ok(false)
        );
        let long_line = format!("GET /{}", "a".repeat(LIMITS.max_line + 10));
        assert_eq!(
            parse(long_line.as_bytes(), &LIMITS, &mut head),
            Err(HeadError::LineTooLong)
        );
        let long_head = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(LIMITS.max_head));
        assert_eq!(
            parse(long_head.as_bytes(), &LIMITS, &mut head),
            Err(HeadError::HeadTooLarge)
        );
        // 100 fields (Host among them) are allowed, 101 are not.
        let fields = |n: usize| -> String { (0..n).map(|i| format!("x{i}: 1\r\n")).collect() };
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", fields(99));
        assert_eq!(parse(raw.as_bytes(), &LIMITS, &mut head), Ok(true));
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", fields(100));
        assert_eq!(
            parse(raw.as_bytes(), &LIMITS, &mut head),
            Err(HeadError::TooManyFields)
        );
    }

    #[test]
    fn framing_must_be_unambiguous() {
        let cases: &[(&str, HeadError)] = &[
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                HeadError::Bad("both Content-Length and Transfer-Encoding"),
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6",
                HeadError::Bad("several Content-Length values"),
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5",
                HeadError::Bad("several Content-Length values"),
            ),
            (
                "Content-Length: +5",
                HeadError::Bad("malformed Content-Length"),
            ),
            (
                "Content-Length: 5, 5",
                HeadError::Bad("malformed Content-Length"),
            ),
            (
                "Transfer-Encoding: chunked, identity",
                HeadError::Bad("Transfer-Encoding other than a final chunked"),
            ),
            (
                "Transfer-Encoding: xchunked",
                HeadError::Bad("Transfer-Encoding other than a final chunked"),
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                HeadError::Bad("Transfer-Encoding other than a final chunked"),
            ),
            (
                "Transfer-Encoding: ",
                HeadError::Bad("Transfer-Encoding other than a final chunked"),
            ),
            (
                "Transfer-Encoding: gzip, chunked",
                HeadError::NotImplemented("transfer coding not implemented"),
            ),
        ];
        for (fields, error) in cases {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\n");
            assert_eq!(parse_all(raw.as_bytes()).err(), Some(*error), "{fields}");
        }
        let raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_all(raw).err(),
            Some(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"))
        );
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(
            parse_all(raw).expect("as written").framing,
            Framing::Chunked
        );
    }

    #[test]
    fn lines_names_values_and_targets_are_strict() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nx: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nx: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nx: 1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nx y: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET /<script> HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in bad {
            let refused = parse_all(raw);
            assert!(
                refused.as_ref().is_err_and(|e| e.status() == 400),
                "{}: {:?}",
                String::from_utf8_lossy(raw),
                refused.map(|h| h.len)
            );
        }
        let head = parse_all(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").expect("as written");
        assert_eq!(
            head.path.get(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
            b"*"
        );
        let raw = b"GET HTTP://Real.example:8080?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = parse_all(raw).expect("as written");
        assert_eq!(
            head.host_or_authority().expect("as written").get(raw),
            b"Real.example:8080"
        );
        assert_eq!(head.path.get(raw), b"");
        assert_eq!(head.query.expect("as written").get(raw), b"q");
    }

    #[test]
    fn methods_versions_and_connection_options() {
        assert_eq!(
            parse_all(b"get / HTTP/1.1\r\nHost: a\r\n\r\n")
                .expect_err("refused")
                .status(),
            501
        );
        assert_eq!(
            parse_all(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
                .expect_err("refused")
                .status(),
            501
        );
        assert_eq!(
            parse_all(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\nHost: a\r\n\r\n")
                .expect_err("refused")
                .status(),
            400
        );
        assert!(
            parse_all(b"GET / HTTP/1.0\r\n\r\n")
                .expect("as written")
                .close
        );
        assert!(
            !parse_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .expect("as written")
                .close
        );
        assert!(
            parse_all(b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
                .expect("as written")
                .close
        );
        assert!(
            parse_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .expect("as written")
                .close
        );
        let upgrade = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, x-private\r\nx-private: 1\r\n\r\n";
        let head = parse_all(upgrade).expect("as written");
        assert!(head.upgrade);
        assert!(head.connection_lists(upgrade, b"X-Private"));
        assert!(
            !parse_all(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                .expect("as written")
                .upgrade
        );
        assert_eq!(
            parse_all(
                b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
            )
            .map(|h| h.expect_continue),
            Ok(true)
        );
        assert_eq!(
            parse_all(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n")
                .expect_err("refused")
                .status(),
            417
        );
    }
}
