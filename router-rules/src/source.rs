//! Reading tables from text: YAML (with line and column for every problem) and JSON.

use serde_saphyr::granit_parser::{Event, Parser};

use crate::error::{Location, Problem, TableError, render_problems};
use crate::raw::RawTable;

/// Largest table text accepted, in bytes. Real tables are a few hundred KiB at most; the limit
/// keeps a hostile or broken input from taking the parser's time and memory.
pub const MAX_TABLE_BYTES: usize = 8 * 1024 * 1024;

/// Where each node of a YAML document starts, by field path (`units[3].slots[1]`).
///
/// Validation speaks in field paths; this map turns them into line and column, so the
/// validator stays independent of the source format.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// Node paths with their start, in document order.
    nodes: Vec<(String, Location)>,
    /// Mapping keys, by the path of the value they introduce, in document order: an unknown
    /// field is reported at its key, which has no value node of its own.
    keys: Vec<(String, Location)>,
    /// Mappings by path, with where each starts and ends (an unclosed one ends at the end):
    /// a missing field is reported in the mapping that lacks it.
    maps: Vec<(String, Location, Location)>,
    /// Where each path's first node is in `nodes`: a problem is located in constant time,
    /// however many nodes and problems there are.
    index: std::collections::HashMap<String, usize>,
}

impl SourceMap {
    /// Map every node of `text`. Stops quietly at the first syntax error: what was mapped
    /// before it stays usable.
    pub fn from_yaml(text: &str) -> Self {
        let mut nodes = Vec::new();
        let mut keys = Vec::new();
        let mut maps = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let location = Location {
                line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
                column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
            };
            match event {
                Event::Scalar(value, ..) => match node_path(&mut stack, Some(&value)) {
                    Some(path) => nodes.push((path, location)),
                    None => {
                        if let Some(Frame::Map {
                            path,
                            key: Some(key),
                            ..
                        }) = stack.last()
                        {
                            keys.push((join_key(path, key), location));
                        }
                    }
                },
                Event::Alias(..) => {
                    if let Some(path) = node_path(&mut stack, None) {
                        nodes.push((path, location));
                    }
                }
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    let path = match node_path(&mut stack, None) {
                        Some(path) => path,
                        // A collection used as a mapping key: map nothing inside it.
                        None => "?".to_owned(),
                    };
                    nodes.push((path.clone(), location));
                    stack.push(if is_map {
                        maps.push((path.clone(), location, END));
                        Frame::Map {
                            path,
                            key: None,
                            slot: maps.len() - 1,
                        }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    if let Some(Frame::Map { slot, .. }) = stack.pop() {
                        maps[slot].2 = location;
                    }
                }
                _ => {}
            }
        }
        let mut index = std::collections::HashMap::with_capacity(nodes.len());
        for (i, (path, _)) in nodes.iter().enumerate() {
            index.entry(path.clone()).or_insert(i);
        }
        Self {
            nodes,
            keys,
            maps,
            index,
        }
    }

    /// Where the node at `path` starts; for a path that is not in the document (a missing
    /// field), where its nearest present ancestor starts.
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(&i) = self.index.get(path) {
                return Some(self.nodes[i].1);
            }
            if path.is_empty() {
                return None;
            }
            path = parent_path(path);
        }
    }

    /// Place every problem that has no place yet at its field ([`Problem::located`]) and put
    /// them in source order; problems without a place keep their relative order at the end.
    pub fn place(&self, problems: &mut [Problem]) {
        for problem in problems.iter_mut() {
            if problem.location.is_none() {
                problem.location = self.locate(&problem.path);
            }
        }
        problems.sort_by_key(|p| (p.location.is_none(), p.location));
    }

    /// A problem the parser found at `location` (an unknown field, a wrong type, bad syntax, a
    /// missing field), named by the field there.
    fn shape_problem(&self, location: Option<Location>, message: String) -> Problem {
        // serde places a missing field at the last thing it read in the mapping that lacks
        // it: name the field, and place it where that mapping starts, as a missing field
        // found by validation is placed.
        if let Some(field) = missing_field(&message)
            && let Some(mapping) = location.and_then(|l| self.mapping_at(l))
        {
            let path = join_key(mapping, field);
            return Problem {
                location: self.locate(&path).or(location),
                path,
                message,
            };
        }
        Problem {
            path: location
                .and_then(|l| self.path_at(l))
                .unwrap_or_default()
                .to_owned(),
            location,
            message,
        }
    }

    /// The path of the innermost mapping that holds `location`.
    pub fn mapping_at(&self, location: Location) -> Option<&str> {
        self.maps
            .iter()
            .filter(|(_, start, end)| *start <= location && location <= *end)
            .max_by_key(|(_, start, _)| *start)
            .map(|(path, ..)| path.as_str())
    }

    /// The path of the node or mapping key that starts last at or before `location`.
    pub fn path_at(&self, location: Location) -> Option<&str> {
        match (
            last_before(&self.nodes, location),
            last_before(&self.keys, location),
        ) {
            (Some(node), Some(key)) => Some(if key.1 >= node.1 { key.0 } else { node.0 }),
            (node, key) => node.or(key).map(|(path, _)| path),
        }
    }
}

