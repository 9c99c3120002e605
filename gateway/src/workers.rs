//! Proxy worker threads, each with a single-threaded runtime of its own, as nginx runs worker
//! processes: a connection is accepted by one worker and lives there, with its requests, its
//! upstream connections (each worker has its own pool) and its timers. Nothing is stolen between
//! threads, so a request's tasks never wake one another across cores.
//!
//! Every worker accepts on its own registration of each proxy listener, as nginx's workers do:
//! a new connection stays with whichever worker takes it first, without passing between
//! threads. Which worker that is depends on who wakes first, so a burst of connections can
//! land unevenly; a worker that already serves `IMBALANCE` more connections than the least
//! busy one hands what it accepts to that one instead (as Envoy's connection balancing does).
//! The main runtime keeps the table source, health checks and the admin listener. With one
//! worker the main runtime is the worker.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::coarse_timer::CoarseTimer;
use crate::config::RequestLimits;
use crate::metrics::ConnectionCount;
use crate::proxy::Shared;

/// One worker: where its connections run, and what its requests share.
pub struct Worker {
    /// The worker's runtime.
    pub handle: Handle,
    /// The state its requests share (its own upstream pool and timeouts among it).
    pub shared: Arc<Shared>,
    /// Its HTTP server settings (with its timeouts).
    pub http: Arc<auto::Builder<TokioExecutor>>,
}

impl Worker {
    /// A worker running on `handle`; starts its timeouts' sweeper there.
    fn new(handle: Handle, shared: Shared) -> Self {
        handle.spawn(shared.timer.sweeper());
        let http = http_builder(
            &shared.config.limits,
            Duration::from_millis(shared.config.timeouts.client_header_ms),
            shared.timer.clone(),
        );
        Self {
            handle,
            shared: Arc::new(shared),
            http: Arc::new(http),
        }
    }

    /// Count a connection as this worker's (in its metrics shard) while the result lives.
    pub fn serving(&self) -> ConnectionCount {
        self.shared.metrics.connection(self.shared.worker)
    }

    /// Connections this worker serves now.
    fn load(&self) -> u64 {
        self.shared.metrics.connections(self.shared.worker)
    }
}

/// The HTTP server settings of a worker whose timeouts `timer` keeps.
fn http_builder(
    limits: &RequestLimits,
    header_timeout: Duration,
    timer: CoarseTimer,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(timer)
        .header_read_timeout(header_timeout)
        .max_headers(limits.max_header_count)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// How many more connections than the least busy worker a worker serves before it hands new
/// ones over: enough that the usual jitter of who accepts first costs no hand-over.
const IMBALANCE: u64 = 2;

/// The proxy's workers.
pub struct Workers {
    workers: Vec<Worker>,
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
                workers: vec![Worker::new(Handle::current(), shared(0))],
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
            workers.push(Worker::new(runtime.handle().clone(), shared(index)));
            let mut exit_rx = exit_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("unitgate-worker-{index}"))
                .spawn(move || runtime.block_on(stopped(&mut exit_rx)))
                .map_err(|e| format!("cannot start worker {index}: {e}"))?;
            threads.push(thread);
        }
        Ok(Self {
            workers,
            exit,
            threads: Mutex::new(threads),
        })
    }

    /// Worker `index`.
    pub fn get(&self, index: usize) -> &Worker {
        &self.workers[index]
    }

    /// Every worker's shared state.
    pub fn shared(&self) -> impl Iterator<Item = &Arc<Shared>> {
        self.workers.iter().map(|w| &w.shared)
    }

    /// The index of the worker to serve a connection that worker `accepted_by` accepted:
    /// `accepted_by` itself, unless it serves `IMBALANCE` more connections than the least busy
    /// worker.
    pub fn pick(&self, accepted_by: usize) -> usize {
        let own_load = self.workers[accepted_by].load();
        match self
            .workers
            .iter()
            .enumerate()
            .map(|(index, w)| (w.load(), index))
            .min()
        {
            Some((least_load, least)) if least_load + IMBALANCE < own_load => least,
            _ => accepted_by,
        }
    }

    /// Every worker, by index.
    pub fn all(&self) -> &[Worker] {
        &self.workers
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

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
