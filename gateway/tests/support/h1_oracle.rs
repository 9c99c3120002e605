//! The oracle of the HTTP/1.1 differential fuzzing: request heads, response heads and chunked
//! bodies read as RFC 9112 and RFC 9110 write them, plainly, line by line, with no code of the
//! gateway's and no parser library. It says whether a message is complete, where its head ends
//! and how its body is framed, or why it is refused.
//!
//! Where the RFCs leave a recipient a choice (a MAY, a SHOULD, a limit), the oracle makes one,
//! each marked `Policy:` with the clause that permits it; everything else is the RFC's grammar
//! and its MUSTs. It does not use `httparse`: the gateway does, and an oracle on the same
//! tokenizer would share its leniencies (it skips empty lines before a status line, for one).
//! Shared by the fuzz targets (gateway/fuzz) and by gateway/tests/fuzz_corpus.rs, included in
//! both with `#[path]`.

#![allow(dead_code)]

/// Size limits, as the gateway is configured with them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line, CRLF not counted (414 beyond it).
    pub max_line: usize,
    /// Longest head, from the first byte to the final CRLF included (431 beyond it).
    pub max_head: usize,
    /// Most field lines (431 beyond it).
    pub max_fields: usize,
}

/// Where a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// This many bytes after the head (0: no body).
    Length(u64),
    /// Chunked: the chunked coding says where.
    Chunked,
    /// When the connection closes (responses only).
    UntilClose,
}

/// What the oracle read of a complete head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, leading empty lines and the final CRLF included.
    pub len: usize,
    /// How the body is framed.
    pub body: Body,
    /// Requests: the host the request is for (an absolute-form target's authority, else
    /// `Host`), as sent.
    pub host: Option<Vec<u8>>,
    /// Responses: the status code.
    pub status: u16,
    /// The connection closes after this message.
    pub close: bool,
}

/// The oracle's verdict on a buffer that starts with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid head ends within the buffer.
    Complete(Head),
    /// The head does not end within the buffer, and more bytes could still make it valid
    /// within the limits.
    Partial,
    /// No bytes that follow could make it valid; why.
    Refused(&'static str),
}

/// Methods the gateway serves. Policy: RFC 9110 section 9.1 — "An origin server that receives a
/// request method that is unrecognized or not implemented SHOULD respond with the 501 (Not
/// Implemented) status code"; CONNECT (section 9.3.6) is a proxy's method, and a server that
/// does not tunnel answers it the same way.
pub const METHODS: [&[u8]; 8] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Policy: at most this many digits in `Content-Length`. RFC 9110 section 8.6: "a recipient
/// MUST anticipate potentially large decimal numerals and prevent parsing errors due to integer
/// conversion overflows"; 18 digits hold every length below 10^18, far beyond any body limit.
pub const MAX_LENGTH_DIGITS: usize = 18;

/// Policy: at most this many digits in a port. RFC 3986 section 3.2.3 writes `port = *DIGIT`,
/// but a port is 16 bits (RFC 9293 section 3.1): a longer one names no port, and RFC 9112
/// section 3.2 has a server answer 400 to "a Host header field with an invalid field value".
pub const MAX_PORT_DIGITS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Character classes (RFC 9110 section 5.6.2, RFC 5234 appendix B.1, RFC 3986 section 2).

/// `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `field-vchar`: `VCHAR / obs-text`.
fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// A byte of a field value between its first and last `field-vchar`: `SP / HTAB /
/// field-vchar`. RFC 9110 section 5.5: CR, LF and NUL are invalid (a recipient MUST reject or
/// replace them); other CTLs "are also invalid". Policy: refused, not retained.
fn is_field_content(b: u8) -> bool {
    b == b' ' || b == b'\t' || is_field_vchar(b)
}

/// `OWS` bytes.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// `sub-delims`.
fn is_sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
}

/// A byte of a path or query as RFC 3986 writes them (`pchar / "/" / "?"`; `%` is checked
/// with the two hex digits that must follow it), or one of [`TOLERATED_IN_TARGET`].
fn is_target_byte(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b":@/?%".contains(&b) || TOLERATED_IN_TARGET.contains(&b)
}

/// Policy: `[` and `]`, which RFC 3986 allows only around an IP literal, are passed on in paths
/// and queries (clients send `?a[]=1` unencoded), and so is a `%` not followed by two hex
/// digits. RFC 9112 section 3: recipients of an invalid request-line "SHOULD respond with
/// either a 400 (Bad Request) error or a 301 (Moved Permanently) redirect" — a SHOULD, and
/// neither byte can end the target or the line anywhere else. The other visible ASCII that URIs
/// exclude (`"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`) is refused, as the SHOULD says, and
/// so is `#`: a fragment is never sent (RFC 9110 section 7.1).
const TOLERATED_IN_TARGET: &[u8] = b"[]";

// ---------------------------------------------------------------------------------------------
// Lines.

