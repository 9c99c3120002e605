//! The etcd store: several control-plane replicas share one etcd cluster.
//!
//! ```text
//! <prefix>table/current            the version in force (decimal)
//! <prefix>table/v/<version:020>    one key per version (StoredTable)
//! <prefix>audit/<ms:013>-<replica>-<n:08>   the audit log, ordered by key
//! <prefix>flips/<id>               flip records
//! <prefix>signals/<id>/<signal>    confirm/cancel sent to a running flip
//! <prefix>locks/<unit>             the unit's flip lock: the flip id and lease, on the lease; or,
//!                                  without a lease, a UnitBlock until resolved
//! <prefix>quarantine/flips/<id>    flip records that could not be read, moved aside
//! <prefix>gateways/<id>            what some replica last heard from a gateway
//! ```
//!
//! A table write is one transaction: it succeeds only if `table/current` still holds the
//! expected version (and, for flip steps, the unit's lock still names the flip), and it
//! writes the version, the pointer and the audit entry together. Every replica watches the
//! prefix, so a version stored through one replica reaches gateways watching another; a
//! watch cut by compaction is restarted after re-reading everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use control_api::{AuditEntry, FlipRecord, GatewayStatus, StoredTable, now_ms};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::Notify;

use super::{Current, FlipSignal, FlipSignals, PutOutcome, StoreError, UnitBlock, UnreadableFlip};
use crate::registry::Registry;

fn etcd(error: etcd_client::Error) -> StoreError {
    StoreError(format!("etcd: {error}"))
}

/// The etcd store.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    lease_ttl_s: i64,
    replica: String,
    pub(super) current: Arc<Current>,
    audit_seq: AtomicU64,
}

impl EtcdStore {
    /// Connect, read the version in force and the gateways, and start following changes.
    pub async fn open(
        endpoints: &[String],
        prefix: &str,
        lease_ttl_s: u64,
        replica: &str,
        registry: Arc<Registry>,
    ) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError("store.etcd.endpoints: empty".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(etcd)?;
        let prefix = if prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        let store = Self {
            client,
            prefix,
            lease_ttl_s: i64::try_from(lease_ttl_s.max(2)).unwrap_or(5),
            replica: replica.to_owned(),
            current: Arc::new(Current::default()),
            audit_seq: AtomicU64::new(0),
        };
        store.check_history().await?;
        store.reload(&registry).await?;
        tokio::spawn(follow(
            store.client.clone(),
            store.prefix.clone(),
            store.current.clone(),
            registry,
        ));
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Refuse a history with a hole (see [`super::check_history`]).
    async fn check_history(&self) -> Result<(), StoreError> {
        let base = self.key("table/v/");
        let response = self
            .client
            .kv_client()
            .get(
                base.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(etcd)?;
        let mut versions: Vec<u64> = response
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&base)?.parse().ok())
            .collect();
        versions.sort_unstable();
        let audit = self.audit_log().await?;
        super::check_history(&base, &versions, &audit)
    }

    pub(super) async fn fleet(&self) -> Result<Vec<GatewayStatus>, StoreError> {
        self.list("gateways/").await
    }

    pub(super) async fn forget_gateway(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .delete(self.key(&format!("gateways/{id}")), None)
            .await
            .map_err(etcd)?;
        Ok(())
    }

    pub(super) async fn quarantine_flip(
        &self,
        bad: &UnreadableFlip,
        blocks: &[UnitBlock],
    ) -> Result<bool, StoreError> {
        let flip_key = self.key(&format!("flips/{}", bad.id));
        let flip_key_for_compare = flip_key.clone();
        let mut kv = self.client.kv_client();
        let raw = kv
            .get(flip_key.clone(), None)
            .await
            .map_err(etcd)?
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap_or_default();
        let mut ops = vec![
            TxnOp::put(self.key(&format!("quarantine/flips/{}", bad.id)), raw, None),
            TxnOp::delete(flip_key, None),
        ];
        for block in blocks {
            // Without a lease: the block outlives every replica, until an operator lifts it.
            ops.push(TxnOp::put(
                self.key(&format!("locks/{}", block.unit)),
                serde_json::to_vec(block).map_err(StoreError::from_display)?,
                None,
            ));
        }
        // Every replica recovers flips: only the one that still finds the record moves it.
        let txn = Txn::new()
            .when(vec![Compare::version(
                flip_key_for_compare,
                CompareOp::Greater,
                0,
            )])
            .and_then(ops);
        Ok(kv.txn(txn).await.map_err(etcd)?.succeeded())
    }

