//! `unitctl route`: the gateway's decision for one request (or a batch), explained.

use std::path::PathBuf;

use router_rules::{Action, Class, CompiledTable, DecisionReport, SimpleRequest};

use crate::request::{entry_region, place_key};
use crate::{Failure, Output, batch, print_json, table_file};

#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The routing table (YAML, or JSON with a .json extension).
    #[arg(long)]
    pub table: PathBuf,
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

pub fn run(args: &RouteArgs) -> Result<u8, Failure> {
    let table = table_file::load_or_fail(&args.table)?;
    let entry = entry_region(&table, args.region.as_deref())?;
    let template = base_request(&table, args)?;
    if let Some(source) = &args.batch {
        return batch::run(&table, entry, &template, source, args.output, args.each);
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
        Output::Text => out!("{}", explain(&table, &request, &report, &notes)),
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

/// The decision, step by step, for people.
fn explain(
    table: &CompiledTable,
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
    line("table", format!("version {}", report.table_version));
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
    line(
        "route",
        format!(
            "{route} (class {}, service {}; {} is {})",
            report.class.unwrap_or("?"),
            report.service.as_deref().unwrap_or("?"),
            request.method,
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