/// One line of a head as the oracle reads it.
enum Line<'a> {
    /// A line ended by CRLF (without it), and the offset after the CRLF.
    Whole(&'a [u8], usize),
    /// The buffer ends inside this line, before its LF: the bytes so far (without a final CR),
    /// and whether the CR has come (then the line's content is final).
    Open(&'a [u8], bool),
}

/// The line starting at `at`. RFC 9112 section 2.2: lines end in CRLF. Policy: a bare LF is
/// refused, not read as a line end ("a recipient MAY recognize a single LF as a line
/// terminator"; MAY, so refusing is allowed, and a bare LF is where parsers disagree). A bare CR
/// is refused: "A recipient of such a bare CR MUST consider that element to be invalid or
/// replace each bare CR with SP".
fn line(buf: &[u8], at: usize) -> Result<Line<'_>, &'static str> {
    let rest = &buf[at..];
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'\r' => match rest.get(i + 1) {
                Some(b'\n') => return Ok(Line::Whole(&rest[..i], at + i + 2)),
                Some(_) => return Err("bare CR"),
                None => return Ok(Line::Open(&rest[..i], true)),
            },
            b'\n' => return Err("bare LF"),
            _ => {}
        }
    }
    Ok(Line::Open(rest, false))
}

/// A field line, split into name and value (OWS trimmed).
fn field_line(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    // RFC 9112 section 5.2: obs-fold, a line starting with whitespace. Policy: refused. "A
    // server that receives an obs-fold in a request message ... MUST either reject the message
    // by sending a 400 (Bad Request) ... or replace each received obs-fold with one or more SP";
    // for responses a proxy or gateway "MUST either discard the message and replace it with a
    // 502 (Bad Gateway) response ... or replace each received obs-fold". Whitespace before the
    // first field line (section 2.2) is refused the same way.
    if line.first().is_some_and(|b| is_ows(*b)) {
        return Err("obs-fold or whitespace at the start of a field line");
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or("field line without a colon")?;
    let name = &line[..colon];
    // `field-name = token`; RFC 9112 section 5.1: "No whitespace is allowed between the field
    // name and colon ... A server MUST reject ... with a response status code of 400".
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err("invalid field name");
    }
    let value = trim_ows(&line[colon + 1..]);
    if !value.iter().all(|b| is_field_content(*b)) {
        return Err("invalid byte in a field value");
    }
    Ok((name, value))
}

/// Whether `open`, the start of a field line, can still become one.
fn field_line_prefix(open: &[u8]) -> Result<(), &'static str> {
    if open.first().is_some_and(|b| is_ows(*b)) {
        return Err("obs-fold or whitespace at the start of a field line");
    }
    match open.iter().position(|b| *b == b':') {
        None if open.iter().all(|b| is_tchar(*b)) => Ok(()),
        None => Err("invalid field name"),
        Some(colon) => {
            if colon == 0 || !open[..colon].iter().all(|b| is_tchar(*b)) {
                return Err("invalid field name");
            }
            if open[colon + 1..].iter().all(|b| is_field_content(*b)) {
                Ok(())
            } else {
                Err("invalid byte in a field value")
            }
        }
    }
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = value
        && is_ows(*first)
    {
        value = rest;
    }
    while let [rest @ .., last] = value
        && is_ows(*last)
    {
        value = rest;
    }
    value
}

/// The elements of a list field value (RFC 9110 section 5.6.1): split at commas, OWS trimmed,
/// empty elements ignored ("a recipient MUST parse and ignore a reasonable number of empty list
/// elements").
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// The field lines of a head, read from `at` (just after the start line) to the empty line.
/// `Ok(Some((fields, len)))`: the head is complete, `len` bytes long; `Ok(None)`: it could still
/// be.
#[allow(clippy::type_complexity)]
fn fields<'a>(
    buf: &'a [u8],
    mut at: usize,
    limits: &Limits,
) -> Result<Option<(Vec<(&'a [u8], &'a [u8])>, usize)>, &'static str> {
    let mut fields = Vec::new();
    loop {
        match line(buf, at)? {
            Line::Whole([], next) => {
                if next > limits.max_head {
                    return Err("head too large");
                }
                return Ok(Some((fields, next)));
            }
            Line::Whole(whole, next) => {
                fields.push(field_line(whole)?);
                if fields.len() > limits.max_fields {
                    return Err("too many fields");
                }
                at = next;
            }
            Line::Open(open, cr) => {
                if cr && !open.is_empty() {
                    field_line(open)?;
                } else {
                    field_line_prefix(open)?;
                }
                // The head is longer than the buffer: at least one byte more.
                if buf.len() >= limits.max_head {
                    return Err("head too large");
                }
                // An open field line becomes a field when it is ended.
                if !open.is_empty() && fields.len() >= limits.max_fields {
                    return Err("too many fields");
                }
                return Ok(None);
            }
        }
    }
}

