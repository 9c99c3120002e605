//! The routing table as written: plain serde structs mirroring the YAML/JSON format.
//!
//! Nothing here is checked beyond its shape. The only way from a [`RawTable`] to something the
//! gateway can route by is [`crate::validate`], which yields a [`crate::CompiledTable`].
//! Every struct denies unknown fields so that a typo is an error, never a silently ignored line.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A whole routing table: one immutable, versioned snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// Version of this table. Versions only grow: a gateway refuses a table whose version is not
    /// greater than the one it serves.
    pub version: u64,
    /// The slot space and the functions that map routing keys into it.
    #[serde(default)]
    pub slots: RawSlots,
    /// HTTP methods that count as writes (subject to write-freeze and sent to the center for
    /// P-class routes). When absent, every method except the safe ones (GET, HEAD, OPTIONS, TRACE) is a
    /// write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_methods: Option<Vec<String>>,
    /// Regions (data centers), with their gateways and upstream pools.
    pub regions: Vec<RawRegion>,
    /// Logical units, each owning slot ranges and living in one region.
    pub units: Vec<RawUnit>,
    /// Route rules, matched in order: the first rule that matches a request decides.
    pub routes: Vec<RawRoute>,
}

/// The slot space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlots {
    /// Number of slots; slots are numbered `0..count`. Never change it under a live table:
    /// doing so moves almost every user.
    #[serde(default = "default_slot_count")]
    pub count: u32,
    /// How keys made only of ASCII digits map to a slot.
    #[serde(default)]
    pub numeric: NumericSlotFunction,
    /// How every other key maps to a slot.
    #[serde(default)]
    pub string: StringSlotFunction,
}

/// The default slot space size, `10000` (slots `0..=9999`).
pub const DEFAULT_SLOT_COUNT: u32 = 10_000;

fn default_slot_count() -> u32 {
    DEFAULT_SLOT_COUNT
}

impl Default for RawSlots {
    fn default() -> Self {
        Self {
            count: DEFAULT_SLOT_COUNT,
            numeric: NumericSlotFunction::default(),
            string: StringSlotFunction::default(),
        }
    }
}

/// Slot function for numeric keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NumericSlotFunction {
    /// `slot = key mod count`, for keys of 1 to 19 ASCII digits (leading zeros allowed).
    /// Longer digit strings are treated as string keys.
    #[default]
    #[serde(rename = "modulo")]
    Modulo,
}

/// Slot function for string keys. Each name is a frozen algorithm: a new algorithm gets a new
/// name, so a table never changes behind a user's back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StringSlotFunction {
    /// `slot = fnv1a_64(utf8 bytes of key) mod count`, with the 64-bit FNV-1a offset basis
    /// `0xcbf29ce484222325` and prime `0x100000001b3`.
    #[default]
    #[serde(rename = "fnv1a-64")]
    Fnv1a64,
}

/// A region: a data center that runs gateways and upstream pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    /// Region name, e.g. `hz`. Lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Addresses (`host:port`) of this region's gateways, used by gateways elsewhere to forward
    /// requests whose unit lives here: a list, or `{ endpoints: [...], tls: {...} }` when the
    /// hop to them goes over TLS.
    #[serde(default)]
    pub gateways: RawPool,
    /// Upstream pools by service name: each a list of `host:port` endpoints, or
    /// `{ endpoints: [...], tls: {...}, protocol: http1 | h2 }`.
    pub pools: BTreeMap<String, RawPool>,
    /// Region that serves this region's P-class reads when its own pool has no healthy endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_fallback: Option<String>,
    /// How much of another region's users this region can take, relative to the others (at
    /// least 1). When the table gives it, evacuating a region spreads its units over the other
    /// regions by these weights instead of sending each to its standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

/// Endpoints reached the same way: a service's upstreams in a region, or a region's gateways.
///
/// Written as a plain list of `host:port` (plain-text HTTP/1.1), or as a mapping that also says
/// how to reach them. A list stays a list when the table is written back, so tables written
/// before the mapping existed keep their content (and digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawPool {
    /// `host:port` endpoints, reached over plain-text HTTP/1.1.
    List(Vec<String>),
    /// Endpoints with the way to reach them.
    Spec(RawPoolSpec),
}