    pub(super) async fn unit_block(&self, unit: &str) -> Result<Option<UnitBlock>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(self.key(&format!("locks/{unit}")), None)
            .await
            .map_err(etcd)?;
        Ok(response
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    pub(super) async fn lift_block(&self, unit: &str) -> Result<Option<UnitBlock>, StoreError> {
        let key = self.key(&format!("locks/{unit}"));
        let mut kv = self.client.kv_client();
        let response = kv.get(key.clone(), None).await.map_err(etcd)?;
        let Some(current) = response.kvs().first() else {
            return Ok(None);
        };
        let Ok(block) = serde_json::from_slice::<UnitBlock>(current.value()) else {
            return Ok(None);
        };
        // Only the block itself: a flip's lease lock taken meanwhile stays.
        let txn = Txn::new()
            .when(vec![Compare::value(
                key.clone(),
                CompareOp::Equal,
                current.value().to_vec(),
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        let lifted = kv.txn(txn).await.map_err(etcd)?.succeeded();
        Ok(lifted.then_some(block))
    }

    async fn reload(&self, registry: &Registry) -> Result<i64, StoreError> {
        reload(&self.client, &self.prefix, &self.current, registry).await
    }

    pub(super) async fn version(&self, version: u64) -> Result<Option<StoredTable>, StoreError> {
        read_version(&self.client, &self.prefix, version).await
    }

    pub(super) async fn put_table(
        &self,
        expected: u64,
        table: StoredTable,
        audit: AuditEntry,
        fences: &[(String, String)],
    ) -> Result<PutOutcome, StoreError> {
        let current_key = self.key("table/current");
        let mut compares = vec![if expected == 0 {
            Compare::version(current_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(current_key.clone(), CompareOp::Equal, expected.to_string())
        }];
        for (key, holder) in fences {
            compares.push(Compare::value(
                key.clone(),
                CompareOp::Equal,
                holder.clone(),
            ));
        }
        let version = table.version;
        let value = serde_json::to_vec(&table).map_err(StoreError::from_display)?;
        let txn = Txn::new().when(compares).and_then(vec![
            TxnOp::put(current_key.clone(), version.to_string(), None),
            TxnOp::put(self.key(&format!("table/v/{version:020}")), value, None),
            TxnOp::put(
                self.key(&self.audit_key(&audit)),
                serde_json::to_vec(&audit).map_err(StoreError::from_display)?,
                None,
            ),
        ]);
        let mut kv = self.client.kv_client();
        let response = kv.txn(txn).await.map_err(etcd)?;
        if response.succeeded() {
            self.current.offer(Arc::new(table));
            return Ok(PutOutcome::Stored(version));
        }
        for (key, holder) in fences {
            let lock = kv.get(key.clone(), None).await.map_err(etcd)?;
            if lock.kvs().first().map(|kv| kv.value()) != Some(holder.as_bytes()) {
                return Ok(PutOutcome::LockLost);
            }
        }
        let now = kv.get(current_key, None).await.map_err(etcd)?;
        let current = now
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok()?.parse().ok())
            .unwrap_or(0);
        Ok(PutOutcome::Stale(current))
    }

    /// A new, time-ordered key (below the prefix) for an audit entry.
    fn audit_key(&self, entry: &AuditEntry) -> String {
        let n = self.audit_seq.fetch_add(1, Ordering::Relaxed);
        format!("audit/{:013}-{}-{n:08}", entry.at_ms, self.replica)
    }

    pub(super) async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.put_json(&self.audit_key(entry), entry).await
    }

    pub(super) async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.list("audit/").await
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        under: &str,
    ) -> Result<Vec<T>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(self.key(under), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd)?;
        response
            .kvs()
            .iter()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(StoreError::from_display))
            .collect()
    }

    /// Put `value` as JSON under `rest` (below the prefix).
    async fn put_json<T: serde::Serialize>(&self, rest: &str, value: &T) -> Result<(), StoreError> {
        let value = serde_json::to_vec(value).map_err(StoreError::from_display)?;
        self.client
            .kv_client()
            .put(self.key(rest), value, None)
            .await
            .map_err(etcd)?;
        Ok(())
    }

    pub(super) async fn put_flip(&self, flip: &FlipRecord) -> Result<(), StoreError> {
        self.put_json(&format!("flips/{}", flip.id), flip).await
    }

