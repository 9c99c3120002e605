//! The client's request body on its way upstream, watched for the client's own failures.
//!
//! When the upstream exchange fails while the body is being relayed, whose fault it was
//! decides everything after: a bad chunk, a body cut off or over the size limit, or a body
//! still dribbling in when the upstream's time ran out are the client's doing — the client
//! gets 400, 413 or 408, and the upstream's health and error counters are left alone. Without
//! this, any client could eject healthy upstreams with three broken bodies.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::metrics::ClientEvent;
use crate::upstream::BoxError;

/// What went wrong on the client's side of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Broken framing (a bad chunk size, say).
    Malformed,
    /// The client stopped sending before the end.
    Aborted,
    /// Over `max_body_bytes`.
    TooLarge,
}

impl BodyFault {
    /// How it is counted.
    pub fn event(self) -> ClientEvent {
        match self {
            BodyFault::Malformed => ClientEvent::BodyMalformed,
            BodyFault::Aborted => ClientEvent::BodyAborted,
            BodyFault::TooLarge => ClientEvent::BodyTooLarge,
        }
    }
}

/// What the proxy learns of a body it handed to the upstream client.
#[derive(Debug, Default)]
pub struct BodyState {
    done: AtomicBool,
    /// 0: none; else a `BodyFault` + 1.
    fault: AtomicU8,
}

impl BodyState {
    /// Whether the whole body arrived.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// The client's fault, if the body failed on its side.
    pub fn fault(&self) -> Option<BodyFault> {
        match self.fault.load(Ordering::Relaxed) {
            1 => Some(BodyFault::Malformed),
            2 => Some(BodyFault::Aborted),
            3 => Some(BodyFault::TooLarge),
            _ => None,
        }
    }

    fn set_fault(&self, fault: BodyFault) {
        let code = match fault {
            BodyFault::Malformed => 1,
            BodyFault::Aborted => 2,
            BodyFault::TooLarge => 3,
        };
        self.fault.store(code, Ordering::Relaxed);
    }
}

/// A client's body, limited to `max` bytes, reporting to a [`BodyState`].
pub struct ClientBody {
    inner: Limited<Incoming>,
    state: Arc<BodyState>,
}

impl ClientBody {
    /// Watch `body` (at most `max` bytes); the state is shared with the returned handle.
    pub fn new(body: Incoming, max: u64) -> (Self, Arc<BodyState>) {
        let inner = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
        let state = Arc::new(BodyState::default());
        if inner.is_end_stream() {
            state.done.store(true, Ordering::Relaxed);
        }
        (
            Self {
                inner,
                state: state.clone(),
            },
            state,
        )
    }
}

/// Whose fault a body error is, by what it says.
fn classify(error: &BoxError) -> BodyFault {
    if error.downcast_ref::<LengthLimitError>().is_some() {
        return BodyFault::TooLarge;
    }
    if let Some(error) = error.downcast_ref::<hyper::Error>() {
        if error.is_incomplete_message() {
            return BodyFault::Aborted;
        }
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                        BodyFault::Malformed
                    }
                    _ => BodyFault::Aborted,
                };
            }
            source = cause.source();
        }
    }
    BodyFault::Malformed
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.state.done.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Err(error))) => this.state.set_fault(classify(error)),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.state.done.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
