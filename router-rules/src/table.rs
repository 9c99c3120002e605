//! The compiled routing table and request resolution.
//!
//! A [`CompiledTable`] exists only as the output of [`crate::validate`]: everything here may
//! assume the invariants validation checked (every slot owned once, every name known, every
//! region has a pool for every routed service, exactly one center unit).

use fnv::FnvHashMap;

use crate::key::{KeyError, KeySource, RoutingKey};
use crate::raw::{
    Balance, Class, KeyFormat, MissingKeyPolicy, RawLimits, RawTable, UnitState, UpstreamProtocol,
};
use crate::request::RequestView;
use crate::slot::{fnv1a_64, numeric_value, slot_of};

/// Index of a region in [`CompiledTable::regions`].
pub type RegionIndex = usize;

/// The safe methods of RFC 9110 section 9.2.1: reads, unless a table's `write_methods` says
/// otherwise.
pub const SAFE_METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "TRACE"];

/// An immutable, validated routing table, ready for lookups.
#[derive(Debug, Clone)]
pub struct CompiledTable {
    pub(crate) version: u64,
    pub(crate) slot_count: u32,
    pub(crate) services: Vec<Box<str>>,
    pub(crate) regions: Vec<Region>,
    pub(crate) units: Vec<Unit>,
    pub(crate) center: usize,
    /// Unit index of every slot: slot -> unit is one array read.
    pub(crate) slot_units: Box<[u16]>,
    pub(crate) pinned: FnvHashMap<Box<str>, u16>,
    pub(crate) routes: Vec<Route>,
    pub(crate) route_index: RouteIndex,
    pub(crate) write_methods: Option<Vec<Box<str>>>,
    pub(crate) raw: RawTable,
}

/// A region with its gateways and pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Position in [`CompiledTable::regions`].
    pub index: RegionIndex,
    /// Region name.
    pub name: Box<str>,
    /// Gateway addresses for cross-region forwarding.
    pub gateways: Vec<Box<str>>,
    /// TLS to those gateways; `None`: plain text.
    pub gateway_tls: Option<UpstreamTls>,
    /// Pools by service index (see [`CompiledTable::services`]); `None` for a service this
    /// region has no pool for (only possible for services no route uses).
    pub(crate) pools: Vec<Option<Pool>>,
    /// Region serving this one's P-class reads when its pool is down.
    pub read_fallback: Option<RegionIndex>,
}

impl Region {
    /// The pool of service `service` (an index into [`CompiledTable::services`]).
    pub fn pool(&self, service: usize) -> Option<&Pool> {
        self.pools.get(service).and_then(Option::as_ref)
    }
}

/// The endpoints of one service in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Endpoints (`host:port`), in table order.
    pub endpoints: Vec<Endpoint>,
    /// TLS to the endpoints; `None`: plain text.
    pub tls: Option<UpstreamTls>,
    /// The protocol spoken to the endpoints.
    pub protocol: UpstreamProtocol,
}

/// How to reach endpoints over TLS, as validated: paths are absolute, a client certificate
/// comes with its key, a server name is a DNS name or an IP address. The files are read where
/// the connections are made (the gateway), not here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// PEM CA certificates to trust; `None`: the system's trust store.
    pub ca_file: Option<Box<str>>,
    /// The name to verify and send as SNI; `None`: each endpoint's host.
    pub server_name: Option<Box<str>>,
    /// The certificate the gateway presents (mutual TLS).
    pub client_auth: Option<ClientAuth>,
}

/// A client certificate chain and its private key, as PEM file paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientAuth {
    /// PEM certificate chain.
    pub cert_file: Box<str>,
    /// PEM private key.
    pub key_file: Box<str>,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub address: Box<str>,
    /// Hash of the address, mixed with a key's hash for rendezvous scores.
    affinity_seed: u64,
}

impl Endpoint {
    pub(crate) fn new(address: &str) -> Self {
        Self {
            address: address.into(),
            affinity_seed: fnv1a_64(address.as_bytes()),
        }
    }

    fn affinity_score(&self, key_hash: u64) -> u64 {
        mix64(key_hash ^ self.affinity_seed)
    }
}

