//! The floor on io_uring: one ring driven by a plain loop, one `io_uring_enter` per iteration
//! that submits every SQE queued since the last one and waits for at least one completion.
//! Multishot accept; per connection, plain recv/send on its own buffers, one keep-alive
//! upstream connection opened (IORING_OP_CONNECT) on its first request.
//!
//! `floor-uring LISTEN UPSTREAM_A,UPSTREAM_B [plain]`:
//! - default: IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (completions are run in
//!   the loop's own io_uring_enter, not by task-work interrupts), the ring fd registered, and
//!   each send linked to the recv that follows it (upstream request -> upstream response, client
//!   response -> next client request), so that a request costs two loop iterations, not four;
//! - `plain`: a ring with no setup flags and no links, each step queued on the previous one's
//!   completion.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::squeue::{Entry, Flags};
use io_uring::{IoUring, SubmissionQueue, Submitter, cqueue, opcode, types};
use uring_floor::{BUF, request, response, upstream_request};

const ACCEPT: u64 = 0;
const CLIENT_RECV: u64 = 1;
const CLIENT_SEND: u64 = 2;
const CONNECT: u64 = 3;
const UP_SEND: u64 = 4;
const UP_RECV: u64 = 5;

fn ud(idx: usize, op: u64) -> u64 {
    ((idx as u64) << 8) | op
}

struct Conn {
    client: RawFd,
    up: RawFd,
    addr: libc::sockaddr_in,
    // Buffers are heap slices that never grow, so the kernel's pointers into them stay valid
    // while the Conn (boxed) moves nowhere.
    cbuf: Box<[u8]>,
    clen: usize,
    ubuf: Box<[u8]>,
    ulen: usize,
    out: Vec<u8>,
    out_sent: usize,
    resp_total: usize,
    resp_sent: usize,
    // A client recv was linked behind the response's send and is in flight.
    client_recv_linked: bool,
}

struct Floor<'a> {
    sq: SubmissionQueue<'a>,
    submitter: &'a Submitter<'a>,
    conns: Vec<Option<Box<Conn>>>,
    free: Vec<usize>,
    listen: RawFd,
    ups: [SocketAddr; 2],
    link: bool,
}

fn main() {
    let (listen, ups) = uring_floor::args();
    let plain = std::env::args().nth(3).as_deref() == Some("plain");
    let listener = uring_floor::listener(listen);
    let mut builder = IoUring::builder();
    if !plain {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring = builder.build(4096).expect("io_uring");
    let (mut submitter, sq, mut cq) = ring.split();
    if !plain {
        submitter.register_ring_fd().expect("register ring fd");
    }
    let mut floor = Floor {
        sq,
        submitter: &submitter,
        conns: Vec::new(),
        free: Vec::new(),
        listen: listener.as_raw_fd(),
        ups,
        link: !plain,
    };
    floor.arm_accept();
    let mut events: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
    loop {
        floor.sq.sync();
        match floor.submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => panic!("io_uring_enter: {e}"),
        }
        cq.sync();
        events.clear();
        events.extend((&mut cq).map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())));
        cq.sync();
        for &(data, res, flags) in &events {
            floor.complete(data, res, flags);
        }
    }
}

