//! unitgate, the unit routing gateway: an L7 proxy that sends every request to the region that
//! owns its user's unit. Routing decisions come from `router-rules`, the same library the
//! `unitctl` dry-run uses.
#![forbid(unsafe_code)]

pub mod admin;
mod attempts;
pub mod client_body;
pub mod coarse_timer;
pub mod config;
pub mod connect;
pub mod decide;
pub mod demo;
pub mod framing;
pub mod grpc;
pub mod h1;
pub mod headers;
pub mod hop;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod source;
pub mod store;
mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod upstream_h2;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderName;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::AdminState;
use crate::config::GatewayConfig;
use crate::hop::HopKey;
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::server::ConnTracker;
use crate::store::{CacheRefusal, TableStore};
use crate::upstream::Upstream;
use crate::workers::Workers;

/// Sockets a gateway serves on, bound before it starts (so tests and upgrades can hand them in).
pub struct Listeners {
    /// Plain HTTP listeners.
    pub http: Vec<std::net::TcpListener>,
    /// HTTPS listeners with their TLS configs.
    pub https: Vec<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
    /// The admin listener.
    pub admin: std::net::TcpListener,
}

impl Listeners {
    /// Bind every listener `config` names.
    pub fn bind(config: &GatewayConfig) -> Result<Self, String> {
        let bind = |address: SocketAddr| {
            server::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))
        };
        Ok(Self {
            http: config
                .listen
                .http
                .iter()
                .map(|a| bind(*a))
                .collect::<Result<_, _>>()?,
            https: config
                .listen
                .https
                .iter()
                .map(|l| Ok((bind(l.address)?, l.server_config()?)))
                .collect::<Result<_, String>>()?,
            admin: bind(config.admin.listen)?,
        })
    }
}