impl Problem {
    /// This problem placed at the start of its field in `source` (or of the field's nearest
    /// present ancestor, for a missing field), unless it already has a place.
    #[must_use]
    pub fn located(mut self, source: &SourceMap) -> Self {
        if self.location.is_none() {
            self.location = source.locate(&self.path);
        }
        self
    }
}

/// A parsed text's name (a file path) and the map of its fields: places the problems found
/// after parsing (a field's value refused, a file it names unreadable) and writes them out the
/// same way as parse errors. The gateway and the control plane keep one with their
/// configuration.
#[derive(Debug, Clone, Default)]
pub struct SourceFile {
    /// How the text is named in every problem, e.g. `/etc/unitgate/gateway.yaml`.
    pub name: String,
    /// Where each field sits in it.
    pub map: SourceMap,
}

impl SourceFile {
    /// The text `name` with its map.
    pub fn new(name: impl Into<String>, map: SourceMap) -> Self {
        Self {
            name: name.into(),
            map,
        }
    }

    /// One problem with the field at `path`, written out: `name:line:col: path: message`.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> String {
        Problem::at(path, message)
            .located(&self.map)
            .render(&self.name)
    }

    /// Every problem placed, in source order, one line each (no newline after the last).
    pub fn render(&self, mut problems: Vec<Problem>) -> String {
        self.map.place(&mut problems);
        let mut text = render_problems(&self.name, &problems);
        text.truncate(text.trim_end_matches('\n').len());
        text
    }
}

fn last_before(list: &[(String, Location)], location: Location) -> Option<(&str, Location)> {
    list.iter()
        .take_while(|(_, start)| *start <= location)
        .last()
        .map(|(path, start)| (path.as_str(), *start))
}

/// Where a mapping that is never closed (the text ends in a syntax error) ends.
const END: Location = Location {
    line: u32::MAX,
    column: u32::MAX,
};

enum Frame {
    Seq {
        path: String,
        next: usize,
    },
    Map {
        path: String,
        key: Option<String>,
        /// Its entry in `maps`.
        slot: usize,
    },
}