/// Every field named `name` (any case).
fn named<'a>(fields: &'a [(&'a [u8], &'a [u8])], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// `HTTP-version`, of which the gateway speaks two: `Some(minor)`. RFC 9112 section 2.3:
/// `HTTP-name "/" DIGIT "." DIGIT`, `HTTP-name` case-sensitive. Policy: versions other than 1.0
/// and 1.1 are refused. RFC 9110 section 6.2: a recipient of a higher minor version "SHOULD
/// process the message as if it were in the highest minor version ... to which the recipient is
/// conformant" (a SHOULD), and 505 exists for the others (section 15.6.6).
fn version(v: &[u8]) -> Option<u8> {
    match v {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// Whether `v`, the start of a version, can still become one the gateway speaks.
fn version_prefix(v: &[u8]) -> bool {
    b"HTTP/1.1".starts_with(v) || b"HTTP/1.0".starts_with(v)
}

// ---------------------------------------------------------------------------------------------
// Hosts (RFC 3986 section 3.2.2, RFC 9110 section 7.2).

/// `uri-host [ ":" port ]`, as `Host` and an authority hold it; `Err`: what is wrong.
fn host_and_port(value: &[u8]) -> Result<(), &'static str> {
    if value.first() == Some(&b'[') {
        let close = value
            .iter()
            .position(|b| *b == b']')
            .ok_or("unclosed IP literal")?;
        if !is_ip_literal(&value[..=close]) {
            return Err("invalid IP literal");
        }
        return match &value[close + 1..] {
            [] => Ok(()),
            [b':', port @ ..] => port_of(port),
            _ => Err("bytes after an IP literal"),
        };
    }
    let (host, port) = match value.iter().position(|b| *b == b':') {
        Some(colon) => (&value[..colon], &value[colon + 1..]),
        None => (value, &value[..0]),
    };
    // Policy: a port with no host before it (`:80`) is refused; the URI it stands for,
    // `http://:80/`, is one a recipient "MUST reject ... as invalid" (RFC 9110 section 4.2.1).
    // An empty value is another matter (see `read_request`).
    if host.is_empty() && !value.is_empty() {
        return Err("empty host before a port");
    }
    reg_name(host)?;
    port_of(port)
}

/// `port = *DIGIT`, with at most [`MAX_PORT_DIGITS`].
fn port_of(port: &[u8]) -> Result<(), &'static str> {
    if port.len() > MAX_PORT_DIGITS || !port.iter().all(u8::is_ascii_digit) {
        return Err("invalid port");
    }
    Ok(())
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (an IPv4 address is one too).
fn reg_name(name: &[u8]) -> Result<(), &'static str> {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                if !(name.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && name.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return Err("invalid percent-encoding");
                }
                i += 3;
            }
            b if is_unreserved(b) || is_sub_delim(b) => i += 1,
            _ => return Err("invalid byte in a host name"),
        }
    }
    Ok(())
}

/// `IP-literal = "[" ( IPv6address / IPvFuture ) "]"`. Policy: IPvFuture is refused. RFC 3986
/// section 3.2.2: an application that does not know the version flag "should return an
/// appropriate error for 'address mechanism not supported'".
fn is_ip_literal(literal: &[u8]) -> bool {
    let [b'[', inside @ .., b']'] = literal else {
        return false;
    };
    is_ipv6(inside)
}

/// `IPv6address` (RFC 3986 section 3.2.2): eight 16-bit pieces of 1-4 hex digits separated by
/// colons, the last two of which may be an IPv4 address, with at most one `::` standing for one
/// or more zero pieces.
fn is_ipv6(text: &[u8]) -> bool {
    let (head, tail, elided) = match find(text, b"::") {
        Some(at) => (&text[..at], &text[at + 2..], true),
        None => (text, &text[..0], false),
    };
    let pieces = |part: &[u8], last: bool| -> Option<usize> {
        if part.is_empty() {
            return Some(0);
        }
        let groups: Vec<&[u8]> = part.split(|b| *b == b':').collect();
        let mut count = 0;
        for (i, group) in groups.iter().enumerate() {
            if last && i == groups.len() - 1 && group.contains(&b'.') {
                if !is_ipv4(group) {
                    return None;
                }
                count += 2;
            } else if (1..=4).contains(&group.len()) && group.iter().all(u8::is_ascii_hexdigit) {
                count += 1;
            } else {
                return None;
            }
        }
        Some(count)
    };
    if elided {
        if find(tail, b"::").is_some() {
            return false;
        }
        match (pieces(head, false), pieces(tail, true)) {
            (Some(h), Some(t)) => h + t <= 7,
            _ => false,
        }
    } else {
        pieces(head, true) == Some(8)
    }
}