/// A pool written as a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoolSpec {
    /// `host:port` endpoints.
    pub endpoints: Vec<String>,
    /// Reach the endpoints over TLS, verifying their certificates. Absent: plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// The protocol spoken to the endpoints: `http1` (the default) or `h2` (HTTP/2 with prior
    /// knowledge, for gRPC services; pools only, and without `tls` for now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
}

/// TLS to a pool's endpoints. File paths are absolute and read by each gateway when it applies
/// the table: a gateway that cannot read one refuses the table and keeps the one in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM file of the CA certificates the endpoints' certificates must chain to. Absent: the
    /// system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The name the endpoints' certificates must carry, also sent as SNI (a DNS name or an IP
    /// address). Absent: each endpoint's own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM certificate chain the gateway presents to the endpoints (mutual TLS). Needs
    /// `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// The protocol spoken to a pool's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS with ALPN `http/1.1`).
    #[default]
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2 with prior knowledge (h2c) over plain TCP, for gRPC services: trailers pass both
    /// ways, and the gateway's own answers to gRPC requests carry `grpc-status`. The hop to the
    /// serving region's gateways speaks HTTP/2 too.
    #[serde(rename = "h2")]
    H2,
}

impl UpstreamProtocol {
    /// The name used in the table format.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool::List(Vec::new())
    }
}

impl From<Vec<String>> for RawPool {
    fn from(endpoints: Vec<String>) -> Self {
        RawPool::List(endpoints)
    }
}

impl RawPool {
    /// The `host:port` endpoints, in table order.
    pub fn endpoints(&self) -> &[String] {
        match self {
            RawPool::List(endpoints) => endpoints,
            RawPool::Spec(spec) => &spec.endpoints,
        }
    }

    /// TLS settings, when the endpoints are reached over TLS.
    pub fn tls(&self) -> Option<&RawTls> {
        match self {
            RawPool::List(_) => None,
            RawPool::Spec(spec) => spec.tls.as_ref(),
        }
    }

    /// The protocol spoken to the endpoints.
    pub fn protocol(&self) -> UpstreamProtocol {
        match self {
            RawPool::List(_) => UpstreamProtocol::Http1,
            RawPool::Spec(spec) => spec.protocol.unwrap_or_default(),
        }
    }

    /// The field path of the endpoint list, for a pool at `path`: the pool itself when it is a
    /// list, its `endpoints` field when it is a mapping.
    pub fn endpoints_path(&self, path: &str) -> String {
        match self {
            RawPool::List(_) => path.to_owned(),
            RawPool::Spec(_) => format!("{path}.endpoints"),
        }
    }
}

// A list or a mapping, told apart by what the text holds, so that a problem inside the mapping
// (an unknown field, a wrong type) is reported as itself rather than as "matches no variant".
impl<'de> Deserialize<'de> for RawPool {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PoolVisitor;
        impl<'de> serde::de::Visitor<'de> for PoolVisitor {
            type Value = RawPool;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of `host:port` endpoints, or a mapping with `endpoints` (and `tls`, `protocol`)")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawPool, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawPool::List)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawPool, A::Error> {
                RawPoolSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawPool::Spec)
            }
        }
        deserializer.deserialize_any(PoolVisitor)
    }
}

/// A logical unit: the full stack for a slice of users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUnit {
    /// Unit name, e.g. `u01`.
    pub name: String,
    /// Closed slot ranges `[first, last]` this unit owns. All units' ranges together cover the
    /// slot space exactly once.
    pub slots: Vec<[u32; 2]>,
    /// The region that currently owns the unit.
    pub region: String,
    /// The region this unit would be flipped to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// `active`, or `write_frozen` during a flip.
    #[serde(default)]
    pub state: UnitState,
    /// Exactly one unit is the center: it also hosts the data that cannot be split by user, and
    /// P-class writes go to its region.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub center: bool,
    /// Keys pinned to this unit whatever their slot (test users, VIPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned_keys: Vec<String>,
    /// Flow control for every request routed to this unit (e.g. to throttle it during a flip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawLimits>,
}

