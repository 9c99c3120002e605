//! `unitctl diff`: what a table change moves.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use router_rules::diff::{ChangeKind, SampleImpact, sample_impact};
use router_rules::{CompiledTable, Problem, TableDiff, diff};
use serde::Serialize;

use crate::{EXIT_FINDING, Failure, Output, print_json, remote, route_cmd, table_file};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The table in force (a file).
    #[arg(required_unless_present = "live", conflicts_with = "live")]
    pub old: Option<PathBuf>,
    /// The proposed table.
    #[arg(required_unless_present = "live", conflicts_with = "live")]
    pub new: Option<PathBuf>,
    /// Instead of OLD NEW: the proposed table FILE against the table in force on the control
    /// plane (--server, --token-file, --ca, as for the remote commands), numbered as the
    /// control plane would store it.
    #[arg(long, value_name = "FILE")]
    pub live: Option<PathBuf>,
    /// User IDs, one per line: also count how many of them would move.
    #[arg(long, value_name = "FILE")]
    pub sample: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Serialize)]
struct DiffReport {
    #[serde(flatten)]
    diff: TableDiff,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample: Option<SampleImpact>,
    /// Why NEW could not replace OLD in force (version not growing, slot space changed; with
    /// --live, a file that is an edit of another version than the one in force).
    refusals: Vec<Problem>,
    /// With --live: the header's `version N (live, URL) -> M (FILE, ...)`.
    #[serde(skip)]
    header: Option<String>,
}

/// The tables to compare: the table in force and the proposed one.
struct Tables {
    old: CompiledTable,
    new: CompiledTable,
    /// Refusals found before the tables are compared.
    refusals: Vec<Problem>,
    header: Option<String>,
}

/// OLD and NEW from files.
fn files(old: &Path, new: &Path) -> Result<Tables, Failure> {
    Ok(Tables {
        old: table_file::load_or_fail(old)?,
        new: table_file::load_or_fail(new)?,
        refusals: Vec::new(),
        header: None,
    })
}

/// FILE against the table in force. FILE's own `version` is the version it is an edit of
/// (`table get` writes it, `table apply` sends it as If-Match); the control plane numbers what
/// it stores itself, so FILE is compared as the version that would be stored.
fn live(file: &Path, server: &remote::Server) -> Result<Tables, Failure> {
    // A file that does not load is an input error, before anything is sent.
    let proposed = table_file::load_or_fail(file)?;
    let live = route_cmd::fetch_live(server)?;
    let in_force = live.table.version();
    let base = proposed.version();
    let next = in_force + 1;
    let mut raw = proposed.raw().clone();
    raw.version = next;
    let new = router_rules::validate(raw, None)
        .map_err(|error| Failure::input(error.render(&file.display().to_string())))?;
    let mut refusals = Vec::new();
    if base != in_force {
        refusals.push(Problem::at(
            "version",
            format!(
                "{} is an edit of version {base}, but version {in_force} is in force: `unitctl table apply` would be refused (409 stale_version); fetch the table in force again (unitctl table get) and redo the edit",
                file.display()
            ),
        ));
    }
    let header = format!(
        "version {in_force} ({}) -> {next} ({}, an edit of version {base}, as it would be stored)",
        live.origin(),
        file.display()
    );
    Ok(Tables {
        old: live.table,
        new,
        refusals,
        header: Some(header),
    })
}

pub fn run(args: &DiffArgs, server: &remote::Server) -> Result<u8, Failure> {
    // clap lets OLD NEW or --live FILE through, never both.
    let tables = match (&args.live, &args.old, &args.new) {
        (Some(file), None, None) => live(file, server)?,
        (None, Some(old), Some(new)) => files(old, new)?,
        _ => return Err(Failure::input("give OLD NEW, or --live FILE")),
    };
    let Tables {
        old,
        new,
        mut refusals,
        header,
    } = tables;
    let diff = diff(&old, &new);
    let sample = match &args.sample {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::input(format!("{}: cannot read: {e}", path.display())))?;
            let mut keys = Vec::new();
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
                let key = line.trim();
                if !key.is_empty() {
                    keys.push(key.to_owned());
                }
            }
            Some(sample_impact(&old, &new, keys.iter().map(String::as_str)))
        }
        None => None,
    };
    // A difference is a finding; so is a refusal against the table in force (an apply of
    // FILE would fail). Two files of one version compare without one.
    let finding = !diff.is_empty();
    if let Err(error) = router_rules::check_successor(&old, &new) {
        refusals.extend(error.problems);
    }
    let report = DiffReport {
        diff,
        sample,
        refusals,
        header,
    };
    match args.output {
        Output::Json => print_json(&report)?,
        Output::Text => out!("{}", render(&report)),
    }
    let finding = finding || (args.live.is_some() && !report.refusals.is_empty());
    Ok(if finding { EXIT_FINDING } else { 0 })
}