/// `IPv4address`: four `dec-octet`s (0-255, no leading zeros).
fn is_ipv4(text: &[u8]) -> bool {
    let octets: Vec<&[u8]> = text.split(|b| *b == b'.').collect();
    octets.len() == 4
        && octets.iter().all(|o| {
            !o.is_empty()
                && o.len() <= 3
                && o.iter().all(u8::is_ascii_digit)
                && (o.len() == 1 || o[0] != b'0')
                && o.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 255
        })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Reads the request at the start of `buf`.
pub fn request(buf: &[u8], limits: &Limits) -> Verdict {
    match read_request(buf, limits) {
        Ok(Some(head)) => Verdict::Complete(head),
        Ok(None) => Verdict::Partial,
        Err(why) => Verdict::Refused(why),
    }
}

fn read_request(buf: &[u8], limits: &Limits) -> Result<Option<Head>, &'static str> {
    // RFC 9112 section 2.2: "a server that is expecting to receive and parse a request-line
    // SHOULD ignore at least one empty line (CRLF) received prior to the request-line".
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let (request_line, after) = match line(buf, start)? {
        Line::Whole(whole, next) => (whole, next),
        Line::Open(open, cr) => {
            if cr {
                request_line_of(open, limits)?;
            } else {
                request_line_prefix(open, limits)?;
            }
            if buf.len() >= limits.max_head {
                return Err("head too large");
            }
            return Ok(None);
        }
    };
    let (method, target, minor) = request_line_of(request_line, limits)?;
    let Some((fields, len)) = fields(buf, after, limits)? else {
        return Ok(None);
    };

    if !METHODS.contains(&method) {
        return Err("method not implemented");
    }
    let authority = request_target(method, target)?;

    // RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // HTTP/1.1 request message that lacks a Host header field and to any request message that
    // contains more than one Host header field line or a Host header field with an invalid
    // field value."
    let hosts: Vec<&[u8]> = named(&fields, b"host").collect();
    match hosts[..] {
        [] if minor == 1 => return Err("missing Host"),
        [] | [_] => {}
        _ => return Err("several Host field lines"),
    }
    if let Some(host) = hosts.first() {
        host_and_port(host).map_err(|why| match why {
            "invalid percent-encoding" => "invalid Host: invalid percent-encoding",
            "invalid IP literal" => "invalid Host: invalid IP literal",
            _ => "invalid Host",
        })?;
    }
    // Policy: an empty Host is refused unless an absolute-form target names the host. RFC 9112
    // section 3.3: when the target URI's authority is empty and its scheme requires one (http
    // and https do, RFC 9110 section 4.2.1), "the server can reject the request".
    if authority.is_none() && hosts.first().is_some_and(|host| host.is_empty()) {
        return Err("empty Host");
    }
    // RFC 9112 section 3.2.2: with an absolute-form target the server "MUST ignore the received
    // Host header field (if any) and instead use the host information of the request-target".
    let host = authority.or(hosts.first().copied()).map(<[u8]>::to_vec);

    // RFC 9110 section 10.1.1: "A server that receives an Expect field value containing a
    // member other than 100-continue MAY respond with a 417 (Expectation Failed)". Policy: it
    // does; the members are a list, compared without case.
    for expect in named(&fields, b"expect") {
        if elements(expect).any(|e| !e.eq_ignore_ascii_case(b"100-continue")) {
            return Err("unsupported expectation");
        }
    }

    let body = request_body(&fields, minor)?;
    let close = closes(&fields, minor);
    Ok(Some(Head {
        len,
        body,
        host,
        status: 0,
        close,
    }))
}

/// The method, target and minor version of a request line.
fn request_line_of<'a>(
    request_line: &'a [u8],
    limits: &Limits,
) -> Result<(&'a [u8], &'a [u8], u8), &'static str> {
    // RFC 9112 section 3: "A server that receives a request-target longer than any URI it
    // wishes to parse MUST respond with a 414"; the limit is on the whole line.
    if request_line.len() > limits.max_line {
        return Err("request line too long");
    }
    // `request-line = method SP request-target SP HTTP-version`, one SP each (the grammar;
    // parsing on other whitespace is a MAY the gateway does not take).
    let parts: Vec<&[u8]> = request_line.split(|b| *b == b' ').collect();
    let [method, target, version_text] = parts[..] else {
        return Err("malformed request line");
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err("malformed method");
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("malformed request target");
    }
    let minor = version(version_text).ok_or("unsupported HTTP version")?;
    Ok((method, target, minor))
}

/// Whether `open`, the start of a request line, can still become a valid one.
fn request_line_prefix(open: &[u8], limits: &Limits) -> Result<(), &'static str> {
    if open.len() > limits.max_line {
        return Err("request line too long");
    }
    let parts: Vec<&[u8]> = open.split(|b| *b == b' ').collect();
    let ok = match parts[..] {
        [method] => method.iter().all(|b| is_tchar(*b)),
        [method, target] => {
            !method.is_empty()
                && method.iter().all(|b| is_tchar(*b))
                && target.iter().all(|b| (0x21..=0x7e).contains(b))
        }
        [method, target, version_text] => {
            !method.is_empty()
                && method.iter().all(|b| is_tchar(*b))
                && !target.is_empty()
                && target.iter().all(|b| (0x21..=0x7e).contains(b))
                && version_prefix(version_text)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("malformed request line")
    }
}

