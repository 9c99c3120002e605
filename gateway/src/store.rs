//! The table in force and everything a request needs with it, swapped as one.
//!
//! Start-up, file reloads and control-plane pushes all go through [`TableStore::load_text`]
//! (or [`TableStore::apply`]): parse, validate, check it may succeed the table in force,
//! persist it, then swap it in with one atomic store. A request loads the [`Snapshot`] once and
//! decides everything with it, so no request is ever routed by a mix of two versions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::uri::Authority;
use router_rules::table::RegionIndex;
use router_rules::{CompiledTable, RawLimits, RawTable};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::connect::{Connector, Connectors, TableConnectors, TlsConfigs};
use crate::limits::Limiter;
use crate::metrics::{Metrics, NameId};

/// A routing table in force, with this gateway's view of it.
pub struct Snapshot {
    /// The table.
    pub table: CompiledTable,
    /// This gateway's region in the table.
    pub region: RegionIndex,
    /// Where the table came from (`file:/etc/...`, `cache:...`, `control-plane:...`).
    pub origin: String,
    /// The digest of the table's content ([`control_api::table_digest`]): what the gateway
    /// reports beside the version, so that two contents under one number are told apart.
    pub digest: String,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// Its place in the sequence of snapshots this store swapped in (1 for the first): what
    /// [`TableStore::refresh`] compares.
    pub generation: u64,
    /// What this gateway keeps for each route, by route position.
    pub routes: Vec<RouteState>,
    /// What this gateway keeps for each unit, by unit position.
    pub units: Vec<UnitState>,
    /// What this gateway keeps for each region, by region position.
    pub regions: Vec<RegionState>,
    /// The table version as a header value.
    pub version_header: http::HeaderValue,
    /// `x-unitgate-table-version: <version>\r\n`, as the codec writes it into upstream heads.
    pub version_line: Box<[u8]>,
    /// The store's signal that the last write in flight to a unit routed by a replaced
    /// snapshot has ended ([`TableStore::settled`]).
    pub settle: Arc<Notify>,
    /// Set once another snapshot replaced this one: only then does a write's end matter to
    /// [`TableStore::settled`] (the signal is not sent for every write).
    pub retired: Arc<AtomicBool>,
    /// When another snapshot replaced this one: the grace of the writes it routed to a unit
    /// the newer one moved or froze counts from then ([`TableStore::end_held_writes`]).
    retired_at: std::sync::OnceLock<Instant>,
}

impl Snapshot {
    /// This gateway's own region.
    pub fn here(&self) -> &RegionState {
        &self.regions[self.region]
    }
}

/// A route's limiter and metric label.
pub struct RouteState {
    /// Its limiter, when the route has limits.
    pub limiter: Option<Arc<Limiter>>,
    /// Metric label id.
    pub id: NameId,
    /// The names of the header fields its routing key is read from (lowercase), if any: a
    /// request's trailers may not carry them ([`KeyHeaders`]).
    pub key_headers: Option<KeyHeaders>,
}

/// The header fields a route reads its routing key from, by lowercase name. The key is read
/// from the header section only; an upstream that merges a request's trailers into it would
/// otherwise see a second key, one the gateway did not route by.
pub type KeyHeaders = Arc<[Box<[u8]>]>;

/// A unit's limiter, metric label and header value.
pub struct UnitState {
    /// Its limiter, when the unit has limits.
    pub limiter: Option<Arc<Limiter>>,
    /// Metric label id.
    pub id: NameId,
    /// The unit's name as a header value.
    pub header: http::HeaderValue,
    /// `x-unitgate-unit: <name>\r\n`, as the codec writes it into upstream heads.
    pub line: Box<[u8]>,
    /// Writes routed to the unit by this snapshot and not over yet ([`WriteInFlight`]).
    pub writes: Arc<AtomicUsize>,
    /// Cancelled when those writes are to end: a newer snapshot moved or froze the unit, and
    /// they outlasted their grace ([`TableStore::end_held_writes`]).
    ended: CancellationToken,
}

#[cfg(test)]
impl UnitState {
    pub(crate) fn cancel_for_test(&self) {
        self.ended.cancel();
    }
}

/// Why a write the gateway ended ([`WriteInFlight::ended`]) did not go on, as its client is told.
pub const WRITE_ENDED: &str = "write ended: a newer routing table moved or froze its unit";

/// A write in flight, routed by a snapshot to one of its units: counted there until the
/// request ends. A gateway reports a newer version as applied only once no write routed by an
/// older one to a unit that version moved or froze is still going on ([`TableStore::settled`]):
/// "every gateway serves the freeze" must mean no write of the unit is still on its way to the
/// old region (a body arriving slowly kept one going past the switch).
pub struct WriteInFlight {
    count: Arc<AtomicUsize>,
    retired: Arc<AtomicBool>,
    settle: Arc<Notify>,
    ended: CancellationToken,
}

