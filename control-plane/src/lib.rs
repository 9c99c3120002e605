//! `unitgate-control`, the control plane: holds the versioned routing table, pushes every
//! version to the gateways (they long-poll `/v1/watch`), runs unit flips step by step, and
//! audits every change. Tables are validated by `router-rules`, the same library the gateways
//! and the `unitctl` dry-run use.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod flip;
pub mod metrics;
pub mod openapi;
pub mod refused;
pub mod registry;
pub mod server;
pub mod store;
pub mod units;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::{AuditEntry, AuditOutcome, FlipState, GatewayStatus, StoredTable, now_ms};
use tokio::sync::Notify;

use crate::auth::Tokens;
use crate::config::ControlConfig;
use crate::metrics::Metrics;
use crate::registry::{NotConverged, Registry, Sighting};
use crate::store::{PutOutcome, Store, StoreError, UnitBlock, UnreadableFlip};

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
    /// Digests of stored versions (they never change), to check gateways' reports cheaply.
    digests: Mutex<BTreeMap<u64, String>>,
    /// The table in force, compiled once per version, for explaining requests.
    compiled: Mutex<Option<Arc<router_rules::CompiledTable>>>,
}

/// What a gateway's claim to serve a version turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliedCheck {
    /// The stored content (or no digest was given to compare).
    Matches,
    /// Another content under that version number.
    Diverged,
    /// No such version was ever stored.
    NeverStored,
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
        // The fleet recorded before this start: those live then are waited for until they
        // report (or go stale), so a flip right after a restart cannot skip them.
        registry.restore(store.fleet().await.map_err(|e| e.to_string())?);
        let cp = Arc::new(Self {
            store,
            registry,
            tokens,
            replica,
            metrics: Metrics::default(),
            wakeups: Mutex::new(HashMap::new()),
            digests: Mutex::new(BTreeMap::new()),
            compiled: Mutex::new(None),
            config,
        });
        cp.seed().await?;
        cp.recover_flips().await;
        if !cp.store.is_shared() {
            // The file store records the fleet when a gateway's version changes (coalesced:
            // one write for any number of reports meanwhile), and heartbeats once a second.
            let weak = Arc::downgrade(&cp);
            let registry = cp.registry.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = registry.material_change() => {}
                    }
                    let Some(cp) = weak.upgrade() else { return };
                    if let Err(error) = cp.store.persist_fleet(&cp.registry).await {
                        tracing::warn!(%error, "cannot record the fleet");
                    }
                }
            });
        }
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

    /// Store the configured `initial_table` as the first version when the store holds none.
    async fn seed(&self) -> Result<(), String> {
        if self.store.current().is_some() {
            return Ok(());
        }
        let Some(table) = self.config.initial_table()? else {
            return Ok(());
        };
        let path = self.config.initial_table.clone().unwrap_or_default();
        let version = table.version();
        let stored = StoredTable::new(
            table.raw().clone(),
            "initial_table",
            Some(format!("seeded from {}", path.display())),
            None,
        );
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
        self.write_version(0, stored, audit, &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Store `stored` as the version after `expected`, with the audit entry that records it,
    /// as one change; `fence`: a flip lock that must still be held. The one way a version is
    /// written.
    pub async fn write_version(
        &self,
        expected: u64,
        stored: StoredTable,
        audit: AuditEntry,
        fences: &[(String, String)],
    ) -> Result<PutOutcome, StoreError> {
        let digest = stored.digest.clone();
        let outcome = self
            .store
            .put_table(expected, stored, capped(audit), fences)
            .await?;
        if let PutOutcome::Stored(version) = outcome {
            self.metrics.table_writes.fetch_add(1, Ordering::Relaxed);
            self.digests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(version, digest);
        }
        Ok(outcome)
    }

    /// Whether version `applied` with `digest` is what the store holds under that number.
    pub async fn check_applied(
        &self,
        applied: u64,
        digest: Option<&str>,
    ) -> Result<AppliedCheck, StoreError> {
        if applied == 0 {
            return Ok(AppliedCheck::Matches);
        }
        let known = self
            .digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&applied)
            .cloned();
        let stored_digest = match known {
            Some(digest) => digest,
            None => {
                // This replica's copy may lag the store (etcd): ask the store itself.
                let Some(stored) = self.store.version(applied).await? else {
                    return Ok(AppliedCheck::NeverStored);
                };
                self.digests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(applied, stored.digest.clone());
                stored.digest
            }
        };
        Ok(match digest {
            Some(digest) if digest != stored_digest => AppliedCheck::Diverged,
            _ => AppliedCheck::Matches,
        })
    }

    /// A gateway was heard from: record it in the fleet (and in the store).
    pub async fn gateway_seen(&self, sighting: Sighting) -> GatewayStatus {
        let id = sighting.id.clone();
        let (status, new) = self.registry.seen(sighting);
        if let Err(error) = self
            .store
            .record_gateway(&status, new, &self.registry)
            .await
        {
            tracing::warn!(%error, gateway = id, "cannot record a gateway in the store");
        }
        status
    }

    /// Wait until every expected gateway (and each region's `min_gateways`) serves `version`.
    pub async fn wait_converged(
        &self,
        version: u64,
        timeout: Duration,
    ) -> Result<usize, NotConverged> {
        if let Err(error) = self.store.refresh_fleet(&self.registry).await {
            // Not knowing the fleet is a reason to wait, never to finish early: the registry
            // still holds everyone this replica knew of.
            tracing::warn!(%error, "cannot re-read the fleet; waiting on what this replica knows");
        }
        self.registry
            .wait_converged(version, &self.config.min_gateways, timeout)
            .await
    }

    /// Set an unreadable flip record aside, block its unit (when it can be told) until an
    /// operator resolves it, and say so in the log, the audit log and the metrics.
    async fn quarantine(&self, bad: &UnreadableFlip) {
        let blocks: Vec<UnitBlock> = self
            .units_of_flip(bad)
            .await
            .into_iter()
            .map(|unit| UnitBlock {
                unit,
                flip: bad.id.clone(),
                reason: format!(
                    "its record was unreadable and was quarantined: {}",
                    bad.error
                ),
                at_ms: now_ms(),
            })
            .collect();
        match self.store.quarantine_flip(bad, &blocks).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::error!(%error, flip = bad.id, "cannot quarantine an unreadable flip record");
                return;
            }
        }
        self.metrics
            .flips_quarantined
            .fetch_add(1, Ordering::Relaxed);
        let units: Vec<&str> = blocks.iter().map(|b| b.unit.as_str()).collect();
        let detail = if units.is_empty() {
            format!(
                "unreadable flip record quarantined ({}); its unit could not be told: check units left write_frozen",
                bad.error
            )
        } else {
            format!(
                "unreadable flip record quarantined ({}); unit {} stays locked against flips until resolved",
                bad.error,
                units.join(", ")
            )
        };
        tracing::error!(flip = bad.id, %detail, "flip record quarantined");
        self.audit(AuditEntry {
            at_ms: now_ms(),
            actor: self.replica.clone(),
            action: "flip.quarantine".into(),
            target: if units.is_empty() {
                bad.id.clone()
            } else {
                units.join(",")
            },
            outcome: AuditOutcome::Failed,
            status: None,
            version_before: Some(self.store.current_version()),
            version_after: None,
            reason: None,
            flip: Some(bad.id.clone()),
            detail: Some(detail),
        })
        .await;
    }

    /// The units of a flip whose record is unreadable: from its `flip.start` audit entry
    /// (whose target names them, comma-separated), else from the record's own text.
    async fn units_of_flip(&self, bad: &UnreadableFlip) -> Vec<String> {
        let named = |list: &str| -> Vec<String> {
            list.split(',')
                .filter(|u| crate::store::is_file_name(u))
                .map(str::to_owned)
                .collect()
        };
        if let Ok(entries) = self.store.audit_log().await
            && let Some(start) = entries
                .iter()
                .find(|e| e.action == "flip.start" && e.flip.as_deref() == Some(&bad.id))
        {
            return named(&start.target);
        }
        let unit = || {
            let after = bad.text.split("\"unit\"").nth(1)?;
            let value = after.trim_start().strip_prefix(':')?.trim_start();
            let value = value.strip_prefix('"')?;
            Some(named(&value[..value.find('"')?]))
        };
        unit().unwrap_or_default()
    }

    /// Take over every running flip whose lock nobody holds (its runner is gone); quarantine
    /// the records that cannot be read, so that one bad record stops nothing else.
    async fn recover_flips(self: &Arc<Self>) {
        let flips = match self.store.flip_records().await {
            Ok((flips, unreadable)) => {
                for bad in &unreadable {
                    self.quarantine(bad).await;
                }
                flips
            }
            Err(error) => {
                tracing::warn!(%error, "cannot list flips to recover");
                return;
            }
        };
        for flip in flips.into_iter().filter(|f| f.state == FlipState::Running) {
            let units: Vec<String> = flip.moves().into_iter().map(|m| m.unit).collect();
            let locks = match self.store.lock_units(&units, &flip.id).await {
                Ok(Ok(locks)) => locks,
                Ok(Err(_)) => continue,
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
            tokio::spawn(flip::recover(self.clone(), flip, locks));
        }
    }

    /// The table in force, compiled (validated once per version).
    pub fn compiled(
        &self,
    ) -> Result<Option<Arc<router_rules::CompiledTable>>, router_rules::TableError> {
        let Some(current) = self.store.current() else {
            return Ok(None);
        };
        let mut cached = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = cached.as_ref()
            && table.version() == current.version
        {
            return Ok(Some(table.clone()));
        }
        let table = Arc::new(router_rules::validate(current.table.clone(), None)?);
        *cached = Some(table.clone());
        Ok(Some(table))
    }

    /// Append to the audit log; a failure is logged (and counted), never hidden.
    pub async fn audit(&self, entry: AuditEntry) {
        let entry = capped(entry);
        if let Err(error) = self.store.audit(entry.clone()).await {
            self.metrics
                .audit_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                %error,
                entry = serde_json::to_string(&entry).unwrap_or_default(),
                "cannot append to the audit log"
            );
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

/// Longest text kept in one field of an audit entry, in bytes.
const MAX_AUDIT_FIELD: usize = 1024;

/// `entry` with every text field cut to [`MAX_AUDIT_FIELD`] bytes: what a caller sends (a unit
/// name in a path, a reason header) must not grow the audit log by megabytes per call.
fn capped(mut entry: AuditEntry) -> AuditEntry {
    fn cap(text: &mut String) {
        if text.len() > MAX_AUDIT_FIELD {
            let mut end = MAX_AUDIT_FIELD;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let cut = text.len() - end;
            text.truncate(end);
            text.push_str(&format!("... ({cut} bytes cut)"));
        }
    }
    cap(&mut entry.actor);
    cap(&mut entry.action);
    cap(&mut entry.target);
    for text in [&mut entry.reason, &mut entry.flip, &mut entry.detail]
        .into_iter()
        .flatten()
    {
        cap(text);
    }
    entry
}
