//! Every gateway this control plane has heard of (directly, or through another replica), with
//! the version it serves. Flips wait here until every live gateway applied a version.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use control_api::{GatewayStatus, RejectedVersion, now_ms};
use tokio::sync::watch;

/// The gateways seen.
pub struct Registry {
    gateways: Mutex<BTreeMap<String, GatewayStatus>>,
    changed: watch::Sender<u64>,
    stale_after_ms: u64,
}

/// How a wait for convergence ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotConverged {
    /// A gateway refused the version.
    Rejected {
        /// The gateway.
        gateway: String,
        /// Its error.
        error: String,
    },
    /// Time ran out; these gateways had not applied it.
    Timeout(Vec<String>),
    /// The wait was abandoned (the flip was cancelled).
    Aborted(String),
}

impl std::fmt::Display for NotConverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotConverged::Rejected { gateway, error } => {
                write!(f, "gateway {gateway} refused the version: {error}")
            }
            NotConverged::Timeout(behind) => write!(
                f,
                "timed out waiting for {} gateway(s): {}",
                behind.len(),
                behind.join(", ")
            ),
            NotConverged::Aborted(why) => write!(f, "{why}"),
        }
    }
}

impl Registry {
    /// An empty registry; gateways not heard from for `stale_after` are stale.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            gateways: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            stale_after_ms: u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A gateway polled (or reported): it serves `applied`. Returns what is now known of it.
    pub fn seen(
        &self,
        id: &str,
        region: &str,
        applied: u64,
        rejected: Option<RejectedVersion>,
    ) -> GatewayStatus {
        let mut gateways = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        let entry = gateways
            .entry(id.to_owned())
            .or_insert_with(|| GatewayStatus {
                id: id.to_owned(),
                region: region.to_owned(),
                applied_version: 0,
                last_seen_ms: 0,
                rejected: None,
                stale: false,
            });
        entry.region = region.to_owned();
        entry.applied_version = applied;
        entry.last_seen_ms = now_ms();
        if rejected.is_some() {
            entry.rejected = rejected;
        }
        let status = entry.clone();
        drop(gateways);
        self.changed.send_modify(|n| *n += 1);
        status
    }

    /// What another replica learned of a gateway; kept when newer than what is known here.
    pub fn merge(&self, status: GatewayStatus) {
        let mut gateways = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        let newer = gateways
            .get(&status.id)
            .is_none_or(|known| known.last_seen_ms <= status.last_seen_ms);
        if newer {
            gateways.insert(status.id.clone(), status);
            drop(gateways);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Every gateway, with staleness as of now.
    pub fn list(&self) -> Vec<GatewayStatus> {
        let now = now_ms();
        self.gateways
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|g| GatewayStatus {
                stale: now.saturating_sub(g.last_seen_ms) > self.stale_after_ms,
                ..g.clone()
            })
            .collect()
    }

    /// Wait until every live gateway serves `version` or newer. Returns how many did. Fails
    /// at once when one refuses it, and when `timeout` passes.
    pub async fn wait_converged(
        &self,
        version: u64,
        timeout: Duration,
    ) -> Result<usize, NotConverged> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.subscribe();
        loop {
            changed.mark_unchanged();
            let gateways = self.list();
            if let Some(refusing) = gateways.iter().find(|g| {
                !g.stale
                    && g.applied_version < version
                    && g.rejected
                        .as_ref()
                        .is_some_and(|r| r.version == Some(version))
            }) {
                return Err(NotConverged::Rejected {
                    gateway: refusing.id.clone(),
                    error: refusing
                        .rejected
                        .as_ref()
                        .map(|r| r.error.clone())
                        .unwrap_or_default(),
                });
            }
            let behind: Vec<String> = gateways
                .iter()
                .filter(|g| !g.stale && g.applied_version < version)
                .map(|g| g.id.clone())
                .collect();
            if behind.is_empty() {
                return Ok(gateways.iter().filter(|g| !g.stale).count());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NotConverged::Timeout(behind));
            }
            // Woken by any report; the short tick notices gateways going stale.
            let tick = deadline.min(tokio::time::Instant::now() + Duration::from_millis(200));
            let _ = tokio::time::timeout_at(tick, changed.changed()).await;
        }
    }
}
