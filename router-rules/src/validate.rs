//! Validation: the only way from a [`RawTable`] to a [`CompiledTable`].
//!
//! Every check runs and every problem is collected, so an operator fixes a table in one pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use fnv::FnvHashMap;

use crate::error::{Problem, TableError};
use crate::key::KeySource;
use crate::raw::{
    Balance, Class, MissingKeyPolicy, RawKeySource, RawLimits, RawPool, RawRoute, RawTable, RawTls,
    UpstreamProtocol,
};
use crate::source::SourceMap;
use crate::table::{
    ClientAuth, CompiledTable, Endpoint, HostMatch, Matcher, PathMatch, Pool, Region, Route,
    RouteIndex, Unit, UpstreamTls,
};

/// Largest slot space accepted.
pub const MAX_SLOT_COUNT: u32 = 1_000_000;
/// Most units a table may have.
pub const MAX_UNITS: usize = 10_000;
/// Most routes a table may have.
pub const MAX_ROUTES: usize = 4_096;
/// Most regions a table may have.
pub const MAX_REGIONS: usize = 256;
/// Most pools (services) a region may have.
pub const MAX_POOLS: usize = 1_024;
/// Most endpoints a pool may have, and gateways a region may list.
pub const MAX_ENDPOINTS: usize = 1_024;
/// Most slot ranges a unit may have.
pub const MAX_SLOT_RANGES: usize = 10_000;
/// Most pinned keys a table may have, over every unit.
pub const MAX_PINNED_KEYS: usize = 100_000;
/// Most key sources a route, and methods a list, may have.
pub const MAX_LIST: usize = 64;
/// Most problems listed; past it, one last problem says how many more were found.
pub const MAX_PROBLEMS: usize = 100;

const NAME_RULE: &str = "names use lowercase letters, digits, '-' and '_', start with a letter or digit, and have 1 to 64 characters";

/// Validate `raw` and compile it. On failure, every problem found; when `source` is given,
/// each problem carries its line and column.
pub fn validate(raw: RawTable, source: Option<&SourceMap>) -> Result<CompiledTable, TableError> {
    let mut v = Validator::default();
    let compiled = if v.check_sizes(&raw) {
        v.compile(raw)
    } else {
        None
    };
    if v.problems.is_empty()
        && let Some(table) = compiled
    {
        return Ok(table);
    }
    let dropped = v.dropped;
    let mut problems = v.problems;
    if let Some(source) = source {
        source.place(&mut problems);
    }
    if problems.is_empty() {
        problems.push(Problem::at("", "table could not be compiled"));
    }
    if dropped > 0 {
        problems.push(Problem::at(
            "",
            format!("and {dropped} more problem(s); only the first {MAX_PROBLEMS} are listed"),
        ));
    }
    Err(TableError { problems })
}

