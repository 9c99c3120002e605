//! Test support for unitgate's multi-process tests: child processes whose output is collected
//! and can be awaited line by line, ports that stay free until a child binds them, and a real
//! etcd on such ports; certificates from a test CA (`tls`).
#![forbid(unsafe_code)]

pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// A port that is free now, below the kernel's ephemeral range: a port picked here and bound
/// a moment later by a child process cannot meanwhile become the local port of some outgoing
/// connection (which is what a port from `bind(0)`, freed and rebound, risks). A port is
/// handed out once per test process, so tests running side by side never pick the same one
/// before either has bound it.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low.saturating_sub(1000));
    loop {
        let port = low + (std::process::id() as u16 ^ rand_u16()) % (ephemeral_low - low);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    hasher.finish() as u16
}

/// A child process whose output lines are collected.
pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
}

impl Process {
    /// Start `command`, collecting stdout and stderr lines.
    pub fn spawn(name: &str, mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut held = lines.lock().unwrap_or_else(|e| e.into_inner());
                    held.push(line);
                    let n = held.len();
                    drop(held);
                    tx.send_replace(n);
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
            lines,
            count,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait for a line matching `pred`; returns it.
    pub async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let lines = self
            .wait_until(what, |lines| lines.iter().any(|l| pred(l)))
            .await;
        lines.into_iter().find(|l| pred(l)).unwrap_or_default()
    }

    /// Wait until the output so far satisfies `done`; returns it.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut count = self.count.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                // Both pipes closed: the process ended without printing it.
                Ok(Err(_)) => {
                    let lines = self.lines();
                    if done(&lines) {
                        return lines;
                    }
                    panic!(
                        "{}: ended without {what}; output:\n{}",
                        self.name,
                        lines.join("\n")
                    );
                }
                Err(_) => panic!(
                    "{}: no {what} in 30 s; output:\n{}",
                    self.name,
                    self.lines().join("\n")
                ),
            }
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real etcd on free loopback ports.
pub struct Etcd {
    /// The process.
    pub process: Process,
    /// Client URL.
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
}

impl Etcd {
    fn command(data: &Path, client_port: u16, peer_port: u16) -> Command {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()));
        command
            .args(["--name", "e2e", "--data-dir"])
            .arg(data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e2e={peer}")]);
        command
    }

    /// Start on free ports with its data under `dir`.
    pub async fn start(dir: &Path) -> Self {
        let (client_port, peer_port) = (free_port(), free_port());
        let data = dir.join("etcd-data");
        let process = Process::spawn("etcd", Self::command(&data, client_port, peer_port));
        let etcd = Self {
            process,
            endpoint: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            data,
        };
        etcd.ready().await;
        etcd
    }

    async fn ready(&self) {
        self.process
            .wait_line("saying it serves clients", |l| {
                l.contains("serving insecure client requests")
                    || l.contains("ready to serve client requests")
            })
            .await;
    }

    /// SIGKILL, then start again on the same ports and data.
    pub async fn restart(&mut self) {
        self.process.kill();
        self.process = Process::spawn(
            "etcd",
            Self::command(&self.data, self.client_port, self.peer_port),
        );
        self.ready().await;
    }
}
