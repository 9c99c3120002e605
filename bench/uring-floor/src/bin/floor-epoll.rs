//! The floor on tokio (epoll): a current_thread runtime, one task per client connection, one
//! keep-alive upstream connection per client connection.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uring_floor::{BUF, request, response, upstream_request};

fn main() {
    let (listen, ups) = uring_floor::args();
    let std_listener = uring_floor::listener(listen);
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).expect("listener");
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            tokio::spawn(serve(client, ups));
        }
    });
}

/// One client connection; `None` closes it (end of stream or any error).
async fn serve(mut client: TcpStream, ups: [SocketAddr; 2]) -> Option<()> {
    let mut cbuf = vec![0u8; BUF];
    let mut clen = 0;
    let mut ubuf = vec![0u8; BUF];
    let mut ulen = 0;
    let mut out = Vec::with_capacity(2 * BUF);
    let mut upstream: Option<TcpStream> = None;
    loop {
        let (head, which) = loop {
            if let Some(found) = request(&cbuf[..clen]).ok()? {
                break found;
            }
            if clen == BUF {
                return None;
            }
            let n = client.read(&mut cbuf[clen..]).await.ok()?;
            if n == 0 {
                return None;
            }
            clen += n;
        };
        upstream_request(&cbuf[..head], &mut out);
        cbuf.copy_within(head..clen, 0);
        clen -= head;
        if upstream.is_none() {
            let s = TcpStream::connect(ups[which]).await.ok()?;
            s.set_nodelay(true).ok()?;
            upstream = Some(s);
        }
        let up = upstream.as_mut()?;
        up.write_all(&out).await.ok()?;
        let total = loop {
            if let Some(total) = response(&ubuf[..ulen]).ok()? {
                if total > BUF {
                    return None;
                }
                if ulen >= total {
                    break total;
                }
            }
            if ulen == BUF {
                return None;
            }
            let n = up.read(&mut ubuf[ulen..]).await.ok()?;
            if n == 0 {
                return None;
            }
            ulen += n;
        };
        client.write_all(&ubuf[..total]).await.ok()?;
        ubuf.copy_within(total..ulen, 0);
        ulen -= total;
    }
}