fn render(report: &DiffReport) -> String {
    let d = &report.diff;
    let mut out = match &report.header {
        Some(header) => format!("{header}\n"),
        None => format!("version {} -> {}\n", d.old_version, d.new_version),
    };
    if d.is_empty() {
        out.push_str("no routing change\n");
    }
    if let Some([a, b]) = d.slot_count {
        out.push_str(&format!(
            "slot space {a} -> {b}: nearly every key changes slot, and so unit\n"
        ));
    }
    out.push_str(&format!(
        "slots changing unit:   {:>6} ({:.2}% of keys)\nslots changing region: {:>6} ({:.2}% of keys)\n",
        d.slots_changing_unit,
        d.share_changing_unit * 100.0,
        d.slots_changing_region,
        d.share_changing_region * 100.0
    ));
    for m in &d.slot_moves {
        let slots = if m.first == m.last {
            format!("slot {}", m.first)
        } else {
            format!("slots {}-{}", m.first, m.last)
        };
        let unit = if m.from_unit == m.to_unit {
            format!("unit {}", m.from_unit)
        } else {
            format!("unit {} -> {}", m.from_unit, m.to_unit)
        };
        out.push_str(&format!(
            "  {slots}: {unit}, region {} -> {}\n",
            m.from_region, m.to_region
        ));
    }
    if !d.units.is_empty() {
        out.push_str("units:\n");
        for u in &d.units {
            let mut parts = Vec::new();
            if let Some([a, b]) = &u.region {
                parts.push(format!("region {a} -> {b}"));
            }
            if let Some([a, b]) = &u.state {
                parts.push(format!("state {a} -> {b}"));
            }
            if !u.fields.is_empty() {
                parts.push(format!("changed {}", u.fields.join(", ")));
            }
            out.push_str(&format!("  {}: {}\n", u.unit, describe(u.change, &parts)));
        }
    }
    for (title, changes) in [("regions", &d.regions), ("routes", &d.routes)] {
        if !changes.is_empty() {
            out.push_str(&format!("{title}:\n"));
            for c in changes {
                let parts = if c.fields.is_empty() {
                    Vec::new()
                } else {
                    vec![format!("changed {}", c.fields.join(", "))]
                };
                out.push_str(&format!("  {}: {}\n", c.name, describe(c.change, &parts)));
            }
        }
    }
    if !d.settings.is_empty() {
        out.push_str(&format!("settings changed: {}\n", d.settings.join(", ")));
    }
    for refusal in &report.refusals {
        out.push_str(&format!(
            "refused as a successor: {}: {}\n",
            refusal.path, refusal.message
        ));
    }
    if let Some(s) = &report.sample {
        let pct = |n: u64| {
            if s.keys == 0 {
                0.0
            } else {
                n as f64 * 100.0 / s.keys as f64
            }
        };
        out.push_str(&format!(
            "sample: {} keys; {} change region ({:.2}%), {} change unit ({:.2}%)\n",
            s.keys,
            s.changing_region,
            pct(s.changing_region),
            s.changing_unit,
            pct(s.changing_unit)
        ));
    }
    out
}

fn describe(kind: ChangeKind, parts: &[String]) -> String {
    match kind {
        ChangeKind::Added => "added".to_owned(),
        ChangeKind::Removed => "removed".to_owned(),
        ChangeKind::Changed => parts.join("; "),
    }
}
