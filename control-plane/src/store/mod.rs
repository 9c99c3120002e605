//! Where versions, flips and the audit log live: a local directory by default, etcd when
//! several control-plane replicas share the work. One type, [`Store`], with one variant per
//! backend, so the API and the flip runner never know which one they talk to.

pub mod file;

#[cfg(feature = "etcd")]
pub mod etcd;

use std::sync::{Arc, RwLock};

use control_api::{AuditEntry, AuditOutcome, FlipRecord, GatewayStatus, StoredTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::StoreConfig;
use crate::registry::Registry;

/// A store failure (I/O, etcd unreachable). The API answers `503` for these.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    /// Wrap anything printable.
    pub fn from_display(error: impl std::fmt::Display) -> Self {
        Self(error.to_string())
    }
}

/// Whether `name` (a unit or flip id) can name a file or key: letters, digits, `-`, `_`.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A unit no flip may start on until an operator resolves it: its flip record was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitBlock {
    /// The unit.
    pub unit: String,
    /// The flip whose record was lost.
    pub flip: String,
    /// What happened, for the operator.
    pub reason: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

impl UnitBlock {
    /// The sentence API answers and the status show.
    pub fn describe(&self) -> String {
        format!(
            "flip {} of unit {} could not be recovered ({}); resolve the unit with `unitctl flip-resolve {} --state active|write_frozen --reason \"...\"` (POST /v1/units/{}/resolve)",
            self.flip, self.unit, self.reason, self.unit, self.unit
        )
    }
}

/// A flip record that could not be read.
#[derive(Debug, Clone)]
pub struct UnreadableFlip {
    /// Its id (the file or key name).
    pub id: String,
    /// Why it could not be read.
    pub error: String,
    /// Its first bytes, as text, to find its unit in.
    pub text: String,
}

impl UnreadableFlip {
    fn new(id: &str, at: &str, error: impl std::fmt::Display, bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
        Self {
            id: id.to_owned(),
            error: format!("{at}: {error}"),
            text,
        }
    }
}

/// Refuse to serve a store whose version history has a hole: a version missing between two
/// stored ones, or one the audit log records as stored that is not there (a file deleted, a
/// backup restored over newer state). Serving it would reuse that version number for other
/// content, while gateways may still serve the old one.
pub fn check_history(place: &str, stored: &[u64], audit: &[AuditEntry]) -> Result<(), StoreError> {
    let recover = "restore it from a backup of the store; the control plane will not number a new version with it while it is missing";
    for pair in stored.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StoreError(format!(
                "{place}: version {} is missing (versions {} and {} are stored): {recover}",
                pair[0] + 1,
                pair[0],
                pair[1]
            )));
        }
    }
    for entry in audit {
        let Some(version) = entry.version_after else {
            continue;
        };
        if entry.outcome == AuditOutcome::Ok && stored.binary_search(&version).is_err() {
            let newest = stored.last().copied().unwrap_or(0);
            return Err(StoreError(format!(
                "{place}: version {version} is missing: the audit log records it as stored ({} by {} at {} ms), but the store holds {}: {recover}",
                entry.action,
                entry.actor,
                entry.at_ms,
                if newest == 0 {
                    "no version".to_owned()
                } else {
                    format!("versions up to {newest}")
                }
            )));
        }
    }
    Ok(())
}

/// How a compare-and-swap table write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored as this version.
    Stored(u64),
    /// The version in force was not the expected one; it is this.
    Stale(u64),
    /// The write was fenced by a flip lock that is no longer held.
    LockLost,
}

/// Signals an operator sends a running flip, possibly through another replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlipSignals {
    /// `POST /v1/flips/{id}/confirm` was called.
    pub confirmed: bool,
    /// `POST /v1/flips/{id}/cancel` was called.
    pub cancelled: bool,
    /// Seconds added to the wait for a confirmation (`POST /v1/flips/{id}/extend`), in all.
    pub extended_s: u64,
}

/// Which signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipSignal {
    /// Confirm replication.
    Confirm,
    /// Cancel (roll back).
    Cancel,
    /// Wait this many seconds longer for a confirmation.
    Extend(u64),
}

/// Exclusive right to flip one unit, held until dropped (etcd: a lease; file: in memory).
pub struct UnitLock {
    unit: String,
    backend: LockBackend,
}

enum LockBackend {
    File(Arc<std::sync::Mutex<std::collections::HashSet<String>>>),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::LeaseLock>),
}

impl UnitLock {
    /// The key and value a write must find to prove the lock is still held (etcd only).
    pub fn fence(&self) -> Option<(String, String)> {
        match &self.backend {
            LockBackend::File(_) => None,
            #[cfg(feature = "etcd")]
            LockBackend::Etcd(lock) => Some(lock.fence()),
        }
    }
}

impl Drop for UnitLock {
    fn drop(&mut self) {
        match &self.backend {
            LockBackend::File(held) => {
                held.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&self.unit);
            }
            #[cfg(feature = "etcd")]
            LockBackend::Etcd(lock) => lock.release(),
        }
    }
}