/// Check that `next` may replace `current` in force: its version is greater, and its slot
/// space is the same (changing the slot count or functions moves nearly every user, so it is
/// never done to a live table).
pub fn check_successor(current: &CompiledTable, next: &CompiledTable) -> Result<(), TableError> {
    let mut problems = Vec::new();
    if next.version() <= current.version() {
        problems.push(Problem::at(
            "version",
            format!(
                "version {} is not greater than the version in force, {}; versions only grow",
                next.version(),
                current.version()
            ),
        ));
    }
    if next.slot_count() != current.slot_count() {
        problems.push(Problem::at(
            "slots.count",
            format!(
                "slot space mismatch: {} slots, but the table in force has {}; changing it moves nearly every user",
                next.slot_count(),
                current.slot_count()
            ),
        ));
    }
    let (a, b) = (&current.raw().slots, &next.raw().slots);
    if a.numeric != b.numeric || a.string != b.string {
        problems.push(Problem::at(
            "slots",
            "slot functions differ from the table in force; changing them moves users",
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TableError { problems })
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// Problems found past [`MAX_PROBLEMS`], counted only.
    dropped: usize,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem::at(path, message));
        } else {
            self.dropped += 1;
        }
    }

    /// Problems found so far, listed or not.
    fn found(&self) -> usize {
        self.problems.len() + self.dropped
    }

    /// Check every collection against its limit before looking inside any: a hostile or
    /// broken table of 100,000 endpoints is refused in time proportional to its size, with one
    /// problem per collection over its limit. `false` when any is.
    fn check_sizes(&mut self, raw: &RawTable) -> bool {
        let before = self.found();
        let over = |v: &mut Self, path: String, what: &str, n: usize, max: usize| {
            if n > max {
                v.problem(path, format!("{n} {what}; at most {max} are allowed"));
            }
        };
        over(
            self,
            "regions".into(),
            "regions",
            raw.regions.len(),
            MAX_REGIONS,
        );
        over(self, "units".into(), "units", raw.units.len(), MAX_UNITS);
        over(
            self,
            "routes".into(),
            "routes",
            raw.routes.len(),
            MAX_ROUTES,
        );
        if let Some(methods) = &raw.write_methods {
            over(
                self,
                "write_methods".into(),
                "methods",
                methods.len(),
                MAX_LIST,
            );
        }
        for (i, region) in raw.regions.iter().enumerate() {
            let path = format!("regions[{i}]");
            over(
                self,
                format!("{path}.pools"),
                "pools",
                region.pools.len(),
                MAX_POOLS,
            );
            let gateways = region.gateways.endpoints().len();
            over(
                self,
                region.gateways.endpoints_path(&format!("{path}.gateways")),
                "gateways",
                gateways,
                MAX_ENDPOINTS,
            );
            for (service, pool) in region.pools.iter().take(MAX_POOLS) {
                let n = pool.endpoints().len();
                over(
                    self,
                    pool.endpoints_path(&format!("{path}.pools.{service}")),
                    "endpoints",
                    n,
                    MAX_ENDPOINTS,
                );
            }
        }
        let mut pinned = 0usize;
        for (u, unit) in raw.units.iter().enumerate() {
            let ranges = unit.slots.len();
            over(
                self,
                format!("units[{u}].slots"),
                "slot ranges",
                ranges,
                MAX_SLOT_RANGES,
            );
            pinned = pinned.saturating_add(unit.pinned_keys.len());
        }
        over(
            self,
            "units".into(),
            "pinned keys in all",
            pinned,
            MAX_PINNED_KEYS,
        );
        for (r, route) in raw.routes.iter().enumerate() {
            over(
                self,
                format!("routes[{r}].key"),
                "key sources",
                route.key.len(),
                MAX_LIST,
            );
            if let Some(methods) = &route.matcher.methods {
                let n = methods.len();
                over(
                    self,
                    format!("routes[{r}].match.methods"),
                    "methods",
                    n,
                    MAX_LIST,
                );
            }
        }
        self.found() == before
    }

    /// Check and build; `None` when something was too broken to build at all.
    fn compile(&mut self, raw: RawTable) -> Option<CompiledTable> {
        if raw.version == 0 {
            self.problem("version", "version must be at least 1");
        }
        let slot_count = raw.slots.count;
        let slots_ok = (1..=MAX_SLOT_COUNT).contains(&slot_count);
        if !slots_ok {
            self.problem(
                "slots.count",
                format!("slot count {slot_count} is out of range; allowed: 1 to {MAX_SLOT_COUNT}"),
            );
        }
        let write_methods = raw.write_methods.as_ref().map(|methods| {
            self.check_methods("write_methods", methods);
            methods.iter().map(|m| m.as_str().into()).collect()
        });

        let region_names = self.check_regions(&raw);
        let services = self.services(&raw, &region_names);
        let regions = self.build_regions(&raw, &region_names, &services);
        let (units, center) = self.build_units(&raw, &region_names);
        let slot_units = if slots_ok {
            self.build_slot_map(&raw, slot_count)
        } else {
            None
        };
        let pinned = self.build_pins(&raw);
        let routes = self.build_routes(&raw, &services);

        let center = center?;
        Some(CompiledTable {
            version: raw.version,
            slot_count,
            services,
            regions,
            units,
            center,
            slot_units: slot_units?,
            pinned,
            route_index: RouteIndex::build(&routes),
            routes,
            write_methods,
            raw,
        })
    }

    fn check_name(&mut self, path: &str, what: &str, name: &str) {
        if !is_valid_name(name) {
            self.problem(path, format!("invalid {what} name {name:?}: {NAME_RULE}"));
        }
    }

    fn check_methods(&mut self, path: &str, methods: &[String]) {
        if methods.is_empty() {
            self.problem(
                path,
                "method list is empty; list at least one method, or leave the field out",
            );
        }
        let mut seen = HashSet::new();
        for (i, method) in methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                self.problem(
                    format!("{path}[{i}]"),
                    format!("invalid method {method:?}: methods are uppercase letters, e.g. GET, POST, PUT, PATCH, DELETE"),
                );
            } else if !seen.insert(method) {
                self.problem(
                    format!("{path}[{i}]"),
                    format!("method {method} is listed twice"),
                );
            }
        }
    }

    /// Region names by index, after checking each region's own fields.
    fn check_regions(&mut self, raw: &RawTable) -> HashMap<String, usize> {
        if raw.regions.is_empty() {
            self.problem("regions", "no regions: a table needs at least one region");
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        // How each address is reached, and where it was first listed.
        let mut reached: HashMap<&str, (String, Option<&RawTls>, UpstreamProtocol)> =
            HashMap::new();
        for (i, region) in raw.regions.iter().enumerate() {
            let path = format!("regions[{i}]");
            self.check_name(&format!("{path}.name"), "region", &region.name);
            if let Some(&first) = names.get(&region.name) {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "duplicate region name {:?}; first defined at regions[{first}]",
                        region.name
                    ),
                );
            } else {
                names.insert(region.name.clone(), i);
            }
            if raw.regions.len() > 1 && region.gateways.endpoints().is_empty() {
                self.problem(
                    region.gateways.endpoints_path(&format!("{path}.gateways")),
                    format!("region {:?} lists no gateways; with several regions each needs at least one `host:port` so requests for its units can be forwarded to it", region.name),
                );
            }
            self.check_endpoints(
                &format!("{path}.gateways"),
                "gateway",
                &region.gateways,
                &mut reached,
            );
            for (service, pool) in &region.pools {
                let pool_path = format!("{path}.pools.{service}");
                self.check_name(&pool_path, "service", service);
                if pool.endpoints().is_empty() {
                    self.problem(pool.endpoints_path(&pool_path), format!("pool for service {service:?} is empty; list at least one `host:port` endpoint"));
                }
                self.check_endpoints(&pool_path, "endpoint", pool, &mut reached);
            }
        }
        for (i, region) in raw.regions.iter().enumerate() {
            if region.capacity == Some(0) {
                self.problem(
                    format!("regions[{i}].capacity"),
                    "must be at least 1 (leave it out for a region that takes no evacuated units)",
                );
            }
            if let Some(fallback) = &region.read_fallback {
                let path = format!("regions[{i}].read_fallback");
                if !names.contains_key(fallback) {
                    self.problem(&path, unknown("region", fallback, names.keys()));
                } else if *fallback == region.name {
                    self.problem(
                        &path,
                        format!("region {:?} cannot be its own read fallback", region.name),
                    );
                }
            }
        }
        names
    }

    /// A pool's (or a region's gateways') endpoints and TLS settings. An address names one
    /// server: wherever it is listed, it must be reached the same way (TLS settings and
    /// protocol), since the gateway keeps one set of connections and one health per address.
    fn check_endpoints<'t>(
        &mut self,
        path: &str,
        what: &str,
        pool: &'t RawPool,
        reached: &mut HashMap<&'t str, (String, Option<&'t RawTls>, UpstreamProtocol)>,
    ) {
        let list_path = pool.endpoints_path(path);
        let mut seen = HashSet::new();
        for (e, endpoint) in pool.endpoints().iter().enumerate() {
            let at = format!("{list_path}[{e}]");
            if let Err(why) = check_host_port(endpoint) {
                let invalid = if what == "gateway" {
                    "invalid gateway address"
                } else {
                    "invalid endpoint"
                };
                self.problem(at, format!("{invalid} {endpoint:?}: {why}"));
            } else if !seen.insert(endpoint) {
                self.problem(at, format!("{what} {endpoint} is listed twice"));
            } else if let Some((first, tls, protocol)) = reached.get(endpoint.as_str()) {
                if *tls != pool.tls() || *protocol != pool.protocol() {
                    self.problem(
                        at,
                        format!("{endpoint} is also listed at {first}, reached another way (TLS settings or protocol); an address names one server: list it with the same `tls` and `protocol` everywhere"),
                    );
                }
            } else {
                reached.insert(endpoint, (at, pool.tls(), pool.protocol()));
            }
        }
        if let Some(tls) = pool.tls() {
            self.check_tls(&format!("{path}.tls"), tls);
        }
        if pool.protocol() == UpstreamProtocol::H2 && what == "gateway" {
            self.problem(
                format!("{path}.protocol"),
                "h2 is a pool's protocol: the hop to a region's gateways speaks HTTP/2 for the services whose pool there says h2, HTTP/1.1 for the others; leave protocol out here",
            );
        }
    }

    fn check_tls(&mut self, path: &str, tls: &RawTls) {
        let files = [
            (
                "ca_file",
                &tls.ca_file,
                "the PEM file of the CA certificates to trust, or leave ca_file out to trust the system's store",
            ),
            (
                "client_cert",
                &tls.client_cert,
                "the PEM certificate chain the gateway presents",
            ),
            (
                "client_key",
                &tls.client_key,
                "the PEM private key of client_cert",
            ),
        ];
        for (field, value, what) in files {
            let Some(value) = value else { continue };
            if value.trim().is_empty() {
                self.problem(
                    format!("{path}.{field}"),
                    format!("empty path; give {what}"),
                );
            } else if !value.starts_with('/') {
                self.problem(
                    format!("{path}.{field}"),
                    format!("{value:?} is not an absolute path; each gateway reads it, whatever its working directory, so give it from /"),
                );
            }
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(_), None) => self.problem(
                format!("{path}.client_key"),
                "client_cert needs client_key, the PEM private key of that certificate",
            ),
            (None, Some(_)) => self.problem(
                format!("{path}.client_cert"),
                "client_key needs client_cert, the PEM certificate chain it is the key of",
            ),
            _ => {}
        }
        if let Some(name) = &tls.server_name {
            if name.is_empty() {
                self.problem(
                    format!("{path}.server_name"),
                    "empty server name; give the name the endpoints' certificates carry (e.g. cart.hz.internal), or leave server_name out to use each endpoint's host",
                );
            } else if !is_server_name(name) {
                self.problem(
                    format!("{path}.server_name"),
                    format!("invalid server name {name:?}: give a DNS name (e.g. cart.hz.internal) or an IP address, without port or wildcard"),
                );
            }
        }
    }

    /// Every service with a pool somewhere or a route, sorted by name. Checks that each routed
    /// service has a pool in every region: units move between regions, so every region must be
    /// able to serve every unit.
    fn services(&mut self, raw: &RawTable, region_names: &HashMap<String, usize>) -> Vec<Box<str>> {
        let mut services: BTreeMap<&str, ()> = BTreeMap::new();
        for region in &raw.regions {
            services.extend(region.pools.keys().map(|s| (s.as_str(), ())));
        }
        let known: Vec<String> = services.keys().map(|s| (*s).to_owned()).collect();
        let mut reported: Vec<&str> = Vec::new();
        for (r, route) in raw.routes.iter().enumerate() {
            if !services.contains_key(route.service.as_str()) {
                self.problem(
                    format!("routes[{r}].service"),
                    format!(
                        "unknown service {:?}; services with pools: {}",
                        route.service,
                        list_or_none(&known)
                    ),
                );
                continue;
            }
            if reported.contains(&route.service.as_str()) {
                continue;
            }
            reported.push(&route.service);
            for (i, region) in raw.regions.iter().enumerate() {
                if region_names.get(&region.name) == Some(&i)
                    && !region.pools.contains_key(&route.service)
                {
                    self.problem(
                        format!("regions[{i}].pools"),
                        format!(
                            "region {:?} has no pool for service {:?} (used by routes[{r}] {:?}); every region needs one, since units can move to any region",
                            region.name, route.service, route.name
                        ),
                    );
                }
            }
        }
        services.into_keys().map(Into::into).collect()
    }

    fn build_regions(
        &mut self,
        raw: &RawTable,
        names: &HashMap<String, usize>,
        services: &[Box<str>],
    ) -> Vec<Region> {
        raw.regions
            .iter()
            .enumerate()
            .map(|(index, region)| Region {
                index,
                name: region.name.as_str().into(),
                gateways: (region.gateways.endpoints().iter())
                    .map(|g| g.as_str().into())
                    .collect(),
                gateway_tls: region.gateways.tls().map(compile_tls),
                pools: services
                    .iter()
                    .map(|s| {
                        region.pools.get(&**s).map(|pool| Pool {
                            endpoints: pool.endpoints().iter().map(|e| Endpoint::new(e)).collect(),
                            tls: pool.tls().map(compile_tls),
                            protocol: pool.protocol(),
                        })
                    })
                    .collect(),
                read_fallback: region
                    .read_fallback
                    .as_ref()
                    .and_then(|f| names.get(f).copied()),
            })
            .collect()
    }

    fn build_units(
        &mut self,
        raw: &RawTable,
        region_names: &HashMap<String, usize>,
    ) -> (Vec<Unit>, Option<usize>) {
        if raw.units.is_empty() {
            self.problem("units", "no units: a table needs at least one unit");
        }
        if raw.units.len() > MAX_UNITS {
            self.problem(
                "units",
                format!("{} units; at most {MAX_UNITS} are allowed", raw.units.len()),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut centers: Vec<usize> = Vec::new();
        let mut units = Vec::with_capacity(raw.units.len());
        let region_list: Vec<&str> = raw.regions.iter().map(|r| r.name.as_str()).collect();
        for (i, unit) in raw.units.iter().enumerate() {
            let path = format!("units[{i}]");
            self.check_name(&format!("{path}.name"), "unit", &unit.name);
            if let Some(&first) = names.get(unit.name.as_str()) {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "duplicate unit name {:?}; first defined at units[{first}]",
                        unit.name
                    ),
                );
            } else {
                names.insert(&unit.name, i);
            }
            let region = region_names.get(&unit.region).copied();
            if region.is_none() {
                self.problem(
                    format!("{path}.region"),
                    unknown("region", &unit.region, region_list.iter()),
                );
            }
            let standby = unit.standby.as_ref().and_then(|standby| {
                let index = region_names.get(standby).copied();
                if index.is_none() {
                    self.problem(format!("{path}.standby"), unknown("region", standby, region_list.iter()));
                } else if *standby == unit.region {
                    self.problem(
                        format!("{path}.standby"),
                        format!("standby region {standby:?} is the unit's own region; name another region or leave it out"),
                    );
                }
                index
            });
            if unit.center {
                centers.push(i);
            }
            if unit.slots.is_empty() && unit.pinned_keys.is_empty() {
                self.problem(
                    format!("{path}.slots"),
                    format!("unit {:?} owns no slots", unit.name),
                );
            }
            let mut ranges: Vec<(u32, u32)> = unit.slots.iter().map(|&[a, b]| (a, b)).collect();
            ranges.sort_unstable();
            units.push(Unit {
                index: i,
                name: unit.name.as_str().into(),
                ranges,
                region: region.unwrap_or(0),
                standby,
                state: unit.state,
                center: unit.center,
                limits: unit.limits,
            });
            if let Some(limits) = &unit.limits {
                self.check_limits(&format!("{path}.limits"), limits);
            }
        }
        let center = match centers.as_slice() {
            [] => {
                if !raw.units.is_empty() {
                    self.problem("units", "no center unit: mark exactly one unit with `center: true`; it hosts the data that cannot be split by user");
                }
                None
            }
            [one] => Some(*one),
            [first, rest @ ..] => {
                for &other in rest {
                    self.problem(
                        format!("units[{other}].center"),
                        format!(
                            "several center units: {:?} (units[{first}]) and {:?} (units[{other}]); exactly one unit is the center",
                            raw.units[*first].name, raw.units[other].name
                        ),
                    );
                }
                None
            }
        };
        (units, center)
    }

    /// Check that the units' ranges cover the slot space exactly once, and build slot -> unit.
    fn build_slot_map(&mut self, raw: &RawTable, count: u32) -> Option<Box<[u16]>> {
        let last = count - 1;
        // (first, last, unit, range index) of every range inside the slot space.
        let mut ranges: Vec<(u32, u32, usize, usize)> = Vec::new();
        for (u, unit) in raw.units.iter().enumerate() {
            for (k, &[first, end]) in unit.slots.iter().enumerate() {
                let path = format!("units[{u}].slots[{k}]");
                if first > end {
                    self.problem(
                        path,
                        format!(
                            "slot range [{first}, {end}] is reversed; write it as [{end}, {first}]"
                        ),
                    );
                } else if end > last {
                    self.problem(
                        path,
                        format!("slot range [{first}, {end}] ends past the slot space; slots are 0 to {last} (slots.count is {count})"),
                    );
                } else {
                    ranges.push((first, end, u, k));
                }
            }
        }
        ranges.sort_unstable();
        let before = self.found();
        // Next slot not yet covered, and the range that covered the slot before it.
        let mut next: u64 = 0;
        let mut previous: Option<(u32, u32, usize, usize)> = None;
        for &(first, end, u, k) in &ranges {
            let path = format!("units[{u}].slots[{k}]");
            if u64::from(first) > next {
                self.problem(
                    &path,
                    format!(
                        "gap: slots {} belong to no unit (the next range, [{first}, {end}] of unit {:?}, starts at {first})",
                        span(next as u32, first - 1),
                        raw.units[u].name
                    ),
                );
            } else if u64::from(first) < next
                && let Some((pf, pe, pu, pk)) = previous
            {
                self.problem(
                    &path,
                    format!(
                        "overlap: slots {} of unit {:?} are also in units[{pu}].slots[{pk}] [{pf}, {pe}] of unit {:?}",
                        span(first, end.min(pe)),
                        raw.units[u].name,
                        raw.units[pu].name
                    ),
                );
            }
            if u64::from(end) + 1 > next {
                next = u64::from(end) + 1;
                previous = Some((first, end, u, k));
            }
        }
        if !raw.units.is_empty() && next <= u64::from(last) {
            self.problem(
                "units",
                format!(
                    "gap: slots {} belong to no unit (no range covers the end of the slot space)",
                    span(next as u32, last)
                ),
            );
        }
        if self.found() > before || raw.units.len() > MAX_UNITS {
            return None;
        }
        let mut map = vec![0u16; count as usize].into_boxed_slice();
        for &(first, end, u, _) in &ranges {
            let unit = u16::try_from(u).ok()?;
            map[first as usize..=end as usize].fill(unit);
        }
        Some(map)
    }

    fn build_pins(&mut self, raw: &RawTable) -> FnvHashMap<Box<str>, u16> {
        let mut pins: FnvHashMap<Box<str>, u16> = FnvHashMap::default();
        let mut first_seen: HashMap<&str, (usize, usize)> = HashMap::new();
        for (u, unit) in raw.units.iter().enumerate() {
            for (k, key) in unit.pinned_keys.iter().enumerate() {
                let path = format!("units[{u}].pinned_keys[{k}]");
                if key.trim().is_empty() || key.trim() != key {
                    self.problem(path, format!("invalid pinned key {key:?}: keys are non-empty and have no surrounding spaces"));
                } else if let Some(&(fu, fk)) = first_seen.get(key.as_str()) {
                    self.problem(
                        path,
                        format!("key {key:?} is already pinned at units[{fu}].pinned_keys[{fk}] (unit {:?})", raw.units[fu].name),
                    );
                } else {
                    first_seen.insert(key, (u, k));
                    pins.insert(key.as_str().into(), u16::try_from(u).unwrap_or(u16::MAX));
                }
            }
        }
        pins
    }

    fn build_routes(&mut self, raw: &RawTable, services: &[Box<str>]) -> Vec<Route> {
        if raw.routes.is_empty() {
            self.problem("routes", "no routes: a table needs at least one route");
        }
        if raw.routes.len() > MAX_ROUTES {
            self.problem(
                "routes",
                format!(
                    "{} routes; at most {MAX_ROUTES} are allowed",
                    raw.routes.len()
                ),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            self.check_name(&format!("{path}.name"), "route", &route.name);
            if let Some(&first) = names.get(route.name.as_str()) {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "duplicate route name {:?}; first defined at routes[{first}]",
                        route.name
                    ),
                );
            } else {
                names.insert(&route.name, i);
            }
            let matcher = self.build_matcher(&path, route);
            self.check_class_fields(&path, route);
            let service = services
                .iter()
                .position(|s| **s == *route.service)
                .unwrap_or(0);
            let compiled = Route {
                index: i,
                name: route.name.as_str().into(),
                class: route.class,
                service,
                key_sources: route.key.iter().map(KeySource::from_raw).collect(),
                missing_key: route.missing_key.unwrap_or(MissingKeyPolicy::Reject),
                key_format: route.key_format.unwrap_or_default(),
                balance: route.balance.unwrap_or_default(),
                limits: route.limits,
                matcher,
            };
            if let Some(limits) = &route.limits {
                self.check_limits(&format!("{path}.limits"), limits);
            }
            if let Some((earlier, shadow)) = routes
                .iter()
                .enumerate()
                .find(|(_, r)| r.matcher.covers(&compiled.matcher))
            {
                self.problem(
                    format!("{path}.match"),
                    format!(
                        "route {:?} is unreachable: every request it matches is matched first by routes[{earlier}] {:?}; move it above that route or narrow that route's match",
                        route.name, shadow.name
                    ),
                );
            }
            routes.push(compiled);
        }
        routes
    }

    fn build_matcher(&mut self, path: &str, route: &RawRoute) -> Matcher {
        let m = &route.matcher;
        let host = m.host.as_ref().and_then(|host| {
            let lower = host.to_ascii_lowercase();
            let (wildcard, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lower.as_str()),
            };
            if !is_valid_hostname(name) {
                self.problem(
                    format!("{path}.match.host"),
                    format!("invalid host {host:?}: give a host name like shop.example.com, or *.example.com for any subdomain"),
                );
                return None;
            }
            Some(if wildcard {
                HostMatch::Subdomain(format!(".{name}").into())
            } else {
                HostMatch::Exact(name.into())
            })
        });
        let path_match = match (&m.path_prefix, &m.path) {
            (Some(prefix), None) => {
                self.check_path(&format!("{path}.match.path_prefix"), prefix);
                PathMatch::Prefix(prefix.as_str().into())
            }
            (None, Some(exact)) => {
                self.check_path(&format!("{path}.match.path"), exact);
                PathMatch::Exact(exact.as_str().into())
            }
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{path}.match"),
                    "give either `path_prefix` or `path`, not both",
                );
                PathMatch::Prefix("/".into())
            }
            (None, None) => {
                self.problem(
                    format!("{path}.match"),
                    "no path: give `path_prefix` (e.g. /cart) or `path` (an exact path)",
                );
                PathMatch::Prefix("/".into())
            }
        };
        let methods = m.methods.as_ref().map(|methods| {
            self.check_methods(&format!("{path}.match.methods"), methods);
            methods.iter().map(|m| m.as_str().into()).collect()
        });
        Matcher {
            host,
            path: path_match,
            path_ignores_case: m.case_sensitive == Some(false),
            methods,
        }
    }

    fn check_limits(&mut self, path: &str, limits: &RawLimits) {
        if limits.rate.is_none() && limits.concurrency.is_none() {
            self.problem(
                path,
                "limits without `rate` or `concurrency` limit nothing; give at least one",
            );
        }
        if limits.rate == Some(0) {
            self.problem(format!("{path}.rate"), "rate 0 would refuse everything; give requests per second, at least 1 (set the unit write_frozen to stop writes)");
        }
        if limits.concurrency == Some(0) {
            self.problem(
                format!("{path}.concurrency"),
                "concurrency 0 would refuse everything; give at least 1",
            );
        }
        if limits.burst.is_some() && limits.rate.is_none() {
            self.problem(format!("{path}.burst"), "burst needs a rate");
        }
        if limits.burst == Some(0) {
            self.problem(
                format!("{path}.burst"),
                "burst 0 would refuse everything; give at least 1",
            );
        }
    }

    fn check_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/')
            || value.contains(['?', '#'])
            || value.chars().any(char::is_whitespace)
        {
            self.problem(
                path,
                format!(
                    "invalid path {value:?}: paths start with '/' and contain no '?', '#' or spaces"
                ),
            );
        }
    }

    fn check_class_fields(&mut self, path: &str, route: &RawRoute) {
        match route.class {
            Class::C => {
                if route.key.is_empty() {
                    self.problem(
                        format!("{path}.key"),
                        "C-class route without key sources: list where the routing key comes from (header, cookie, query, path_segment, jwt_claim)",
                    );
                }
                let mut seen = Vec::with_capacity(route.key.len());
                for (k, source) in route.key.iter().enumerate() {
                    self.check_key_source(&format!("{path}.key[{k}]"), source);
                    // At most MAX_LIST sources (checked first): a list is fine here.
                    if seen.contains(&source) {
                        self.problem(format!("{path}.key[{k}]"), "key source is listed twice");
                    }
                    seen.push(source);
                }
            }
            Class::P => {
                if !route.key.is_empty() {
                    self.problem(
                        format!("{path}.key"),
                        "P-class routes take no key sources: platform data is not split by user (use class C to route by key)",
                    );
                }
                if route.missing_key.is_some() {
                    self.problem(
                        format!("{path}.missing_key"),
                        "missing_key applies to C-class routes only",
                    );
                }
                if route.key_format.is_some() {
                    self.problem(
                        format!("{path}.key_format"),
                        "key_format applies to C-class routes only",
                    );
                }
                if route.balance == Some(Balance::KeyAffinity) {
                    self.problem(
                        format!("{path}.balance"),
                        "key_affinity needs a routing key, which P-class routes do not have; use round_robin",
                    );
                }
            }
        }
    }

    fn check_key_source(&mut self, path: &str, source: &RawKeySource) {
        match source {
            RawKeySource::Header(name) => {
                if !is_token(name) {
                    self.problem(
                        format!("{path}.header"),
                        format!("invalid header name {name:?}: header names are letters, digits and !#$%&'*+-.^_`|~"),
                    );
                } else if name.to_ascii_lowercase().starts_with("x-unitgate-") {
                    self.problem(
                        format!("{path}.header"),
                        format!("header {name:?} is reserved: the gateway strips X-Unitgate-* headers from clients"),
                    );
                }
            }
            RawKeySource::Cookie(name) => {
                if !is_token(name) {
                    self.problem(
                        format!("{path}.cookie"),
                        format!("invalid cookie name {name:?}: cookie names are letters, digits and !#$%&'*+-.^_`|~"),
                    );
                }
            }
            RawKeySource::Query(name) => {
                if name.is_empty() || name.contains(['&', '=', '#', ' ']) {
                    self.problem(
                        format!("{path}.query"),
                        format!("invalid query parameter name {name:?}: non-empty, without '&', '=', '#' or spaces"),
                    );
                }
            }
            RawKeySource::PathSegment(n) => {
                if *n == 0 {
                    self.problem(
                        format!("{path}.path_segment"),
                        "path segments count from 1: in /order/42, segment 2 is 42",
                    );
                }
            }
            RawKeySource::JwtClaim(name) => {
                if name.is_empty() {
                    self.problem(format!("{path}.jwt_claim"), "empty claim name; e.g. sub");
                }
            }
        }
    }
}

