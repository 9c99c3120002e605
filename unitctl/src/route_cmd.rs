//! `unitctl route`: the gateway's decision for one request (or a batch), explained.

use std::path::PathBuf;

use router_rules::{Action, Class, CompiledTable, DecisionReport, RequestView, SimpleRequest};

use crate::request::{entry_region, place_key};
use crate::{EXIT_FINDING, Failure, Output, batch, print_json, remote, table_file};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["table", "live"])))]
pub struct RouteArgs {
    /// The routing table (YAML, or JSON with a .json extension).
    #[arg(long)]
    pub table: Option<PathBuf>,
    /// Instead of --table: the table in force on the control plane (--server, --token-file,
    /// --ca, as for the remote commands); its version is shown.
    #[arg(long)]
    pub live: bool,
    /// The routing key (user ID). It is placed where the matched route looks first (its first
    /// key source), unless the request already carries a key there.
    #[arg(long, conflicts_with = "batch")]
    pub user: Option<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path, optionally with `?query`. Default: the path of the first C-class route.
    #[arg(long)]
    pub path: Option<String>,
    /// Request host.
    #[arg(long)]
    pub host: Option<String>,
    /// A request header, `NAME:VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// A request cookie, `NAME=VALUE` (repeatable).
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    pub cookies: Vec<String>,
    /// Region of the gateway the request enters. Default: the center unit's region.
    #[arg(long)]
    pub region: Option<String>,
    /// Read one user ID, or one JSON request object, per line from FILE (`-` for stdin) and
    /// print how many go to each unit and region.
    #[arg(long, value_name = "FILE")]
    pub batch: Option<PathBuf>,
    /// With --batch: instead of the summary, print every decision, one JSON object per input
    /// line (JSON Lines, the fields of --output json).
    #[arg(long, requires = "batch")]
    pub each: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The table in force on the control plane, as `--live` uses it.
pub struct Live {
    /// The table, compiled as the gateways compile it.
    pub table: CompiledTable,
    /// The control plane's URL.
    pub server: String,
}

impl Live {
    /// Where the table came from, for people: `live, URL`.
    pub fn origin(&self) -> String {
        format!("live, {}", self.server)
    }
}

/// The table in force, fetched with the same server, token and CA options as the remote
/// commands (an unreachable control plane exits 3, a refused token 4).
pub fn fetch_live(server: &remote::Server) -> Result<Live, Failure> {
    let client = server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("cannot start the runtime: {e}")))?;
    let mut stored = runtime.block_on(client.table()).map_err(remote::failed)?;
    stored.table.version = stored.version;
    let version = stored.version;
    let table = router_rules::validate(stored.table, None).map_err(|error| {
        Failure::new(
            EXIT_FINDING,
            error.render(&format!("the table in force (version {version})")),
        )
    })?;
    Ok(Live {
        table,
        server: client.server().to_owned(),
    })
}

pub fn run(args: &RouteArgs, server: &remote::Server) -> Result<u8, Failure> {
    // clap lets exactly one of --table and --live through.
    let (table, origin) = match (&args.table, args.live) {
        (Some(path), false) => (table_file::load_or_fail(path)?, None),
        (None, true) => {
            let live = fetch_live(server)?;
            let origin = live.origin();
            (live.table, Some(origin))
        }
        _ => return Err(Failure::input("give --table FILE or --live (one of them)")),
    };
    let origin = origin.as_deref();
    let entry = entry_region(&table, args.region.as_deref())?;
    let template = base_request(&table, args)?;
    if let Some(source) = &args.batch {
        return batch::run(
            &table,
            origin,
            entry,
            &template,
            source,
            args.output,
            args.each,
        );
    }
    let mut request = template;
    let mut notes = Vec::new();
    if let Some(user) = &args.user {
        place_key(&table, &mut request, user, &mut notes)?;
    }
    let decision = table.resolve(&request, entry);
    let report = DecisionReport::new(&table, &decision, &request.method);
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Text => out!("{}", explain(&table, origin, &request, &report, &notes)),
    }
    Ok(0)
}

/// The request described by the flags, without the user key.
pub fn base_request(table: &CompiledTable, args: &RouteArgs) -> Result<SimpleRequest, Failure> {
    let path = match &args.path {
        Some(path) => path.clone(),
        None => default_path(table),
    };
    let mut request = SimpleRequest::new(&args.method.to_ascii_uppercase(), &path);
    // Routed as the gateway routes it.
    request.normalize_path().map_err(|error| {
        Failure::input(format!("--path {path:?}: the gateway answers 400: {error}"))
    })?;
    request.host = args.host.clone();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| Failure::input(format!("--header {header:?}: expected NAME:VALUE")))?;
        request.add_header(name.trim(), value.trim());
    }
    for cookie in &args.cookies {
        let (name, value) = cookie
            .split_once('=')
            .ok_or_else(|| Failure::input(format!("--cookie {cookie:?}: expected NAME=VALUE")))?;
        request.add_cookie(name.trim(), value.trim());
    }
    Ok(request)
}

