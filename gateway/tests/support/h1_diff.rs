//! The differential check of the HTTP/1.1 codec: the same bytes through `gateway::h1` and
//! through the oracle (`h1_oracle`, declared beside this module at the crate root), and an
//! error whenever one accepts what the other refuses or they disagree on where the message
//! ends: the head's length and the body's framing (its `Content-Length`, where a chunked body
//! ends and what it carries), the host a request is for, a response's status, and whether the
//! connection closes after it.
//!
//! A partial message may be waited on by the gateway even where the oracle already sees it
//! can never be valid (the gateway finds out when the head ends or its limit is reached), but
//! the gateway must never refuse a partial message that could still be valid, never wait on
//! one the oracle finds complete, and never wait past its head limit.
//!
//! Used by the fuzz targets in gateway/fuzz and by gateway/tests/fuzz_corpus.rs.

#![allow(dead_code)]

use std::fmt;

use gateway::h1::chunked::{self, Chunked};
use gateway::h1::request::{self, Framing, RequestHead};
use gateway::h1::response::{self, ResponseHead};

use crate::h1_oracle::{self as oracle, Body, ChunkVerdict, Verdict};

/// Disagreements the gateway is known to have with the oracle, where the gateway is wrong and
/// a fix is pending: each names the disagreement's `kind`. The fuzz targets pass over them so
/// that fuzzing goes on finding others; the corpus test checks that the seeds named `gap-*`
/// still show them (and the list shrinks as the gateway is fixed).
pub const KNOWN_GAPS: &[&str] = &[];

/// Request limits the check runs with: the gateway's defaults, and small ones that fuzzed
/// inputs reach.
pub const REQUEST_LIMITS: [request::Limits; 2] = [
    request::Limits {
        max_line: 8 * 1024,
        max_head: 64 * 1024,
        max_headers: 100,
    },
    request::Limits {
        max_line: 60,
        max_head: 300,
        max_headers: 6,
    },
];

/// Response limits the check runs with: (max_head, max_fields).
pub const RESPONSE_LIMITS: [(usize, usize); 2] = [(64 * 1024, 100), (300, 6)];

/// The gateway's chunked limits, as policy for the oracle (the digit count is the gateway's
/// stated bound: sizes below 2^60).
pub const CHUNK_LIMITS: oracle::ChunkLimits = oracle::ChunkLimits {
    max_size_digits: 15,
    max_extension: chunked::MAX_EXTENSION_BYTES,
    max_trailer: chunked::MAX_TRAILER_BYTES,
};

/// One disagreement.
#[derive(Debug, Clone)]
pub struct Disagreement {
    /// What kind of disagreement: stable across inputs, so known gaps can name it.
    pub kind: String,
    /// The details of this one.
    pub detail: String,
}

