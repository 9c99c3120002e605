//! Where versions, flips and the audit log live: a local directory by default, etcd when
//! several control-plane replicas share the work. One type, [`Store`], with one variant per
//! backend, so the API and the flip runner never know which one they talk to.

pub mod file;

#[cfg(feature = "etcd")]
pub mod etcd;

use std::sync::{Arc, RwLock};

use control_api::{AuditEntry, FlipRecord, GatewayStatus, StoredTable};
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
}

/// Which signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipSignal {
    /// Confirm replication.
    Confirm,
    /// Cancel (roll back).
    Cancel,
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
    /// audit entry that records it, as one change. `fence`: a lock that must still be held.
    pub async fn put_table(
        &self,
        expected: u64,
        table: StoredTable,
        audit: AuditEntry,
        fence: Option<(String, String)>,
    ) -> Result<PutOutcome, StoreError> {
        match self {
            Store::File(s) => s.put_table(expected, table, audit, fence).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.put_table(expected, table, audit, fence).await,
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

    /// One flip.
    pub async fn flip(&self, id: &str) -> Result<Option<FlipRecord>, StoreError> {
        match self {
            Store::File(s) => s.flip(id),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.flip(id).await,
        }
    }

    /// Every flip, oldest first.
    pub async fn flips(&self) -> Result<Vec<FlipRecord>, StoreError> {
        match self {
            Store::File(s) => s.flips(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.flips().await,
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

    /// Share what this replica learned of a gateway with the other replicas.
    pub async fn publish_gateway(&self, status: &GatewayStatus) -> Result<(), StoreError> {
        match self {
            // One replica: the registry in this process is the whole truth.
            Store::File(_) => {
                let _ = status;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.publish_gateway(status).await,
        }
    }

    /// Whether another replica may run flips and take over this one's (etcd), so running
    /// flips must be watched for, not only recovered at start.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Store::File(_))
    }
}