/// The path of the first C-class route: where a bare `--user` most likely means to go.
fn default_path(table: &CompiledTable) -> String {
    let raw = table.raw();
    raw.routes
        .iter()
        .find(|r| r.class == Class::C)
        .or(raw.routes.first())
        .and_then(|r| r.matcher.path_prefix.clone().or(r.matcher.path.clone()))
        .unwrap_or_else(|| "/".to_owned())
}

/// The decision, step by step, for people; `origin`: where the table came from, when not
/// from a file (`live, URL`).
fn explain(
    table: &CompiledTable,
    origin: Option<&str>,
    request: &SimpleRequest,
    report: &DecisionReport,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<8} {text}\n"));
    let target = match &request.query {
        Some(q) => format!("{}?{q}", request.path),
        None => request.path.clone(),
    };
    let from = origin.map(|o| format!(" ({o})")).unwrap_or_default();
    line("table", format!("version {}{from}", report.table_version));
    line(
        "request",
        format!(
            "{} {target}{} entering region {}",
            request.method,
            request
                .host
                .as_ref()
                .map(|h| format!(" (host {h})"))
                .unwrap_or_default(),
            report.entry_region
        ),
    );
    for note in notes {
        line("note", note.clone());
    }
    let Some(route) = &report.route else {
        line("route", "no route matches".to_owned());
        line("action", "no_route: the gateway answers 404".to_owned());
        return out;
    };
    // A method-override field can make a read method a write: say which.
    let overrides: Vec<String> = request
        .method_overrides()
        .map(|value| String::from_utf8_lossy(value.trim_ascii()).into_owned())
        .filter(|value| !value.is_empty())
        .collect();
    let method = match overrides.as_slice() {
        [] => request.method.clone(),
        named => format!("{} overridden to {}", request.method, named.join(", ")),
    };
    line(
        "route",
        format!(
            "{route} (class {}, service {}; {method} is {})",
            report.class.unwrap_or("?"),
            report.service.as_deref().unwrap_or("?"),
            if report.is_write { "a write" } else { "a read" }
        ),
    );
    match (&report.key, &report.key_source) {
        (Some(key), Some(source)) => {
            line("key", format!("{key:?} from {source}"));
            let slot = report.slot.unwrap_or_default();
            let how = match report.slot_function {
                Some("modulo") => format!("{key} mod {}", table.slot_count()),
                _ => format!("fnv1a_64({key:?}) mod {}", table.slot_count()),
            };
            line("slot", format!("{slot} = {how}"));
        }
        _ if report.class == Some("C") => line(
            "key",
            format!("none found; tried {}", report.key_sources_tried.join(", ")),
        ),
        _ => {}
    }
    if let Some(unit) = &report.unit {
        let why = if report.pinned {
            "the key is pinned to it".to_owned()
        } else if report.key.is_some() {
            let ranges = table
                .units()
                .iter()
                .find(|u| &*u.name == unit)
                .map(|u| {
                    u.ranges
                        .iter()
                        .map(|(a, b)| format!("{a}-{b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!("owns slots {ranges}")
        } else {
            "the center unit".to_owned()
        };
        line(
            "unit",
            format!("{unit} ({}), {why}", report.unit_state.unwrap_or("?")),
        );
    }
    if let Some(region) = &report.region {
        let how = if report.cross_region {
            format!(
                "entered {}, so the gateway forwards it to {region}'s gateways ({})",
                report.entry_region,
                report.forward_via.join(", ")
            )
        } else {
            "served where it entered".to_owned()
        };
        line("region", format!("{region}: {how}"));
    }
    if let Some(fallback) = &report.fallback_region {
        line(
            "fallback",
            format!("{fallback}, if the local pool has no healthy endpoint"),
        );
    }
    if !report.pool.is_empty() {
        let endpoint = match &report.endpoint {
            Some(e) => format!(" -> {e}"),
            None => String::new(),
        };
        line(
            "pool",
            format!(
                "{}/{}: {} ({}){endpoint}",
                report.region.as_deref().unwrap_or("?"),
                report.service.as_deref().unwrap_or("?"),
                report.pool.join(", "),
                report.balance.unwrap_or("round_robin"),
            ),
        );
    }
    let action = match report.action {
        a if a == Action::Forward.as_str() => "forward".to_owned(),
        a if a == Action::WriteFrozen.as_str() => format!(
            "write_frozen: unit {} is write-frozen, the gateway answers 503 with Retry-After",
            report.unit.as_deref().unwrap_or("?")
        ),
        a if a == Action::MissingKey.as_str() => {
            "missing_key: the route's policy is reject, the gateway answers 400".to_owned()
        }
        a if a == Action::InvalidKey.as_str() => format!(
            "invalid_key: the key in {} is {}, the gateway answers 400",
            report.key_source.as_deref().unwrap_or("?"),
            report.key_error.unwrap_or("unusable").replace('_', " ")
        ),
        other => other.to_owned(),
    };
    line("action", action);
    out
}
