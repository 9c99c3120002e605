//! Response heads from upstreams (RFC 9112 sections 4 and 6.3), held to the same rules as
//! requests: a response whose framing could be read two ways is refused (the gateway answers
//! `502` and closes both connections) rather than relayed to a client that might read it the
//! other way.

use std::mem::MaybeUninit;

use super::fields::{Field, Kind, Span, content_length, lines_end_in_crlf, list, lists};
use super::request::Framing;

/// Most field lines a response may have.
pub const RESPONSE_FIELD_ROOM: usize = 128;

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Malformed or ambiguous, with what is wrong.
    Bad(&'static str),
    /// Longer than allowed.
    TooLarge,
}

impl ResponseError {
    /// What is wrong, for logs and the client's error body.
    pub fn message(self) -> &'static str {
        match self {
            ResponseError::Bad(why) => why,
            ResponseError::TooLarge => "response head too large",
        }
    }
}

/// A parsed response head: spans of the upstream connection's buffer.
#[derive(Debug, Default)]
pub struct ResponseHead {
    /// Bytes of the head, the final empty line included.
    pub len: usize,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: Span,
    /// Field lines in order.
    pub fields: Vec<Field>,
    /// How the body is framed (given the request's method).
    pub framing: Framing,
    /// The upstream closes the connection after this response.
    pub close: bool,
    /// `Connection` names fields besides the usual tokens.
    pub connection_names_fields: bool,
}

impl ResponseHead {
    /// Whether `name` is listed in `Connection`, `buf` holding the head.
    pub fn connection_lists(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_names_fields
            && self
                .fields
                .iter()
                .filter(|f| f.kind == Kind::Connection)
                .any(|f| lists(f.value.get(buf), name))
    }

    /// An interim (1xx) response other than `101`: a final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parse the response head at the start of `buf` into `head`; `head_request`: the request was
/// `HEAD` (so no body, whatever the fields say). `Ok(false)`: not complete yet.
pub fn parse(
    buf: &[u8],
    max_head: usize,
    max_fields: usize,
    head_request: bool,
    head: &mut ResponseHead,
) -> Result<bool, ResponseError> {
    // Room for the allowed number of fields, left uninitialised: initialising it would cost
    // more than parsing a small response.
    let mut room = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; RESPONSE_FIELD_ROOM];
    let allowed = max_fields.min(RESPONSE_FIELD_ROOM);
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut room[..allowed],
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(ResponseError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Bad("malformed response head")),
    };
    if len > max_head {
        return Err(ResponseError::TooLarge);
    }
    head.len = len;
    head.minor = response.version.unwrap_or(1);
    head.status = response.code.unwrap_or_default();
    head.reason = Span::of(buf, response.reason.unwrap_or_default().as_bytes());
    if !(100..=599).contains(&head.status) {
        return Err(ResponseError::Bad("invalid response status"));
    }
    head.fields.clear();
    head.connection_names_fields = false;
    let mut length = None;
    let mut lengths = 0;
    let mut codings = 0;
    let mut chunked = false;
    let mut close = head.minor == 0;
    let mut keep_alive = false;
    for field in response.headers.iter() {
        let value = field.value;
        let name = field.name.as_bytes();
        let line = Field::of(buf, name, value, Kind::of(name));
        match line.kind {
            Kind::ContentLength => {
                lengths += 1;
                length = Some(
                    content_length(value).ok_or(ResponseError::Bad("malformed Content-Length"))?,
                );
            }
            Kind::TransferEncoding => {
                for coding in list(value) {
                    codings += 1;
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
                if list(value).next().is_none() {
                    codings += 2;
                }
            }
            Kind::Connection => {
                for token in list(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !token.eq_ignore_ascii_case(b"upgrade") {
                        head.connection_names_fields = true;
                    }
                }
            }
            _ => {}
        }
        head.fields.push(line);
    }
    // CRLF only, and no empty line before the status line (only servers skip those).
    if !buf.starts_with(b"HTTP/") || !lines_end_in_crlf(&buf[..len], 0, &head.fields) {
        return Err(ResponseError::Bad("response line not ended by CRLF"));
    }
    if head.minor == 0 && keep_alive && !lists_close(head, buf) {
        close = false;
    }
    head.close = close;
    if codings > 0 && lengths > 0 {
        return Err(ResponseError::Bad(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if lengths > 1 {
        return Err(ResponseError::Bad("several Content-Length values"));
    }
    if codings > 0 && (codings > 1 || !chunked) {
        return Err(ResponseError::Bad(
            "Transfer-Encoding other than a single chunked",
        ));
    }
    if codings > 0 && head.minor == 0 {
        return Err(ResponseError::Bad(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    }
    let bodiless =
        head_request || (100..200).contains(&head.status) || matches!(head.status, 204 | 304);
    head.framing = if bodiless {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if head.framing == Framing::UntilClose {
        head.close = true;
    }
    Ok(true)
}

fn lists_close(head: &ResponseHead, buf: &[u8]) -> bool {
    head.fields
        .iter()
        .any(|f| f.kind == Kind::Connection && lists(f.value.get(buf), b"close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(raw: &[u8], head_request: bool) -> Result<ResponseHead, ResponseError> {
        let mut head = ResponseHead::default();
        assert!(parse(raw, 64 * 1024, 100, head_request, &mut head)?);
        Ok(head)
    }

    #[test]
    fn framing_follows_status_method_and_fields() {
        let ok =
            |raw: &[u8], head_request| parse_all(raw, head_request).expect("as written").framing;
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Framing::Length(5)
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Framing::None
        );
        assert_eq!(ok(b"HTTP/1.1 204 No Content\r\n\r\n", false), Framing::None);
        assert_eq!(
            ok(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::None
        );
        assert_eq!(ok(b"HTTP/1.1 100 Continue\r\n\r\n", false), Framing::None);
        assert_eq!(
            ok(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        let until_close = parse_all(b"HTTP/1.1 200 OK\r\n\r\n", false).expect("as written");
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(until_close.close);
        assert!(
            parse_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
                .expect("as written")
                .close
        );
        assert!(
            !parse_all(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .expect("as written")
            .close
        );
    }

    #[test]
    fn ambiguous_or_malformed_responses_are_refused() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx : 1\r\n\r\n",
            b"HTTP/1.1 200 OK\nx: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 099 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"\nHTTP/1.1 200 OK\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                parse_all(raw, false).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut head = ResponseHead::default();
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(70_000));
        assert_eq!(
            parse(long.as_bytes(), 64 * 1024, 100, false, &mut head),
            Err(ResponseError::TooLarge)
        );
    }
}
