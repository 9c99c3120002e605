//! Prometheus metrics. Label values (route, unit, region names) are interned into ids when a
//! table is applied, so the request path counts with integer keys and never formats a string.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Id of an interned label value; [`NONE`] for "no value".
pub type NameId = u32;
/// The id meaning "none" (rendered as an empty label value).
pub const NONE: NameId = u32::MAX;

/// Interns label values.
#[derive(Debug, Default)]
pub struct Interner {
    inner: Mutex<Names>,
}

/// Names by id, and ids by name.
type Names = (Vec<Arc<str>>, HashMap<Arc<str>, NameId>);

impl Interner {
    /// The id of `name`.
    pub fn id(&self, name: &str) -> NameId {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (names, ids) = &mut *guard;
        if let Some(&id) = ids.get(name) {
            return id;
        }
        let id = NameId::try_from(names.len()).unwrap_or(NONE - 1);
        let name: Arc<str> = name.into();
        names.push(name.clone());
        ids.insert(name, id);
        id
    }

    fn names(&self) -> Vec<Arc<str>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

/// Counters by key, created on first use.
#[derive(Debug)]
struct CounterMap<K> {
    map: RwLock<HashMap<K, AtomicU64, fnv::FnvBuildHasher>>,
}

impl<K: Hash + Eq + Copy + Ord> CounterMap<K> {
    fn new() -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
        }
    }

    fn add(&self, key: K, n: u64) {
        if let Some(counter) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            counter.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(K, u64)> {
        let mut out: Vec<(K, u64)> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }
}

/// Latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram's bucket counts, count and sum of nanoseconds, added over the shards.
type LatencyTotals = ([u64; BUCKETS.len()], u64, u64);

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Where a request stands in its trip between regions, as this gateway saw it: the `hop`
/// label. Each request is counted `Local` by one gateway, or `Entry` by the gateway it entered
/// and `Served` by the one that answered it (with a `Relay` between them when their tables
/// disagreed): `local` and `entry` add up to the requests entering the fleet, `local` and
/// `served` to the requests answered, each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hop {
    /// Came from a client and was answered here: no hop.
    Local,
    /// Came from a client and was sent to another region's gateways.
    Entry,
    /// Came from another region's gateway and was answered here.
    Served,
    /// Came from another region's gateway and was sent on to a third.
    Relay,
}

impl Hop {
    /// The request's hop, from whether it came from another gateway and whether it was sent to
    /// another region.
    pub fn of(arrived_by_hop: bool, forwarded: bool) -> Self {
        match (arrived_by_hop, forwarded) {
            (false, false) => Hop::Local,
            (false, true) => Hop::Entry,
            (true, false) => Hop::Served,
            (true, true) => Hop::Relay,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Local => "local",
            Hop::Entry => "entry",
            Hop::Served => "served",
            Hop::Relay => "relay",
        }
    }
}

/// Labels of one request count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestLabels {
    /// Route name id.
    pub route: NameId,
    /// `C`, `P`, or `-` when no route matched.
    pub class: u8,
    /// Unit name id.
    pub unit: NameId,
    /// Serving region name id.
    pub region: NameId,
    /// Entered here, answered here, or both.
    pub hop: Hop,
    /// Response status.
    pub status: u16,
    /// Stress-test traffic.
    pub stress: bool,
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    /// Label value interner.
    pub names: Interner,
    shards: Box<[RequestShard]>,
    cross_region: CounterMap<NameId>,
    limited: CounterMap<(u8, NameId, u8)>,
    upstream_errors: CounterMap<(NameId, u8)>,
    /// Version of the table in force, and when it was applied.
    pub table_version: TableVersion,
    /// The control-plane source's connection: [`CONTROL_PLANE_NONE`] without one, else
    /// 0 (disconnected) or 1 (connected).
    control_plane: AtomicU8,
    /// Tables applied since start.
    pub table_swaps: AtomicU64,
    /// Tables refused since start.
    pub tables_rejected: AtomicU64,
    /// Writes the gateway ended: a newer table moved or froze their unit, and they outlasted
    /// their grace (`timeouts.moved_write_grace_ms`).
    pub writes_ended: AtomicU64,
    /// Failed writes of the table cache.
    pub cache_write_errors: AtomicU64,
    /// Hop markers that failed verification (forged, stale, or another secret).
    pub hop_rejected: AtomicU64,
    /// Requests refused before routing for unsafe framing or size.
    pub malformed_requests: AtomicU64,
    /// Client connection events, by [`ClientEvent`].
    client_events: [AtomicU64; ClientEvent::ALL.len()],
}