impl Disagreement {
    fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    /// Whether it is one of [`KNOWN_GAPS`] (a chunked one also in a request's or response's
    /// body).
    pub fn is_known_gap(&self) -> bool {
        KNOWN_GAPS.iter().any(|gap| {
            self.kind == *gap
                || self
                    .kind
                    .strip_suffix(gap)
                    .is_some_and(|body| body.ends_with("body: "))
        })
    }
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Bytes as an escaped string, for reports.
pub fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// What differs between two heads, as a kind: `<what>: heads differ in len, close`.
fn differing(what: &str, got: &oracle::Head, expected: &oracle::Head) -> String {
    let mut fields = Vec::new();
    if got.len != expected.len {
        fields.push("len");
    }
    if got.body != expected.body {
        fields.push("body");
    }
    if got.host != expected.host {
        fields.push("host");
    }
    if got.status != expected.status {
        fields.push("status");
    }
    if got.close != expected.close {
        fields.push("close");
    }
    format!("{what}: heads differ in {}", fields.join(", "))
}

fn body_of(framing: Framing) -> Body {
    match framing {
        Framing::None => Body::Length(0),
        Framing::Length(n) => Body::Length(n),
        Framing::Chunked => Body::Chunked,
        Framing::UntilClose => Body::UntilClose,
    }
}

/// Whether a head could have ended within `buf`, however its line ends are read: an empty line
/// (LF or CRLF) follows a line that is not empty. Past that, every parser has either read a head
/// or refused one.
fn end_seen(buf: &[u8]) -> bool {
    let mut lines = buf.split(|b| *b == b'\n');
    let _unended = lines.next_back();
    let mut started = false;
    for line in lines {
        let empty = line.is_empty() || line == b"\r";
        if empty && started {
            return true;
        }
        started |= !empty;
    }
    false
}

/// Checks the request at the start of `buf` under every limit set.
pub fn check_request(buf: &[u8]) -> Result<(), Disagreement> {
    for limits in &REQUEST_LIMITS {
        check_request_with(buf, limits)?;
    }
    Ok(())
}

fn check_request_with(buf: &[u8], limits: &request::Limits) -> Result<(), Disagreement> {
    let oracle_limits = oracle::Limits {
        max_line: limits.max_line,
        max_head: limits.max_head,
        max_fields: limits.max_headers,
    };
    let mut head = RequestHead::default();
    let gateway = request::parse(buf, limits, &mut head);
    let verdict = oracle::request(buf, &oracle_limits);
    let at = format!("limits {limits:?}");
    match (gateway, verdict) {
        (Ok(true), Verdict::Complete(expected)) => {
            let host = head.host_or_authority().map(|s| s.get(buf).to_vec());
            let got = oracle::Head {
                len: head.len,
                body: body_of(head.framing),
                host,
                status: 0,
                close: head.close,
            };
            if got != expected {
                return Err(Disagreement::new(
                    differing("request", &got, &expected),
                    format!("{at}: gateway {got:?}, oracle {expected:?}"),
                ));
            }
            if got.body == Body::Chunked {
                check_chunked(&buf[got.len..]).map_err(|d| {
                    Disagreement::new(format!("request body: {}", d.kind), d.detail)
                })?;
            }
            Ok(())
        }
        (Ok(true), Verdict::Refused(why)) => Err(Disagreement::new(
            format!("request: gateway accepts, oracle refuses: {why}"),
            at,
        )),
        (Ok(true), Verdict::Partial) => Err(Disagreement::new(
            "request: gateway accepts a head the oracle finds incomplete",
            format!("{at}: head len {}", head.len),
        )),
        (Ok(false), Verdict::Complete(expected)) => Err(Disagreement::new(
            "request: gateway waits on a complete head",
            format!("{at}: oracle {expected:?}"),
        )),
        (Ok(false), Verdict::Partial) => Ok(()),
        (Ok(false), Verdict::Refused(why)) => {
            if buf.len() >= limits.max_head {
                Err(Disagreement::new(
                    "request: gateway waits past its head limit",
                    format!("{at}: oracle refuses: {why}"),
                ))
            } else if end_seen(buf) {
                Err(Disagreement::new(
                    "request: gateway waits after an empty line",
                    format!("{at}: oracle refuses: {why}"),
                ))
            } else {
                Ok(())
            }
        }
        (Err(error), Verdict::Complete(expected)) => Err(Disagreement::new(
            format!(
                "request: gateway refuses ({}), oracle accepts",
                error.message()
            ),
            format!("{at}: oracle {expected:?}"),
        )),
        (Err(error), Verdict::Partial) => Err(Disagreement::new(
            format!(
                "request: gateway refuses ({}) a partial head that could still be valid",
                error.message()
            ),
            at,
        )),
        (Err(_), Verdict::Refused(_)) => Ok(()),
    }
}

/// Checks the response at the start of `buf`, as the answer to a HEAD request and to another,
/// under every limit set.
pub fn check_response(buf: &[u8]) -> Result<(), Disagreement> {
    for (max_head, max_fields) in RESPONSE_LIMITS {
        for head_request in [false, true] {
            check_response_with(buf, max_head, max_fields, head_request)?;
        }
    }
    Ok(())
}

fn check_response_with(
    buf: &[u8],
    max_head: usize,
    max_fields: usize,
    head_request: bool,
) -> Result<(), Disagreement> {
    let oracle_limits = oracle::Limits {
        max_line: max_head,
        max_head,
        max_fields,
    };
    let mut head = ResponseHead::default();
    let gateway = response::parse(buf, max_head, max_fields, head_request, &mut head);
    let verdict = oracle::response(buf, &oracle_limits, head_request);
    let at = format!("max_head {max_head}, max_fields {max_fields}, HEAD request {head_request}");
    match (gateway, verdict) {
        (Ok(true), Verdict::Complete(expected)) => {
            let got = oracle::Head {
                len: head.len,
                body: body_of(head.framing),
                host: None,
                status: head.status,
                close: head.close,
            };
            if got != expected {
                return Err(Disagreement::new(
                    differing("response", &got, &expected),
                    format!("{at}: gateway {got:?}, oracle {expected:?}"),
                ));
            }
            if got.body == Body::Chunked {
                check_chunked(&buf[got.len..]).map_err(|d| {
                    Disagreement::new(format!("response body: {}", d.kind), d.detail)
                })?;
            }
            Ok(())
        }
        (Ok(true), Verdict::Refused(why)) => Err(Disagreement::new(
            format!("response: gateway accepts, oracle refuses: {why}"),
            at,
        )),
        (Ok(true), Verdict::Partial) => Err(Disagreement::new(
            "response: gateway accepts a head the oracle finds incomplete",
            format!("{at}: head len {}", head.len),
        )),
        (Ok(false), Verdict::Complete(expected)) => Err(Disagreement::new(
            "response: gateway waits on a complete head",
            format!("{at}: oracle {expected:?}"),
        )),
        (Ok(false), Verdict::Partial) => Ok(()),
        (Ok(false), Verdict::Refused(why)) => {
            if buf.len() >= max_head {
                Err(Disagreement::new(
                    "response: gateway waits past its head limit",
                    format!("{at}: oracle refuses: {why}"),
                ))
            } else if end_seen(buf) {
                Err(Disagreement::new(
                    "response: gateway waits after an empty line",
                    format!("{at}: oracle refuses: {why}"),
                ))
            } else {
                Ok(())
            }
        }
        (Err(error), Verdict::Complete(expected)) => Err(Disagreement::new(
            format!(
                "response: gateway refuses ({}), oracle accepts",
                error.message()
            ),
            format!("{at}: oracle {expected:?}"),
        )),
        (Err(error), Verdict::Partial) => Err(Disagreement::new(
            format!(
                "response: gateway refuses ({}) a partial head that could still be valid",
                error.message()
            ),
            at,
        )),
        (Err(_), Verdict::Refused(_)) => Ok(()),
    }
}

/// What the gateway's chunked follower makes of `body`, fed in pieces of `piece` bytes: where
/// the body ends (or `None` if not within `body`) and the data it carries.
fn follow(body: &[u8], piece: usize) -> Result<(Option<usize>, Vec<u8>), chunked::ChunkError> {
    let mut follower = Chunked::new();
    let mut data = Vec::new();
    let mut at = 0;
    while at < body.len() && !follower.is_done() {
        let end = (at + piece).min(body.len());
        let input = &body[at..end];
        let step = follower.step(input)?;
        data.extend_from_slice(&input[step.data]);
        at += step.consumed;
    }
    Ok((follower.is_done().then_some(at), data))
}

/// Checks the chunked body at the start of `buf`: the gateway's follower, fed all at once,
/// byte by byte and through `skip`, against the oracle.
pub fn check_chunked(buf: &[u8]) -> Result<(), Disagreement> {
    let whole = follow(buf, buf.len().max(1));
    let bytes = follow(buf, 1);
    if whole != bytes {
        return Err(Disagreement::new(
            "chunked: the follower reads differently byte by byte",
            format!("all at once {whole:?}, byte by byte {bytes:?}"),
        ));
    }
    let mut follower = Chunked::new();
    let skipped = follower.skip(buf).map(|n| follower.is_done().then_some(n));
    if skipped != whole.as_ref().map(|(end, _)| *end).map_err(|e| *e) {
        return Err(Disagreement::new(
            "chunked: skip ends elsewhere than step",
            format!("skip {skipped:?}, step {whole:?}"),
        ));
    }
    match (whole, oracle::chunked(buf, &CHUNK_LIMITS)) {
        (
            Ok((Some(end), data)),
            ChunkVerdict::Done {
                end: expected,
                data: carried,
            },
        ) => {
            if end != expected {
                return Err(Disagreement::new(
                    "chunked: the body ends elsewhere",
                    format!("gateway {end}, oracle {expected}"),
                ));
            }
            if data != carried {
                return Err(Disagreement::new(
                    "chunked: different data",
                    format!("gateway {}, oracle {}", escaped(&data), escaped(&carried)),
                ));
            }
            Ok(())
        }
        (Ok((Some(end), _)), ChunkVerdict::Refused(why)) => Err(Disagreement::new(
            format!("chunked: gateway accepts, oracle refuses: {why}"),
            format!("gateway ends at {end}"),
        )),
        (Ok((Some(end), _)), ChunkVerdict::Partial) => Err(Disagreement::new(
            "chunked: gateway ends a body the oracle finds unfinished",
            format!("gateway ends at {end}"),
        )),
        (Ok((None, _)), ChunkVerdict::Done { end, .. }) => Err(Disagreement::new(
            "chunked: gateway waits on a finished body",
            format!("oracle ends at {end}"),
        )),
        (Ok((None, _)), ChunkVerdict::Partial) => Ok(()),
        // The follower checks every byte as it comes: it must have refused by now.
        (Ok((None, _)), ChunkVerdict::Refused(why)) => Err(Disagreement::new(
            format!("chunked: gateway waits, oracle refuses: {why}"),
            String::new(),
        )),
        (Err(error), ChunkVerdict::Done { end, .. }) => Err(Disagreement::new(
            format!(
                "chunked: gateway refuses ({}), oracle accepts",
                error.as_str()
            ),
            format!("oracle ends at {end}"),
        )),
        (Err(error), ChunkVerdict::Partial) => Err(Disagreement::new(
            format!(
                "chunked: gateway refuses ({}) a body that could still be valid",
                error.as_str()
            ),
            String::new(),
        )),
        (Err(_), ChunkVerdict::Refused(_)) => Ok(()),
    }
}
