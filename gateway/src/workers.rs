//! Proxy worker threads, each with a single-threaded runtime of its own, as nginx runs worker
//! processes: a connection is handed to one worker and lives there, with its requests, its
//! upstream connections (each worker has its own pool) and its timers. Nothing is stolen between
//! threads, so a request's tasks never wake one another across cores.
//!
//! Connections are handed out in turn by the listeners' accept loops, which run on the main
//! runtime with the table source, health checks and the admin listener. With one worker the
//! main runtime is the worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::proxy::Shared;
use crate::server::{self, stopped};

/// One worker: where its connections run, and what its requests share.
pub struct Worker {
    /// The worker's runtime.
    pub handle: Handle,
    /// The state its requests share (its own upstream pool and timeouts among it).
    pub shared: Arc<Shared>,
    /// Its HTTP server settings (with its timeouts).
    pub http: Arc<auto::Builder<TokioExecutor>>,
    /// Whether this worker is the runtime that accepts (a single worker).
    pub is_local: bool,
}

impl Worker {
    /// A worker running on `handle`; starts its timeouts' sweeper there.
    fn new(handle: Handle, shared: Shared, is_local: bool) -> Self {
        handle.spawn(shared.timer.sweeper());
        let http = server::http_builder(
            &shared.config.limits,
            Duration::from_millis(shared.config.timeouts.client_header_ms),
            shared.timer.clone(),
        );
        Self {
            handle,
            shared: Arc::new(shared),
            http: Arc::new(http),
            is_local,
        }
    }
}

/// The proxy's workers.
pub struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
    exit: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// How many workers `threads` (the config's) means: 0 is one per core.
    pub fn count(threads: usize) -> usize {
        match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// `count` workers, each with the state `shared` makes for its index. One worker is the
    /// calling runtime itself; more are threads of their own.
    pub fn start(count: usize, shared: impl Fn(usize) -> Shared) -> Result<Self, String> {
        let (exit, exit_rx) = watch::channel(false);
        if count <= 1 {
            return Ok(Self {
                workers: vec![Worker::new(Handle::current(), shared(0), true)],
                next: AtomicUsize::new(0),
                exit,
                threads: Mutex::new(Vec::new()),
            });
        }
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start worker {index}: {e}"))?;
            workers.push(Worker::new(runtime.handle().clone(), shared(index), false));
            let mut exit_rx = exit_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("unitgate-worker-{index}"))
                .spawn(move || runtime.block_on(stopped(&mut exit_rx)))
                .map_err(|e| format!("cannot start worker {index}: {e}"))?;
            threads.push(thread);
        }
        Ok(Self {
            workers,
            next: AtomicUsize::new(0),
            exit,
            threads: Mutex::new(threads),
        })
    }

    /// The worker for the next connection, in turn.
    pub fn next(&self) -> &Worker {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        &self.workers[index]
    }

    /// Every worker's shared state.
    pub fn shared(&self) -> impl Iterator<Item = &Arc<Shared>> {
        self.workers.iter().map(|w| &w.shared)
    }

    /// End the worker threads; whatever still runs on them is dropped. Waits for them.
    pub async fn exit(&self) {
        let _ = self.exit.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        if threads.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