impl WriteInFlight {
    /// Count a write that `snapshot` routed to its unit at position `unit`
    /// ([`TableStore::start_write`] checks it may still go).
    fn start(snapshot: &Snapshot, unit: usize) -> Self {
        let count = &snapshot.units[unit].writes;
        // Sequentially consistent with the swap's `retired` store and `settled`'s loads: either
        // `settled` sees this write, or the write sees its snapshot retired.
        count.fetch_add(1, Ordering::SeqCst);
        Self {
            count: count.clone(),
            retired: snapshot.retired.clone(),
            settle: snapshot.settle.clone(),
            ended: snapshot.units[unit].ended.clone(),
        }
    }

    /// Resolves when the gateway ends this write: a newer table moved or froze its unit and
    /// the write outlasted its grace. The request is then dropped, both its connections
    /// closed (an HTTP/2 stream reset), so that the flip waiting on it can go on.
    pub fn ended(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.ended.clone().cancelled_owned()
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 && self.retired.load(Ordering::Acquire) {
            self.settle.notify_waiters();
        }
    }
}

/// Ends the writes held past their grace ([`TableStore::end_held_writes`]) as each one's grace
/// is over, until `stop`.
pub async fn end_held_writes(
    store: Weak<TableStore>,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let settle = strong.settle_signal();
        let swapped = settle.notified();
        tokio::pin!(swapped);
        // Listening before looking: a table swapped in between still wakes this.
        swapped.as_mut().enable();
        let next = strong.end_held_writes(grace);
        drop(strong);
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = swapped => {}
            () = due => {}
            _ = stop.changed() => return,
        }
    }
}

/// Let go of the replaced snapshots that nothing else holds and that routed no write still in
/// flight.
fn prune(retired: &mut Vec<Arc<Snapshot>>) {
    retired.retain(|s| {
        Arc::strong_count(s) > 1 || s.units.iter().any(|u| u.writes.load(Ordering::SeqCst) > 0)
    });
}

/// Whether `current` moved `unit` (of an older table) to another region, changed its state,
/// or dropped it: a write routed by the older table may then be going where `current` no
/// longer sends it.
fn moved_or_froze(unit: &router_rules::Unit, current: &Snapshot) -> bool {
    current
        .table
        .units()
        .iter()
        .find(|u| u.name == unit.name)
        .is_none_or(|now| now.region != unit.region || now.state != unit.state)
}

/// A region's pools and gateways, metric label and header value.
pub struct RegionState {
    /// Metric label id.
    pub id: NameId,
    /// The region's name as a header value.
    pub header: http::HeaderValue,
    /// `x-unitgate-region: <name>\r\n`, as the codec writes it into upstream heads.
    pub line: Box<[u8]>,
    /// Pools by service (see [`CompiledTable::services`]); `None` where the region has none.
    pub pools: Vec<Option<PoolState>>,
    /// The region's gateways, as a pool.
    pub gateways: PoolState,
}

/// Endpoints of one pool with their health, and the round-robin position.
pub struct PoolState {
    /// Endpoints, in table order.
    pub endpoints: Vec<EndpointState>,
    next: AtomicUsize,
}

/// One endpoint.
pub struct EndpointState {
    /// `host:port`.
    pub address: Arc<str>,
    /// The same, parsed for URIs.
    pub authority: Authority,
    /// Shared health (survives table swaps).
    pub health: Arc<Health>,
    /// Metric label id.
    pub id: NameId,
    /// How to connect to it: plain TCP or TLS, as its pool says.
    pub connector: Arc<Connector>,
}

/// Health of an endpoint, shared by every snapshot that lists it.
#[derive(Debug, Default)]
pub struct Health {
    /// Set by active checks.
    down: AtomicBool,
    /// Consecutive failed exchanges.
    failures: AtomicU32,
    /// Ejected by passive checks until this time (ms since the epoch).
    ejected_until_ms: AtomicU64,
}