/// The splitmix64 finaliser: spreads the bits of a 64-bit value.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

impl Pool {
    /// Endpoints in the order a key prefers them (rendezvous hashing: highest score first).
    ///
    /// The first endpoint for a key stays the same as long as it is in the pool, and removing
    /// an endpoint moves only the keys that preferred it. Allocates nothing; each step is
    /// O(endpoints), so a full walk is O(endpoints²), fine for pools of tens.
    pub fn affinity_order(&self, key: &str) -> AffinityOrder<'_> {
        AffinityOrder {
            endpoints: &self.endpoints,
            key_hash: fnv1a_64(key.as_bytes()),
            below: None,
        }
    }

    /// Like [`Pool::affinity_order`], as positions in [`Pool::endpoints`].
    pub fn affinity_indices(&self, key: &str) -> impl Iterator<Item = usize> + '_ {
        let mut order = AffinityOrder {
            endpoints: &self.endpoints,
            key_hash: fnv1a_64(key.as_bytes()),
            below: None,
        };
        std::iter::from_fn(move || order.next_index())
    }
}

/// Iterator of [`Pool::affinity_order`].
#[derive(Debug, Clone)]
pub struct AffinityOrder<'t> {
    endpoints: &'t [Endpoint],
    key_hash: u64,
    /// Score and index of the endpoint returned last; the next one ranks just below it.
    below: Option<(u64, usize)>,
}

impl AffinityOrder<'_> {
    fn next_index(&mut self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let rank = (endpoint.affinity_score(self.key_hash), i);
            if self.below.is_some_and(|below| rank >= below) {
                continue;
            }
            if best.is_none_or(|b| rank > b) {
                best = Some(rank);
            }
        }
        self.below = best;
        best.map(|(_, i)| i)
    }
}

impl<'t> Iterator for AffinityOrder<'t> {
    type Item = &'t Endpoint;

    fn next(&mut self) -> Option<&'t Endpoint> {
        let endpoints = self.endpoints;
        self.next_index().map(|i| &endpoints[i])
    }
}

/// A unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Position in [`CompiledTable::units`].
    pub index: usize,
    /// Unit name.
    pub name: Box<str>,
    /// Closed slot ranges, sorted.
    pub ranges: Vec<(u32, u32)>,
    /// Current region.
    pub region: RegionIndex,
    /// Standby region.
    pub standby: Option<RegionIndex>,
    /// State.
    pub state: UnitState,
    /// Whether this is the center unit.
    pub center: bool,
    /// Flow control for requests routed to this unit.
    pub limits: Option<RawLimits>,
}

