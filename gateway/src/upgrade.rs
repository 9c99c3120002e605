//! Zero-downtime binary upgrades: the running process hands its listening sockets to a new
//! process over a Unix socket (`SCM_RIGHTS`), as HAProxy, Envoy and pingora do. The sockets
//! never close, so no connection is refused; the old process then stops accepting and drains.
//!
//! Protocol on `upgrade_socket` (one line each way, new process first):
//! `upgrade` -> the old process answers `listeners <http> <https> 1` with the descriptors
//! (HTTP listeners, HTTPS listeners, the admin listener, in config order) attached;
//! `ready` (the new process serves) -> `bye` (the old process stops accepting and drains).
//!
//! The process that owns the listeners writes its PID to [`pid_file`] (the socket's path with
//! the extension `pid`): when it starts to wait for a successor, and a new process before it
//! says `ready`, so the file names the new process before the old one can exit. A supervisor
//! follows the hand-over through it (systemd's `PIDFile=`: the main PID moves to the new
//! process; see deploy/systemd/unitgate.service).

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::Listeners;
use crate::config::GatewayConfig;

/// Most descriptors handed over at once.
const MAX_FDS: usize = 64;

/// Copies of the listening sockets, kept to hand over.
pub struct Handover {
    http: Vec<TcpListener>,
    https: Vec<TcpListener>,
    admin: TcpListener,
}

impl Handover {
    /// Duplicate `listeners`' sockets.
    pub fn of(listeners: &Listeners) -> std::io::Result<Self> {
        Ok(Self {
            http: listeners
                .http
                .iter()
                .map(TcpListener::try_clone)
                .collect::<Result<_, _>>()?,
            https: listeners
                .https
                .iter()
                .map(|(l, _)| l.try_clone())
                .collect::<Result<_, _>>()?,
            admin: listeners.admin.try_clone()?,
        })
    }
}

/// The PID file of the gateway whose upgrade socket is `socket`: the same path with the
/// extension `pid` (`/run/unitgate/upgrade.sock` -> `/run/unitgate/upgrade.pid`).
pub fn pid_file(socket: &Path) -> PathBuf {
    socket.with_extension("pid")
}

/// Write this process's PID to `socket`'s [`pid_file`], whole (a temp file renamed over it).
/// A failure is logged: upgrades work without the file, only a supervisor cannot follow them.
fn write_pid_file(socket: &Path) {
    let path = pid_file(socket);
    let temp = path.with_extension("pid.tmp");
    let written = std::fs::write(&temp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(error) = written {
        tracing::warn!(%error, path = %path.display(), "cannot write the PID file");
    }
}

/// The connection to the process being replaced, on which to say `ready` once serving.
pub struct Predecessor {
    stream: UnixStream,
    socket: PathBuf,
}

/// In the new process: take the listeners from the process serving on `socket`. Returns
/// them and the predecessor to [`confirm`] to once serving.
pub fn receive(socket: &Path, config: &GatewayConfig) -> Result<(Listeners, Predecessor), String> {
    let fail = |e: &dyn std::fmt::Display| format!("upgrade via {}: {e}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(|e| fail(&e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| fail(&e))?;
    stream.write_all(b"upgrade\n").map_err(|e| fail(&e))?;
    let mut header = [0u8; 128];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut header)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| fail(&e))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let text = std::str::from_utf8(&header[..received.bytes]).map_err(|e| fail(&e))?;
    let counts: Vec<usize> = text
        .trim()
        .strip_prefix("listeners ")
        .ok_or_else(|| fail(&format!("unexpected answer {text:?}")))?
        .split(' ')
        .map(|n| {
            n.parse()
                .map_err(|_| fail(&format!("unexpected answer {text:?}")))
        })
        .collect::<Result<_, _>>()?;
    let [http, https, admin] = counts[..] else {
        return Err(fail(&format!("unexpected answer {text:?}")));
    };
    if admin != 1 || fds.len() != http + https + 1 {
        return Err(fail(&format!(
            "expected {} sockets, got {}",
            http + https + 1,
            fds.len()
        )));
    }
    if http != config.listen.http.len() || https != config.listen.https.len() {
        return Err(fail(
            &"the running process listens on other sockets than this config names; upgrade with the same listeners, or stop and start",
        ));
    }
    let listeners: Vec<TcpListener> = fds.into_iter().map(TcpListener::from).collect();
    let wanted = config
        .listen
        .http
        .iter()
        .chain(config.listen.https.iter().map(|l| &l.address))
        .chain(std::iter::once(&config.admin.listen));
    for (listener, want) in listeners.iter().zip(wanted) {
        let have = listener.local_addr().map_err(|e| fail(&e))?;
        if !same_address(have, *want) {
            return Err(fail(&format!(
                "the running process listens on {have}, this config on {want}; upgrade with the same listeners, or stop and start"
            )));
        }
    }
    let mut fds = listeners.into_iter();
    let http = fds.by_ref().take(http).collect();
    let https = config
        .listen
        .https
        .iter()
        .zip(fds.by_ref())
        .map(|(listen, listener)| Ok((listener, listen.server_config()?)))
        .collect::<Result<_, String>>()?;
    let admin = fds.next().ok_or_else(|| fail(&"admin socket missing"))?;
    let predecessor = Predecessor {
        stream,
        socket: socket.to_owned(),
    };
    Ok((Listeners { http, https, admin }, predecessor))
}