impl Health {
    /// Whether the endpoint takes traffic now. An endpoint never ejected (or whose last
    /// ejection was found over) answers without reading the clock.
    pub fn is_healthy(&self) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now_ms() {
            return false;
        }
        // Over: forgotten, unless a new ejection came in meanwhile.
        let _ =
            self.ejected_until_ms
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        true
    }

    /// Record an active check's result; whether it differs from the last one.
    pub fn set_down(&self, down: bool) -> bool {
        self.down.swap(down, Ordering::Relaxed) != down
    }

    /// Record a failed exchange; eject after `eject_after` in a row.
    pub fn failure(&self, eject_after: u32, eject_for: Duration) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= eject_after.max(1) {
            let until = now_ms() + u64::try_from(eject_for.as_millis()).unwrap_or(u64::MAX / 2);
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Record a successful exchange.
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl PoolState {
    /// The next endpoint by round robin, healthy ones first; `skip` lists positions already
    /// tried. When none is healthy, the unhealthy ones are tried rather than failing outright.
    pub fn round_robin(&self, skip: &[usize]) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !skip.contains(i));
        let mut fallback = None;
        for i in candidates {
            if self.endpoints[i].health.is_healthy() {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// The first healthy endpoint in `order` (key affinity), else the first untried one.
    pub fn first_healthy(
        &self,
        order: impl Iterator<Item = usize>,
        skip: &[usize],
    ) -> Option<usize> {
        let mut fallback = None;
        for i in order.filter(|i| !skip.contains(i)) {
            if self.endpoints.get(i).is_some_and(|e| e.health.is_healthy()) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Whether any endpoint takes traffic.
    pub fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.health.is_healthy())
    }
}

/// A table that was refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Its version, when it could be read.
    pub version: Option<u64>,
    /// Where it came from.
    pub origin: String,
    /// Every problem, one per line.
    pub error: String,
    /// When, in seconds since the epoch.
    pub at_s: u64,
}

/// What the cache file holds.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    origin: String,
    saved_at_s: u64,
    /// The digest of `table` when it was saved: a cache changed afterwards (by hand, by a
    /// bad disk) no longer matches it and is not served. Caches written before digests
    /// existed have none.
    #[serde(default)]
    digest: Option<String>,
    table: RawTable,
}

/// Why the cached table was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheRefusal {
    /// No cache, or it cannot be read or used.
    Unusable(String),
    /// Its content does not match its digest: changed after it was saved.
    Tampered(String),
}

impl std::fmt::Display for CacheRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheRefusal::Unusable(why) | CacheRefusal::Tampered(why) => f.write_str(why),
        }
    }
}

/// Whether a table may replace one of the same version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameVersion {
    /// No: versions only grow (files, caches).
    Refuse,
    /// Yes when the content differs: the control plane names each version's content, so its
    /// copy replaces a diverged one.
    Replace,
}

const CACHE_FILE: &str = "table.json";

/// The table in force, and how it got there.
pub struct TableStore {
    current: ArcSwapOption<Snapshot>,
    region: String,
    cache_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    health: Mutex<HashMap<Arc<str>, Arc<Health>>>,
    limiters: Mutex<HashMap<(bool, String, RawLimits), Arc<Limiter>>>,
    /// rustls configs by file content, kept across swaps (and with them their sessions).
    tls_configs: TlsConfigs,
    /// How to connect to each address, for clients handed only an address.
    connectors: Arc<Connectors>,
    last_rejected: Mutex<Option<Rejection>>,
    /// Serialises applies, so a version check and its swap cannot interleave with another.
    apply_lock: Mutex<()>,
    /// The generation of the snapshot in force, set once it is in force (0: none yet).
    generation: AtomicU64,
    applied: watch::Sender<u64>,
    /// The snapshots replaced, kept while anything else holds them or writes they routed are
    /// in flight ([`TableStore::settled`]): a write's answer may outlive every other hold on
    /// the snapshot that routed it (an HTTP/2 stream's body), and must still be seen.
    retired: Mutex<Vec<Arc<Snapshot>>>,
    /// When each unit last changed region or state (or left the table), by name: a write to it
    /// routed by an older table has its grace from then ([`TableStore::end_held_writes`]).
    unit_changed: Mutex<HashMap<String, Instant>>,
    /// Woken when a write ends with none left to its unit in its snapshot, and when a
    /// snapshot is swapped in.
    settle: Arc<Notify>,
}

