//! Tunnels, after a `101 Switching Protocols`: bytes copied both ways as they come, until either
//! side closes or nothing has passed either way for `timeouts.tunnel_idle_ms`. Without that
//! bound a tunnel nobody uses holds two connections, and a place under the connection limits,
//! for as long as a client likes (WebSocket clients that mean to stay ping well within it).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copy between `a` and `b` until either closes (or fails), or nothing was read from either
/// for `idle`.
pub(crate) async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last_read = AtomicU64::new(0);
    let mut a = Watched {
        io: a,
        start,
        last_read: &last_read,
    };
    let mut b = Watched {
        io: b,
        start,
        last_read: &last_read,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let quiet_until = start + Duration::from_millis(last_read.load(Ordering::Relaxed)) + idle;
        if quiet_until <= Instant::now() {
            return;
        }
        tokio::select! {
            _ = &mut copy => return,
            () = tokio::time::sleep_until(quiet_until) => {}
        }
    }
}

/// One side of a tunnel, noting when it last had bytes to read (in ms after `start`).
struct Watched<'a, S: ?Sized> {
    io: &'a mut S,
    start: Instant,
    last_read: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let at = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_read.store(at, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Real time, not a paused clock: tokio's `test-util` would reach the benchmarks' builds
    /// (an example built with the binary unifies dev-dependency features). The margins are
    /// wide: a stall of the idle time on a loaded machine would be needed to fail it.
    #[tokio::test]
    async fn a_tunnel_lives_while_bytes_pass_and_ends_once_nothing_passed_for_the_idle_time() {
        const IDLE: Duration = Duration::from_secs(2);
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut upstream) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(async move {
            relay(&mut a, &mut b, IDLE).await;
        });
        // Traffic, one way only, for longer than the idle time keeps it open...
        let start = Instant::now();
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        while start.elapsed() < IDLE + IDLE / 2 {
            pace.tick().await;
            client.write_all(b"ping").await.expect("write");
            let mut got = [0u8; 4];
            upstream.read_exact(&mut got).await.expect("through");
            assert_eq!(&got, b"ping");
        }
        assert!(!tunnel.is_finished());
        // ...and silence ends it, both ways.
        tokio::time::timeout(Duration::from_secs(10), tunnel)
            .await
            .expect("ended within the idle time")
            .expect("ended");
        let mut rest = Vec::new();
        assert_eq!(upstream.read_to_end(&mut rest).await.expect("closed"), 0);
        assert_eq!(client.read_to_end(&mut rest).await.expect("closed"), 0);
    }
}