/// A compiled route rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in [`CompiledTable::routes`].
    pub index: usize,
    /// Route name.
    pub name: Box<str>,
    /// Traffic class.
    pub class: Class,
    /// Service index into [`CompiledTable::services`].
    pub service: usize,
    /// Key sources, in order.
    pub key_sources: Vec<KeySource>,
    /// Missing-key policy (C-class).
    pub missing_key: MissingKeyPolicy,
    /// What its routing keys must look like (C-class).
    pub key_format: KeyFormat,
    /// Endpoint choice.
    pub balance: Balance,
    /// Flow control for requests this route takes.
    pub limits: Option<RawLimits>,
    pub(crate) matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matcher {
    pub(crate) host: Option<HostMatch>,
    pub(crate) path: PathMatch,
    /// The path matches regardless of ASCII case (`case_sensitive: false`).
    pub(crate) path_ignores_case: bool,
    pub(crate) methods: Option<Vec<Box<str>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// Lowercase host.
    Exact(Box<str>),
    /// Lowercase suffix including the leading dot, from `*.example.com`.
    Subdomain(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
}

impl Matcher {
    fn matches<R: RequestView>(&self, request: &R) -> bool {
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| **m == *request.method())
        {
            return false;
        }
        if !self.path.matches(request.path(), self.path_ignores_case) {
            return false;
        }
        match &self.host {
            None => true,
            Some(host) => request.host().is_some_and(|h| host.matches(strip_port(h))),
        }
    }

    /// Whether every request `other` matches is matched by `self` too.
    pub(crate) fn covers(&self, other: &Matcher) -> bool {
        let methods = match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        };
        let host = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(HostMatch::Exact(h))) => mine.matches(h),
            (Some(HostMatch::Subdomain(mine)), Some(HostMatch::Subdomain(theirs))) => {
                theirs.ends_with(&**mine)
            }
            (Some(HostMatch::Exact(_)), Some(HostMatch::Subdomain(_))) => false,
        };
        let path = match (self.path_ignores_case, other.path_ignores_case) {
            (false, false) => self.path.covers(&other.path),
            (true, _) => self.path.lowercase().covers(&other.path.lowercase()),
            // It takes spellings of its path in other cases, which `self` does not.
            (false, true) => false,
        };
        methods && host && path
    }

    /// Where the route index files the rule: under the first path segment it needs, or
    /// `None` when it may match under any (a rule that ignores case matches `/CART` under
    /// `/cart`'s bucket and every other spelling, so it is tried for every request).
    pub(crate) fn index_segment(&self) -> Option<&str> {
        if self.path_ignores_case {
            return None;
        }
        self.path.first_segment()
    }
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Subdomain(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

impl PathMatch {
    fn matches(&self, path: &str, ignore_case: bool) -> bool {
        match self {
            PathMatch::Prefix(prefix) => match strip_path_prefix(path, prefix, ignore_case) {
                None => false,
                Some(rest) => prefix_rest_matches(prefix, rest),
            },
            // A last segment's parameters (`/a;jsessionid=1`) are no other path to servers
            // that drop them (Tomcat, Jetty).
            PathMatch::Exact(exact) => {
                strip_path_prefix(path, exact, ignore_case).is_some_and(|rest| {
                    rest.is_empty() || (rest.starts_with(';') && !rest.contains('/'))
                })
            }
        }
    }

    /// Whether every path `other` matches is matched by `self` too (both in case).
    fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Prefix(mine), PathMatch::Prefix(theirs) | PathMatch::Exact(theirs)) => {
                prefix_matches(mine, theirs)
            }
            (PathMatch::Exact(mine), PathMatch::Exact(theirs)) => mine == theirs,
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        }
    }

    /// The same rule in ASCII lowercase, to compare rules that ignore case.
    fn lowercase(&self) -> PathMatch {
        match self {
            PathMatch::Prefix(p) => PathMatch::Prefix(p.to_ascii_lowercase().into()),
            PathMatch::Exact(p) => PathMatch::Exact(p.to_ascii_lowercase().into()),
        }
    }

    /// The first path segment the rule needs, or `None` when it matches under any segment.
    pub(crate) fn first_segment(&self) -> Option<&str> {
        match self {
            PathMatch::Prefix(p) if p.trim_matches('/').is_empty() => None,
            PathMatch::Prefix(p) | PathMatch::Exact(p) => Some(first_segment(p)),
        }
    }
}

/// `/cart` matches `/cart` and `/cart/...` but not `/cartoon`; `/cart/` matches `/cart/...`.
/// A segment's parameters end it as a `/` does (`/cart;v=1/42` is `/cart/42` to servers that
/// drop them, such as Tomcat and Jetty).
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| prefix_rest_matches(prefix, rest))
}

/// Whether `rest`, what follows `prefix` in a path, leaves the prefix on a segment boundary.
fn prefix_rest_matches(prefix: &str, rest: &str) -> bool {
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/') || rest.starts_with(';')
}

/// `path` after `prefix`, compared in ASCII case or not.
fn strip_path_prefix<'p>(path: &'p str, prefix: &str, ignore_case: bool) -> Option<&'p str> {
    if !ignore_case {
        return path.strip_prefix(prefix);
    }
    // Bytes equal but for ASCII case: the non-ASCII ones are the same, so `path` has a
    // character boundary where `prefix` ends.
    let head = path.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &path[prefix.len()..])
}

/// `cart` for `/cart/42` (and `/cart;v=1/42`), `` for `/`.
pub(crate) fn first_segment(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split(['/', ';']).next().unwrap_or_default()
}