impl TableStore {
    /// An empty store for a gateway in `region`.
    pub fn new(region: &str, cache_dir: Option<PathBuf>, metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            region: region.to_owned(),
            cache_dir,
            metrics,
            health: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
            tls_configs: TlsConfigs::default(),
            connectors: Arc::new(Connectors::default()),
            last_rejected: Mutex::new(None),
            apply_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
            applied: watch::channel(0).0,
            retired: Mutex::new(Vec::new()),
            unit_changed: Mutex::new(HashMap::new()),
            settle: Arc::new(Notify::new()),
        }
    }

    /// The snapshot this gateway can vouch for as applied: the one in force, unless a write
    /// routed by an older one is still in flight to a unit whose region or state the one in
    /// force changed — then the oldest such, until those writes end. The version reported to
    /// the control plane is this one's: a flip's step waits for it.
    pub fn settled(&self) -> Option<Arc<Snapshot>> {
        let current = self.current()?;
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut retired);
        let unsettled = retired
            .iter()
            .filter(|old| old.table.version() < current.table.version())
            .filter(|old| {
                old.units
                    .iter()
                    .zip(old.table.units())
                    .any(|(state, unit)| {
                        state.writes.load(Ordering::SeqCst) > 0 && moved_or_froze(unit, &current)
                    })
            })
            .min_by_key(|old| old.table.version())
            .cloned();
        Some(unsettled.unwrap_or(current))
    }

    /// Count a write that `snapshot` routed to its unit at position `unit`, for
    /// [`TableStore::settled`]; `None` when the write must not go: a newer snapshot replaced
    /// `snapshot` (between the request's load and now) and moved or froze the unit, so the
    /// newer version may already be reported as applied, and a flip's step gone on, without
    /// this write.
    pub fn start_write(&self, snapshot: &Snapshot, unit: usize) -> Option<WriteInFlight> {
        let write = WriteInFlight::start(snapshot, unit);
        if !snapshot.retired.load(Ordering::SeqCst) {
            return Some(write);
        }
        let current = self.current()?;
        (!moved_or_froze(&snapshot.table.units()[unit], &current)).then_some(write)
    }

    /// End the writes that hold [`TableStore::settled`] back and have had their `grace`: writes
    /// an older snapshot routed to a unit the one in force moved or froze, going on `grace`
    /// after that snapshot was replaced (a gRPC stream, a long upload). Without this, one such
    /// write holds its unit's flip until the flip gives up. Returns when the next such write's
    /// grace is over, if one is going on.
    pub fn end_held_writes(&self, grace: Duration) -> Option<Instant> {
        let current = self.current()?;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let retired: Vec<Arc<Snapshot>> = self
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let changed = self
            .unit_changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for old in retired
            .iter()
            .filter(|old| old.table.version() < current.table.version())
        {
            let Some(since) = old.retired_at.get() else {
                continue;
            };
            for (state, unit) in old.units.iter().zip(old.table.units()) {
                let writes = state.writes.load(Ordering::SeqCst);
                if writes == 0 || state.ended.is_cancelled() || !moved_or_froze(unit, &current) {
                    continue;
                }
                // From when the unit changed, not from when the snapshot was replaced (by a
                // table that may have left this unit alone).
                let due = *changed.get(&*unit.name).unwrap_or(since).max(since) + grace;
                if due > now {
                    next = Some(next.map_or(due, |next| next.min(due)));
                    continue;
                }
                tracing::warn!(
                    unit = &*unit.name,
                    writes,
                    routed_by = old.table.version(),
                    version = current.table.version(),
                    grace_ms = grace.as_millis() as u64,
                    "ending writes still in flight to a unit a newer table moved or froze: they outlasted their grace, and would hold its flip"
                );
                state.ended.cancel();
            }
        }
        next
    }

    /// The settled version ([`TableStore::settled`]; 0 with no table) and the writes in
    /// flight, routed by any snapshot still held.
    pub fn writes_in_flight(&self) -> (u64, usize) {
        let settled = self.settled().map_or(0, |s| s.table.version());
        let count = |s: &Snapshot| {
            s.units
                .iter()
                .map(|u| u.writes.load(Ordering::Relaxed))
                .sum::<usize>()
        };
        let retired: usize = self
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| count(s))
            .sum();
        (settled, retired + self.current().map_or(0, |s| count(&s)))
    }

    /// Notified when [`TableStore::settled`] may have changed (a write ended, a table was
    /// swapped in).
    pub fn settle_signal(&self) -> Arc<Notify> {
        self.settle.clone()
    }

    /// The snapshot in force: one atomic load.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Bring `held`, a reader's own reference to the snapshot, up to the one in force. While
    /// it is that one already this is one atomic load, and the snapshot's reference count (a
    /// cache line every worker thread would otherwise write on every request) is not touched.
    /// A snapshot is marked in force before the version it holds is announced as applied, so a
    /// request that starts after the announcement sees it.
    pub fn refresh(&self, held: &mut Option<Arc<Snapshot>>) {
        let generation = self.generation.load(Ordering::Acquire);
        if held.as_ref().map(|s| s.generation) != Some(generation) {
            *held = self.current();
        }
    }

    /// This gateway's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// How to connect to every address the tables applied so far name (kept current by each
    /// apply): what [`crate::upstream::Upstream`] looks an endpoint up in.
    pub fn connectors(&self) -> Arc<Connectors> {
        self.connectors.clone()
    }

    /// The version applied last (0 before the first), as a watch.
    pub fn applied_versions(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The last refused table.
    pub fn last_rejected(&self) -> Option<Rejection> {
        self.last_rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Parse, validate and apply a table text (`json` for JSON, else YAML). The one load path.
    pub fn load_text(&self, text: &str, json: bool, origin: &str) -> Result<u64, Rejection> {
        // A YAML table's map stays, so that what is found after validation (a TLS file that
        // cannot be read) is placed at its line too.
        let (loaded, source) = if json {
            (router_rules::load_json(text), None)
        } else {
            match router_rules::parse_yaml(text) {
                Ok((raw, source)) => (router_rules::validate(raw, Some(&source)), Some(source)),
                Err(error) => (Err(error), None),
            }
        };
        match loaded {
            Ok(table) => self.apply_placed(table, origin, SameVersion::Refuse, source.as_ref()),
            Err(error) => {
                Err(self.reject(None, origin, error.render(origin).trim_end().to_owned()))
            }
        }
    }

    /// Apply a validated table, unless it may not succeed the one in force. Persists it to
    /// the cache before it takes effect.
    pub fn apply(&self, table: CompiledTable, origin: &str) -> Result<u64, Rejection> {
        self.apply_with(table, origin, SameVersion::Refuse)
    }

    /// [`TableStore::apply`], saying whether a table of the version in force may replace it.
    pub fn apply_with(
        &self,
        table: CompiledTable,
        origin: &str,
        same_version: SameVersion,
    ) -> Result<u64, Rejection> {
        self.apply_placed(table, origin, same_version, None)
    }

    /// [`TableStore::apply_with`], placing problems found at `source`'s lines when given.
    fn apply_placed(
        &self,
        table: CompiledTable,
        origin: &str,
        same_version: SameVersion,
        source: Option<&router_rules::SourceMap>,
    ) -> Result<u64, Rejection> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let version = table.version();
        let Some(region) = table.region_index(&self.region) else {
            let known: Vec<&str> = table.regions().iter().map(|r| &*r.name).collect();
            return Err(self.reject(
                Some(version),
                origin,
                format!(
                    "{origin}: regions: the table has no region {:?}, this gateway's region (it has: {})",
                    self.region,
                    known.join(", ")
                ),
            ));
        };
        let current = self.current.load_full();
        if let Some(current) = &current
            && current.table.version() == version
            && current.table.raw() == table.raw()
        {
            // The same table again (a re-push, a touched file): nothing to do.
            return Ok(version);
        }
        let replaces = same_version == SameVersion::Replace
            && current
                .as_ref()
                .is_some_and(|c| c.table.version() == version);
        if replaces {
            tracing::warn!(
                version,
                origin,
                "the table in force differs from the control plane's version {version}; replacing it with the stored one"
            );
        } else if let Some(current) = current
            && let Err(error) = router_rules::check_successor(&current.table, &table)
        {
            return Err(self.reject(
                Some(version),
                origin,
                error.render(origin).trim_end().to_owned(),
            ));
        }
        // The TLS files the table names are read here, on this gateway: one it cannot use
        // refuses the table, which never replaces the one in force.
        let connectors = match TableConnectors::build(&table, &self.tls_configs) {
            Ok(connectors) => connectors,
            Err(mut problems) => {
                if let Some(source) = source {
                    source.place(&mut problems);
                }
                let error = router_rules::render_problems(origin, &problems);
                return Err(self.reject(Some(version), origin, error.trim_end().to_owned()));
            }
        };
        let digest = control_api::table_digest(table.raw());
        self.persist(&table, &digest, origin);
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let snapshot = self.build(table, region, origin, digest, &connectors, generation);
        self.connectors.update(&connectors);
        {
            // Swapped, marked and listed under the lock `settled` reads the list under: it sees
            // either the old snapshot in force, or the new one with the old one listed.
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(replaced) = self.current.swap(Some(Arc::new(snapshot))) {
                let now = Instant::now();
                let _ = replaced.retired_at.set(now);
                replaced.retired.store(true, Ordering::SeqCst);
                if let Some(current) = self.current() {
                    let mut changed = self.unit_changed.lock().unwrap_or_else(|e| e.into_inner());
                    for unit in replaced.table.units() {
                        if moved_or_froze(unit, &current) {
                            changed.insert(unit.name.to_string(), now);
                        }
                    }
                }
                prune(&mut retired);
                retired.push(replaced);
            }
        }
        self.settle.notify_waiters();
        self.generation.store(generation, Ordering::Release);
        self.metrics.table_version.store(version, Ordering::Relaxed);
        self.metrics.table_swaps.fetch_add(1, Ordering::Relaxed);
        self.applied.send_replace(version);
        tracing::info!(version, origin, "routing table applied");
        Ok(version)
    }

    /// Record a refused table.
    pub fn reject(&self, version: Option<u64>, origin: &str, error: String) -> Rejection {
        tracing::error!(version, origin, %error, "routing table refused; the table in force stays");
        self.metrics.tables_rejected.fetch_add(1, Ordering::Relaxed);
        let rejection = Rejection {
            version,
            origin: origin.to_owned(),
            error,
            at_s: now_ms() / 1000,
        };
        *self.last_rejected.lock().unwrap_or_else(|e| e.into_inner()) = Some(rejection.clone());
        rejection
    }

    /// Apply the cached table, if there is one. A cache whose content does not match its
    /// digest is refused unless `accept_as_is` (then it is served, and the log says so).
    pub fn restore_from_cache(&self, accept_as_is: bool) -> Result<u64, CacheRefusal> {
        let unusable = CacheRefusal::Unusable;
        let dir = self
            .cache_dir
            .as_ref()
            .ok_or_else(|| unusable("no cache_dir configured".into()))?;
        let path = dir.join(CACHE_FILE);
        let at = path.display();
        let text = std::fs::read_to_string(&path).map_err(|e| unusable(format!("{at}: {e}")))?;
        let cached: CacheFile =
            serde_json::from_str(&text).map_err(|e| unusable(format!("{at}: {e}")))?;
        let digest = control_api::table_digest(&cached.table);
        match &cached.digest {
            Some(saved) if *saved != digest => {
                let why = format!(
                    "{at}: the cached table (version {}) does not match the digest it was saved with ({saved}; its content now has {digest}): it was changed after it was saved",
                    cached.table.version
                );
                if !accept_as_is {
                    return Err(CacheRefusal::Tampered(format!(
                        "{why}; not serving it (start with --accept-cache-as-is to serve it anyway)"
                    )));
                }
                tracing::warn!(%why, "serving the cached table as it is (--accept-cache-as-is)");
            }
            Some(_) => {}
            None => {
                tracing::warn!(path = %at, "the cached table has no digest (written by an older gateway); serving it");
            }
        }
        let table = router_rules::validate(cached.table, None)
            .map_err(|e| unusable(e.render(&at.to_string())))?;
        let origin = format!("cache:{at} (saved from {})", cached.origin);
        self.apply(table, &origin)
            .map_err(|r| CacheRefusal::Unusable(r.error))
    }

    /// Write the table to the cache atomically: temp file, fsync, rename, fsync the directory.
    fn persist(&self, table: &CompiledTable, digest: &str, origin: &str) {
        let Some(dir) = &self.cache_dir else { return };
        let file = CacheFile {
            origin: origin.to_owned(),
            saved_at_s: now_ms() / 1000,
            digest: Some(digest.to_owned()),
            table: table.raw().clone(),
        };
        // Compact JSON and a newline.
        let written = serde_json::to_vec(&file)
            .map_err(std::io::Error::from)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                control_api::files::write_atomically(dir, CACHE_FILE, &bytes)
            });
        if let Err(error) = written {
            self.metrics
                .cache_write_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(dir = %dir.display(), %error, "cannot write the table cache; a restart without a table source would start from an older table");
        }
    }

    fn health_of(&self, address: &str) -> Arc<Health> {
        let mut map = self.health.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(address.into()).or_default().clone()
    }

    fn limiter(&self, unit: bool, name: &str, limits: Option<RawLimits>) -> Option<Arc<Limiter>> {
        let limits = limits?;
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        // Unchanged limits keep their state across swaps, so a swap does not refill buckets.
        Some(
            map.entry((unit, name.to_owned(), limits))
                .or_insert_with(|| Arc::new(Limiter::new(limits)))
                .clone(),
        )
    }

    fn pool_state<'a>(
        &self,
        addresses: impl Iterator<Item = &'a str>,
        connector: &Arc<Connector>,
    ) -> PoolState {
        PoolState {
            // One endpoint per address, in table order, so that a position in the table's pool
            // (key affinity's order) is the same position here.
            endpoints: addresses
                .map(|address| EndpointState {
                    // Validation admits only `host:port` that parses; the reserved `.invalid`
                    // name stands in (and never resolves) should one not.
                    authority: address
                        .parse()
                        .unwrap_or_else(|_| Authority::from_static("unparsable.invalid:1")),
                    address: address.into(),
                    health: self.health_of(address),
                    id: self.metrics.names.id(address),
                    connector: connector.clone(),
                })
                .collect(),
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    fn build(
        &self,
        table: CompiledTable,
        region: RegionIndex,
        origin: &str,
        digest: String,
        connectors: &TableConnectors,
        generation: u64,
    ) -> Snapshot {
        let names = &self.metrics.names;
        let regions = table
            .regions()
            .iter()
            .zip(&connectors.pools)
            .zip(&connectors.gateways)
            .map(|((r, pool_connectors), gateway_connector)| RegionState {
                id: names.id(&r.name),
                // Names passed validation (lowercase letters, digits, '-', '_'): valid header
                // values.
                header: header_value(&r.name),
                line: field_line("x-unitgate-region", &r.name),
                pools: (0..table.services().len())
                    .map(|s| {
                        let connector = pool_connectors.get(s).and_then(Option::as_ref)?;
                        r.pool(s).map(|p| {
                            self.pool_state(p.endpoints.iter().map(|e| &*e.address), connector)
                        })
                    })
                    .collect(),
                gateways: self.pool_state(r.gateways.iter().map(|g| &**g), gateway_connector),
            })
            .collect();
        Snapshot {
            region,
            origin: origin.to_owned(),
            digest,
            applied_at: SystemTime::now(),
            generation,
            routes: table
                .routes()
                .iter()
                .map(|r| RouteState {
                    limiter: self.limiter(false, &r.name, r.limits),
                    id: names.id(&r.name),
                    key_headers: {
                        let names: KeyHeaders = r
                            .key_sources
                            .iter()
                            .filter_map(|source| match source {
                                router_rules::KeySource::Header(name) => {
                                    Some(name.as_bytes().into())
                                }
                                _ => None,
                            })
                            .collect();
                        (!names.is_empty()).then_some(names)
                    },
                })
                .collect(),
            units: table
                .units()
                .iter()
                .map(|u| UnitState {
                    limiter: self.limiter(true, &u.name, u.limits),
                    id: names.id(&u.name),
                    header: header_value(&u.name),
                    line: field_line("x-unitgate-unit", &u.name),
                    writes: Arc::new(AtomicUsize::new(0)),
                    ended: CancellationToken::new(),
                })
                .collect(),
            regions,
            version_header: http::HeaderValue::from(table.version()),
            version_line: field_line("x-unitgate-table-version", &table.version().to_string()),
            settle: self.settle.clone(),
            retired: Arc::new(AtomicBool::new(false)),
            retired_at: std::sync::OnceLock::new(),
            table,
        }
    }
}

/// `name: value\r\n`: a line written whole into every upstream head that carries it.
fn field_line(name: &str, value: &str) -> Box<[u8]> {
    format!("{name}: {value}\r\n")
        .into_bytes()
        .into_boxed_slice()
}

fn header_value(name: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(name).unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key affinity picks an endpoint by its position in the table's pool: the snapshot's
    /// pools must list the same endpoints at the same positions, for every region.
    #[test]
    fn endpoints_keep_the_tables_positions() {
        let text = include_str!("../../deploy/examples/three-regions.yaml").replace(
            "cart:  [\"127.0.0.1:18101\"]",
            "cart:  [\"127.0.0.1:18103\", \"[::1]:18102\", \"cart.hz.internal:18101\"]",
        );
        let store = TableStore::new("hz", None, Arc::new(Metrics::default()));
        store
            .load_text(&text, false, "test")
            .expect("the table applies");
        let snapshot = store.current().expect("a snapshot");
        for (region, state) in snapshot.table.regions().iter().zip(&snapshot.regions) {
            for (service, pool) in state.pools.iter().enumerate() {
                let listed: Vec<&str> = region
                    .pool(service)
                    .map(|p| p.endpoints.iter().map(|e| &*e.address).collect())
                    .unwrap_or_default();
                let kept: Vec<&str> = pool
                    .iter()
                    .flat_map(|p| p.endpoints.iter().map(|e| &*e.address))
                    .collect();
                assert_eq!(kept, listed, "region {} service {service}", region.name);
            }
            let gateways: Vec<&str> = state
                .gateways
                .endpoints
                .iter()
                .map(|e| &*e.address)
                .collect();
            let listed: Vec<&str> = region.gateways.iter().map(|g| &**g).collect();
            assert_eq!(gateways, listed, "region {} gateways", region.name);
        }
        let here = snapshot.here();
        let cart = snapshot
            .table
            .services()
            .iter()
            .position(|s| &**s == "cart")
            .expect("cart");
        let pool = here.pools[cart].as_ref().expect("hz has a cart pool");
        assert_eq!(pool.endpoints.len(), 3);
        assert_eq!(here.header, "hz");
    }

    /// The example table as `version`, with u06 (the unit it freezes in a flip) write-frozen
    /// or not.
    fn example(version: u64, u06_frozen: bool) -> String {
        let text = include_str!("../../deploy/examples/three-regions.yaml")
            .replace("version: 1\n", &format!("version: {version}\n"));
        if u06_frozen {
            text.replace(
                "state: active       # write_frozen during a flip",
                "state: write_frozen",
            )
        } else {
            text
        }
    }

    /// A store in hz with the example table as version 1, and that snapshot.
    fn store_at_v1() -> (TableStore, Arc<Snapshot>) {
        let store = TableStore::new("hz", None, Arc::new(Metrics::default()));
        store
            .load_text(&example(1, false), false, "test")
            .expect("v1");
        let loaded = store.current().expect("v1");
        (store, loaded)
    }

    /// The position of the unit `name` in `snapshot`'s table.
    fn unit_at(snapshot: &Snapshot, name: &str) -> usize {
        snapshot
            .table
            .units()
            .iter()
            .position(|u| &*u.name == name)
            .expect("unit")
    }

    fn settled(store: &TableStore) -> Option<u64> {
        store.settled().map(|s| s.table.version())
    }

    /// A version that freezes a unit is vouched for (reported as applied) only once the
    /// writes an older version routed to that unit are over; writes to units it left alone
    /// hold nothing.
    #[test]
    fn a_freeze_is_settled_once_the_units_writes_routed_before_it_end() {
        let (store, first) = store_at_v1();
        // u06 is the unit the example freezes; u01 stays as it is.
        // Requests hold the snapshot that routed them to their end.
        let frozen = WriteInFlight::start(&first, unit_at(&first, "u06"));
        let other = WriteInFlight::start(&first, unit_at(&first, "u01"));
        store
            .load_text(&example(2, true), false, "test")
            .expect("v2");
        assert_eq!(
            settled(&store),
            Some(1),
            "a write to u06 routed by v1 goes on"
        );
        store
            .load_text(&example(3, true), false, "test")
            .expect("v3");
        assert_eq!(settled(&store), Some(1), "still");
        drop(frozen);
        assert_eq!(settled(&store), Some(3), "u01's write holds nothing");
        drop(other);
        drop(first);
        assert_eq!(settled(&store), Some(3));
    }

    /// A request loads the snapshot in force, then routes: a swap between the two must not
    /// let a write to a unit the new snapshot froze go on uncounted after the new version was
    /// vouched for.
    #[test]
    fn a_write_routed_by_a_snapshot_replaced_before_it_counted_is_refused_if_its_unit_froze() {
        let (store, loaded) = store_at_v1();
        let u06 = unit_at(&loaded, "u06");
        assert!(store.start_write(&loaded, u06).is_some(), "v1 is in force");
        store
            .load_text(&example(2, true), false, "test")
            .expect("v2");
        assert_eq!(
            settled(&store),
            Some(2),
            "no write to u06 was counted: v2 is vouched for"
        );
        assert!(
            store.start_write(&loaded, u06).is_none(),
            "v2 froze u06: a write v1 routed there must not go"
        );
        assert_eq!(settled(&store), Some(2));
        let other = store.start_write(&loaded, unit_at(&loaded, "u01"));
        assert!(other.is_some(), "v2 left u01 as it was");
        assert_eq!(settled(&store), Some(2));
    }

    /// An HTTP/2 answer's body may be the last hold on the snapshot that routed its write: the
    /// write still holds the newer version back.
    #[test]
    fn a_write_holds_the_freeze_back_when_nothing_else_holds_its_snapshot() {
        let (store, loaded) = store_at_v1();
        let write = store
            .start_write(&loaded, unit_at(&loaded, "u06"))
            .expect("v1 in force");
        drop(loaded);
        store
            .load_text(&example(2, true), false, "test")
            .expect("v2");
        assert_eq!(settled(&store), Some(1));
        assert_eq!(store.writes_in_flight(), (1, 1));
        drop(write);
        assert_eq!(settled(&store), Some(2));
        assert_eq!(store.writes_in_flight(), (2, 0));
    }

    /// A write's grace counts from when its unit changed, not from when the table that routed
    /// it was replaced (by one that left the unit alone).
    #[test]
    fn a_writes_grace_counts_from_its_units_change() {
        let (store, loaded) = store_at_v1();
        let write = store
            .start_write(&loaded, unit_at(&loaded, "u06"))
            .expect("v1 in force");
        // v1 was replaced a minute ago, by a v2 that left u06 alone; v3 freezes it now.
        let a_minute_ago = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a minute of uptime");
        loaded
            .retired_at
            .set(a_minute_ago)
            .expect("not replaced yet");
        store
            .load_text(&example(2, false), false, "test")
            .expect("v2");
        store
            .load_text(&example(3, true), false, "test")
            .expect("v3");
        let next = store.end_held_writes(Duration::from_secs(30));
        assert!(
            !write.ended.is_cancelled(),
            "30 s from u06's change, not v1's"
        );
        assert!(next.is_some_and(|at| at > Instant::now()), "{next:?}");
        store.end_held_writes(Duration::ZERO);
        assert!(write.ended.is_cancelled(), "its grace is over");
    }

    #[test]
    fn a_held_snapshot_is_kept_until_another_is_in_force() {
        let text = include_str!("../../deploy/examples/three-regions.yaml");
        let store = TableStore::new("hz", None, Arc::new(Metrics::default()));
        let mut held = None;
        store.refresh(&mut held);
        assert!(held.is_none(), "no table yet");
        store
            .load_text(text, false, "test")
            .expect("the table applies");
        store.refresh(&mut held);
        let first = held.clone().expect("the table in force");
        store.refresh(&mut held);
        assert!(Arc::ptr_eq(&first, held.as_ref().expect("held")));
        let next = text.replacen("version: 1", "version: 2", 1);
        assert_ne!(next, text, "the example starts at version 1");
        store
            .load_text(&next, false, "test")
            .expect("the next table applies");
        store.refresh(&mut held);
        let second = held.expect("the next table");
        assert_eq!(second.table.version(), 2);
        assert_eq!(second.generation, first.generation + 1);
    }

    #[test]
    fn an_ejection_that_is_over_is_forgotten() {
        let health = Health::default();
        assert!(health.is_healthy());
        health.failure(1, Duration::from_secs(3600));
        assert!(!health.is_healthy(), "ejected for an hour");
        let over = Health::default();
        over.failure(1, Duration::ZERO);
        assert!(over.is_healthy(), "an ejection of no time is over at once");
        assert_eq!(over.ejected_until_ms.load(Ordering::Relaxed), 0);
        over.set_down(true);
        assert!(!over.is_healthy());
    }
}
