//! `unitctl route --batch`: where many requests go, counted per unit and region.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use router_rules::table::RegionIndex;
use router_rules::{CompiledTable, DecisionReport, SimpleRequest};
use serde::{Deserialize, Serialize};

use crate::request::{entry_region, place_key};
use crate::{Failure, Output, print_json};

/// One JSON line of a batch. Absent fields come from the command's flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    user: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cookies: BTreeMap<String, String>,
    region: Option<String>,
}

/// Requests that ended the same way.
#[derive(Debug, Serialize)]
struct Group {
    action: &'static str,
    unit: Option<String>,
    region: Option<String>,
    count: u64,
    share: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    table_version: u64,
    total: u64,
    groups: Vec<Group>,
    by_region: Vec<RegionCount>,
}

#[derive(Debug, Serialize)]
struct RegionCount {
    region: String,
    count: u64,
    share: f64,
}

/// `origin`: where the table came from, when not from a file (`live, URL`), for the text
/// summary.
pub fn run(
    table: &CompiledTable,
    origin: Option<&str>,
    entry: RegionIndex,
    template: &SimpleRequest,
    source: &Path,
    output: Output,
    each: bool,
) -> Result<u8, Failure> {
    let input: Box<dyn Read> = if source.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(source)
                .map_err(|e| Failure::input(format!("{}: cannot read: {e}", source.display())))?,
        )
    };
    let mut reader = BufReader::with_capacity(1 << 16, input);
    // (action, unit index, region index) -> count; indices keep the hot loop free of strings.
    let mut counts: BTreeMap<(&'static str, Option<usize>, Option<usize>), u64> = BTreeMap::new();
    let mut line = String::new();
    let mut number = 0u64;
    let mut notes = Vec::new();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| Failure::input(format!("{}: {e}", source.display())))?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let (request, region) = if text.starts_with('{') {
            json_request(table, template, text, entry)
                .map_err(|e| Failure::input(format!("{}:{number}: {e}", source.display())))?
        } else {
            let mut request = template.clone();
            notes.clear();
            place_key(table, &mut request, text, &mut notes)?;
            (request, entry)
        };
        let decision = table.resolve(&request, region);
        if each {
            let report = DecisionReport::new(table, &decision, &request.method);
            if let Err(error) = serde_json::to_writer(&mut out, &report) {
                match error.io_error_kind() {
                    Some(kind) => crate::out::gone(&kind.into()),
                    None => return Err(Failure::input(format!("cannot write JSON: {error}"))),
                }
            }
            if let Err(error) = writeln!(out) {
                crate::out::gone(&error);
            }
            continue;
        }
        let unit = decision.unit.map(|u| u.index);
        let region = decision.region.map(|r| r.index);
        *counts
            .entry((decision.action.as_str(), unit, region))
            .or_default() += 1;
    }
    if let Err(error) = out.flush() {
        crate::out::gone(&error);
    }
    drop(out);
    if each {
        return Ok(0);
    }
    let summary = summarise(table, &counts);
    match output {
        Output::Json => print_json(&summary)?,
        Output::Text => out!("{}", render(&summary, origin)),
    }
    Ok(0)
}

fn json_request(
    table: &CompiledTable,
    template: &SimpleRequest,
    text: &str,
    entry: RegionIndex,
) -> Result<(SimpleRequest, RegionIndex), String> {
    let line: BatchRequest = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut request = match (&line.method, &line.path) {
        (None, None) => template.clone(),
        (method, path) => {
            let mut r = SimpleRequest::new(
                method.as_deref().unwrap_or(&template.method),
                path.as_deref().unwrap_or(&template.path),
            );
            r.headers = template.headers.clone();
            r.host = template.host.clone();
            r.normalize_path()
                .map_err(|error| format!("the gateway answers 400: {error}"))?;
            r
        }
    };
    if line.host.is_some() {
        request.host = line.host;
    }
    for (name, value) in &line.headers {
        request.add_header(name, value);
    }
    for (name, value) in &line.cookies {
        request.add_cookie(name, value);
    }
    let region = match &line.region {
        Some(name) => entry_region(table, Some(name)).map_err(|f| f.message)?,
        None => entry,
    };
    if let Some(user) = &line.user {
        let mut notes = Vec::new();
        place_key(table, &mut request, user, &mut notes).map_err(|f| f.message)?;
    }
    Ok((request, region))
}

fn summarise(
    table: &CompiledTable,
    counts: &BTreeMap<(&'static str, Option<usize>, Option<usize>), u64>,
) -> Summary {
    let total: u64 = counts.values().sum();
    let share = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    let mut groups: Vec<Group> = counts
        .iter()
        .map(|(&(action, unit, region), &count)| Group {
            action,
            unit: unit.map(|u| table.units()[u].name.to_string()),
            region: region.map(|r| table.regions()[r].name.to_string()),
            count,
            share: share(count),
        })
        .collect();
    groups.sort_by(|a, b| (a.action, &a.unit, &a.region).cmp(&(b.action, &b.unit, &b.region)));
    let mut by_region: BTreeMap<String, u64> = BTreeMap::new();
    for group in &groups {
        if let Some(region) = &group.region {
            *by_region.entry(region.clone()).or_default() += group.count;
        }
    }
    Summary {
        table_version: table.version(),
        total,
        groups,
        by_region: by_region
            .into_iter()
            .map(|(region, count)| RegionCount {
                region,
                count,
                share: share(count),
            })
            .collect(),
    }
}

fn render(summary: &Summary, origin: Option<&str>) -> String {
    let from = origin.map(|o| format!(" ({o})")).unwrap_or_default();
    let mut out = format!(
        "{} requests, table version {}{from}\n\n{:<14} {:<8} {:<8} {:>10} {:>8}\n",
        summary.total, summary.table_version, "action", "unit", "region", "requests", "share"
    );
    for g in &summary.groups {
        out.push_str(&format!(
            "{:<14} {:<8} {:<8} {:>10} {:>7.2}%\n",
            g.action,
            g.unit.as_deref().unwrap_or("-"),
            g.region.as_deref().unwrap_or("-"),
            g.count,
            g.share * 100.0
        ));
    }
    out.push_str(&format!(
        "\n{:<8} {:>10} {:>8}\n",
        "region", "requests", "share"
    ));
    for r in &summary.by_region {
        out.push_str(&format!(
            "{:<8} {:>10} {:>7.2}%\n",
            r.region,
            r.count,
            r.share * 100.0
        ));
    }
    out
}