/// The control-plane connection state meaning "no control-plane source": not exported.
const CONTROL_PLANE_NONE: u8 = u8::MAX;

/// The version of the table in force, and when this process applied it (from any source,
/// its cache included).
#[derive(Debug, Default)]
pub struct TableVersion {
    version: AtomicU64,
    applied_at_ms: AtomicU64,
}

impl TableVersion {
    /// Record that the table of `version` was applied now (in the form of
    /// [`AtomicU64::store`], which this replaces).
    pub fn store(&self, version: u64, order: Ordering) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        self.applied_at_ms.store(now_ms, order);
        self.version.store(version, order);
    }

    /// The version in force (0 before the first).
    pub fn load(&self, order: Ordering) -> u64 {
        self.version.load(order)
    }

    /// When it was applied, in milliseconds since the epoch (0 before the first).
    pub fn applied_at_ms(&self) -> u64 {
        self.applied_at_ms.load(Ordering::Relaxed)
    }
}

/// Something a client did (or did not do) to a connection or a request body, counted without
/// blaming any upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// Accepting a connection failed (out of file descriptors, most often).
    AcceptError,
    /// Refused: `max_connections` reached.
    RefusedTotal,
    /// Refused: `max_connections_per_ip` reached.
    RefusedPerIp,
    /// Closed: no byte within `client_header_ms`.
    NoFirstByte,
    /// The TLS handshake failed.
    TlsHandshakeFailed,
    /// The TLS handshake took longer than `tls_handshake_ms`.
    TlsHandshakeTimeout,
    /// A request body with broken framing (a bad chunk).
    BodyMalformed,
    /// A request body cut off by the client.
    BodyAborted,
    /// A request body still arriving when the upstream's time ran out.
    BodySlow,
    /// A request body over `max_body_bytes`.
    BodyTooLarge,
    /// The client's own deadline (`grpc-timeout`) ran out before an upstream answered.
    DeadlineExceeded,
    /// A request body to be held whole did not fit in `limits.max_buffered_body_bytes`.
    ShedBufferedBody,
}

impl ClientEvent {
    const ALL: [ClientEvent; 12] = [
        ClientEvent::AcceptError,
        ClientEvent::RefusedTotal,
        ClientEvent::RefusedPerIp,
        ClientEvent::NoFirstByte,
        ClientEvent::TlsHandshakeFailed,
        ClientEvent::TlsHandshakeTimeout,
        ClientEvent::BodyMalformed,
        ClientEvent::BodyAborted,
        ClientEvent::BodySlow,
        ClientEvent::BodyTooLarge,
        ClientEvent::DeadlineExceeded,
        ClientEvent::ShedBufferedBody,
    ];

    /// The metric and label it is counted under.
    fn series(self) -> (&'static str, &'static str) {
        match self {
            ClientEvent::AcceptError => ("unitgate_accept_errors_total", ""),
            ClientEvent::RefusedTotal => (
                "unitgate_connections_refused_total",
                "reason=\"max_connections\"",
            ),
            ClientEvent::RefusedPerIp => (
                "unitgate_connections_refused_total",
                "reason=\"max_connections_per_ip\"",
            ),
            ClientEvent::NoFirstByte => (
                "unitgate_client_connections_closed_total",
                "reason=\"no_first_byte\"",
            ),
            ClientEvent::TlsHandshakeFailed => (
                "unitgate_client_connections_closed_total",
                "reason=\"tls_handshake_failed\"",
            ),
            ClientEvent::TlsHandshakeTimeout => (
                "unitgate_client_connections_closed_total",
                "reason=\"tls_handshake_timeout\"",
            ),
            ClientEvent::BodyMalformed => {
                ("unitgate_client_body_errors_total", "kind=\"malformed\"")
            }
            ClientEvent::BodyAborted => ("unitgate_client_body_errors_total", "kind=\"aborted\""),
            ClientEvent::BodySlow => ("unitgate_client_body_errors_total", "kind=\"slow\""),
            ClientEvent::BodyTooLarge => {
                ("unitgate_client_body_errors_total", "kind=\"too_large\"")
            }
            ClientEvent::DeadlineExceeded => ("unitgate_client_deadlines_exceeded_total", ""),
            ClientEvent::ShedBufferedBody => (
                "unitgate_requests_shed_total",
                "reason=\"max_buffered_body_bytes\"",
            ),
        }
    }
}

