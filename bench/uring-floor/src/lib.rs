//! The proxy logic both floors share, so that they differ only in how they do I/O: find a
//! request head, pick an upstream by the `X-User-Id` value, rewrite the head with the added
//! lines, find the end of the upstream's response (head plus Content-Length body).
//!
//! Usage of either binary: `floor-… LISTEN UPSTREAM_A,UPSTREAM_B`.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

/// Per-connection buffer size, each direction. A request head or a whole response larger than
/// this closes the connection: the workload's are a few hundred bytes.
pub const BUF: usize = 16 * 1024;

/// What a gateway adds to every request it forwards (a few of unitgate's own lines).
pub const ADDED: &[u8] = b"x-unitgate-unit: u1\r\nx-unitgate-region: hz\r\nx-forwarded-for: 127.0.0.1\r\n";

pub fn args() -> (SocketAddr, [SocketAddr; 2]) {
    let mut args = std::env::args().skip(1);
    let usage = "usage: floor-… LISTEN UPSTREAM_A,UPSTREAM_B";
    let listen = args.next().expect(usage).parse().expect(usage);
    let ups: Vec<SocketAddr> =
        args.next().expect(usage).split(',').map(|a| a.parse().expect(usage)).collect();
    assert_eq!(ups.len(), 2, "{usage}");
    (listen, [ups[0], ups[1]])
}

/// A non-blocking listener with TCP_NODELAY set: accepted sockets inherit it, so neither floor
/// makes a setsockopt per connection.
pub fn listener(addr: SocketAddr) -> TcpListener {
    let l = TcpListener::bind(addr).expect("bind");
    set_nodelay(l.as_raw_fd());
    l.set_nonblocking(true).expect("nonblocking");
    l
}

pub fn set_nodelay(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_NODELAY");
}

/// The request head at the start of `buf`: `Ok(Some((head_len, upstream_index)))` once complete,
/// `Ok(None)` while more bytes are needed, `Err` if it is not HTTP/1.x.
#[inline]
pub fn request(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("x-user-id"))
                .map(|h| h.value)
                .unwrap_or(b"");
            Ok(Some((len, (fnv1a(key) & 1) as usize)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

/// The request to send upstream: the client's head (request line and fields) with the added
/// lines before the blank line that ends it.
#[inline]
pub fn upstream_request(head: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&head[..head.len() - 2]);
    out.extend_from_slice(ADDED);
    out.extend_from_slice(b"\r\n");
}

/// The whole response at the start of `buf` (head plus Content-Length body): `Ok(Some(total))`
/// once the head is complete (the body may still be missing), `Ok(None)` while the head is not,
/// `Err` on anything else (no Content-Length included: the origin always sends one).
#[inline]
pub fn response(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let cl = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .ok_or(())?;
            let body: usize =
                std::str::from_utf8(cl.value).map_err(|_| ())?.trim().parse().map_err(|_| ())?;
            Ok(Some(len + body))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

#[inline]
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_and_measures() {
        let req = b"GET /cart/items HTTP/1.1\r\nHost: x\r\nX-User-Id: 42\r\n\r\nGET";
        let (len, _) = request(req).unwrap().unwrap();
        assert_eq!(&req[len..], b"GET");
        let mut out = Vec::new();
        upstream_request(&req[..len], &mut out);
        assert!(out.ends_with(b"X-User-Id: 42\r\nx-unitgate-unit: u1\r\nx-unitgate-region: hz\r\nx-forwarded-for: 127.0.0.1\r\n\r\n"));
        assert_eq!(request(b"GET / HTTP/1.1\r\nHo").unwrap(), None);
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(response(resp).unwrap(), Some(resp.len()));
        assert_eq!(response(&resp[..10]).unwrap(), None);
    }
}
