//! The client's request body on its way upstream, watched for the client's own failures.
//!
//! When the upstream exchange fails while the body is being relayed, whose fault it was
//! decides everything after: a bad chunk, a body cut off or over the size limit, or a body
//! still dribbling in when the upstream's time ran out are the client's doing — the client
//! gets 400, 413 or 408, and the upstream's health and error counters are left alone. Without
//! this, any client could eject healthy upstreams with three broken bodies.
//!
//! A body on its way to an HTTP/2 upstream is also recorded as it passes ([`RecordedBody`]), up
//! to a limit, so that a request the upstream left unprocessed can be sent again with it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::limits::BodyHold;
use crate::metrics::ClientEvent;
use crate::store::KeyHeaders;
use crate::upstream::{Body, BoxError};
use tokio_util::sync::WaitForCancellationFutureOwned;

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

/// Drop from a request's trailers the fields only its header section may carry, as the HTTP/1.1
/// path refuses them (`h1::fields::is_refused_in_trailers`: the gateway's own, framing, routing,
/// forwarding, credentials), and its route's routing-key fields (`keys`): an upstream that
/// merges trailers into the header section would take the client's word for them.
fn strip_trailers(trailers: &mut http::HeaderMap, keys: Option<&[Box<[u8]>]>) {
    let refused: Vec<http::HeaderName> = trailers
        .keys()
        .filter(|name| {
            let name = name.as_str().as_bytes();
            crate::h1::fields::is_refused_in_trailers(name)
                || keys.is_some_and(|keys| keys.iter().any(|key| **key == *name))
        })
        .cloned()
        .collect();
    for name in refused {
        trailers.remove(name);
    }
}

/// A client's body, limited to `max` bytes, reporting to a [`BodyState`].
pub struct ClientBody {
    inner: Limited<Incoming>,
    state: Arc<BodyState>,
    /// Its route's routing-key header fields, dropped from its trailers.
    key_headers: Option<KeyHeaders>,
    /// For a write: its end by the gateway (`WriteInFlight::ended`), on which the body fails,
    /// so that whichever client sends it upstream stops (an upload pumped by hyper's client
    /// would otherwise go on to the old region after the write was let go).
    write_end: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl ClientBody {
    /// Watch `body` (at most `max` bytes); the state is shared with the returned handle. Trailer
    /// fields named like `key_headers` are dropped (`crate::store::KeyHeaders`).
    pub fn new(
        body: Incoming,
        max: u64,
        key_headers: Option<KeyHeaders>,
        write_end: Option<WaitForCancellationFutureOwned>,
    ) -> (Self, Arc<BodyState>) {
        let inner = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
        let state = Arc::new(BodyState::default());
        if inner.is_end_stream() {
            state.done.store(true, Ordering::Relaxed);
        }
        (
            Self {
                inner,
                state: state.clone(),
                key_headers,
                write_end: write_end.map(Box::pin),
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
        if let Some(end) = &mut this.write_end
            && end.as_mut().poll(cx).is_ready()
        {
            this.write_end = None;
            return Poll::Ready(Some(Err(crate::store::WRITE_ENDED.into())));
        }
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            strip_trailers(trailers, this.key_headers.as_deref());
        }
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

/// A streamed body that keeps a copy of what passed, so that it can be sent again: Envoy's
/// retry buffer. Frames go on to the upstream as they come (a bidirectional stream's next
/// message may wait for the answer to this one, so nothing waits for the body's end), and each
/// is copied first, up to `limit` bytes (data and each copy's entry) held of the first half of
/// the gateway's body budget. A copy that would pass the limit, or not fit there, ends the
/// recording: from then on the body only streams, and cannot be sent again.
///
/// The source lives in the record, shared with the handle ([`Recording`]), not in the body:
/// the body an upstream left unprocessed is dropped by its HTTP/2 client, and the next
/// attempt's ([`Recording::replay`]) yields the copies and then goes on pulling from the
/// source where the last one stopped.
pub struct RecordedBody {
    record: Arc<Mutex<Record>>,
    /// Which attempt this body is: only the latest one's may pull from the source.
    attempt: u32,
}

/// The handle to a [`RecordedBody`]'s record, kept beside its request.
#[derive(Clone)]
pub struct Recording(Arc<Mutex<Record>>);

struct Record {
    source: Body,
    /// While recording, every frame taken from the source so far, in order; once recording
    /// stopped, the ones the current attempt has still to send.
    copies: VecDeque<Kept>,
    /// How many of `copies` the current attempt has sent (while recording).
    sent: usize,
    /// What `copies` cost ([`Kept::charge`]), held of the budget through `hold` (within its
    /// first half: bodies held whole come first).
    bytes: u64,
    limit: u64,
    /// `None` once recording stopped (and the copies left, if any, were sent).
    hold: Option<BodyHold>,
    /// Whether what comes from the source is still copied: the body can go again.
    recording: bool,
    /// The source gave its last frame.
    ended: bool,
    /// The current attempt.
    attempt: u32,
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data.clone()),
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Kept::Data(data) => u64::try_from(data.len()).unwrap_or(u64::MAX),
            Kept::Trailers(_) => 0,
        }
    }

    /// What keeping it costs: its bytes and its entry, so that a client sending a byte a frame
    /// holds memory in proportion to what it is charged.
    fn charge(&self) -> u64 {
        let bytes = match self {
            Kept::Data(data) => data.len(),
            Kept::Trailers(trailers) => trailers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum(),
        };
        u64::try_from(bytes + std::mem::size_of::<Kept>()).unwrap_or(u64::MAX)
    }
}

impl RecordedBody {
    /// `source`, recorded up to `limit` bytes held through `hold`.
    pub fn new(source: Body, limit: u64, hold: BodyHold) -> (Self, Recording) {
        let record = Arc::new(Mutex::new(Record {
            source,
            copies: VecDeque::new(),
            sent: 0,
            bytes: 0,
            limit,
            hold: Some(hold),
            recording: true,
            ended: false,
            attempt: 0,
        }));
        (
            Self {
                record: record.clone(),
                attempt: 0,
            },
            Recording(record),
        )
    }
}

fn lock(record: &Mutex<Record>) -> MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|e| e.into_inner())
}