/// The host name of a `Host` or `:authority`: without its port, and without the trailing dot
/// of a fully qualified name (`shop.example.com.` is `shop.example.com` to nginx and Apache
/// choosing a virtual host, so it is to routing too).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name.strip_suffix('.').unwrap_or(name)
}

/// Routes bucketed by the first path segment they need, so a lookup scans only the rules
/// that could match. Both lists hold route indices in table order.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteIndex {
    pub(crate) by_segment: FnvHashMap<Box<str>, Vec<u16>>,
    pub(crate) any_segment: Vec<u16>,
}

impl RouteIndex {
    pub(crate) fn build(routes: &[Route]) -> Self {
        let mut index = RouteIndex::default();
        for (i, route) in routes.iter().enumerate() {
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            match route.matcher.index_segment() {
                None => index.any_segment.push(i),
                Some(segment) => index.by_segment.entry(segment.into()).or_default().push(i),
            }
        }
        index
    }
}

/// What the gateway must do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Forward to the serving region's pool (or its gateways, if it is another region).
    Forward,
    /// A write to a write-frozen unit: `503` with `Retry-After`.
    WriteFrozen,
    /// No key and the route's policy is `reject`: `400`.
    MissingKey,
    /// A key is there but cannot be used (too long, undecodable, given twice): `400`.
    InvalidKey,
    /// No route matches: `404`.
    NoRoute,
}

impl Action {
    /// `forward`, `write_frozen`, `missing_key`, `invalid_key`, `no_route`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::WriteFrozen => "write_frozen",
            Action::MissingKey => "missing_key",
            Action::InvalidKey => "invalid_key",
            Action::NoRoute => "no_route",
        }
    }
}

/// Everything the router decided about one request.
#[derive(Debug, Clone)]
pub struct Decision<'t, 'r> {
    /// What to do.
    pub action: Action,
    /// The matched route.
    pub route: Option<&'t Route>,
    /// Whether the method counts as a write.
    pub is_write: bool,
    /// The routing key (C-class, when found).
    pub key: Option<RoutingKey<'r>>,
    /// Where the key came from (or the unusable key, for `InvalidKey`).
    pub key_source: Option<&'t KeySource>,
    /// Why the key found cannot be used (`InvalidKey`).
    pub key_error: Option<KeyError>,
    /// The key's slot.
    pub slot: Option<u32>,
    /// Whether the key is pinned to its unit by an allow-list.
    pub pinned: bool,
    /// The unit that owns the request (C-class with a key, `center` policy, P-class writes).
    pub unit: Option<&'t Unit>,
    /// The region of the gateway the request entered.
    pub entry_region: &'t Region,
    /// The region that serves the request.
    pub region: Option<&'t Region>,
    /// For P-class reads: where to go when the serving region's pool is down.
    pub fallback_region: Option<&'t Region>,
    /// The pool that serves the request, in the serving region.
    pub pool: Option<&'t Pool>,
}

impl Decision<'_, '_> {
    /// Whether the serving region is not the region the request entered: the gateway forwards
    /// the request to that region's gateways.
    pub fn is_cross_region(&self) -> bool {
        self.region
            .is_some_and(|region| !std::ptr::eq(region, self.entry_region))
    }
}

impl CompiledTable {
    /// Table version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Service names; a route's `service` indexes this.
    pub fn services(&self) -> &[Box<str>] {
        &self.services
    }

    /// Regions in table order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Units in table order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Routes in table order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The center unit.
    pub fn center_unit(&self) -> &Unit {
        &self.units[self.center]
    }

    /// The table as written (for storage, display and diffs).
    pub fn raw(&self) -> &RawTable {
        &self.raw
    }

    /// Index of the region called `name`.
    pub fn region_index(&self, name: &str) -> Option<RegionIndex> {
        self.regions.iter().position(|r| &*r.name == name)
    }

    /// Index of the unit called `name`.
    pub fn unit_index(&self, name: &str) -> Option<usize> {
        self.units.iter().position(|u| &*u.name == name)
    }

