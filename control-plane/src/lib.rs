//! `unitgate-control`, the control plane: holds the versioned routing table, pushes every
//! version to the gateways (they long-poll `/v1/watch`), runs unit flips step by step, and
//! audits every change. Tables are validated by `router-rules`, the same library the gateways
//! and the `unitctl` dry-run use.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod flip;
pub mod metrics;
pub mod openapi;
pub mod registry;
pub mod server;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::{AuditEntry, AuditOutcome, FlipState, StoredTable, now_ms};
use tokio::sync::Notify;

use crate::auth::Tokens;
use crate::config::ControlConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

/// One control-plane replica: its store, the gateways it knows, its tokens.
pub struct ControlPlane {
    /// Versions, flips, audit.
    pub store: Store,
    /// Gateways and the versions they serve.
    pub registry: Arc<Registry>,
    /// Accepted tokens.
    pub tokens: Tokens,
    /// The configuration.
    pub config: ControlConfig,
    /// This replica's name.
    pub replica: String,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Wakes a flip runner of this replica when an operator signals it.
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
}

impl ControlPlane {
    /// Load tokens, open the store, store the initial table if the store is empty, and finish
    /// flips a previous run left unfinished.
    pub async fn open(config: ControlConfig) -> Result<Arc<Self>, String> {
        let tokens = Tokens::load(&config.tokens)?;
        let registry = Arc::new(Registry::new(Duration::from_secs(
            config.gateway_stale_after_s,
        )));
        let replica = config.replica_name();
        let store = Store::open(&config.store, &replica, registry.clone())
            .await
            .map_err(|e| e.to_string())?;
        let cp = Arc::new(Self {
            store,
            registry,
            tokens,
            replica,
            metrics: Metrics::default(),
            wakeups: Mutex::new(HashMap::new()),
            config,
        });
        if let Some(path) = cp.config.initial_table.clone() {
            cp.seed(&path).await?;
        }
        cp.recover_flips().await;
        if cp.store.is_shared() {
            // Another replica may die mid-flip at any time: look for orphans continuously.
            let weak = Arc::downgrade(&cp);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(cp) = weak.upgrade() else { return };
                    cp.recover_flips().await;
                }
            });
        }
        Ok(cp)
    }

    /// Store `path` as the first version when the store holds none.
    async fn seed(&self, path: &Path) -> Result<(), String> {
        if self.store.current().is_some() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("initial_table: {}: {e}", path.display()))?;
        let json = path.extension().is_some_and(|e| e == "json");
        let table = if json {
            router_rules::load_json(&text)
        } else {
            router_rules::load_yaml(&text)
        }
        .map_err(|e| e.render(&path.display().to_string()))?;
        let version = table.version();
        let stored = StoredTable {
            version,
            stored_at_ms: now_ms(),
            author: "initial_table".into(),
            reason: Some(format!("seeded from {}", path.display())),
            flip: None,
            table: table.raw().clone(),
        };
        let audit = AuditEntry {
            at_ms: stored.stored_at_ms,
            actor: "initial_table".into(),
            action: "table.seed".into(),
            target: "table".into(),
            outcome: AuditOutcome::Ok,
            status: None,
            version_before: None,
            version_after: Some(version),
            reason: stored.reason.clone(),
            flip: None,
            detail: None,
        };
        // Another replica may seed at the same moment; either copy is the same table.
        self.store
            .put_table(0, stored, audit, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Take over every running flip whose lock nobody holds (its runner is gone).
    async fn recover_flips(self: &Arc<Self>) {
        let flips = match self.store.flips().await {
            Ok(flips) => flips,
            Err(error) => {
                tracing::warn!(%error, "cannot list flips to recover");
                return;
            }
        };
        for flip in flips.into_iter().filter(|f| f.state == FlipState::Running) {
            let lock = match self.store.lock_unit(&flip.unit, &flip.id).await {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, flip = flip.id, "cannot take a flip lock");
                    continue;
                }
            };
            // Re-read under the lock: the runner may have finished just before it let go.
            let Ok(Some(flip)) = self.store.flip(&flip.id).await else {
                continue;
            };
            if flip.state.is_final() {
                continue;
            }
            tokio::spawn(flip::recover(self.clone(), flip, lock));
        }
    }

    /// Append to the audit log; a failure is logged (and counted), never hidden.
    pub async fn audit(&self, entry: AuditEntry) {
        if let Err(error) = self.store.audit(entry.clone()).await {
            self.metrics
                .audit_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(%error, ?entry, "cannot append to the audit log");
        }
    }

    /// The notifier that wakes flip `id`'s runner on this replica.
    pub fn flip_wakeup(&self, id: &str) -> Arc<Notify> {
        self.wakeups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Wake flip `id`'s runner if it runs on this replica (on another replica, the runner sees
    /// the signal in the store within its polling interval).
    pub fn wake_flip(&self, id: &str) {
        if let Some(wake) = self
            .wakeups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            wake.notify_waiters();
        }
    }

    /// Drop flip `id`'s notifier once it ended.
    pub fn forget_flip(&self, id: &str) {
        self.wakeups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}