/// Checks the request target against its method (RFC 9112 section 3.2); returns the
/// absolute-form's authority.
fn request_target<'a>(method: &[u8], target: &'a [u8]) -> Result<Option<&'a [u8]>, &'static str> {
    // asterisk-form: "only used for a server-wide OPTIONS request" (section 3.2.4).
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok(None)
        } else {
            Err("asterisk-form for a method other than OPTIONS")
        };
    }
    // origin-form: `absolute-path [ "?" query ]`.
    if target[0] == b'/' {
        return path_and_query(target).map(|()| None);
    }
    // absolute-form: `absolute-URI` (section 3.2.2: "A server MUST accept the absolute-form").
    // Policy: only the `http` and `https` schemes (any case; RFC 3986 section 3.1) — the only
    // ones this server can serve; RFC 9110 section 7.4 has a server reject a target it is not
    // configured for. (authority-form is CONNECT's alone, section 3.2.3, and CONNECT is
    // refused above.)
    let colon = target
        .iter()
        .position(|b| *b == b':')
        .ok_or("invalid request target")?;
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err("invalid request target");
    }
    // `http-URI = "http" "://" authority path-abempty [ "?" query ]` (RFC 9110 section 4.2.1).
    let rest = target[colon + 1..]
        .strip_prefix(b"//")
        .ok_or("invalid request target")?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // RFC 9110 section 4.2.4: a recipient "SHOULD parse for userinfo and treat its presence as
    // an error".
    if authority.contains(&b'@') {
        return Err("user info in the request target");
    }
    host_and_port(authority).map_err(|why| match why {
        "invalid percent-encoding" => {
            "invalid authority in the request target: invalid percent-encoding"
        }
        "invalid IP literal" => "invalid authority in the request target: invalid IP literal",
        _ => "invalid authority in the request target",
    })?;
    // RFC 9110 section 4.2.1: "A sender MUST NOT generate an 'http' URI with an empty host
    // identifier. A recipient that processes such a URI reference MUST reject it as invalid."
    let host_len = if authority.first() == Some(&b'[') {
        authority.len()
    } else {
        authority
            .iter()
            .position(|b| *b == b':')
            .unwrap_or(authority.len())
    };
    if host_len == 0 {
        return Err("empty host in the request target");
    }
    path_and_query(&rest[end..])?;
    Ok(Some(authority))
}

/// `path-abempty [ "?" query ]` (an origin-form's path is one that is not empty).
fn path_and_query(part: &[u8]) -> Result<(), &'static str> {
    if part.iter().all(|b| is_target_byte(*b)) {
        Ok(())
    } else {
        Err("invalid request target")
    }
}

/// How a request's body is framed (RFC 9112 section 6).
fn request_body(fields: &[(&[u8], &[u8])], minor: u8) -> Result<Body, &'static str> {
    let codings: Option<Vec<&[u8]>> = {
        let mut lines = named(fields, b"transfer-encoding").peekable();
        lines
            .peek()
            .is_some()
            .then(|| lines.flat_map(elements).collect())
    };
    let length = content_length(fields)?;
    let Some(codings) = codings else {
        // Section 6.3, items 6 and 7: a valid Content-Length gives the length, else none.
        return Ok(Body::Length(length.unwrap_or(0)));
    };
    empty_coding_line(fields)?;
    // Section 6.1: "A server or client that receives an HTTP/1.0 message containing a
    // Transfer-Encoding header field MUST treat the message as if the framing is faulty".
    // Policy: refused.
    if minor == 0 {
        return Err("Transfer-Encoding in HTTP/1.0");
    }
    // Section 6.3, item 3: "A server MAY reject a request that contains both Content-Length
    // and Transfer-Encoding". Policy: it does.
    if length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    // Item 4: "If a Transfer-Encoding header field is present in a request and the chunked
    // transfer coding is not the final encoding, ... the server MUST respond with the 400".
    if !codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
    {
        return Err("chunked is not the final transfer coding");
    }
    // Section 6.1: "A sender MUST NOT apply the chunked transfer coding more than once".
    if codings
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
        .count()
        > 1
    {
        return Err("chunked applied twice");
    }
    // Section 6.1: "A server that receives a request message with a transfer coding it does
    // not understand SHOULD respond with 501"; the gateway understands only chunked.
    if codings.len() > 1 {
        return Err("transfer coding not implemented");
    }
    Ok(Body::Chunked)
}

/// Policy: a `Transfer-Encoding` field line that holds no coding is refused, even beside one
/// that says `chunked`. RFC 9110 section 5.6.1 has a recipient ignore empty list elements, so
/// the RFC reads `chunked` and an empty line together as `chunked`; but an empty
/// `Transfer-Encoding` line is a request smuggling shape that recipients read differently
/// (RFC 9112 section 11.2), and a server may refuse what it cannot frame reliably (section 6.3,
/// item 4: 400).
fn empty_coding_line(fields: &[(&[u8], &[u8])]) -> Result<(), &'static str> {
    if named(fields, b"transfer-encoding").any(|value| elements(value).next().is_none()) {
        return Err("Transfer-Encoding line without a coding");
    }
    Ok(())
}