    /// The unit owning `slot` (`slot < slot_count`).
    pub fn unit_of_slot(&self, slot: u32) -> &Unit {
        let unit = self.slot_units[slot as usize % self.slot_units.len()];
        &self.units[usize::from(unit)]
    }

    /// The slot of `key` in this table's slot space.
    pub fn slot_of(&self, key: &str) -> u32 {
        slot_of(key, self.slot_count)
    }

    /// The unit that owns `key`: its pinned unit, else the owner of its slot. Returns the unit,
    /// the slot and whether the key is pinned.
    pub fn unit_of_key(&self, key: &str) -> (&Unit, u32, bool) {
        let slot = self.slot_of(key);
        if !self.pinned.is_empty()
            && let Some(&unit) = self.pinned.get(key)
        {
            return (&self.units[usize::from(unit)], slot, true);
        }
        (self.unit_of_slot(slot), slot, false)
    }

    /// Whether `method` counts as a write in this table: one of its `write_methods`, or by
    /// default any but [`SAFE_METHODS`].
    pub fn is_write(&self, method: &str) -> bool {
        match &self.write_methods {
            Some(methods) => methods.iter().any(|m| **m == *method),
            // Methods are case-sensitive; the gateway refuses any other spelling before
            // routing.
            None => !SAFE_METHODS.contains(&method),
        }
    }

    /// Whether a method-override field's `value` makes a request a write: any value but an
    /// empty one or one naming (in any case, around whitespace) a safe method this table counts
    /// as a read. Frameworks read these values each their own way (Express takes what comes
    /// before a comma, JavaScript's trim takes more than ASCII spaces away), so whatever is not
    /// plainly a read counts as a write.
    fn is_write_override(&self, value: &[u8]) -> bool {
        let method = value.trim_ascii();
        !method.is_empty()
            && !SAFE_METHODS
                .iter()
                .any(|safe| safe.as_bytes().eq_ignore_ascii_case(method) && !self.is_write(safe))
    }

    /// The first route that matches `request`.
    pub fn match_route<R: RequestView>(&self, request: &R) -> Option<&Route> {
        let path = request.path();
        let bucket = self
            .route_index
            .by_segment
            .get(first_segment(path))
            .map_or(&[][..], Vec::as_slice);
        let any = self.route_index.any_segment.as_slice();
        // Merge the two ascending index lists: the lowest matching index wins.
        let (mut b, mut a) = (0, 0);
        loop {
            let next = match (bucket.get(b), any.get(a)) {
                (Some(&x), Some(&y)) if x < y => {
                    b += 1;
                    x
                }
                (_, Some(&y)) => {
                    a += 1;
                    y
                }
                (Some(&x), None) => {
                    b += 1;
                    x
                }
                (None, None) => return None,
            };
            let route = &self.routes[usize::from(next)];
            if route.matcher.matches(request) {
                return Some(route);
            }
        }
    }

