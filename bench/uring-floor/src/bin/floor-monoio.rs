//! The floor on monoio, a thread-per-core io_uring runtime (ByteDance's, under its Monolake
//! proxy): one runtime, one task per client connection, one keep-alive upstream connection per
//! client connection, owned buffers lent to the ring for each read and write. The logic and the
//! steps are floor-epoll's; only the runtime differs, so the pair answers what a maintained
//! completion-based runtime gives without a hand-written ring loop.
//!
//! `floor-monoio LISTEN UPSTREAM_A,UPSTREAM_B [defer|legacy]`:
//! - default: a ring with monoio's default settings (no setup flags);
//! - `defer`: the ring set up with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, as
//!   floor-uring's is;
//! - `legacy`: monoio's epoll driver (mio), its fallback where io_uring is not allowed (the
//!   default seccomp profiles of container runtimes refuse io_uring_setup).

use std::net::SocketAddr;

use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use uring_floor::{BUF, request, response, upstream_request};

fn main() {
    let (listen, ups) = uring_floor::args();
    let mode = std::env::args().nth(3).unwrap_or_default();
    let std_listener = uring_floor::listener(listen);
    if mode == "legacy" {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        return rt.block_on(accept_loop(std_listener, ups));
    }
    let mut urb = io_uring_06::IoUring::builder();
    if mode == "defer" {
        urb.setup_single_issuer().setup_defer_taskrun();
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .uring_builder(urb)
        .build()
        .expect("runtime");
    rt.block_on(accept_loop(std_listener, ups));
}

async fn accept_loop(std_listener: std::net::TcpListener, ups: [SocketAddr; 2]) {
    let listener = TcpListener::from_std(std_listener).expect("listener");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        monoio::spawn(serve(client, ups));
    }
}

/// One client connection; `None` closes it (end of stream or any error).
async fn serve(mut client: TcpStream, ups: [SocketAddr; 2]) -> Option<()> {
    let mut cbuf: Vec<u8> = Vec::with_capacity(BUF);
    let mut ubuf: Vec<u8> = Vec::with_capacity(BUF);
    let mut out: Vec<u8> = Vec::with_capacity(2 * BUF);
    let mut upstream: Option<TcpStream> = None;
    loop {
        let (head, which) = loop {
            if let Some(found) = request(&cbuf).ok()? {
                break found;
            }
            if cbuf.len() == BUF {
                return None;
            }
            // monoio reads into the Vec's spare capacity and extends its length.
            let (res, b) = client.read(cbuf).await;
            cbuf = b;
            if res.ok()? == 0 {
                return None;
            }
        };
        upstream_request(&cbuf[..head], &mut out);
        cbuf.drain(..head);
        if upstream.is_none() {
            let s = TcpStream::connect_addr(ups[which]).await.ok()?;
            s.set_nodelay(true).ok()?;
            upstream = Some(s);
        }
        let up = upstream.as_mut()?;
        let (res, o) = up.write_all(out).await;
        out = o;
        res.ok()?;
        let total = loop {
            if let Some(total) = response(&ubuf).ok()? {
                if total > BUF {
                    return None;
                }
                if ubuf.len() >= total {
                    break total;
                }
            }
            if ubuf.len() == BUF {
                return None;
            }
            let (res, b) = up.read(ubuf).await;
            ubuf = b;
            if res.ok()? == 0 {
                return None;
            }
        };
        let (res, slice) = client.write_all(ubuf.slice(0..total)).await;
        ubuf = slice.into_inner();
        res.ok()?;
        ubuf.drain(..total);
    }
}
