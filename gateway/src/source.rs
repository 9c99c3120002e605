//! Table sources. Every source feeds [`TableStore::load_text`], the one load path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::store::{SameVersion, TableStore};

pub use control_api::files::is_json;

/// Load the table file once. `Err` says why it could not be read (not why it was refused:
/// refusals are recorded by the store).
pub fn load_file(store: &TableStore, path: &Path) -> Result<Result<u64, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let origin = format!("file:{}", path.display());
    Ok(store
        .load_text(&text, is_json(path), &origin)
        .map_err(|r| r.error))
}

/// The file's identity for change detection: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reload `path` when it changes (checked every `interval`) and whenever `reload` is notified
/// (SIGHUP). Stops when the store is dropped.
pub fn watch_file(store: &Arc<TableStore>, path: PathBuf, interval: Duration, reload: Arc<Notify>) {
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = reload.notified() => true,
            };
            let now = stamp(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            let Some(store) = store.upgrade() else { return };
            let current = store.current().map(|s| s.table.version());
            match load_file(&store, &path) {
                Ok(Ok(version)) => {
                    tracing::info!(version, path = %path.display(), "table file reloaded")
                }
                Ok(Err(_)) => {}
                Err(error) => {
                    tracing::error!(%error, current, "table file unreadable; the table in force stays")
                }
            }
        }
    });
}

/// The control plane as a table source: a long poll that returns every new version as soon as
/// it is stored, and reports to the control plane what this gateway applied or refused.
pub struct ControlPlaneSource {
    client: control_api::Client,
    gateway: String,
    origin: String,
    /// Where the connection state is shown (`unitgate_control_plane_connected`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A gateway's goodbye to the control plane: a last report that says it is leaving.
pub struct Departure {
    client: control_api::Client,
    gateway: String,
}

impl Departure {
    /// Send it (once the gateway has drained); a control plane that cannot be reached keeps
    /// the gateway in its fleet, and flips wait for it until an operator forgets it.
    pub async fn send(&self, store: &TableStore) {
        let report = control_api::GatewayReport {
            leaving: true,
            ..report_of(&self.gateway, store)
        };
        match self.client.report(&report).await {
            Ok(()) => tracing::info!(gateway = self.gateway, "left the control plane's fleet"),
            Err(error) => {
                tracing::warn!(%error, gateway = self.gateway, "cannot tell the control plane this gateway leaves")
            }
        }
    }
}

/// Resolves once the version [`TableStore::settled`] gives is no longer `reported` (or the
/// store is gone).
async fn settled_away(
    store: &std::sync::Weak<TableStore>,
    settle: &tokio::sync::Notify,
    reported: u64,
) {
    loop {
        let notified = settle.notified();
        tokio::pin!(notified);
        // Listening before looking: a write that ends in between still wakes this.
        notified.as_mut().enable();
        let Some(store) = store.upgrade() else {
            return;
        };
        let settled = store.settled().map_or(0, |s| s.table.version());
        drop(store);
        if settled != reported {
            return;
        }
        notified.await;
    }
}

/// A report of what `gateway` serves: what its watches say ([`Serving`]), the settled version.
fn report_of(gateway: &str, store: &TableStore) -> control_api::GatewayReport {
    let serving = Serving::of(store);
    control_api::GatewayReport {
        gateway: gateway.to_owned(),
        region: serving.region,
        applied: serving.applied,
        digest: serving.digest,
        rejected: None,
        leaving: false,
    }
}

/// What a watch tells the control plane about the table this gateway serves.
struct Serving {
    applied: u64,
    digest: Option<String>,
    region: String,
}

impl Serving {
    /// What this gateway can vouch for: the settled snapshot ([`TableStore::settled`]).
    fn of(store: &TableStore) -> Self {
        let current = store.settled();
        Self {
            applied: current.as_ref().map_or(0, |s| s.table.version()),
            digest: current.map(|s| s.digest.clone()),
            region: store.region().to_owned(),
        }
    }
}

/// Longest the control plane holds a watch; the request timeout allows for it.
const WATCH_HOLD_S: u64 = 25;
/// First and longest pause between failed attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl ControlPlaneSource {
    /// A source for `config`; `default_id` names the gateway when the config does not.
    pub fn new(
        config: &crate::config::ControlPlaneSource,
        default_id: String,
    ) -> Result<Self, String> {
        let token = config.token()?;
        let client = control_api::Client::new(&config.url, Some(&token), config.ca_file.as_deref())
            .map_err(|e| format!("table.control_plane: {e}"))?
            // Reports; each watch allows for its hold.
            .with_timeout(Duration::from_secs(5));
        Ok(Self {
            origin: format!("control-plane:{}", client.server()),
            client,
            gateway: config.gateway_id.clone().unwrap_or(default_id),
            metrics: None,
        })
    }