/// Serve the cached table when the table source has none to give; fail when there is none.
fn start_from_cache(store: &TableStore, why: &str, accept_as_is: bool) -> Result<(), CacheRefusal> {
    match store.restore_from_cache(accept_as_is) {
        Ok(version) => {
            tracing::warn!(
                version,
                reason = %why,
                "table source unavailable: serving the cached table"
            );
            Ok(())
        }
        Err(CacheRefusal::Unusable(cache)) => Err(CacheRefusal::Unusable(format!(
            "no routing table to serve:\n  source: {why}\n  cache: {cache}"
        ))),
        Err(tampered) => Err(tampered),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// A running gateway.
pub struct Gateway {
    /// The table in force.
    pub store: Arc<TableStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Addresses of the plain HTTP listeners.
    pub http_addrs: Vec<SocketAddr>,
    /// Addresses of the HTTPS listeners.
    pub https_addrs: Vec<SocketAddr>,
    /// Address of the admin listener.
    pub admin_addr: SocketAddr,
    admin: Arc<AdminState>,
    workers: Arc<Workers>,
    stop: watch::Sender<bool>,
    tracker: Arc<ConnTracker>,
    reload: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    /// Says goodbye to the control plane when the gateway stops for good
    /// ([`Gateway::stop_for_good`]).
    departure: Option<source::Departure>,
}

impl Gateway {
    /// Load the table (from its source, else from the cache) and start serving. Fails when no
    /// table can be had at all: a gateway without a table would refuse every request.
    pub async fn start(config: GatewayConfig, listeners: Listeners) -> Result<Self, String> {
        let workers = Workers::count(config.threads);
        let metrics = Arc::new(Metrics::with_workers(workers));
        let store = Arc::new(TableStore::new(
            &config.region,
            config.cache_dir.clone(),
            metrics.clone(),
        ));
        let reload = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut departure = None;
        if let Some(path) = &config.table.file {
            let from_source = match source::load_file(&store, path) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(refused)) => Err(refused),
                Err(unreadable) => Err(unreadable),
            };
            if let Err(why) = from_source {
                start_from_cache(&store, &why, config.accept_cache_as_is)
                    .map_err(|e| e.to_string())?;
            }
            source::watch_file(
                &store,
                path.clone(),
                Duration::from_millis(config.table.poll_interval_ms),
                reload.clone(),
            );
        }
        if let Some(control) = &config.table.control_plane {
            let default_id = format!(
                "{}-{}-{}",
                config.region,
                host_name(),
                listeners
                    .admin
                    .local_addr()
                    .map(|a| a.port())
                    .unwrap_or_default()
            );
            let source =
                source::ControlPlaneSource::new(control, default_id)?.with_metrics(metrics.clone());
            let first = source.fetch_now(&store, Duration::from_secs(3)).await;
            source.connected(first.is_ok());
            if let Err(why) = first {
                match start_from_cache(&store, &why, config.accept_cache_as_is) {
                    Ok(()) => {}
                    Err(CacheRefusal::Tampered(cache)) => {
                        // A cache that is not what was saved is never served: wait for the
                        // control plane instead.
                        tracing::error!(%cache, source = %why, "the table cache was refused; waiting for the control plane");
                        source.fetch_until_served(&store).await;
                        source.connected(true);
                    }
                    Err(unusable) => return Err(unusable.to_string()),
                }
            }
            tracing::info!(
                gateway = source.gateway_id(),
                url = control.url,
                "following the control plane"
            );
            departure = Some(source.departure());
            tasks.push(source.spawn(&store, stop_rx.clone()));
        }
        tasks.push(tokio::spawn(store::end_held_writes(
            Arc::downgrade(&store),
            config.timeouts.moved_write_grace(),
            stop_rx.clone(),
        )));
        upstream::spawn_health_checks(
            store.clone(),
            Upstream::with_connectors(&config.timeouts, store.connectors()),
            config.health_check.clone(),
        );
        let stress_header =
            HeaderName::from_bytes(config.stress_test_header.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("stress_test_header: {e}"))?;
        let hop_secret = config.hop_secret()?;
        let hop = HopKey::new(&hop_secret);
        let key_log = proxy::KeyLog::new(config.access_log.routing_key, &hop_secret);
        let body_budget = limits::BodyBudget::new(config.limits.max_buffered_body_bytes);
        let workers = Arc::new(Workers::start(workers, |worker| Shared {
            worker,
            timer: coarse_timer::CoarseTimer::new(),
            store: store.clone(),
            upstream: Upstream::with_connectors(&config.timeouts, store.connectors()),
            upstream_h2: upstream_h2::H2Upstream::new(&config.timeouts),
            codec_upstream: Arc::new(h1::client::Pool::new(
                config.timeouts.connect(),
                store.connectors(),
            )),
            hop: hop.clone(),
            metrics: metrics.clone(),
            config: config.clone(),
            key_log: key_log.clone(),
            stress_header: stress_header.clone(),
            draining: false.into(),
            body_budget: body_budget.clone(),
        })?);
        let tracker = Arc::new(ConnTracker::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ));
        tracing::info!(
            max_connections = tracker.max(),
            max_connections_per_ip = config.limits.max_connections_per_ip,
            "client connection limits"
        );
        let admin = Arc::new(AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            draining: false.into(),
            body_budget: body_budget.clone(),
        });
        let mut http_addrs = Vec::new();
        let mut https_addrs = Vec::new();
        let cannot_serve = |e: std::io::Error| format!("listener: {e}");
        for listener in &listeners.http {
            http_addrs.push(listener.local_addr().map_err(cannot_serve)?);
            tasks.extend(
                workers
                    .serve(listener, None, &tracker, &stop_rx)
                    .map_err(cannot_serve)?,
            );
        }
        for (listener, tls) in &listeners.https {
            https_addrs.push(listener.local_addr().map_err(cannot_serve)?);
            let acceptor = TlsAcceptor::from(tls.clone());
            tasks.extend(
                workers
                    .serve(listener, Some(&acceptor), &tracker, &stop_rx)
                    .map_err(cannot_serve)?,
            );
        }
        let to_tokio = |l: std::net::TcpListener| {
            l.set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
                .map_err(|e| format!("listener: {e}"))
        };
        let admin_listener = to_tokio(listeners.admin)?;
        let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(server::serve_admin(
            admin_listener,
            admin.clone(),
            stop_rx,
        )));
        tracing::info!(
            region = config.region,
            workers = workers.shared().count(),
            http = %join(&http_addrs),
            https = %join(&https_addrs),
            admin = %admin_addr,
            version = store.current().map(|s| s.table.version()),
            "gateway serving"
        );
        Ok(Self {
            store,
            metrics,
            http_addrs,
            https_addrs,
            admin_addr,
            admin,
            workers,
            stop,
            tracker,
            reload,
            tasks,
            departure,
        })
    }

    /// Re-read the table file now (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// [`Gateway::shutdown`], then tell the control plane this gateway is gone for good, so
    /// that flips stop waiting for it (a gateway that stops without saying so is waited for
    /// until it comes back or an operator forgets it). Not for an upgrade: the new process
    /// serves under the same id. Said only once drained: until then it still routes what it
    /// took.
    pub async fn stop_for_good(mut self, drain: Duration) -> usize {
        let departure = self.departure.take();
        let store = self.store.clone();
        let left = self.shutdown(drain).await;
        if let Some(departure) = departure {
            departure.send(&store).await;
        }
        left
    }

    /// Stop accepting, let in-flight requests finish (at most `drain`), then return the number
    /// of connections that were still open.
    pub async fn shutdown(self, drain: Duration) -> usize {
        self.admin.draining.store(true, Ordering::Relaxed);
        for shared in self.workers.shared() {
            shared.draining.store(true, Ordering::Relaxed);
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let left = self.tracker.drained(drain).await;
        if left > 0 {
            tracing::warn!(connections = left, "drain time over; closing the rest");
        }
        self.workers.exit().await;
        left
    }
}

/// Addresses as one text field for the log (`127.0.0.1:8001 127.0.0.1:8443`).
fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