    /// Decide where `request`, entering at region `entry`, goes. Allocates nothing, locks
    /// nothing: this runs for every request the gateway serves.
    pub fn resolve<'t, 'r, R: RequestView>(
        &'t self,
        request: &'r R,
        entry: RegionIndex,
    ) -> Decision<'t, 'r> {
        let entry_region = &self.regions[entry.min(self.regions.len() - 1)];
        let is_write = self.is_write(request.method())
            || request
                .method_overrides()
                .any(|method| self.is_write_override(method));
        let mut decision = Decision {
            action: Action::NoRoute,
            route: None,
            is_write,
            key: None,
            key_source: None,
            key_error: None,
            slot: None,
            pinned: false,
            unit: None,
            entry_region,
            region: None,
            fallback_region: None,
            pool: None,
        };
        let Some(route) = self.match_route(request) else {
            return decision;
        };
        decision.route = Some(route);
        match route.class {
            Class::P => {
                if is_write {
                    self.serve_in_unit(&mut decision, self.center_unit());
                } else {
                    decision.action = Action::Forward;
                    decision.region = Some(entry_region);
                    decision.fallback_region = entry_region.read_fallback.map(|r| &self.regions[r]);
                }
            }
            Class::C => {
                let found = route.key_sources.iter().find_map(|source| {
                    source.extract(request).transpose().map(|key| (key, source))
                });
                match found {
                    Some((Err(error), source)) => {
                        decision.action = Action::InvalidKey;
                        decision.key_source = Some(source);
                        decision.key_error = Some(error);
                    }
                    Some((Ok(key), source))
                        if route.key_format == KeyFormat::Digits
                            && numeric_value(key.as_str()).is_none() =>
                    {
                        decision.action = Action::InvalidKey;
                        decision.key_source = Some(source);
                        decision.key_error = Some(KeyError::NotDigits);
                    }
                    Some((Ok(key), source)) => {
                        let (unit, slot, pinned) = self.unit_of_key(key.as_str());
                        decision.key = Some(key);
                        decision.key_source = Some(source);
                        decision.slot = Some(slot);
                        decision.pinned = pinned;
                        self.serve_in_unit(&mut decision, unit);
                    }
                    None => match route.missing_key {
                        MissingKeyPolicy::Reject => decision.action = Action::MissingKey,
                        MissingKeyPolicy::Center => {
                            self.serve_in_unit(&mut decision, self.center_unit());
                        }
                        MissingKeyPolicy::Local => {
                            decision.action = Action::Forward;
                            decision.region = Some(entry_region);
                        }
                    },
                }
            }
        }
        decision.pool = decision.region.and_then(|r| r.pool(route.service));
        decision
    }

    fn serve_in_unit<'t>(&'t self, decision: &mut Decision<'t, '_>, unit: &'t Unit) {
        decision.unit = Some(unit);
        decision.region = Some(&self.regions[unit.region]);
        decision.action = if decision.is_write && unit.state == UnitState::WriteFrozen {
            Action::WriteFrozen
        } else {
            Action::Forward
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matching_respects_segments() {
        assert!(prefix_matches("/cart", "/cart"));
        assert!(prefix_matches("/cart", "/cart/1"));
        assert!(!prefix_matches("/cart", "/cartoon"));
        assert!(prefix_matches("/cart/", "/cart/1"));
        assert!(!prefix_matches("/cart/", "/cart"));
        assert!(prefix_matches("/", "/anything"));
        // Parameters end a segment, as servers that drop them read it.
        assert!(prefix_matches("/cart", "/cart;v=1/1"));
        assert!(prefix_matches("/cart", "/cart;jsessionid=x"));
        assert_eq!(first_segment("/cart;v=1/1"), "cart");
        assert!(PathMatch::Exact("/cart".into()).matches("/cart;jsessionid=x", false));
        assert!(!PathMatch::Exact("/cart".into()).matches("/cart;v=1/1", false));
        assert!(!PathMatch::Exact("/cart".into()).matches("/cartoon", false));
    }

    #[test]
    fn ports_are_ignored_in_hosts() {
        assert_eq!(strip_port("shop.example.com:8080"), "shop.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("shop"), "shop");
        assert_eq!(strip_port("shop.example.com."), "shop.example.com");
        assert_eq!(strip_port("shop.example.com.:80"), "shop.example.com");
    }

    #[test]
    fn affinity_order_is_a_stable_permutation() {
        let pool = Pool {
            endpoints: ["a:1", "b:1", "c:1", "d:1"].map(Endpoint::new).to_vec(),
            tls: None,
            protocol: UpstreamProtocol::Http1,
        };
        let order: Vec<_> = pool.affinity_order("user-1").map(|e| &*e.address).collect();
        assert_eq!(order.len(), 4);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, ["a:1", "b:1", "c:1", "d:1"]);
        assert_eq!(
            order,
            pool.affinity_order("user-1")
                .map(|e| &*e.address)
                .collect::<Vec<_>>()
        );
        // Removing the first choice moves the key to its second choice, nothing else.
        let rest = Pool {
            endpoints: pool
                .endpoints
                .iter()
                .filter(|e| *e.address != *order[0])
                .cloned()
                .collect(),
            tls: None,
            protocol: UpstreamProtocol::Http1,
        };
        let rest_order: Vec<_> = rest.affinity_order("user-1").map(|e| &*e.address).collect();
        assert_eq!(rest_order, order[1..]);
    }
}
