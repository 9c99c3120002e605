//! The chunked transfer coding (RFC 9112 section 7.1), checked byte by byte as it passes: the
//! gateway relays chunked bodies as they came, so it only needs to know where each chunk and
//! the whole body end, and that nothing in between is ambiguous.

use super::fields::{Kind, is_field_value_byte, is_refused_in_trailers, is_token_byte};
use crate::store::KeyHeaders;

/// Hex digits a chunk size may have: 15 keep every size below 2^60, far above any body limit,
/// and refuse the overflow tricks (`ffffffffffffffff1`) without arithmetic checks.
const MAX_SIZE_DIGITS: u8 = 15;
/// Bytes of chunk extensions allowed per chunk (nobody uses them; some servers choke on them).
pub const MAX_EXTENSION_BYTES: usize = 1024;
/// Bytes of chunk extensions allowed per body: without it, a body of one-byte chunks could carry
/// a thousand times its data in extensions, each passed on.
pub const MAX_BODY_EXTENSION_BYTES: usize = 16 * 1024;
/// Bytes of trailer section allowed after the last chunk.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The size line is not hex digits, optionally followed by extensions.
    BadSize,
    /// More hex digits than any body here can need.
    SizeTooLong,
    /// Chunk extensions longer than [`MAX_EXTENSION_BYTES`] in a chunk, or than
    /// [`MAX_BODY_EXTENSION_BYTES`] in the body.
    ExtensionTooLong,
    /// A line did not end in CRLF where it had to (bare LF, bare CR, data longer than its size).
    BadLineEnd,
    /// A trailer line is not a field line.
    BadTrailer,
    /// The trailer section is longer than [`MAX_TRAILER_BYTES`].
    TrailerTooLong,
    /// A request's trailer names one of the gateway's own fields (`X-Unitgate-*`).
    InternalTrailer,
    /// A request's trailer names a field that frames, routes, forwards or authenticates it
    /// ([`is_refused_in_trailers`]).
    RefusedTrailer,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ChunkError {}

impl ChunkError {
    /// What is wrong, for error bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkError::BadSize => "malformed chunk size",
            ChunkError::SizeTooLong => "chunk size too long",
            ChunkError::ExtensionTooLong => "chunk extension too long",
            ChunkError::BadLineEnd => "chunk line not ended by CRLF",
            ChunkError::BadTrailer => "malformed trailer field",
            ChunkError::TrailerTooLong => "trailer section too long",
            ChunkError::InternalTrailer => "X-Unitgate-* field in the trailers",
            ChunkError::RefusedTrailer => {
                "field in the trailers that only the header section may carry"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a size line.
    SizeStart,
    /// Reading hex digits.
    Size { digits: u8 },
    /// Whitespace after the size: only a `;` may follow it.
    SizeSpace,
    /// In chunk extensions, up to the CR.
    Extension(Ext),
    /// After the CR of a size line.
    SizeLf,
    /// In chunk data, this many bytes left.
    Data(u64),
    /// After chunk data, expecting CR.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field's name.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    /// After the CR of a trailer line.
    TrailerLf,
    /// After the CR of the final empty line.
    FinalLf,
    /// The body ended.
    Done,
}

/// Where in a chunk extension (`;name[=value]`, RFC 9112 section 7.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// After `;`: whitespace, then a name.
    BeforeName,
    /// In the name.
    Name,
    /// Whitespace after the name: `=`, `;` or the end may follow.
    AfterName,
    /// After `=`: whitespace, then a value.
    BeforeValue,
    /// In a token value.
    Value,
    /// Whitespace after a value, or right after a quoted one: `;` or the end may follow.
    AfterValue,
    /// Inside a quoted-string value.
    Quoted,
    /// After a backslash inside a quoted string.
    Escaped,
}

/// One step of [`Chunked::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input this step went over (to relay as they are).
    pub consumed: usize,
    /// Chunk data among them (to hand on decoded), as a range of the input.
    pub data: std::ops::Range<usize>,
}