/// Whether a handed-over socket bound to `have` is the one `want` names (port 0 in a config
/// means "any port": the one the first process was given).
fn same_address(have: std::net::SocketAddr, want: std::net::SocketAddr) -> bool {
    have.ip() == want.ip() && (want.port() == 0 || have.port() == want.port())
}

/// In the new process, once serving: take the PID file, tell the old process, and wait for it
/// to let go.
pub fn confirm(predecessor: Predecessor) -> Result<(), String> {
    let Predecessor { mut stream, socket } = predecessor;
    write_pid_file(&socket);
    stream
        .write_all(b"ready\n")
        .map_err(|e| format!("upgrade: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("upgrade: {e}"))?;
    if line.trim() == "bye" {
        Ok(())
    } else {
        Err(format!("upgrade: unexpected answer {line:?}"))
    }
}

/// In a serving process: wait on `path` for a new process, hand it the sockets, and return
/// once it serves (the caller then drains and exits). Runs on a blocking thread.
pub fn serve_handover(path: PathBuf, handover: Handover) -> Result<(), String> {
    // The PID file first: whoever can connect to the socket finds it written.
    write_pid_file(&path);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("upgrade socket {}: {e}", path.display()))?;
    tracing::info!(socket = %path.display(), pid_file = %pid_file(&path).display(), "ready for an upgrade");
    loop {
        let (stream, _) = listener
            .accept()
            .map_err(|e| format!("upgrade socket: {e}"))?;
        match hand_over(&stream, &handover) {
            Ok(()) => {
                // Let the new process bind the path for its own successor.
                drop(listener);
                let mut stream = stream;
                let _ = stream.write_all(b"bye\n");
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(%error, "upgrade attempt failed; still serving");
                // The failed process may have taken the PID file before it gave up.
                write_pid_file(&path);
            }
        }
    }
}

fn hand_over(stream: &UnixStream, handover: &Handover) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "upgrade" {
        return Err(format!("unexpected request {line:?}"));
    }
    let fds: Vec<_> = handover
        .http
        .iter()
        .chain(&handover.https)
        .chain(std::iter::once(&handover.admin))
        .map(|l| l.as_fd())
        .collect();
    let header = format!(
        "listeners {} {} 1\n",
        handover.http.len(),
        handover.https.len()
    );
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("too many sockets to hand over".to_owned());
    }
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(header.as_bytes())],
        &mut ancillary,
        SendFlags::empty(),
    )
    .map_err(|e| e.to_string())?;
    line.clear();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() == "ready" {
        Ok(())
    } else {
        Err(format!(
            "the new process did not become ready (said {line:?})"
        ))
    }
}