impl Record {
    /// The copies the current attempt has still to send.
    fn unsent(&self) -> impl Iterator<Item = &Kept> {
        let skip = if self.recording { self.sent } else { 0 };
        self.copies.iter().skip(skip)
    }

    /// The next copy for the current attempt, if it has not sent them all.
    fn next_copy(&mut self) -> Option<Frame<Bytes>> {
        if self.recording {
            let frame = self.copies.get(self.sent)?.frame();
            self.sent += 1;
            return Some(frame);
        }
        let frame = self.copies.pop_front()?.frame();
        if self.copies.is_empty() {
            self.release();
        }
        Some(frame)
    }

    /// Copy `frame`, just taken from the source, unless that ends the recording.
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if !self.recording {
            return;
        }
        let kept = match (frame.data_ref(), frame.trailers_ref()) {
            // Copied, not shared: a slice of the connection's read buffer would keep all of
            // that buffer alive for as long as the copy.
            (Some(data), _) => Kept::Data(Bytes::copy_from_slice(data)),
            (None, Some(trailers)) => Kept::Trailers(trailers.clone()),
            (None, None) => return,
        };
        let bytes = self.bytes.saturating_add(kept.charge());
        let held = bytes <= self.limit
            && self
                .hold
                .as_mut()
                .is_some_and(|h| h.grow_to_within_half(bytes));
        if !held {
            self.stop();
            return;
        }
        self.bytes = bytes;
        self.copies.push_back(kept);
        self.sent += 1;
    }

    /// No more recording: what the current attempt has sent is let go, and the rest once it
    /// is sent.
    fn stop(&mut self) {
        if !self.recording {
            return;
        }
        self.recording = false;
        self.copies.drain(..self.sent);
        self.sent = 0;
        if self.copies.is_empty() {
            self.release();
        }
    }

    fn release(&mut self) {
        self.hold = None;
        self.bytes = 0;
    }
}

impl Recording {
    /// Whether the body can still be sent again: all that left the source is copied.
    pub fn can_replay(&self) -> bool {
        lock(&self.0).recording
    }

    /// The body again, for a new attempt: the copies, then what is still to come from the
    /// source. `None` when it cannot be had whole any more. The earlier attempts' bodies are
    /// done: polled, they fail.
    pub fn replay(&self) -> Option<RecordedBody> {
        let mut record = lock(&self.0);
        if !record.recording {
            return None;
        }
        record.attempt += 1;
        record.sent = 0;
        Some(RecordedBody {
            record: self.0.clone(),
            attempt: record.attempt,
        })
    }

    /// Stop recording (the upstream answered, or the request will not go again): the copies
    /// and what they hold of the budget are let go as the current attempt has sent them.
    pub fn stop(&self) {
        lock(&self.0).stop();
    }
}