    /// Save a flip record if every lock in `fences` is still as its runner took it; `false`
    /// (nothing written) when one is not.
    pub(super) async fn put_flip_fenced(
        &self,
        flip: &FlipRecord,
        fences: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(flip).map_err(StoreError::from_display)?;
        let compares = fences
            .iter()
            .map(|(key, holder)| Compare::value(key.clone(), CompareOp::Equal, holder.clone()))
            .collect::<Vec<_>>();
        let txn = Txn::new().when(compares).and_then(vec![TxnOp::put(
            self.key(&format!("flips/{}", flip.id)),
            value,
            None,
        )]);
        Ok(self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd)?
            .succeeded())
    }

    pub(super) async fn flip(&self, id: &str) -> Result<Option<FlipRecord>, StoreError> {
        if !super::file::is_flip_id(id) {
            return Ok(None);
        }
        get_json(&self.client, self.key(&format!("flips/{id}"))).await
    }

    pub(super) async fn flips(&self) -> Result<(Vec<FlipRecord>, Vec<UnreadableFlip>), StoreError> {
        let base = self.key("flips/");
        let response = self
            .client
            .kv_client()
            .get(base.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd)?;
        let mut flips = Vec::new();
        let mut unreadable = Vec::new();
        for kv in response.kvs() {
            let key = kv.key_str().unwrap_or_default();
            match serde_json::from_slice::<FlipRecord>(kv.value()) {
                Ok(flip) => flips.push(flip),
                Err(e) => unreadable.push(UnreadableFlip::new(
                    key.strip_prefix(&base).unwrap_or(key),
                    key,
                    e,
                    kv.value(),
                )),
            }
        }
        flips.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok((flips, unreadable))
    }

    pub(super) async fn signal_flip(&self, id: &str, signal: FlipSignal) -> Result<(), StoreError> {
        // Each extension is a key of its own, so that two at once both count.
        let (name, value) = match signal {
            FlipSignal::Confirm => ("confirm".to_owned(), "1".to_owned()),
            FlipSignal::Cancel => ("cancel".to_owned(), "1".to_owned()),
            FlipSignal::Extend(seconds) => (
                format!("extend/{}-{:04x}", now_ms(), fastrand::u16(..)),
                seconds.to_string(),
            ),
        };
        self.client
            .kv_client()
            .put(self.key(&format!("signals/{id}/{name}")), value, None)
            .await
            .map_err(etcd)?;
        Ok(())
    }

    pub(super) async fn flip_signals(&self, id: &str) -> Result<FlipSignals, StoreError> {
        let base = self.key(&format!("signals/{id}/"));
        let response = self
            .client
            .kv_client()
            .get(base.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd)?;
        let mut signals = FlipSignals::default();
        for kv in response.kvs() {
            match kv.key_str().ok().and_then(|k| k.strip_prefix(&base)) {
                Some("confirm") => signals.confirmed = true,
                Some("cancel") => signals.cancelled = true,
                Some(key) if key.starts_with("extend/") => {
                    let seconds: u64 = kv
                        .value_str()
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    signals.extended_s = signals.extended_s.saturating_add(seconds);
                }
                _ => {}
            }
        }
        Ok(signals)
    }

    pub(super) async fn lock_unit(
        &self,
        unit: &str,
        holder: &str,
    ) -> Result<Option<LeaseLock>, StoreError> {
        let key = self.key(&format!("locks/{unit}"));
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.lease_ttl_s, None)
            .await
            .map_err(etcd)?
            .id();
        // The flip and the lease: a runner whose lease ran out and a recovery that took the
        // lock after it hold it for the same flip, and only the second may write (fences
        // compare this value).
        let holder = format!("{holder} lease {lease:x}");
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.clone(),
                holder.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let taken = client.kv_client().txn(txn).await.map_err(etcd)?.succeeded();
        if !taken {
            let _ = client.lease_revoke(lease).await;
            return Ok(None);
        }
        let stop = Arc::new(Notify::new());
        tokio::spawn(keep_alive(
            client.clone(),
            lease,
            Duration::from_secs(u64::try_from(self.lease_ttl_s).unwrap_or(5)),
            stop.clone(),
        ));
        Ok(Some(LeaseLock {
            client,
            lease,
            key,
            holder,
            stop,
        }))
    }

    pub(super) async fn publish_gateway(&self, status: &GatewayStatus) -> Result<(), StoreError> {
        self.put_json(&format!("gateways/{}", status.id), status)
            .await
    }
}

/// The JSON value under `key`, if there is one.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    key: String,
) -> Result<Option<T>, StoreError> {
    let response = client.kv_client().get(key, None).await.map_err(etcd)?;
    response
        .kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).map_err(StoreError::from_display))
        .transpose()
}

async fn read_version(
    client: &Client,
    prefix: &str,
    version: u64,
) -> Result<Option<StoredTable>, StoreError> {
    let key = format!("{prefix}table/v/{version:020}");
    get_json::<StoredTable>(client, key.clone())
        .await?
        .map(|stored| {
            stored
                .verified()
                .map_err(|e| StoreError(format!("{key}: {e}")))
        })
        .transpose()
}