/// Flow control, enforced by each gateway on its own: with N gateways a unit or route may see
/// up to N times these figures. Requests over a limit get `429` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Requests per second admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Requests admitted at once above the steady rate (default: none beyond one second's
    /// worth spread evenly, i.e. 1). Needs `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// The state of a unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// Reads and writes flow.
    #[default]
    Active,
    /// Writes get `503` with `Retry-After`; reads flow.
    WriteFrozen,
}

impl UnitState {
    /// The name used in the table format and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Active => "active",
            UnitState::WriteFrozen => "write_frozen",
        }
    }
}

/// A route rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Route name, unique in the table; shown in decisions, logs and metrics.
    pub name: String,
    /// Which requests this rule takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// The service (a pool name in every region) that serves these requests.
    pub service: String,
    /// `C` (customer data, routed by key to its unit) or `P` (platform data).
    pub class: Class,
    /// C-class only: where the routing key comes from, tried in order; the first one found wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<RawKeySource>,
    /// C-class only: what to do when no key source yields a key. Default `reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_key: Option<MissingKeyPolicy>,
    /// C-class only: what a routing key must look like. Default `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format: Option<KeyFormat>,
    /// How to pick an endpoint within the pool. Default `round_robin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
    /// Flow control for every request this route takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawLimits>,
}

/// Request matcher of a route. All given conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Host name, exact (case-insensitive, port ignored) or a `*.example.com` wildcard that
    /// matches any subdomain. Absent: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix on segment boundaries: `/cart` matches `/cart` and `/cart/x`, not `/cartoon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Methods this rule takes (uppercase). Absent: all methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Whether `path_prefix` and `path` match in ASCII case too. Default `true`; `false` for
    /// services that resolve paths without regard to case (IIS and ASP.NET by default), where
    /// `/CART` reaches the same handler as `/cart` and must be routed as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
}

/// Traffic class of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Class {
    /// Customer data, splittable by user: key -> slot -> unit -> the unit's region.
    #[serde(rename = "C")]
    C,
    /// Platform data: reads served locally, writes sent to the center unit's region.
    #[serde(rename = "P")]
    P,
}

impl Class {
    /// `"C"` or `"P"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::C => "C",
            Class::P => "P",
        }
    }
}

/// One place a routing key may come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawKeySource {
    /// A request header, by name (case-insensitive).
    Header(String),
    /// A cookie, by name (case-sensitive).
    Cookie(String),
    /// A query parameter, by name; its value is percent-decoded.
    Query(String),
    /// A path segment, counted from 1: in `/order/42/items`, segment 2 is `42`.
    PathSegment(u32),
    /// A claim of the JWT in `Authorization: Bearer <token>`. The token's signature is NOT
    /// checked: the claim only chooses where the request goes; the service authenticates.
    JwtClaim(String),
}

/// What a C-class route's routing keys must look like.
///
/// `digits` is for services that read their user ids as numbers: a key such as `+7000`,
/// `7000.0` or `0x1B58` is a string to the slot function (hashed) but may be user 7000 to a
/// service that parses it leniently, which would then act for that user in a unit that does not
/// own them. Refused with `400` instead, such a key cannot reach a service at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// Any key (a number when it is 1 to 19 ASCII digits, else hashed).
    #[default]
    Any,
    /// 1 to 19 ASCII digits: the keys the slot function takes as numbers.
    Digits,
}

impl KeyFormat {
    /// The name used in the table format.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyFormat::Any => "any",
            KeyFormat::Digits => "digits",
        }
    }
}

/// What a C-class route does with a request that has no routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeyPolicy {
    /// Serve in the region the request entered, outside any unit (anonymous traffic).
    Local,
    /// Serve in the center unit.
    Center,
    /// Answer `400` naming the sources that were tried.
    Reject,
}

impl MissingKeyPolicy {
    /// The name used in the table format.
    pub fn as_str(self) -> &'static str {
        match self {
            MissingKeyPolicy::Local => "local",
            MissingKeyPolicy::Center => "center",
            MissingKeyPolicy::Reject => "reject",
        }
    }
}

/// Endpoint choice within a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Rotate over healthy endpoints.
    #[default]
    RoundRobin,
    /// The same key always prefers the same endpoint (rendezvous hashing), falling back in a
    /// stable order when it is unhealthy. C-class only.
    KeyAffinity,
}

impl Balance {
    /// The name used in the table format.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::KeyAffinity => "key_affinity",
        }
    }
}