impl Floor<'_> {
    fn push(&mut self, e: Entry) {
        // SAFETY: every entry points into a boxed Conn (or at nothing) that lives until its
        // completion has been seen: a connection is closed only when none of its operations is
        // in flight, except for a linked recv that the kernel cancels without touching memory.
        while unsafe { self.sq.push(&e) }.is_err() {
            self.sq.sync();
            self.submitter.submit().expect("submit");
            self.sq.sync();
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listen))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(0, ACCEPT));
        self.push(e);
    }

    fn complete(&mut self, data: u64, res: i32, flags: u32) {
        let op = data & 0xff;
        let idx = (data >> 8) as usize;
        if op == ACCEPT {
            if res >= 0 {
                self.open(res);
            }
            if !cqueue::more(flags) {
                self.arm_accept();
            }
            return;
        }
        // The other half of a link whose first half failed: its connection was closed then.
        if res == -libc::ECANCELED {
            return;
        }
        match op {
            CLIENT_RECV => {
                if res <= 0 {
                    return self.close(idx);
                }
                let c = self.conns[idx].as_mut().unwrap();
                c.client_recv_linked = false;
                c.clen += res as usize;
                self.client_data(idx);
            }
            CONNECT => {
                if res < 0 {
                    return self.close(idx);
                }
                self.send_upstream(idx);
            }
            UP_SEND => {
                if res < 0 {
                    return self.close(idx);
                }
                let c = self.conns[idx].as_mut().unwrap();
                c.out_sent += res as usize;
                if c.out_sent < c.out.len() {
                    // Linked sends carry MSG_WAITALL: short only when failed.
                    if self.link {
                        return self.close(idx);
                    }
                    return self.send_upstream(idx);
                }
                if !self.link {
                    self.recv_upstream(idx);
                }
            }
            UP_RECV => {
                if res <= 0 {
                    return self.close(idx);
                }
                let c = self.conns[idx].as_mut().unwrap();
                c.ulen += res as usize;
                match response(&c.ubuf[..c.ulen]) {
                    Err(()) => self.close(idx),
                    Ok(Some(total)) if total > BUF => self.close(idx),
                    Ok(Some(total)) if c.ulen >= total => {
                        c.resp_total = total;
                        c.resp_sent = 0;
                        self.send_client(idx);
                    }
                    Ok(_) if c.ulen == BUF => self.close(idx),
                    Ok(_) => self.recv_upstream(idx),
                }
            }
            CLIENT_SEND => {
                if res < 0 {
                    return self.close(idx);
                }
                let link = self.link;
                let c = self.conns[idx].as_mut().unwrap();
                c.resp_sent += res as usize;
                if c.resp_sent < c.resp_total {
                    if link {
                        return self.close(idx);
                    }
                    return self.send_client(idx);
                }
                let total = c.resp_total;
                c.ubuf.copy_within(total..c.ulen, 0);
                c.ulen -= total;
                if !c.client_recv_linked {
                    self.client_data(idx);
                }
            }
            _ => unreachable!(),
        }
    }

    fn open(&mut self, fd: RawFd) {
        let conn = Box::new(Conn {
            client: fd,
            up: -1,
            // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
            addr: unsafe { std::mem::zeroed() },
            cbuf: vec![0u8; BUF].into_boxed_slice(),
            clen: 0,
            ubuf: vec![0u8; BUF].into_boxed_slice(),
            ulen: 0,
            out: Vec::with_capacity(2 * BUF),
            out_sent: 0,
            resp_total: 0,
            resp_sent: 0,
            client_recv_linked: false,
        });
        let idx = match self.free.pop() {
            Some(i) => {
                self.conns[i] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.recv_client(idx);
    }

    fn close(&mut self, idx: usize) {
        if let Some(c) = self.conns[idx].take() {
            // SAFETY: fds this connection owns; nothing of it is in flight (see push).
            unsafe {
                libc::close(c.client);
                if c.up >= 0 {
                    libc::close(c.up);
                }
            }
            self.free.push(idx);
        }
    }

    /// What the client has sent so far: forward a complete request head or read more.
    fn client_data(&mut self, idx: usize) {
        let c = self.conns[idx].as_mut().unwrap();
        match request(&c.cbuf[..c.clen]) {
            Err(()) => self.close(idx),
            Ok(None) if c.clen == BUF => self.close(idx),
            Ok(None) => self.recv_client(idx),
            Ok(Some((head, which))) => {
                upstream_request(&c.cbuf[..head], &mut c.out);
                c.cbuf.copy_within(head..c.clen, 0);
                c.clen -= head;
                c.out_sent = 0;
                if c.up >= 0 {
                    return self.send_upstream(idx);
                }
                self.connect(idx, which);
            }
        }
    }

    fn connect(&mut self, idx: usize, which: usize) {
        let SocketAddr::V4(a) = self.ups[which] else { panic!("IPv4 upstreams only") };
        // SAFETY: plain socket(2); the fd is owned by the Conn from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return self.close(idx);
        }
        uring_floor::set_nodelay(fd);
        let c = self.conns[idx].as_mut().unwrap();
        c.up = fd;
        c.addr.sin_family = libc::AF_INET as libc::sa_family_t;
        c.addr.sin_port = a.port().to_be();
        c.addr.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
        let e = opcode::Connect::new(
            types::Fd(fd),
            (&c.addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
        .build()
        .user_data(ud(idx, CONNECT));
        self.push(e);
    }

    fn send_upstream(&mut self, idx: usize) {
        let link = self.link;
        let c = self.conns[idx].as_mut().unwrap();
        let rest = &c.out[c.out_sent..];
        let mut e = opcode::Send::new(types::Fd(c.up), rest.as_ptr(), rest.len() as u32)
            .flags(if link { libc::MSG_WAITALL } else { 0 })
            .build()
            .user_data(ud(idx, UP_SEND));
        if link {
            e = e.flags(Flags::IO_LINK);
        }
        self.push(e);
        if link {
            self.recv_upstream(idx);
        }
    }

    fn recv_upstream(&mut self, idx: usize) {
        let c = self.conns[idx].as_mut().unwrap();
        let free = &mut c.ubuf[c.ulen..];
        let e = opcode::Recv::new(types::Fd(c.up), free.as_mut_ptr(), free.len() as u32)
            .build()
            .user_data(ud(idx, UP_RECV));
        self.push(e);
    }

    fn send_client(&mut self, idx: usize) {
        let link = self.link;
        let c = self.conns[idx].as_mut().unwrap();
        let rest = &c.ubuf[c.resp_sent..c.resp_total];
        let mut e = opcode::Send::new(types::Fd(c.client), rest.as_ptr(), rest.len() as u32)
            .flags(if link { libc::MSG_WAITALL } else { 0 })
            .build()
            .user_data(ud(idx, CLIENT_SEND));
        // The next request is read behind the response only if none is buffered already.
        let chain = link && c.clen == 0;
        if chain {
            e = e.flags(Flags::IO_LINK);
            c.client_recv_linked = true;
        }
        self.push(e);
        if chain {
            self.recv_client(idx);
        }
    }

    fn recv_client(&mut self, idx: usize) {
        let c = self.conns[idx].as_mut().unwrap();
        let free = &mut c.cbuf[c.clen..];
        let e = opcode::Recv::new(types::Fd(c.client), free.as_mut_ptr(), free.len() as u32)
            .build()
            .user_data(ud(idx, CLIENT_RECV));
        self.push(e);
    }
}