/// Read the version in force and every gateway; returns the etcd revision read at.
async fn reload(
    client: &Client,
    prefix: &str,
    current: &Current,
    registry: &Registry,
) -> Result<i64, StoreError> {
    let mut kv = client.kv_client();
    let response = kv
        .get(format!("{prefix}table/current"), None)
        .await
        .map_err(etcd)?;
    let revision = response.header().map_or(0, |h| h.revision());
    let version = response
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok());
    if let Some(version) = version
        && let Some(table) = read_version(client, prefix, version).await?
    {
        current.offer(Arc::new(table));
    }
    let gateways = kv
        .get(
            format!("{prefix}gateways/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd)?;
    for kv in gateways.kvs() {
        if let Ok(status) = serde_json::from_slice::<GatewayStatus>(kv.value()) {
            registry.merge(status);
        }
    }
    Ok(revision)
}

/// Follow every change under the prefix, for as long as the process runs.
async fn follow(client: Client, prefix: String, current: Arc<Current>, registry: Arc<Registry>) {
    let mut failures = 0u32;
    loop {
        match follow_once(&client, &prefix, &current, &registry).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%error, "etcd watch lost; re-reading and watching again");
                }
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn follow_once(
    client: &Client,
    prefix: &str,
    current: &Current,
    registry: &Registry,
) -> Result<(), StoreError> {
    let revision = reload(client, prefix, current, registry).await?;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let (_watcher, mut stream) = client
        .watch_client()
        .watch(prefix.to_owned(), Some(options))
        .await
        .map_err(etcd)?;
    let current_key = format!("{prefix}table/current");
    let gateways = format!("{prefix}gateways/");
    while let Some(response) = stream.message().await.map_err(etcd)? {
        if response.canceled() || response.compact_revision() > 0 {
            // Compacted past our revision, or cancelled: re-read everything and start over.
            tracing::info!(
                compact_revision = response.compact_revision(),
                reason = response.cancel_reason(),
                "etcd watch cancelled; re-reading"
            );
            return Ok(());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = kv.key_str().unwrap_or_default();
            if event.event_type() != EventType::Put {
                // A gateway forgotten through another replica is forgotten here too.
                if let Some(id) = key.strip_prefix(&gateways) {
                    registry.forget(id);
                }
                continue;
            }
            if key == current_key {
                if let Some(version) = kv.value_str().ok().and_then(|v| v.parse::<u64>().ok())
                    && let Some(table) = read_version(client, prefix, version).await?
                {
                    current.offer(Arc::new(table));
                }
            } else if key.starts_with(&gateways)
                && let Ok(status) = serde_json::from_slice::<GatewayStatus>(kv.value())
            {
                registry.merge(status);
            }
        }
    }
    Err(StoreError("etcd watch stream ended".into()))
}

/// Keep `lease` (of `ttl`) alive until `stop`, renewing it three times a TTL. A failed renewal
/// is tried again on a new stream until the lease would have run out: an etcd leader change or
/// a short outage must not cost a running flip its lock.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, stop: Arc<Notify>) {
    let every = (ttl / 3).max(Duration::from_millis(300));
    let mut renewed = tokio::time::Instant::now();
    let mut stream = None;
    loop {
        if stream.is_none() {
            stream = client.lease_keep_alive(lease).await.ok();
        }
        let alive = match stream.as_mut() {
            Some((keeper, responses)) => {
                keeper.keep_alive().await.is_ok()
                    && matches!(responses.message().await, Ok(Some(r)) if r.ttl() > 0)
            }
            None => false,
        };
        if alive {
            renewed = tokio::time::Instant::now();
        } else {
            stream = None;
            if renewed.elapsed() >= ttl {
                tracing::warn!(lease, "the flip lock's lease ran out");
                return;
            }
        }
        let wait = if alive {
            every
        } else {
            Duration::from_millis(300)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.notified() => return,
        }
    }
}

/// A unit's flip lock: a key on a lease this replica keeps alive. If the replica dies, the
/// lease expires, the key goes, and another replica may take the flip over.
pub struct LeaseLock {
    client: Client,
    lease: i64,
    key: String,
    holder: String,
    stop: Arc<Notify>,
}

impl LeaseLock {
    /// The key and value a fenced write compares.
    pub fn fence(&self) -> (String, String) {
        (self.key.clone(), self.holder.clone())
    }

    /// Let go: stop the keep-alive and revoke the lease (which deletes the key).
    pub fn release(&self) {
        self.stop.notify_one();
        let mut client = self.client.clone();
        let lease = self.lease;
        tokio::spawn(async move {
            let _ = client.lease_revoke(lease).await;
        });
    }
}