/// The table in force, shared by every backend: answers reads without a round trip and wakes
/// watchers when a new version lands (by this replica or, with etcd, by another).
pub struct Current {
    table: RwLock<Option<Arc<StoredTable>>>,
    version: watch::Sender<u64>,
}

impl Default for Current {
    fn default() -> Self {
        Self {
            table: RwLock::new(None),
            version: watch::channel(0).0,
        }
    }
}

impl Current {
    /// The table in force.
    pub fn get(&self) -> Option<Arc<StoredTable>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Install `table` if it is newer than the one held.
    pub fn offer(&self, table: Arc<StoredTable>) {
        let mut held = self.table.write().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_none_or(|h| h.version < table.version) {
            let version = table.version;
            *held = Some(table);
            drop(held);
            self.version.send_replace(version);
        }
    }

    /// The version in force (0: none), as a watch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// The store.
pub enum Store {
    /// A local directory.
    File(file::FileStore),
    /// etcd.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::EtcdStore>),
}

impl Store {
    /// Open the configured store.
    pub async fn open(
        config: &StoreConfig,
        replica: &str,
        registry: Arc<Registry>,
    ) -> Result<Self, StoreError> {
        match config {
            StoreConfig::File { dir } => Ok(Store::File(file::FileStore::open(dir)?)),
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd {
                endpoints,
                prefix,
                flip_lease_s,
            } => Ok(Store::Etcd(Box::new(
                etcd::EtcdStore::open(endpoints, prefix, *flip_lease_s, replica, registry).await?,
            ))),
            #[cfg(not(feature = "etcd"))]
            StoreConfig::Etcd { .. } => {
                let _ = (replica, registry);
                Err(StoreError(
                    "store.etcd: this build has no etcd support (build with --features etcd)"
                        .into(),
                ))
            }
        }
    }