/// TLS settings as the gateway uses them (after [`Validator::check_tls`]).
fn compile_tls(tls: &RawTls) -> UpstreamTls {
    UpstreamTls {
        ca_file: tls.ca_file.as_deref().map(Into::into),
        server_name: tls.server_name.as_deref().map(Into::into),
        client_auth: match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some(ClientAuth {
                cert_file: cert.as_str().into(),
                key_file: key.as_str().into(),
            }),
            _ => None,
        },
    }
}

/// A name a TLS certificate can be checked against: a DNS name or an IP address.
fn is_server_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok() || is_valid_hostname(&name.to_ascii_lowercase())
}

/// Slots `a` to `b`, or slot `a`.
fn span(a: u32, b: u32) -> String {
    if a == b {
        format!("{a}")
    } else {
        format!("{a}-{b}")
    }
}

fn unknown<'a>(
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>,
) -> String {
    let mut known: Vec<&str> = known.map(AsRef::as_ref).collect();
    known.sort_unstable();
    format!(
        "unknown {what} {name:?}; known {what}s: {}",
        list_or_none(&known)
    )
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// RFC 9110 `token`: header and cookie names.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port` with an IPv4 address, a host name, or a bracketed IPv6 address.
fn check_host_port(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err("expected host:port, e.g. 10.0.0.1:8080".to_owned());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => host.parse::<Ipv4Addr>().is_ok() || is_valid_hostname(&host.to_ascii_lowercase()),
    };
    if host_ok {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} is not an IPv4 address, a [IPv6] address or a host name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_capacity_is_at_least_one() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/three-regions.yaml"
        ))
        .expect("example");
        let (mut raw, _) = crate::parse_yaml(&text).expect("parses");
        raw.regions[0].capacity = Some(2);
        assert!(validate(raw.clone(), None).is_ok());
        raw.regions[1].capacity = Some(0);
        let error = validate(raw, None).expect_err("capacity 0");
        assert!(
            error
                .problems
                .iter()
                .any(|p| p.path == "regions[1].capacity"),
            "{error}"
        );
    }

    const TLS_TABLE: &str = "version: 1\nregions:\n  - name: hz\n    gateways: { endpoints: [\"gw.hz.internal:8443\"], tls: { ca_file: /etc/unitgate/fleet-ca.pem, client_cert: /etc/unitgate/gw.pem, client_key: /etc/unitgate/gw.key } }\n    pools:\n      cart: [\"127.0.0.1:18101\"]\n      order:\n        endpoints: [\"10.0.0.7:8443\"]\n        tls: { ca_file: /etc/unitgate/order-ca.pem, server_name: order.hz.internal }\n        protocol: http1\nunits: [{ name: u1, center: true, slots: [[0, 9999]], region: hz }]\nroutes: [{ name: cart, match: { path_prefix: / }, service: cart, class: P }]\n";

    #[test]
    fn pools_and_gateways_may_say_how_they_are_reached() {
        let table = crate::load_yaml(TLS_TABLE).expect("valid");
        let region = &table.regions()[0];
        let services = table.services();
        let order = services
            .iter()
            .position(|s| &**s == "order")
            .expect("order");
        let cart = services.iter().position(|s| &**s == "cart").expect("cart");
        let order = region.pool(order).expect("pool");
        assert_eq!(
            order.tls,
            Some(UpstreamTls {
                ca_file: Some("/etc/unitgate/order-ca.pem".into()),
                server_name: Some("order.hz.internal".into()),
                client_auth: None,
            })
        );
        assert_eq!(order.protocol, UpstreamProtocol::Http1);
        assert_eq!(region.pool(cart).expect("pool").tls, None);
        assert_eq!(&*region.gateways[0], "gw.hz.internal:8443");
        let gateway_tls = region.gateway_tls.as_ref().expect("gateway tls");
        assert_eq!(
            gateway_tls.client_auth,
            Some(ClientAuth {
                cert_file: "/etc/unitgate/gw.pem".into(),
                key_file: "/etc/unitgate/gw.key".into(),
            })
        );
        assert_eq!(gateway_tls.server_name, None);
    }

    #[test]
    fn a_pool_keeps_the_form_it_was_written_in() {
        let (raw, _) = crate::parse_yaml(TLS_TABLE).expect("parses");
        let json = serde_json::to_string(&raw).expect("json");
        // A list stays a list: tables written before the mapping keep their digest.
        assert!(json.contains(r#""cart":["127.0.0.1:18101"]"#), "{json}");
        assert!(json.contains(r#""order":{"endpoints":["10.0.0.7:8443"],"tls":{"ca_file":"/etc/unitgate/order-ca.pem","server_name":"order.hz.internal"},"protocol":"http1"}"#), "{json}");
        assert_eq!(crate::parse_json(&json).expect("parses back"), raw);
    }

    #[test]
    fn shape_errors_inside_a_pool_name_the_field() {
        let refused = |edit: &str, with: &str| {
            let text = TLS_TABLE.replace(edit, with);
            crate::load_yaml(&text)
                .expect_err("refused")
                .render("t.yaml")
        };
        assert_eq!(
            refused("server_name: order", "sever_name: order"),
            "t.yaml:9:53: regions[0].pools.order.tls.sever_name: unknown field `sever_name`, expected one of ca_file, server_name, client_cert, client_key\n"
        );
        assert_eq!(
            refused("protocol: http1", "protocol: h3"),
            "t.yaml:10:19: regions[0].pools.order.protocol: unknown variant `h3`, expected one of http1, h2\n"
        );
        assert_eq!(
            refused("cart: [\"127.0.0.1:18101\"]", "cart: 3"),
            "t.yaml:6:7: regions[0].pools.cart: invalid type: integer `3`, expected a list of `host:port` endpoints, or a mapping with `endpoints` (and `tls`, `protocol`)\n"
        );
        assert_eq!(
            refused("        protocol: http1\n", "        endpoint: []\n"),
            "t.yaml:10:9: regions[0].pools.order.endpoint: unknown field `endpoint`, expected one of endpoints, tls, protocol\n"
        );
    }

    const H2_TABLE: &str = "version: 1\nregions:\n  - name: hz\n    gateways: [\"127.0.0.1:8001\"]\n    pools:\n      cart: [\"127.0.0.1:18101\"]\n      ledger: { endpoints: [\"10.0.0.9:50051\"], protocol: h2 }\n  - name: sh\n    gateways: [\"127.0.0.1:8002\"]\n    pools:\n      cart: [\"127.0.0.1:18201\"]\n      ledger: { endpoints: [\"10.0.1.9:50051\"], protocol: h2 }\nunits: [{ name: u1, center: true, slots: [[0, 9999]], region: hz }]\nroutes: [{ name: ledger, match: { path_prefix: /ledger. }, service: ledger, class: P }, { name: cart, match: { path_prefix: / }, service: cart, class: P }]\n";

    #[test]
    fn a_pool_may_speak_h2_in_plain_text_or_over_tls() {
        let table = crate::load_yaml(H2_TABLE).expect("valid");
        let service = |name: &str| {
            let index = table.services().iter().position(|s| &**s == name);
            table.regions()[1]
                .pool(index.expect("service"))
                .expect("pool")
        };
        assert_eq!(service("ledger").protocol, UpstreamProtocol::H2);
        assert_eq!(service("cart").protocol, UpstreamProtocol::Http1);

        let refused = |edit: &str, with: &str| {
            crate::load_yaml(&H2_TABLE.replacen(edit, with, 1))
                .expect_err("refused")
                .render("t.yaml")
        };
        // HTTP/2 over TLS (ALPN h2), to a pool and over a TLS hop between regions.
        let accepted = |edits: &[(&str, &str)]| {
            let mut text = H2_TABLE.to_owned();
            for (edit, with) in edits {
                text = text.replacen(edit, with, 1);
            }
            crate::load_yaml(&text).expect("accepted")
        };
        let table = accepted(&[
            (
                "protocol: h2 }",
                "protocol: h2, tls: { server_name: ledger.hz.internal } }",
            ),
            (
                "gateways: [\"127.0.0.1:8002\"]",
                "gateways: { endpoints: [\"127.0.0.1:8002\"], tls: { server_name: gw.sh.internal } }",
            ),
        ]);
        let ledger = table.services().iter().position(|s| &**s == "ledger");
        let hz_ledger = table.regions()[0]
            .pool(ledger.expect("service"))
            .expect("pool");
        assert_eq!(hz_ledger.protocol, UpstreamProtocol::H2);
        assert!(hz_ledger.tls.is_some());
        assert!(table.regions()[1].gateway_tls.is_some());
        assert_eq!(
            refused(
                "gateways: [\"127.0.0.1:8001\"]",
                "gateways: { endpoints: [\"127.0.0.1:8001\"], protocol: h2 }"
            ),
            "t.yaml:4:58: regions[0].gateways.protocol: h2 is a pool's protocol: the hop to a region's gateways speaks HTTP/2 for the services whose pool there says h2, HTTP/1.1 for the others; leave protocol out here\n"
        );
    }

    #[test]
    fn host_ports() {
        assert!(check_host_port("127.0.0.1:8080").is_ok());
        assert!(check_host_port("[::1]:80").is_ok());
        assert!(check_host_port("cart.hz.internal:443").is_ok());
        assert!(check_host_port("127.0.0.1").is_err());
        assert!(check_host_port("127.0.0.1:0").is_err());
        assert!(check_host_port("bad host:80").is_err());
    }

    #[test]
    fn names() {
        assert!(is_valid_name("u01"));
        assert!(is_valid_name("cart-v2"));
        assert!(!is_valid_name("Cart"));
        assert!(!is_valid_name("-x"));
        assert!(!is_valid_name(""));
    }
}