/// `Content-Length`, if there is one (RFC 9110 section 8.6: `1*DIGIT`). RFC 9112 section 6.3,
/// item 5: an invalid one is an unrecoverable framing error.
fn content_length(fields: &[(&[u8], &[u8])]) -> Result<Option<u64>, &'static str> {
    let values: Vec<&[u8]> = named(fields, b"content-length").collect();
    let value = match values[..] {
        [] => return Ok(None),
        [value] => value,
        // Policy: RFC 9110 section 8.6 — a recipient of "the same decimal value repeated as a
        // comma-separated list ... MAY either reject the message as invalid or replace that
        // invalid field value with a single instance": several lines, or a list, are refused,
        // equal or not.
        _ => return Err("several Content-Length field lines"),
    };
    if value.is_empty() || value.len() > MAX_LENGTH_DIGITS || !value.iter().all(u8::is_ascii_digit)
    {
        return Err("invalid Content-Length");
    }
    Ok(Some(
        value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    ))
}

/// Whether the connection closes after this message (RFC 9112 section 9.3): HTTP/1.1 persists
/// unless `close` is a connection option; HTTP/1.0 persists only with `keep-alive` and without
/// `close`.
fn closes(fields: &[(&[u8], &[u8])], minor: u8) -> bool {
    let option = |name: &[u8]| {
        named(fields, b"connection")
            .flat_map(elements)
            .any(|o| o.eq_ignore_ascii_case(name))
    };
    option(b"close") || (minor == 0 && !option(b"keep-alive"))
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// Reads the response at the start of `buf`; `head_request`: it answers a HEAD request.
pub fn response(buf: &[u8], limits: &Limits, head_request: bool) -> Verdict {
    match read_response(buf, limits, head_request) {
        Ok(Some(head)) => Verdict::Complete(head),
        Ok(None) => Verdict::Partial,
        Err(why) => Verdict::Refused(why),
    }
}

fn read_response(
    buf: &[u8],
    limits: &Limits,
    head_request: bool,
) -> Result<Option<Head>, &'static str> {
    // No empty lines are skipped before a status line: RFC 9112 section 2.2 allows that only
    // before a request-line.
    if buf.starts_with(b"\r") || buf.starts_with(b"\n") {
        return Err("empty line before the status line");
    }
    let (status_line, after) = match line(buf, 0)? {
        Line::Whole(whole, next) => (whole, next),
        Line::Open(open, cr) => {
            if cr {
                status_line_of(open)?;
            } else {
                status_line_prefix(open)?;
            }
            if buf.len() >= limits.max_head {
                return Err("head too large");
            }
            return Ok(None);
        }
    };
    let (minor, status) = status_line_of(status_line)?;
    let Some((fields, len)) = fields(buf, after, limits)? else {
        return Ok(None);
    };
    let body = response_body(&fields, minor, status, head_request)?;
    let close = closes(&fields, minor) || body == Body::UntilClose;
    Ok(Some(Head {
        len,
        body,
        host: None,
        status,
        close,
    }))
}

/// `status-line = HTTP-version SP status-code SP [ reason-phrase ]` (RFC 9112 section 4).
fn status_line_of(status_line: &[u8]) -> Result<(u8, u16), &'static str> {
    if status_line.len() < 12 || status_line[8] != b' ' {
        return Err("malformed status line");
    }
    let minor = version(&status_line[..8]).ok_or("unsupported HTTP version")?;
    let code = &status_line[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err("malformed status code");
    }
    // Policy: the SP before an empty reason-phrase may be left out. The grammar wants it, but
    // "A client SHOULD ignore the reason-phrase content" (section 4) and nothing a client reads
    // depends on it.
    match &status_line[12..] {
        [] => {}
        [b' ', reason @ ..] if reason.iter().all(|b| is_field_content(*b)) => {}
        _ => return Err("malformed reason phrase"),
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    // RFC 9110 section 15: "Values outside the range 100..599 are invalid."
    if !(100..=599).contains(&status) {
        return Err("status outside 100..599");
    }
    Ok((minor, status))
}

/// Whether `open`, the start of a status line, can still become a valid one.
fn status_line_prefix(open: &[u8]) -> Result<(), &'static str> {
    let (version_text, rest) = open.split_at(open.len().min(8));
    let ok = version_prefix(version_text)
        && match rest {
            [] => true,
            [b' ', code_and_reason @ ..] => {
                let (code, reason) = code_and_reason.split_at(code_and_reason.len().min(3));
                // A code in 100..599 starts with 1 to 5.
                code.first().is_none_or(|d| (b'1'..=b'5').contains(d))
                    && code.iter().all(u8::is_ascii_digit)
                    && match reason {
                        [] => true,
                        [b' ', reason @ ..] => reason.iter().all(|b| is_field_content(*b)),
                        _ => false,
                    }
            }
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err("malformed status line")
    }
}