impl HttpBody for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut record = lock(&this.record);
        if record.attempt != this.attempt {
            return Poll::Ready(Some(Err(
                "the request body went on with another attempt".into()
            )));
        }
        if let Some(frame) = record.next_copy() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if record.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut record.source).poll_frame(cx)) {
            Some(Ok(frame)) => {
                record.keep(&frame);
                if frame.is_trailers() || record.source.is_end_stream() {
                    record.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                // The client's body failed: the request cannot go again.
                record.stop();
                Poll::Ready(Some(Err(error)))
            }
            None => {
                record.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let record = lock(&self.record);
        record.attempt == self.attempt
            && record.unsent().next().is_none()
            && (record.ended || record.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let record = lock(&self.record);
        let copied: u64 = record.unsent().map(Kept::len).sum();
        if record.ended {
            return SizeHint::with_exact(copied);
        }
        let source = record.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(source.lower().saturating_add(copied));
        if let Some(upper) = source.upper() {
            hint.set_upper(upper.saturating_add(copied));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::limits::BodyBudget;

    /// A body of `data` frames then `trailers`, as a client streams it.
    fn streamed(data: &[&'static str], trailers: Option<&str>) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = data
            .iter()
            .map(|d| Ok(Frame::data(Bytes::from_static(d.as_bytes()))))
            .collect();
        if let Some(value) = trailers {
            let mut map = HeaderMap::new();
            map.insert("x-trailer", value.parse().expect("value"));
            frames.push(Ok(Frame::trailers(map)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    /// The next frame as text, or `trailers:<x-trailer>`; `None` at the end.
    async fn next(body: &mut RecordedBody) -> Option<String> {
        let frame = body.frame().await?.expect("frame");
        Some(match frame.into_data() {
            Ok(data) => String::from_utf8_lossy(&data).into_owned(),
            Err(frame) => {
                let trailers = frame.into_trailers().expect("trailers");
                format!("trailers:{}", trailers["x-trailer"].to_str().expect("text"))
            }
        })
    }

    /// What `entries` copies of `data` bytes in all are charged.
    fn charge(data: u64, entries: u64) -> u64 {
        data + entries * std::mem::size_of::<Kept>() as u64
    }

    #[tokio::test]
    async fn a_replay_yields_the_copies_then_goes_on_with_the_source() {
        let budget = BodyBudget::new(100_000);
        let source = streamed(&["ab", "cd", "ef"], Some("t"));
        let (mut first, recording) = RecordedBody::new(source, 10_000, budget.hold());
        assert_eq!(next(&mut first).await.as_deref(), Some("ab"));
        assert_eq!(next(&mut first).await.as_deref(), Some("cd"));
        assert_eq!(budget.held(), charge(4, 2));
        assert!(recording.can_replay());

        let mut second = recording.replay().expect("replayable");
        // The first attempt's body is done with: it takes nothing more from the source.
        assert!(first.frame().await.expect("an error").is_err());
        assert_eq!(second.size_hint().lower(), 4);
        assert_eq!(next(&mut second).await.as_deref(), Some("ab"));
        assert_eq!(next(&mut second).await.as_deref(), Some("cd"));
        assert_eq!(next(&mut second).await.as_deref(), Some("ef"));
        assert_eq!(next(&mut second).await.as_deref(), Some("trailers:t"));
        assert!(second.is_end_stream());
        assert_eq!(next(&mut second).await, None);
        // The trailers are charged their names and values: `x-trailer: t`.
        assert_eq!(budget.held(), charge(6 + 10, 4));

        // A third attempt, after the source ended: all of it from the copies.
        let mut third = recording.replay().expect("replayable");
        assert_eq!(third.size_hint().exact(), Some(6));
        let mut all = Vec::new();
        while let Some(frame) = next(&mut third).await {
            all.push(frame);
        }
        assert_eq!(all, ["ab", "cd", "ef", "trailers:t"]);
        recording.stop();
        assert_eq!(budget.held(), 0);
        assert!(recording.replay().is_none());
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_on_and_cannot_go_again() {
        let budget = BodyBudget::new(100_000);
        let source = streamed(&["ab", "cd", "ef"], None);
        let (mut body, recording) = RecordedBody::new(source, charge(2, 1) + 1, budget.hold());
        assert_eq!(next(&mut body).await.as_deref(), Some("ab"));
        assert!(recording.can_replay());
        assert_eq!(next(&mut body).await.as_deref(), Some("cd"));
        assert!(!recording.can_replay());
        assert_eq!(budget.held(), 0, "the copies let go");
        assert_eq!(next(&mut body).await.as_deref(), Some("ef"));
        assert_eq!(next(&mut body).await, None);
        assert!(recording.replay().is_none());
    }

    #[tokio::test]
    async fn a_body_that_would_not_fit_in_half_the_budget_is_not_recorded() {
        // Copies may take half the budget: the other half is for bodies held whole.
        let budget = BodyBudget::new(2 * charge(2, 1) + 1);
        let source = streamed(&["ab", "cd"], None);
        let (mut body, recording) = RecordedBody::new(source, 10_000, budget.hold());
        assert_eq!(next(&mut body).await.as_deref(), Some("ab"));
        assert_eq!(budget.held(), charge(2, 1));
        assert_eq!(next(&mut body).await.as_deref(), Some("cd"));
        assert!(!recording.can_replay());
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn stopped_mid_replay_the_copies_not_yet_sent_still_go() {
        let budget = BodyBudget::new(100_000);
        let source = streamed(&["ab", "cd", "ef"], None);
        let (mut first, recording) = RecordedBody::new(source, 10_000, budget.hold());
        assert_eq!(next(&mut first).await.as_deref(), Some("ab"));
        assert_eq!(next(&mut first).await.as_deref(), Some("cd"));
        let mut second = recording.replay().expect("replayable");
        assert_eq!(next(&mut second).await.as_deref(), Some("ab"));
        // The upstream answered: nothing more is recorded, what was sent is let go.
        recording.stop();
        assert!(!recording.can_replay());
        assert_eq!(next(&mut second).await.as_deref(), Some("cd"));
        assert_eq!(budget.held(), 0);
        assert_eq!(next(&mut second).await.as_deref(), Some("ef"));
        assert_eq!(next(&mut second).await, None);
        assert_eq!(budget.held(), 0);
    }
}
