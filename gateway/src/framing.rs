//! Watches the raw bytes of HTTP/1 requests for framing that hyper normalises away.
//!
//! hyper reads a request carrying both `Content-Length` and `Transfer-Encoding` as chunked and
//! drops the length (RFC 9112 allows that). Such a request is the signature of request
//! smuggling, and we refuse it outright: this watcher follows request boundaries on the
//! connection (heads, fixed-length and chunked bodies), records one verdict per request head,
//! and the proxy refuses the requests marked bad. (Disagreeing `Content-Length`s and
//! `Transfer-Encoding`s other than `chunked` hyper refuses itself.)

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the watch of one connection shares with the requests served on it.
#[derive(Debug, Default)]
pub struct Watched {
    /// Verdicts in request order: `true` for a request with both framing headers.
    verdicts: Mutex<VecDeque<bool>>,
    /// The connection became a tunnel (the upstream switched protocols): what follows is no
    /// longer HTTP/1 requests.
    tunnel: AtomicBool,
    /// The client has sent something.
    read_any: AtomicBool,
}

/// The shared side of a [`FramingWatch`].
pub type Verdicts = Arc<Watched>;

impl Watched {
    /// Take the verdict for the next request on the connection (`false` when not watched).
    pub fn next_verdict(&self) -> bool {
        self.verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(false)
    }

    /// The connection is a tunnel from now on: stop reading it as requests. Until this is
    /// called every request on the connection is watched, also after an `Upgrade` or a
    /// `CONNECT` that was refused (their next bytes are the next request).
    pub fn tunnel_established(&self) {
        self.tunnel.store(true, Ordering::Relaxed);
    }

    /// Whether the client has sent any byte yet.
    pub fn read_any(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }
}

/// Largest request head followed; beyond it hyper refuses the request anyway.
const MAX_HEAD: usize = 256 * 1024;

enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk, up to an empty line.
    Trailer(Vec<u8>),
    /// Not HTTP/1 requests any more (HTTP/2, a tunnel, or a head hyper will refuse).
    Off,
}

/// An I/O stream whose reads are watched.
pub struct FramingWatch<I> {
    inner: I,
    state: State,
    verdicts: Verdicts,
}

impl<I> FramingWatch<I> {
    /// Watch `inner`; verdicts go to the returned queue.
    pub fn new(inner: I) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        (
            Self {
                inner,
                state: State::Head(Vec::new()),
                verdicts: verdicts.clone(),
            },
            verdicts,
        )
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if self.verdicts.tunnel.load(Ordering::Relaxed) {
            self.state = State::Off;
            return;
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(head) => {
                    if head.is_empty() {
                        // Empty lines before a request line are allowed.
                        let skip = bytes
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    if head.is_empty()
                        && let Some(end) = head_end(bytes, 0)
                    {
                        // The whole head is in this read: no copy.
                        self.state = self.after_head(&bytes[..end]);
                        bytes = &bytes[end..];
                        continue;
                    }
                    // The line end that ends the head may have begun in an earlier read.
                    let search_from = head.len().saturating_sub(2);
                    head.extend_from_slice(bytes);
                    let Some(end) = head_end(head, search_from) else {
                        if head.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let rest_len = head.len() - end;
                    let head = std::mem::take(head);
                    self.state = self.after_head(&head[..end]);
                    bytes = &bytes[bytes.len() - rest_len..];
                }
                State::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match take_line(line, &mut bytes) {
                    None => {}
                    Some(line) => {
                        let size = line.split(|b| *b == b';').next().unwrap_or_default();
                        let size = std::str::from_utf8(size)
                            .ok()
                            .map(str::trim)
                            .and_then(|s| u64::from_str_radix(s, 16).ok());
                        self.state = match size {
                            Some(0) => State::Trailer(Vec::new()),
                            // Chunk data is followed by CRLF: skip it with the data.
                            Some(n) => State::ChunkData(n.saturating_add(2)),
                            None => State::Off,
                        };
                    }
                },
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(line) => {
                    if let Some(line) = take_line(line, &mut bytes) {
                        self.state = if line.is_empty() {
                            State::Head(Vec::new())
                        } else {
                            State::Trailer(Vec::new())
                        };
                    }
                }
            }
        }
    }