/// What kind of limit refused a request, for the `limited` counter.
#[derive(Debug, Clone, Copy)]
pub enum LimitScope {
    /// A route's limits.
    Route,
    /// A unit's limits.
    Unit,
}

/// Why an upstream exchange failed, for the `upstream_errors` counter.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamFailure {
    /// Could not connect.
    Connect,
    /// Timed out.
    Timeout,
    /// Failed after connecting.
    Other,
    /// Left unprocessed by an HTTP/2 upstream (REFUSED_STREAM, or above a GOAWAY's last stream
    /// id): safe to send elsewhere, and never counted against the endpoint's health.
    Unprocessed,
    /// A pooled connection the upstream closed idle as it was taken, before any of the
    /// answer: never counted against the endpoint's health. Many of them say the upstream
    /// closes idle connections sooner than the pool lets them go (90 s).
    Stale,
}

/// Request counts, latencies and open connections of one proxy worker. Each worker counts in
/// a shard of its own (aligned apart, so two workers never write one cache line) and `render`
/// adds them up.
#[derive(Debug)]
#[repr(align(128))]
struct RequestShard {
    requests: CounterMap<RequestLabels>,
    latency: RwLock<HashMap<(NameId, u8, Hop), Histogram, fnv::FnvBuildHasher>>,
    connections: AtomicU64,
}

impl RequestShard {
    fn new() -> Self {
        Self {
            requests: CounterMap::new(),
            latency: RwLock::new(HashMap::default()),
            connections: AtomicU64::new(0),
        }
    }
}

/// A connection counted as served by one worker until this drops.
pub struct ConnectionCount {
    metrics: Arc<Metrics>,
    worker: usize,
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.metrics
            .shard(self.worker)
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_workers(1)
    }
}

impl Metrics {
    /// Metrics for a gateway with `workers` proxy workers.
    pub fn with_workers(workers: usize) -> Self {
        Self {
            names: Interner::default(),
            shards: (0..workers.max(1)).map(|_| RequestShard::new()).collect(),
            cross_region: CounterMap::new(),
            limited: CounterMap::new(),
            upstream_errors: CounterMap::new(),
            table_version: TableVersion::default(),
            control_plane: AtomicU8::new(CONTROL_PLANE_NONE),
            table_swaps: AtomicU64::new(0),
            tables_rejected: AtomicU64::new(0),
            writes_ended: AtomicU64::new(0),
            cache_write_errors: AtomicU64::new(0),
            hop_rejected: AtomicU64::new(0),
            malformed_requests: AtomicU64::new(0),
            client_events: Default::default(),
        }
    }

    /// Record whether the control plane answers (a gateway with a control-plane source).
    pub fn control_plane_connected(&self, connected: bool) {
        self.control_plane
            .store(u8::from(connected), Ordering::Relaxed);
    }