    /// `file` or `etcd`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => "etcd",
        }
    }

    fn current_cell(&self) -> &Current {
        match self {
            Store::File(s) => &s.current,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => &s.current,
        }
    }

    /// The table in force.
    pub fn current(&self) -> Option<Arc<StoredTable>> {
        self.current_cell().get()
    }

    /// The version in force, 0 when none.
    pub fn current_version(&self) -> u64 {
        self.current().map_or(0, |t| t.version)
    }

    /// The version in force as a watch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.current_cell().subscribe()
    }

    /// Wait (a few seconds at most) until this replica holds `version` or a newer one: after
    /// a lost compare-and-swap, the winner's version may still be on its way from etcd.
    pub async fn wait_for_version(&self, version: u64) {
        let mut versions = self.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            versions.wait_for(|v| *v >= version),
        )
        .await;
    }

    /// One stored version.
    pub async fn version(&self, version: u64) -> Result<Option<StoredTable>, StoreError> {
        match self {
            Store::File(s) => s.version(version),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.version(version).await,
        }
    }

    /// Store `table` as the next version if the version in force is `expected`, with the
    /// audit entry that records it, as one change. `fences`: locks that must still be held.
    pub async fn put_table(
        &self,
        expected: u64,
        table: StoredTable,
        audit: AuditEntry,
        fences: &[(String, String)],
    ) -> Result<PutOutcome, StoreError> {
        match self {
            Store::File(s) => s.put_table(expected, table, audit, fences).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.put_table(expected, table, audit, fences).await,
        }
    }

    /// Append to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.audit(&entry).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.audit(&entry).await,
        }
    }

    /// The audit log, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::File(s) => s.audit_log().await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.audit_log().await,
        }
    }

    /// Save a flip record.
    pub async fn put_flip(&self, flip: &FlipRecord) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.put_flip(flip),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.put_flip(flip).await,
        }
    }

    /// Save a flip record for the runner holding the locks `fences` name; `false` (nothing
    /// written) when one of them is no longer as it took it. (The file store's locks live
    /// in this process: its runner never loses them.)
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))]
    pub async fn put_flip_fenced(
        &self,
        flip: &FlipRecord,
        fences: &[(String, String)],
    ) -> Result<bool, StoreError> {
        match self {
            Store::File(s) => s.put_flip(flip).map(|()| true),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.put_flip_fenced(flip, fences).await,
        }
    }

    /// One flip.
    pub async fn flip(&self, id: &str) -> Result<Option<FlipRecord>, StoreError> {
        match self {
            Store::File(s) => s.flip(id),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.flip(id).await,
        }
    }

    /// Every readable flip, oldest first (unreadable ones are quarantined by the recovery).
    pub async fn flips(&self) -> Result<Vec<FlipRecord>, StoreError> {
        Ok(self.flip_records().await?.0)
    }

    /// Every flip, oldest first, and the records that could not be read.
    pub async fn flip_records(&self) -> Result<(Vec<FlipRecord>, Vec<UnreadableFlip>), StoreError> {
        match self {
            Store::File(s) => s.flips(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.flips().await,
        }
    }

    /// Move an unreadable flip record aside and block the units it moved (those that can be
    /// told). `false` when another replica did it first.
    pub async fn quarantine_flip(
        &self,
        bad: &UnreadableFlip,
        blocks: &[UnitBlock],
    ) -> Result<bool, StoreError> {
        match self {
            Store::File(s) => s.quarantine_flip(bad, blocks),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.quarantine_flip(bad, blocks).await,
        }
    }

    /// Why no flip may start on `unit` until it is resolved, if so.
    pub async fn unit_block(&self, unit: &str) -> Result<Option<UnitBlock>, StoreError> {
        match self {
            Store::File(s) => s.unit_block(unit),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.unit_block(unit).await,
        }
    }

    /// Lift `unit`'s block; the block lifted, if there was one.
    pub async fn lift_block(&self, unit: &str) -> Result<Option<UnitBlock>, StoreError> {
        match self {
            Store::File(s) => s.lift_block(unit),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.lift_block(unit).await,
        }
    }

    /// Send a running flip a signal.
    pub async fn signal_flip(&self, id: &str, signal: FlipSignal) -> Result<(), StoreError> {
        match self {
            Store::File(s) => {
                s.signal_flip(id, signal);
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.signal_flip(id, signal).await,
        }
    }

    /// The signals a flip has been sent.
    pub async fn flip_signals(&self, id: &str) -> Result<FlipSignals, StoreError> {
        match self {
            Store::File(s) => Ok(s.flip_signals(id)),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.flip_signals(id).await,
        }
    }

    /// Take the flip lock of `unit` for flip `holder`, or `None` when someone holds it.
    pub async fn lock_unit(
        &self,
        unit: &str,
        holder: &str,
    ) -> Result<Option<UnitLock>, StoreError> {
        match self {
            Store::File(s) => Ok(s.lock_unit(unit, holder).map(|held| UnitLock {
                unit: unit.to_owned(),
                backend: LockBackend::File(held),
            })),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => Ok(s.lock_unit(unit, holder).await?.map(|lock| UnitLock {
                unit: unit.to_owned(),
                backend: LockBackend::Etcd(Box::new(lock)),
            })),
        }
    }

    /// Take the flip locks of every unit of `units` for flip `holder`, in name order (so that
    /// two operations over overlapping units never hold one each of the other's), or the
    /// first unit whose lock someone else holds; then none is kept.
    pub async fn lock_units(
        &self,
        units: &[String],
        holder: &str,
    ) -> Result<Result<Vec<UnitLock>, String>, StoreError> {
        let mut ordered: Vec<&String> = units.iter().collect();
        ordered.sort();
        ordered.dedup();
        let mut held = Vec::with_capacity(ordered.len());
        for unit in ordered {
            match self.lock_unit(unit, holder).await? {
                Some(lock) => held.push(lock),
                // Dropping `held` lets go of those taken so far.
                None => return Ok(Err(unit.clone())),
            }
        }
        Ok(Ok(held))
    }

    /// The fleet as the store recorded it (before this process started, or by other
    /// replicas).
    pub async fn fleet(&self) -> Result<Vec<GatewayStatus>, StoreError> {
        match self {
            Store::File(s) => s.fleet(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.fleet().await,
        }
    }

    /// Record what this replica learned of a gateway. etcd: at once, so that every replica
    /// waits for it. File: a gateway new to the fleet at once; other changes when
    /// [`Store::persist_fleet`] next runs, woken by the change (a restart in between finds the
    /// gateway with an older version, which only makes a flip wait for its report).
    pub async fn record_gateway(
        &self,
        status: &GatewayStatus,
        new: bool,
        registry: &Registry,
    ) -> Result<(), StoreError> {
        match self {
            // One replica: the registry in this process holds `status` already.
            Store::File(_) if new => self.persist_fleet(registry).await,
            Store::File(_) => {
                let _ = status;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => {
                let _ = (new, registry);
                s.publish_gateway(status).await
            }
        }
    }

    /// Write the fleet if it changed (file store; etcd records each change as it comes).
    pub async fn persist_fleet(&self, registry: &Registry) -> Result<(), StoreError> {
        match self {
            Store::File(s) => match registry.take_changed() {
                Some(fleet) => s.save_fleet(&fleet),
                None => Ok(()),
            },
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => Ok(()),
        }
    }

    /// Bring the registry up to what every replica recorded (etcd: one read, so that a step
    /// does not miss a gateway whose news is still on its way through this replica's watch).
    pub async fn refresh_fleet(&self, registry: &Registry) -> Result<(), StoreError> {
        match self {
            // One replica: the registry in this process is the whole fleet.
            Store::File(_) => {
                let _ = registry;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => {
                for status in s.fleet().await? {
                    registry.merge(status);
                }
                Ok(())
            }
        }
    }

    /// Remove a gateway from the recorded fleet.
    pub async fn forget_gateway(&self, id: &str, registry: &Registry) -> Result<(), StoreError> {
        match self {
            Store::File(s) => {
                let _ = id;
                let _ = registry.take_changed();
                s.save_fleet(&registry.list())
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.forget_gateway(id).await,
        }
    }

    /// Whether another replica may run flips and take over this one's (etcd), so running
    /// flips must be watched for, not only recovered at start.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Store::File(_))
    }
}