    /// Record the verdict for `head` and say what follows it.
    fn after_head(&mut self, head: &[u8]) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        // Only two header names matter here, so the head is scanned line by line rather than
        // parsed (hyper parses it, and refuses what is malformed). An `Upgrade` or a `CONNECT`
        // changes nothing here: until the proxy says a tunnel was established, what follows
        // is the next request.
        let mut has_te = false;
        let mut length: Option<Option<u64>> = None;
        let mut line_start = match memchr::memchr(b'\n', head) {
            Some(lf) => lf + 1,
            None => head.len(),
        };
        while line_start < head.len() {
            let rest = &head[line_start..];
            let line_end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let line = &rest[..line_end];
            line_start += line_end + 1;
            // Only names starting with these letters matter: skip the rest unread.
            if !matches!(line.first(), Some(b't' | b'T' | b'c' | b'C')) {
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                has_te = true;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                length.get_or_insert_with(|| {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
            }
        }
        let smuggling = has_te && length.is_some();
        self.verdicts
            .verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(smuggling);
        match (smuggling, has_te, length) {
            // The proxy refuses a request with both headers and closes the connection.
            (true, _, _) => State::Off,
            (false, true, _) => State::ChunkSize(Vec::new()),
            (false, false, Some(Some(n))) if n > 0 => State::Fixed(n),
            (false, false, Some(None)) => State::Off,
            _ => State::Head(Vec::new()),
        }
    }
}

/// Just past the empty line that ends a request head in `bytes`, looking from `from` on. Lines
/// may end in CRLF or in a bare LF: HTTP/1.1 parsers, hyper's among them, accept both.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = memchr::memchr(b'\n', &bytes[at..]) {
        let lf = at + i;
        match &bytes[lf + 1..] {
            [b'\n', ..] => return Some(lf + 2),
            [b'\r', b'\n', ..] => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

/// Append `bytes` up to and including a LF to `line`; when the line is complete, return it
/// without its CRLF and advance `bytes` past it.
fn take_line(line: &mut Vec<u8>, bytes: &mut &[u8]) -> Option<Vec<u8>> {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..i]);
            *bytes = &bytes[i + 1..];
            let mut done = std::mem::take(line);
            if done.last() == Some(&b'\r') {
                done.pop();
            }
            Some(done)
        }
        None => {
            line.extend_from_slice(bytes);
            *bytes = &[];
            if line.len() > MAX_HEAD {
                line.clear();
            }
            None
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingWatch<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && buf.filled().len() > before
        {
            if !this.verdicts.read_any.load(Ordering::Relaxed) {
                this.verdicts.read_any.store(true, Ordering::Relaxed);
            }
            if !matches!(this.state, State::Off) {
                this.feed(&buf.filled()[before..]);
            }
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(chunks: &[&[u8]]) -> Vec<bool> {
        let (mut watch, verdicts) = FramingWatch::new(());
        for chunk in chunks {
            watch.feed(chunk);
        }
        let list = verdicts.verdicts.lock().expect("lock");
        list.iter().copied().collect()
    }

    #[test]
    fn requests_after_an_upgrade_that_did_not_happen_are_watched() {
        let stream = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(&[stream]), [false, true]);
        let refused_connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(&[refused_connect]), [false, true]);
    }

    #[test]
    fn a_tunnel_is_not_read_as_requests() {
        let (mut watch, verdicts) = FramingWatch::new(());
        watch.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        verdicts.tunnel_established();
        watch.feed(b"POST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(verdicts.verdicts.lock().expect("lock").len(), 1);
    }

    #[test]
    fn follows_pipelined_requests_across_reads() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nPOST /d HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(&[stream]), [false, false, false, true]);
        // The same bytes one at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), [false, false, false, true]);
    }

    #[test]
    fn body_text_is_not_mistaken_for_headers() {
        let body = "Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        let stream = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\n\r\n",
            body.len()
        );
        assert_eq!(verdicts(&[stream.as_bytes()]), [false, false]);
    }

    #[test]
    fn bare_lf_line_ends_are_followed() {
        let stream = b"GET /a HTTP/1.1\nHost: x\n\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\n";
        assert_eq!(verdicts(&[stream]), [false, true]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), [false, true]);
    }

    #[test]
    fn http2_is_not_watched() {
        assert!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).is_empty());
    }
}
