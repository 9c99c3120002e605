//! Upstream connections for the codec: keep-alive HTTP/1.1 connections pooled per endpoint,
//! each with the read buffer that outlives one exchange (an upstream may send the next
//! response's bytes early only by mistake, and such a connection is not reused).
//!
//! The pool is a short lock and a vector indexed by the endpoint's id (its metric label id,
//! [`crate::store::EndpointState::id`]: small, dense and the same for an address in every
//! table), so a checkout hashes nothing; each worker has its own, so the lock is never
//! contended.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::response::ResponseHead;
use crate::connect::{Connectors, Stream};
use crate::metrics::NameId;

/// An idle connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// Bytes read from an upstream at a time.
pub const READ_CHUNK: usize = 16 * 1024;

/// A connection to an upstream (or to another region's gateway).
pub struct UpstreamConn {
    /// The connection, plain or TLS.
    pub io: Stream,
    /// Bytes read and not yet used.
    pub buf: BytesMut,
    /// Whether it served an exchange before (a stale pooled connection is retried).
    pub reused: bool,
    /// Whether an interim answer came in the exchange under way: with nothing in `buf`, no
    /// byte of an answer has come when this is false.
    pub interim_heard: bool,
    /// The last response head read on it, kept so that its field list is allocated once per
    /// connection rather than once per response.
    pub response: ResponseHead,
}

/// How soon after a request went on a pooled connection a close with nothing read back is
/// still taken for the upstream's idle close meeting it on the wire (a round trip, with room
/// for a far region's gateways): a failure later than this came from an upstream that had the
/// request, and counts against it.
pub const STALE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes of an upstream's answer held while the request body still goes up.
const MAX_HELD_ANSWER: usize = 64 * 1024;

/// Whether an upstream's final answer `head`, come before the request body was all sent, with
/// `held` bytes of it read, ends the upload. An error answer (RFC 9112 section 9.3: a client
/// watches for one and stops sending) or one that closes the connection does; any other lets
/// the body go on, as an upstream that answers as it reads (a stream, an echo) expects, until
/// more of the answer waits than the gateway holds.
pub fn ends_upload(head: &ResponseHead, held: usize) -> bool {
    head.status >= 400 || head.close || held > MAX_HELD_ANSWER
}

/// How a piece of a request body went upstream ([`UpstreamConn::write_watching`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// All of it.
    All,
    /// This much of it, when the upstream sent something while it would take no more: an
    /// interim answer (the rest goes on after it), or an early final one.
    Heard(usize),
    /// Not all: the write failed (the upstream reset the connection, maybe after answering),
    /// or the upstream closed while it would take no more. The response read tells which.
    Broken,
}

impl UpstreamConn {
    /// Write `bytes` (of a request body), reading what the upstream sends whenever it takes
    /// no more: an upstream may answer before the body is all there (a 413 for a body it will
    /// not take, a 401) and stop reading it, and would otherwise hold the request until a
    /// deadline and be blamed for it. What it sent is in `buf`.
    pub async fn write_watching(&mut self, bytes: &[u8]) -> Written {
        let UpstreamConn {
            io, buf: answer, ..
        } = self;
        let mut sent = 0;
        std::future::poll_fn(|cx| {
            while sent < bytes.len() {
                match Pin::new(&mut *io).poll_write(cx, &bytes[sent..]) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Written::Broken),
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Pending => {
                        if answer.capacity() - answer.len() < 1024 {
                            answer.reserve(READ_CHUNK);
                        }
                        return match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, answer) {
                            Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Written::Heard(sent)),
                            Poll::Ready(_) => Poll::Ready(Written::Broken),
                            Poll::Pending => Poll::Pending,
                        };
                    }
                }
            }
            Poll::Ready(Written::All)
        })
        .await
    }

    /// Whether the upstream closed it (or sent bytes no request asked for) while idle.
    fn is_stale(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
    /// [`Connectors::epoch`] when it was pooled: a connection made before an address's TLS
    /// settings changed is not reused.
    epoch: u64,
}

/// Idle connections by endpoint.
pub struct Pool {
    /// Indexed by endpoint id.
    idle: Mutex<Vec<Vec<Idle>>>,
    connect_timeout: Duration,
    connectors: Arc<Connectors>,
}

impl Pool {
    /// An empty pool whose new connections are made as `connectors` says (the table
    /// store's: plain or TLS, by address) and time out after `connect_timeout`.
    pub fn new(connect_timeout: Duration, connectors: Arc<Connectors>) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            connectors,
        }
    }

    /// The most recently used idle connection to `endpoint` that is still open. `now` is
    /// the caller's clock reading (a request's start): idle times are counted in seconds, so
    /// one reading per request does.
    pub fn checkout(&self, endpoint: NameId, now: Instant) -> Option<UpstreamConn> {
        let epoch = self.connectors.epoch();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.get_mut(usize::try_from(endpoint).ok()?)?;
        while let Some(mut candidate) = connections.pop() {
            if now.saturating_duration_since(candidate.since) < IDLE_TIMEOUT
                && candidate.epoch == epoch
                && !candidate.conn.is_stale()
            {
                candidate.conn.reused = true;
                return Some(candidate.conn);
            }
        }
        None
    }

    /// Keep `conn` for the next exchange with `endpoint`, idle since `now`.
    pub fn give_back(&self, endpoint: NameId, conn: UpstreamConn, now: Instant) {
        let Ok(index) = usize::try_from(endpoint) else {
            return;
        };
        if !conn.buf.is_empty() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() <= index {
            idle.resize_with(index + 1, Vec::new);
        }
        let entry = &mut idle[index];
        if entry.len() < MAX_IDLE_PER_ENDPOINT {
            entry.push(Idle {
                conn,
                since: now,
                epoch: self.connectors.epoch(),
            });
        }
    }

    /// A new connection to `endpoint` (its address), plain or TLS as its table says; the
    /// error says why there is none (nothing was sent either way).
    pub async fn connect(&self, endpoint: &str) -> Result<UpstreamConn, String> {
        let io = self
            .connectors
            .get(endpoint)
            .connect(endpoint, self.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(UpstreamConn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            reused: false,
            interim_heard: false,
            response: ResponseHead::default(),
        })
    }
}