/// The path of the node that comes next in the innermost collection. In a mapping a node is
/// either a key (recorded, no path of its own) or the value of the last key.
fn node_path(stack: &mut [Frame], scalar: Option<&str>) -> Option<String> {
    match stack.last_mut() {
        None => Some(String::new()),
        Some(Frame::Seq { path, next }) => {
            let p = format!("{path}[{next}]");
            *next += 1;
            Some(p)
        }
        Some(Frame::Map { path, key, .. }) => match key.take() {
            Some(k) => Some(join_key(path, &k)),
            None => {
                *key = Some(scalar.unwrap_or("?").to_owned());
                None
            }
        },
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `units[3].slots` for `units[3].slots[1]`, `units[3]` for `units[3].slots`, `` for `units`.
pub(crate) fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// Parse a YAML table. Shape errors (unknown fields, wrong types, bad syntax) come back as one
/// problem with its line, column and field path.
pub fn parse_yaml(text: &str) -> Result<(RawTable, SourceMap), TableError> {
    check_size(text)?;
    from_yaml(text).map_err(TableError::single)
}

/// Parse any YAML document (a table, the gateway's or the control plane's configuration) into
/// `T`, with the map of where each field sits. A shape error (unknown field, wrong type, bad
/// syntax, missing field) is one problem with its line, column and field path, the same shape
/// as every validation problem; the map places problems found after parsing
/// ([`Problem::located`]).
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<(T, SourceMap), Problem> {
    let options = serde_saphyr::options! { with_snippet: false };
    match serde_saphyr::from_str_with_options::<T>(text, options) {
        Ok(value) => Ok((value, SourceMap::from_yaml(text))),
        Err(error) => {
            let map = SourceMap::from_yaml(text);
            let location = error.location().and_then(|l| {
                (l.line() > 0).then(|| Location {
                    line: u32::try_from(l.line()).unwrap_or(u32::MAX),
                    column: u32::try_from(l.column()).unwrap_or(u32::MAX),
                })
            });
            Err(map.shape_problem(location, yaml_message(&error)))
        }
    }
}

/// Parse a JSON table (the control-plane API's body format). A shape error is one problem
/// with its line, column and (as far as the text before the error shows it) field path.
pub fn parse_json(text: &str) -> Result<RawTable, TableError> {
    check_size(text)?;
    serde_json::from_str(text).map_err(|error| {
        let location = (error.line() > 0).then(|| Location {
            line: u32::try_from(error.line()).unwrap_or(u32::MAX),
            // serde_json says column 0 for the end of a line's text; columns start at 1.
            column: u32::try_from(error.column().max(1)).unwrap_or(u32::MAX),
        });
        let mut message = error.to_string();
        // serde_json appends " at line L column C"; the location is shown on its own.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        // JSON is YAML's flow style: the YAML map names the field at the error's place.
        TableError::single(SourceMap::from_yaml(text).shape_problem(location, message))
    })
}

fn check_size(text: &str) -> Result<(), TableError> {
    if text.len() > MAX_TABLE_BYTES {
        return Err(TableError::single(Problem::at(
            "",
            format!(
                "table is {} bytes; the limit is {MAX_TABLE_BYTES} bytes",
                text.len()
            ),
        )));
    }
    Ok(())
}

/// `field` of serde's ``missing field `field` `` message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// serde-saphyr's message without its own `line L column C:` prefix.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = match text.strip_prefix("line ") {
        Some(rest) => match rest.find(": ") {
            Some(i) if rest[..i].contains(" column ") => &rest[i + 2..],
            _ => text,
        },
        None => text,
    };
    let text = text.lines().next().unwrap_or_default().trim();
    // Some messages repeat the location at their end; it is shown on its own.
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_map_knows_nested_paths() {
        let text = "version: 1\nunits:\n  - name: a\n    slots: [[0, 5], [6, 9]]\n";
        let map = SourceMap::from_yaml(text);
        assert_eq!(
            map.locate("version"),
            Some(Location {
                line: 1,
                column: 10
            })
        );
        assert_eq!(
            map.locate("units[0].name"),
            Some(Location {
                line: 3,
                column: 11
            })
        );
        assert_eq!(
            map.locate("units[0].slots[1]"),
            Some(Location {
                line: 4,
                column: 21
            })
        );
        // A missing field is placed at its parent.
        assert_eq!(map.locate("units[0].region"), map.locate("units[0]"));
    }

    #[test]
    fn mappings_are_known_by_their_span() {
        let text = "version: 1\nunits:\n  - name: a\n    slots: []\n  - { name: b }\n";
        let map = SourceMap::from_yaml(text);
        let at = |line, column| map.mapping_at(Location { line, column });
        assert_eq!(at(1, 1), Some(""));
        assert_eq!(at(4, 5), Some("units[0]"));
        assert_eq!(at(5, 7), Some("units[1]"));
        // A mapping left open by a syntax error holds everything after its start.
        let map = SourceMap::from_yaml("a: { b: 1,\n");
        assert_eq!(map.mapping_at(Location { line: 9, column: 1 }), Some("a"));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("units[3].slots[1]"), "units[3].slots");
        assert_eq!(parent_path("units[3].slots"), "units[3]");
        assert_eq!(parent_path("units"), "");
    }
}