/// Bytes of a trailer name kept to tell what it names: more than the longest name
/// [`is_refused_in_trailers`] knows, and the `X-Unitgate-` prefix.
const NAME_KEPT: usize = 24;

/// Follows a chunked body through its framing.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    extension: usize,
    /// Extension bytes of the whole body so far.
    extensions: usize,
    trailer: usize,
    /// Refuse trailer fields a request may not carry (a request's body).
    refuse_fields: bool,
    /// Its route's routing-key header fields, refused in its trailers too.
    key_headers: Option<KeyHeaders>,
    /// The current trailer name's first bytes, how long it is so far, and whether it holds an
    /// underscore.
    name: [u8; NAME_KEPT],
    name_len: usize,
    name_underscore: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    /// At the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            extension: 0,
            extensions: 0,
            trailer: 0,
            refuse_fields: false,
            key_headers: None,
            name: [0; NAME_KEPT],
            name_len: 0,
            name_underscore: false,
        }
    }

    /// At the start of a request's body: relayed as it came, so a trailer field named like the
    /// gateway's own (`X-Unitgate-*`, which it strips from every request head), or one that
    /// only a header section may carry (framing, routing, forwarding, credentials:
    /// [`is_refused_in_trailers`]), is refused rather than passed to an upstream that may merge
    /// trailers into the header section. So is one named like a header field its route reads
    /// the routing key from (`key_headers`).
    pub fn for_request(key_headers: Option<KeyHeaders>) -> Self {
        Self {
            refuse_fields: true,
            key_headers,
            ..Self::new()
        }
    }

    /// Whether the body has ended (last chunk, trailers and final CRLF seen).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Go over `input` up to the end of the body or the end of the first stretch of chunk data,
    /// whichever comes first. Returns what was gone over and where the data in it is.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            if let State::Data(left) = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - at);
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Step {
                    consumed: at + take,
                    data: at..at + take,
                });
            }
            self.byte(input[at])?;
            at += 1;
            if self.state == State::Done {
                break;
            }
        }
        Ok(Step {
            consumed: at,
            data: at..at,
        })
    }

    /// Go over all of `input` (or up to the end of the body), relaying rather than decoding.
    /// Returns the bytes gone over.
    pub fn skip(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < input.len() && !self.is_done() {
            at += self.step(&input[at..])?.consumed;
        }
        Ok(at)
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::SizeStart => {
                let digit = hex(b).ok_or(ChunkError::BadSize)?;
                self.size = digit;
                State::Size { digits: 1 }
            }
            State::Size { digits } => match (hex(b), b) {
                (Some(_), _) if digits == MAX_SIZE_DIGITS => return Err(ChunkError::SizeTooLong),
                (Some(digit), _) => {
                    self.size = self.size << 4 | digit;
                    State::Size { digits: digits + 1 }
                }
                (None, b'\r') => State::SizeLf,
                (None, b';') => {
                    self.extension = 0;
                    State::Extension(Ext::BeforeName)
                }
                (None, b' ' | b'\t') => {
                    // Whitespace before an extension counts as part of it: unbounded, it
                    // would be a size line of any length passed on.
                    self.extension = 0;
                    self.extension_byte()?;
                    State::SizeSpace
                }
                _ => return Err(ChunkError::BadSize),
            },
            State::SizeSpace => match b {
                b' ' | b'\t' => {
                    self.extension_byte()?;
                    State::SizeSpace
                }
                b';' => State::Extension(Ext::BeforeName),
                _ => return Err(ChunkError::BadSize),
            },
            State::Extension(part) => {
                self.extension_byte()?;
                let space = matches!(b, b' ' | b'\t');
                match (part, b) {
                    (Ext::BeforeName | Ext::BeforeValue | Ext::AfterName | Ext::AfterValue, _)
                        if space =>
                    {
                        State::Extension(part)
                    }
                    (Ext::Value, _) if space => State::Extension(Ext::AfterValue),
                    (Ext::BeforeName | Ext::Name, b) if is_token_byte(b) => {
                        State::Extension(Ext::Name)
                    }
                    (Ext::Name, _) if space => State::Extension(Ext::AfterName),
                    (Ext::Name | Ext::AfterName, b'=') => State::Extension(Ext::BeforeValue),
                    (Ext::Name | Ext::AfterName | Ext::Value | Ext::AfterValue, b';') => {
                        State::Extension(Ext::BeforeName)
                    }
                    (Ext::Name | Ext::AfterName | Ext::Value | Ext::AfterValue, b'\r') => {
                        State::SizeLf
                    }
                    (Ext::BeforeValue, b'"') => State::Extension(Ext::Quoted),
                    (Ext::BeforeValue, b) if is_token_byte(b) => State::Extension(Ext::Value),
                    (Ext::Quoted, b'"') => State::Extension(Ext::AfterValue),
                    (Ext::Quoted, b'\\') => State::Extension(Ext::Escaped),
                    (Ext::Quoted | Ext::Escaped, b) if is_field_value_byte(b) => {
                        State::Extension(Ext::Quoted)
                    }
                    (Ext::Value, b) if is_token_byte(b) => State::Extension(Ext::Value),
                    (_, b'\n') => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadSize),
                }
            }
            State::SizeLf => match b {
                b'\n' if self.size == 0 => {
                    self.trailer = 0;
                    State::TrailerStart
                }
                b'\n' => State::Data(self.size),
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::Data(_) => unreachable!("data is taken by `step`"),
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::TrailerStart => match b {
                b'\r' => State::FinalLf,
                b if is_token_byte(b) => {
                    (self.name_len, self.name_underscore) = (0, false);
                    self.name_byte(b);
                    self.trailer_byte(State::TrailerName)?
                }
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerName => match b {
                b':' if self.refuse_fields => {
                    self.check_name()?;
                    self.trailer_byte(State::TrailerValue)?
                }
                b':' => self.trailer_byte(State::TrailerValue)?,
                b if is_token_byte(b) => {
                    self.name_byte(b);
                    self.trailer_byte(State::TrailerName)?
                }
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerValue => match b {
                b'\r' => self.trailer_byte(State::TrailerLf)?,
                b if is_field_value_byte(b) => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerLf => match b {
                b'\n' => self.trailer_byte(State::TrailerStart)?,
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::FinalLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::Done => State::Done,
        };
        Ok(())
    }

    /// Count a byte of a chunk extension against both limits.
    fn extension_byte(&mut self) -> Result<(), ChunkError> {
        self.extension += 1;
        self.extensions += 1;
        if self.extension > MAX_EXTENSION_BYTES || self.extensions > MAX_BODY_EXTENSION_BYTES {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(())
    }

    /// Keep a trailer name's byte.
    fn name_byte(&mut self, b: u8) {
        if let Some(kept) = self.name.get_mut(self.name_len) {
            *kept = b;
        }
        self.name_underscore |= b == b'_';
        self.name_len += 1;
    }

    /// Whether the trailer name just read may be in a request's trailers.
    fn check_name(&self) -> Result<(), ChunkError> {
        // A longer name is cut: the names refused whole are shorter, so it can only match a
        // prefix refused (`X-Unitgate-`, `X-Forwarded-`), as the whole name would.
        let name = &self.name[..self.name_len.min(NAME_KEPT)];
        if matches!(Kind::of(name), Kind::Internal | Kind::HopMarker) {
            return Err(ChunkError::InternalTrailer);
        }
        if self.name_underscore || is_refused_in_trailers(name) {
            return Err(ChunkError::RefusedTrailer);
        }
        // A name longer than what is kept is compared by its length and what is kept of it.
        let is_key = |key: &[u8]| {
            key.len() == self.name_len
                && key
                    .get(..name.len())
                    .is_some_and(|kept| kept.eq_ignore_ascii_case(name))
        };
        if self
            .key_headers
            .as_ref()
            .is_some_and(|keys| keys.iter().any(|key| is_key(key)))
        {
            return Err(ChunkError::RefusedTrailer);
        }
        Ok(())
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailer += 1;
        if self.trailer > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailerTooLong);
        }
        Ok(next)
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data of a whole body, or the error; fed in pieces of `piece` bytes.
    fn decode(body: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut chunked = Chunked::new();
        let mut data = Vec::new();
        let mut at = 0;
        while at < body.len() && !chunked.is_done() {
            let end = (at + piece).min(body.len());
            let input = &body[at..end];
            let step = chunked.step(input)?;
            data.extend_from_slice(&input[step.data]);
            at += step.consumed;
        }
        assert!(chunked.is_done(), "body not ended");
        Ok((data, at))
    }

    #[test]
    fn bodies_are_followed_to_their_end_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nx-check: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (data, end) = decode(body, piece).expect("as written");
            assert_eq!(data, b"hello world");
            assert_eq!(&body[end..], b"NEXT", "piece {piece}");
        }
        let mut chunked = Chunked::new();
        assert_eq!(chunked.skip(body), Ok(body.len() - 4));
    }

    #[test]
    fn a_request_may_not_carry_the_gateways_fields_in_its_trailers() {
        let key_headers: KeyHeaders = [&b"x-user-id"[..], b"x-tenant-and-user-routing-key"]
            .into_iter()
            .map(Box::from)
            .collect();
        for trailer in [
            "X-Unitgate-Unit: u9",
            "x-unitgate-hop: forged",
            "X-UNITGATE-REGION: sz",
        ] {
            let body = format!("1\r\na\r\n0\r\n{trailer}\r\n\r\n");
            for piece in [1, 3, 100] {
                let mut chunked = Chunked::for_request(None);
                let mut at = 0;
                let result = loop {
                    let end = (at + piece).min(body.len());
                    match chunked.step(&body.as_bytes()[at..end]) {
                        Ok(step) => at += step.consumed,
                        Err(error) => break Err(error),
                    }
                    if chunked.is_done() {
                        break Ok(());
                    }
                };
                assert_eq!(result, Err(ChunkError::InternalTrailer), "{trailer}");
            }
            // A response's trailers are the upstream's business.
            let (data, _) = decode(body.as_bytes(), 2).expect("a response's trailers pass");
            assert_eq!(data, b"a");
        }
        for trailer in [
            "Content-Length: 5",
            "transfer-encoding: chunked",
            "Host: admin.internal",
            "X-Forwarded-For: 10.0.0.1",
            "x-forwarded-proto: https",
            "X-Forwarded-Host: admin",
            "Forwarded: for=10.0.0.1",
            "X-Real-IP: 10.0.0.1",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "Connection: close",
            "Authorization: Bearer x",
            "Cookie: uid=1",
            "X_User_Id: 4321",
            "x-a-name-far-longer-than-twenty-four_bytes: 1",
            "X-Forwarded-Port: 1",
            "X-Forwarded-Client-Cert-Chain-Of-Many-Bytes: x",
            "X-Original-URL: /admin",
            "X-HTTP-Method-Override: DELETE",
            "True-Client-IP: 10.0.0.1",
            "tracestate: a=1",
            // The route's routing-key fields, in any case; a long one by its length and the
            // bytes kept of it.
            "X-User-Id: 4321",
            "x-tenant-and-user-routing-key: 7",
        ] {
            let body = format!("1\r\na\r\n0\r\n{trailer}\r\n\r\n");
            let mut chunked = Chunked::for_request(Some(key_headers.clone()));
            let mut at = 0;
            let result = loop {
                match chunked.step(&body.as_bytes()[at..]) {
                    Ok(step) => at += step.consumed,
                    Err(error) => break Err(error),
                }
                if chunked.is_done() {
                    break Ok(());
                }
            };
            assert_eq!(result, Err(ChunkError::RefusedTrailer), "{trailer}");
        }
        for name in [
            "x-user-i",
            "x-user-idx",
            "x-tenant-and-user-routing-keys",
            "x-unitgate-",
            "x-unitgat",
            "x-unitgatex-unit",
            "x-check",
            "x-checksum-of-the-whole-body-as-sent",
            "grpc-status-details",
            "content-md5",
        ] {
            let body = format!("1\r\na\r\n0\r\n{name}: 1\r\n\r\n");
            let mut chunked = Chunked::for_request(Some(key_headers.clone()));
            let mut at = 0;
            while !chunked.is_done() {
                at += chunked.step(&body.as_bytes()[at..]).expect(name).consumed;
            }
            assert_eq!(at, body.len(), "{name}");
        }
    }

    #[test]
    fn tricks_with_sizes_lines_and_trailers_are_refused() {
        let refused: &[(&[u8], ChunkError)] = &[
            (b"+5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"1000000000000000\r\n", ChunkError::SizeTooLong),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5;a\nb\r\nhello\r\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5;\x00\r\nhello\r\n", ChunkError::BadSize),
            (b"5;\r\nhello\r\n", ChunkError::BadSize),
            (b"5;=x\r\nhello\r\n", ChunkError::BadSize),
            (b"5;a=\r\nhello\r\n", ChunkError::BadSize),
            (b"5;a b\r\nhello\r\n", ChunkError::BadSize),
            (b"5;a=b c\r\nhello\r\n", ChunkError::BadSize),
            (b"5;a=\"b\"c\r\nhello\r\n", ChunkError::BadSize),
            (b"0\r\nbad name: x\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\n folded\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nx: a\x00b\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nx: 1\n\r\n", ChunkError::BadTrailer),
            (b"0\r\n\n", ChunkError::BadTrailer),
            (b"0\r\n\rX", ChunkError::BadLineEnd),
        ];
        for (body, error) in refused {
            assert_eq!(
                decode(body, 1).err(),
                Some(*error),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!("1;{}\r\n", "a".repeat(MAX_EXTENSION_BYTES + 1));
        assert_eq!(
            Chunked::new().skip(long.as_bytes()),
            Err(ChunkError::ExtensionTooLong)
        );
        let spaced = format!("1{};a\r\n", " ".repeat(MAX_EXTENSION_BYTES + 1));
        assert_eq!(
            Chunked::new().skip(spaced.as_bytes()),
            Err(ChunkError::ExtensionTooLong)
        );
        let trailer = format!("0\r\nx: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(
            Chunked::new().skip(trailer.as_bytes()),
            Err(ChunkError::TrailerTooLong)
        );
    }

    #[test]
    fn extensions_are_bounded_per_chunk_and_per_body() {
        let ext = format!(";e={}", "x".repeat(MAX_EXTENSION_BYTES - 3));
        let chunk = format!("1{ext}\r\na\r\n");
        // Up to the per-body limit, they pass.
        let within = MAX_BODY_EXTENSION_BYTES / MAX_EXTENSION_BYTES;
        let body = format!("{}0\r\n\r\n", chunk.repeat(within));
        assert_eq!(
            decode(body.as_bytes(), 100).expect("within").0.len(),
            within
        );
        // One chunk more is too much, though each chunk alone is within its limit.
        let body = format!("{}0\r\n\r\n", chunk.repeat(within + 1));
        assert_eq!(
            decode(body.as_bytes(), 100),
            Err(ChunkError::ExtensionTooLong)
        );
        let long = format!("1;e={}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_EXTENSION_BYTES));
        assert_eq!(
            decode(long.as_bytes(), 100),
            Err(ChunkError::ExtensionTooLong)
        );
    }

    #[test]
    fn extensions_may_follow_whitespace_and_sizes_may_have_leading_zeros() {
        assert_eq!(
            decode(b"005 ;a=b\r\nhello\r\n0\r\n\r\n", 1)
                .expect("as written")
                .0,
            b"hello"
        );
        assert_eq!(
            decode(b"5 ; a = \"q;x\" ;b\r\nhello\r\n0\r\n\r\n", 1)
                .expect("as written")
                .0,
            b"hello"
        );
        assert_eq!(
            decode(b"A\r\n0123456789\r\n00\r\n\r\n", 4)
                .expect("as written")
                .0,
            b"0123456789"
        );
    }
}