    /// Show the connection state in `metrics` (as disconnected until the control plane
    /// answers).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        metrics.control_plane_connected(false);
        self.metrics = Some(metrics);
        self
    }

    /// Record whether the control plane answered the last request.
    pub fn connected(&self, connected: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.control_plane_connected(connected);
        }
    }

    /// This gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway
    }

    /// `GET /v1/watch` for the first version after `after`, held up to `hold_s`.
    async fn watch(
        &self,
        serving: &Serving,
        after: u64,
        hold_s: u64,
        timeout: Duration,
    ) -> Result<Option<control_api::Reply>, control_api::ClientError> {
        let query = control_api::WatchQuery {
            after,
            applied: serving.applied,
            digest: serving.digest.as_deref(),
            gateway: &self.gateway,
            region: &serving.region,
            hold_s,
        };
        self.client.watch(&query, timeout).await
    }

    /// Ask for the version in force until one is applied, with the usual back-off: for a
    /// gateway that has nothing it may serve meanwhile.
    pub async fn fetch_until_served(&self, store: &TableStore) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.fetch_now(store, Duration::from_secs(5)).await {
                Ok(version) => {
                    tracing::info!(version, "table received from the control plane");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "still no table from the control plane");
                    tokio::time::sleep(backoff.mul_f64(0.8 + fastrand::f64() * 0.4)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Ask once for the version in force, without waiting; apply it. `Err` says why no table
    /// came (unreachable, refused).
    pub async fn fetch_now(&self, store: &TableStore, timeout: Duration) -> Result<u64, String> {
        let reply = self
            .watch(&Serving::of(store), 0, 0, timeout)
            .await
            .map_err(|e| e.to_string())?;
        match reply {
            Some(reply) => self.apply(store, &reply).await,
            None => Err(format!(
                "{}: the control plane holds no table yet",
                self.client.server()
            )),
        }
    }

    /// Apply a table answer; report a refusal to the control plane. The control plane names
    /// each version's content, so its table replaces one of the same version that differs.
    async fn apply(&self, store: &TableStore, reply: &control_api::Reply) -> Result<u64, String> {
        let text = String::from_utf8_lossy(&reply.body);
        let digest = reply
            .headers
            .get(control_api::DIGEST_HEADER)
            .and_then(|v| v.to_str().ok());
        let applied = match router_rules::load_json(&text) {
            Ok(table) => match digest {
                Some(digest) if control_api::table_digest(table.raw()) != digest => {
                    Err(store.reject(
                        Some(table.version()),
                        &self.origin,
                        format!(
                            "{}: the table does not match the digest the control plane sent with it ({digest})",
                            self.origin
                        ),
                    ))
                }
                _ => store.apply_with(table, &self.origin, SameVersion::Replace),
            },
            Err(error) => Err(store.reject(
                None,
                &self.origin,
                error.render(&self.origin).trim_end().to_owned(),
            )),
        };
        match applied {
            Ok(version) => Ok(version),
            Err(rejection) => {
                self.report(store, Some(&rejection)).await;
                Err(rejection.error)
            }
        }
    }

    /// What [`Gateway::stop_for_good`](crate::Gateway::stop_for_good) needs: this gateway's
    /// name and client.
    pub fn departure(&self) -> Departure {
        Departure {
            client: self.client.clone(),
            gateway: self.gateway.clone(),
        }
    }

    async fn report(&self, store: &TableStore, rejection: Option<&crate::store::Rejection>) {
        let report = control_api::GatewayReport {
            rejected: rejection.map(|r| control_api::RejectedVersion {
                version: r.version,
                error: r.error.clone(),
            }),
            ..report_of(&self.gateway, store)
        };
        if let Err(error) = self.client.report(&report).await {
            tracing::warn!(%error, "cannot report to the control plane");
        }
    }

    /// Follow the control plane until `stop`: long-poll for each version after the newest
    /// seen, apply it, and on failure retry with exponential back-off (100 ms to 5 s, with
    /// jitter) while the table in force keeps serving.
    pub fn spawn(
        self,
        store: &Arc<TableStore>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut seen = 0u64;
            let mut backoff = BACKOFF_MIN;
            let mut failing = false;
            loop {
                let Some(strong) = store.upgrade() else {
                    return;
                };
                let settle = strong.settle_signal();
                let serving = Serving::of(&strong);
                drop(strong);
                let request = self.watch(
                    &serving,
                    seen.max(serving.applied),
                    WATCH_HOLD_S,
                    Duration::from_secs(WATCH_HOLD_S + 10),
                );
                let reply = tokio::select! {
                    reply = request => reply,
                    _ = stop.changed() => return,
                    // Writes routed by an older version have ended: say so now, not at the
                    // end of the hold, for a flip waits on it.
                    () = settled_away(&store, &settle, serving.applied) => continue,
                };
                let Some(strong) = store.upgrade() else {
                    return;
                };
                let outcome = match reply {
                    Ok(Some(reply)) => {
                        let offered = reply
                            .headers
                            .get(control_api::VERSION_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        // A refused version is not asked for again; the next one is.
                        if let Some(offered) = offered {
                            seen = seen.max(offered);
                        }
                        let _ = self.apply(&strong, &reply).await;
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(error) => Err(error.to_string()),
                };
                drop(strong);
                self.connected(outcome.is_ok());
                match outcome {
                    Ok(()) => {
                        if failing {
                            tracing::info!(
                                server = self.client.server(),
                                "control plane reachable again"
                            );
                        }
                        failing = false;
                        backoff = BACKOFF_MIN;
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "control plane unreachable; the table in force keeps serving");
                        }
                        failing = true;
                        let jitter = 0.8 + fastrand::f64() * 0.4;
                        tokio::select! {
                            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        })
    }
}