/// How a response's body is framed (RFC 9112 section 6.3).
fn response_body(
    fields: &[(&[u8], &[u8])],
    minor: u8,
    status: u16,
    head_request: bool,
) -> Result<Body, &'static str> {
    let codings: Option<Vec<&[u8]>> = {
        let mut lines = named(fields, b"transfer-encoding").peekable();
        lines
            .peek()
            .is_some()
            .then(|| lines.flat_map(elements).collect())
    };
    let length = content_length(fields)?;
    // Policy: the framing fields are held to the same rules whether or not this response has
    // a body, so that no response the gateway relays could be framed another way by a client
    // that did not know the request's method. RFC 9110 section 15.6.3: 502 is the answer to
    // "an invalid response from an inbound server".
    if let Some(codings) = &codings {
        empty_coding_line(fields)?;
        // RFC 9112 section 6.1: a message in HTTP/1.0 with Transfer-Encoding is to be treated
        // "as if the framing is faulty".
        if minor == 0 {
            return Err("Transfer-Encoding in HTTP/1.0");
        }
        // Section 6.3, item 3: with both, the message "ought to be handled as an error".
        if length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        // Policy: exactly one coding, chunked. Any other makes the body "read until the
        // connection is closed" (item 4) and carries a coding the client never asked for in
        // TE (section 7.4; TE is hop-by-hop, so the client's never reaches the upstream); the
        // gateway relays bodies as they came and refuses such a response (502).
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return Err("Transfer-Encoding other than a single chunked");
        }
    }
    // Item 1: responses to HEAD, 1xx, 204 and 304 end at their head.
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Body::Length(0));
    }
    Ok(match (codings, length) {
        (Some(_), _) => Body::Chunked,
        (None, Some(n)) => Body::Length(n),
        // Item 8: "the message body length is determined by the number of octets received
        // prior to the server closing the connection".
        (None, None) => Body::UntilClose,
    })
}

// ---------------------------------------------------------------------------------------------
// The chunked coding (RFC 9112 section 7.1).

/// Limits on a chunked body, as the gateway is configured with them.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Policy: most hex digits in a chunk size, leading zeros included. Section 7.1:
    /// "Recipients MUST anticipate potentially large hexadecimal numerals and prevent parsing
    /// errors due to integer conversion overflows or precision loss".
    pub max_size_digits: usize,
    /// Policy: most bytes of chunk extensions on one size line, from the first `;` to the CR
    /// included. Section 7.1.1: "A server ought to limit the total length of chunk extensions
    /// received in a request to an amount reasonable for the services provided".
    pub max_extension: usize,
    /// Policy: most bytes of trailer field lines (their CRLFs included, the final empty line
    /// not). Section 7.1.2 lets a recipient discard or refuse what it does not accept.
    pub max_trailer: usize,
}

/// The oracle's verdict on a chunked body at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// The body ends after `end` bytes; `data` is what it carries.
    Done { end: usize, data: Vec<u8> },
    /// It does not end within the buffer, and could still end validly.
    Partial,
    /// No bytes that follow could make it valid; why.
    Refused(&'static str),
}

/// Reads the chunked body at the start of `buf`.
pub fn chunked(buf: &[u8], limits: &ChunkLimits) -> ChunkVerdict {
    let mut data = Vec::new();
    match read_chunked(buf, limits, &mut data) {
        Ok(Some(end)) => ChunkVerdict::Done { end, data },
        Ok(None) => ChunkVerdict::Partial,
        Err(why) => ChunkVerdict::Refused(why),
    }
}

fn read_chunked(
    buf: &[u8],
    limits: &ChunkLimits,
    data: &mut Vec<u8>,
) -> Result<Option<usize>, &'static str> {
    let mut at = 0;
    loop {
        // `chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF`, and the last chunk's size
        // is zero.
        let (size_line, next) = match line(buf, at)? {
            Line::Whole(whole, next) => (whole, next),
            Line::Open(open, cr) => {
                size_line_of(open, limits, !cr)?;
                return Ok(None);
            }
        };
        let size = size_line_of(size_line, limits, false)?;
        at = next;
        if size == 0 {
            return trailers(buf, at, limits);
        }
        let left = (buf.len() - at) as u64;
        if left < size {
            return Ok(None);
        }
        let end = at + size as usize;
        data.extend_from_slice(&buf[at..end]);
        // The chunk data is followed by CRLF, exactly.
        match &buf[end..] {
            [b'\r', b'\n', ..] => at = end + 2,
            [] | [b'\r'] => return Ok(None),
            _ => return Err("chunk data not followed by CRLF"),
        }
    }
}