    /// Count a client event.
    pub fn client_event(&self, event: ClientEvent) {
        self.client_events[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn shard(&self, worker: usize) -> &RequestShard {
        &self.shards[worker % self.shards.len()]
    }

    /// Count a connection as served by worker `worker` while the result lives.
    pub fn connection(self: &Arc<Self>, worker: usize) -> ConnectionCount {
        self.shard(worker)
            .connections
            .fetch_add(1, Ordering::Relaxed);
        ConnectionCount {
            metrics: self.clone(),
            worker,
        }
    }

    /// Connections worker `worker` serves now.
    pub fn connections(&self, worker: usize) -> u64 {
        self.shard(worker).connections.load(Ordering::Relaxed)
    }

    /// Count a request that worker `worker` finished.
    pub fn request(&self, worker: usize, labels: RequestLabels, elapsed: Duration) {
        let shard = self.shard(worker);
        shard.requests.add(labels, 1);
        let key = (labels.route, labels.class, labels.hop);
        if let Some(histogram) = shard
            .latency
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            histogram.observe(elapsed);
            return;
        }
        shard
            .latency
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .observe(elapsed);
    }

    /// Count a request forwarded to another region's gateways.
    pub fn cross_region(&self, region: NameId) {
        self.cross_region.add(region, 1);
    }

    /// Count a request refused by flow control.
    pub fn limited(&self, scope: LimitScope, name: NameId, rate: bool) {
        self.limited.add((scope as u8, name, u8::from(rate)), 1);
    }

    /// Count a failed upstream exchange with endpoint `address`.
    pub fn upstream_error(&self, address: NameId, failure: UpstreamFailure) {
        self.upstream_errors.add((address, failure as u8), 1);
    }

    /// The Prometheus text exposition. `health` lists (region, service, endpoint, healthy).
    pub fn render(&self, health: &[(String, String, String, bool)]) -> String {
        let names = self.names();
        let name = |id: NameId| -> &str { names.get(id as usize).map_or("", |n| n) };
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, metric: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        };
        gauge(
            &mut out,
            "unitgate_table_version",
            "gauge",
            "Version of the routing table in force.",
            self.table_version.load(Ordering::Relaxed),
        );
        let applied_at_ms = self.table_version.applied_at_ms();
        if applied_at_ms > 0 {
            let _ = writeln!(
                out,
                "# HELP unitgate_table_applied_timestamp_seconds When this process applied the table in force, in seconds since the epoch.\n# TYPE unitgate_table_applied_timestamp_seconds gauge\nunitgate_table_applied_timestamp_seconds {}.{:03}",
                applied_at_ms / 1000,
                applied_at_ms % 1000
            );
        }
        let control_plane = self.control_plane.load(Ordering::Relaxed);
        if control_plane != CONTROL_PLANE_NONE {
            gauge(
                &mut out,
                "unitgate_control_plane_connected",
                "gauge",
                "Whether the control plane answered this gateway's last request (1) or not (0).",
                u64::from(control_plane),
            );
        }
        gauge(
            &mut out,
            "unitgate_table_swaps_total",
            "counter",
            "Routing tables applied since start.",
            self.table_swaps.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "unitgate_writes_ended_total",
            "counter",
            "Writes the gateway ended because a newer table moved or froze their unit and they outlasted timeouts.moved_write_grace_ms.",
            self.writes_ended.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "unitgate_tables_rejected_total",
            "counter",
            "Routing tables refused since start.",
            self.tables_rejected.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "unitgate_table_cache_write_errors_total",
            "counter",
            "Failed writes of the table cache.",
            self.cache_write_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "unitgate_hop_markers_rejected_total",
            "counter",
            "Hop markers that failed verification and were ignored.",
            self.hop_rejected.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "unitgate_malformed_requests_total",
            "counter",
            "Requests refused before routing (unsafe framing, size).",
            self.malformed_requests.load(Ordering::Relaxed),
        );

        let mut last = "";
        for event in ClientEvent::ALL {
            let (metric, label) = event.series();
            if metric != last {
                let help = match metric {
                    "unitgate_accept_errors_total" => "Failed accepts of client connections.",
                    "unitgate_connections_refused_total" => {
                        "Client connections closed at accept: a connection limit was reached."
                    }
                    "unitgate_client_connections_closed_total" => {
                        "Client connections closed before a request: silent, or a failed or slow TLS handshake."
                    }
                    "unitgate_client_deadlines_exceeded_total" => {
                        "Requests whose client's own deadline (grpc-timeout) ran out before an upstream answered; never counted against upstreams."
                    }
                    "unitgate_requests_shed_total" => {
                        "Requests refused to protect the gateway, by reason."
                    }
                    _ => {
                        "Request bodies that failed on the client's side; never counted against upstreams."
                    }
                };
                let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
                last = metric;
            }
            let value = self.client_events[event as usize].load(Ordering::Relaxed);
            if label.is_empty() {
                let _ = writeln!(out, "{metric} {value}");
            } else {
                let _ = writeln!(out, "{metric}{{{label}}} {value}");
            }
        }

        out.push_str("# HELP unitgate_worker_connections Client connections each proxy worker serves now.\n# TYPE unitgate_worker_connections gauge\n");
        for (worker, shard) in self.shards.iter().enumerate() {
            let _ = writeln!(
                out,
                "unitgate_worker_connections{{worker=\"{worker}\"}} {}",
                shard.connections.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP unitgate_requests_total Requests by route, class, unit, serving region, hop (local, entry, served, relay) and status.\n# TYPE unitgate_requests_total counter\n");
        let mut requests: BTreeMap<RequestLabels, u64> = BTreeMap::new();
        for shard in &self.shards {
            for (labels, n) in shard.requests.snapshot() {
                *requests.entry(labels).or_default() += n;
            }
        }
        for (l, n) in requests {
            let _ = writeln!(
                out,
                "unitgate_requests_total{{route=\"{}\",class=\"{}\",unit=\"{}\",region=\"{}\",hop=\"{}\",status=\"{}\",stress=\"{}\"}} {n}",
                name(l.route),
                char::from(l.class),
                name(l.unit),
                name(l.region),
                l.hop.as_str(),
                l.status,
                l.stress
            );
        }
        out.push_str("# HELP unitgate_request_duration_seconds Time from request head to response head, by route, class and hop.\n# TYPE unitgate_request_duration_seconds histogram\n");
        // Per route, class and hop: bucket counts, count, sum of nanoseconds, over every shard.
        let mut latency: BTreeMap<(NameId, u8, Hop), LatencyTotals> = BTreeMap::new();
        for shard in &self.shards {
            for (key, h) in shard
                .latency
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                let (buckets, count, sum_ns) = latency.entry(*key).or_default();
                for (total, bucket) in buckets.iter_mut().zip(&h.buckets) {
                    *total += bucket.load(Ordering::Relaxed);
                }
                *count += h.count.load(Ordering::Relaxed);
                *sum_ns += h.sum_ns.load(Ordering::Relaxed);
            }
        }
        for ((route, class, hop), (buckets, count, sum_ns)) in latency {
            let labels = format!(
                "route=\"{}\",class=\"{}\",hop=\"{}\"",
                name(route),
                char::from(class),
                hop.as_str()
            );
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += buckets[i];
                let _ = writeln!(
                    out,
                    "unitgate_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "unitgate_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "unitgate_request_duration_seconds_sum{{{labels}}} {}",
                sum_ns as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "unitgate_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out.push_str("# HELP unitgate_cross_region_forwards_total Requests forwarded to another region's gateways, by target region.\n# TYPE unitgate_cross_region_forwards_total counter\n");
        for (region, n) in self.cross_region.snapshot() {
            let _ = writeln!(
                out,
                "unitgate_cross_region_forwards_total{{region=\"{}\"}} {n}",
                name(region)
            );
        }
        out.push_str("# HELP unitgate_limited_total Requests refused by flow control (429), by scope, name and limit.\n# TYPE unitgate_limited_total counter\n");
        for ((scope, id, rate), n) in self.limited.snapshot() {
            let scope = if scope == LimitScope::Route as u8 {
                "route"
            } else {
                "unit"
            };
            let limit = if rate == 1 { "rate" } else { "concurrency" };
            let _ = writeln!(
                out,
                "unitgate_limited_total{{scope=\"{scope}\",name=\"{}\",limit=\"{limit}\"}} {n}",
                name(id)
            );
        }
        out.push_str("# HELP unitgate_upstream_errors_total Failed upstream exchanges, by endpoint and kind.\n# TYPE unitgate_upstream_errors_total counter\n");
        for ((address, kind), n) in self.upstream_errors.snapshot() {
            let kind = match kind {
                k if k == UpstreamFailure::Connect as u8 => "connect",
                k if k == UpstreamFailure::Timeout as u8 => "timeout",
                k if k == UpstreamFailure::Unprocessed as u8 => "unprocessed",
                k if k == UpstreamFailure::Stale as u8 => "stale",
                _ => "other",
            };
            let _ = writeln!(
                out,
                "unitgate_upstream_errors_total{{endpoint=\"{}\",kind=\"{kind}\"}} {n}",
                name(address)
            );
        }
        out.push_str("# HELP unitgate_upstream_healthy Whether an endpoint of this region's pools is taking traffic (1) or not (0).\n# TYPE unitgate_upstream_healthy gauge\n");
        for (region, service, endpoint, healthy) in health {
            let _ = writeln!(
                out,
                "unitgate_upstream_healthy{{region=\"{region}\",service=\"{service}\",endpoint=\"{endpoint}\"}} {}",
                u8::from(*healthy)
            );
        }
        control_api::process_metrics::render_build_info(
            &mut out,
            "gateway",
            env!("CARGO_PKG_VERSION"),
        );
        control_api::process_metrics::render(&mut out);
        out
    }

    fn names(&self) -> Vec<Arc<str>> {
        self.names.names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_shard_is_counted() {
        let metrics = Metrics::with_workers(2);
        let route = metrics.names.id("cart");
        let labels = RequestLabels {
            route,
            class: b'C',
            unit: NONE,
            region: NONE,
            hop: Hop::Local,
            status: 200,
            stress: false,
        };
        metrics.request(0, labels, Duration::from_micros(300));
        metrics.request(1, labels, Duration::from_micros(300));
        metrics.request(1, labels, Duration::from_millis(20));
        let text = metrics.render(&[]);
        assert!(
            text.contains("hop=\"local\",status=\"200\",stress=\"false\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "unitgate_request_duration_seconds_bucket{route=\"cart\",class=\"C\",hop=\"local\",le=\"0.0005\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "unitgate_request_duration_seconds_count{route=\"cart\",class=\"C\",hop=\"local\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn hops_table_applied_time_and_control_plane_state() {
        let metrics = Metrics::with_workers(1);
        let text = metrics.render(&[]);
        assert!(
            !text.contains("unitgate_control_plane_connected"),
            "no control-plane source, no state: {text}"
        );
        assert!(
            !text.contains("unitgate_table_applied_timestamp_seconds "),
            "nothing applied yet: {text}"
        );
        let labels = |hop| RequestLabels {
            route: NONE,
            class: b'C',
            unit: NONE,
            region: NONE,
            hop,
            status: 200,
            stress: false,
        };
        metrics.request(0, labels(Hop::Entry), Duration::from_millis(40));
        metrics.request(0, labels(Hop::Served), Duration::from_millis(1));
        metrics.table_version.store(7, Ordering::Relaxed);
        metrics.control_plane_connected(true);
        let text = metrics.render(&[]);
        for line in [
            r#"unitgate_requests_total{route="",class="C",unit="",region="",hop="entry",status="200",stress="false"} 1"#,
            r#"unitgate_requests_total{route="",class="C",unit="",region="",hop="served",status="200",stress="false"} 1"#,
            r#"unitgate_request_duration_seconds_count{route="",class="C",hop="entry"} 1"#,
            r#"unitgate_request_duration_seconds_count{route="",class="C",hop="served"} 1"#,
            "unitgate_table_version 7",
            "unitgate_control_plane_connected 1",
            r#"unitgate_build_info{component="gateway",version="#,
        ] {
            assert!(
                text.contains(line),
                "{line}
{text}"
            );
        }
        let applied: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("unitgate_table_applied_timestamp_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("applied timestamp");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!((now - applied).abs() < 60.0, "{applied} {now}");
        metrics.control_plane_connected(false);
        assert!(
            metrics
                .render(&[])
                .contains("unitgate_control_plane_connected 0")
        );
    }
}