/// The chunk size of a size line; `open`: the line is not ended yet, its CR still to come
/// (then only checked as the start of one).
fn size_line_of(line: &[u8], limits: &ChunkLimits, open: bool) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > limits.max_size_digits {
        return Err("chunk size too long");
    }
    let rest = &line[digits..];
    if digits == 0 && !(open && rest.is_empty()) {
        return Err("chunk size without hex digits");
    }
    if !rest.is_empty() {
        if !rest.iter().all(|b| is_field_content(*b)) {
            return Err("invalid byte after a chunk size");
        }
        // An open line can still become valid if some ending makes it so; these endings
        // finish every state the grammar can be left in (a name or value to come, a
        // quoted-string or a quoted-pair to close, an extension after whitespace).
        let valid = if open {
            [&b""[..], b"a", b"\"", b"a\"", b";a"]
                .iter()
                .any(|end| chunk_ext(&[rest, end].concat()))
        } else {
            chunk_ext(rest)
        };
        if !valid {
            return Err(if rest.contains(&b';') {
                "invalid chunk extension"
            } else {
                "invalid byte after a chunk size"
            });
        }
        if let Some(semicolon) = rest.iter().position(|b| *b == b';') {
            // From the first `;` (not counted) to the CR (counted; an open line's is still to
            // come).
            if rest.len() - semicolon - 1 + usize::from(!open) > limits.max_extension {
                return Err("chunk extension too long");
            }
        }
    }
    Ok(line[..digits]
        .iter()
        .fold(0u64, |n, d| n << 4 | u64::from(hex(*d))))
}

/// Whether `rest`, the bytes of a size line after its digits, is `chunk-ext` (RFC 9112
/// section 7.1.1): `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`, a name a
/// token, a value a token or a quoted-string. Policy: whitespace after the last extension,
/// before the CRLF, is tolerated (the grammar has BWS before every other delimiter of the
/// extension, and whitespace cannot end the line).
fn chunk_ext(mut rest: &[u8]) -> bool {
    let mut extensions = 0;
    loop {
        rest = skip_ows(rest);
        if rest.is_empty() {
            return extensions > 0;
        }
        let Some(after) = rest.strip_prefix(b";") else {
            return false;
        };
        rest = skip_ows(after);
        let name = rest.iter().take_while(|b| is_tchar(**b)).count();
        if name == 0 {
            return false;
        }
        rest = &rest[name..];
        if let Some(after) = skip_ows(rest).strip_prefix(b"=") {
            rest = skip_ows(after);
            let value = if rest.first() == Some(&b'"') {
                match quoted_string(rest) {
                    Some(len) => len,
                    None => return false,
                }
            } else {
                rest.iter().take_while(|b| is_tchar(**b)).count()
            };
            if value == 0 {
                return false;
            }
            rest = &rest[value..];
        }
        extensions += 1;
    }
}

/// The length of the `quoted-string` at the start of `text` (RFC 9110 section 5.6.4):
/// `DQUOTE *( qdtext / quoted-pair ) DQUOTE`.
fn quoted_string(text: &[u8]) -> Option<usize> {
    let qdtext = |b: u8| {
        b == b'\t'
            || b == b' '
            || b == 0x21
            || (0x23..=0x5b).contains(&b)
            || (0x5d..=0x7e).contains(&b)
            || b >= 0x80
    };
    let mut i = 1;
    loop {
        match *text.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                let quoted = *text.get(i + 1)?;
                if !(quoted == b'\t' || quoted == b' ' || is_field_vchar(quoted)) {
                    return None;
                }
                i += 2;
            }
            b if qdtext(b) => i += 1,
            _ => return None,
        }
    }
}

fn skip_ows(text: &[u8]) -> &[u8] {
    &text[text.iter().take_while(|b| is_ows(**b)).count()..]
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// `trailer-section = *( field-line CRLF )`, then the final CRLF.
fn trailers(
    buf: &[u8],
    mut at: usize,
    limits: &ChunkLimits,
) -> Result<Option<usize>, &'static str> {
    let start = at;
    loop {
        match line(buf, at)? {
            Line::Whole([], next) => return Ok(Some(next)),
            Line::Whole(whole, next) => {
                trailer_line(whole)?;
                at = next;
                if at - start > limits.max_trailer {
                    return Err("trailer section too long");
                }
            }
            Line::Open(open, cr) => {
                // An open trailer line: its bytes so far, and a CR if the buffer ends in one.
                // (a lone CR may be the final line's, which is not counted).
                let seen = if open.is_empty() { 0 } else { buf.len() - at };
                if at - start + seen > limits.max_trailer {
                    return Err("trailer section too long");
                }
                if cr && !open.is_empty() {
                    trailer_line(open)?;
                } else if !open.is_empty() {
                    trailer_prefix(open)?;
                }
                return Ok(None);
            }
        }
    }
}

/// A trailer field line: `field-name ":" OWS field-value OWS`. Obs-fold is refused as in a head.
fn trailer_line(line: &[u8]) -> Result<(), &'static str> {
    field_line(line).map(|_| ())
}

fn trailer_prefix(open: &[u8]) -> Result<(), &'static str> {
    field_line_prefix(open)
}
