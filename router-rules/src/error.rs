//! Problems found in a routing table or a configuration file, each with the place it was
//! found, and the one way they are written for people:
//!
//! ```text
//! table.yaml:12:7: units[3].slots: overlap: slots 1700-1799 of unit "u3" are also in ...
//! gateway.yaml: hop_secret: missing; ...
//! ```
//!
//! `origin:line:col: path: message` when the place is known, `origin: path: message` when it
//! is not; one line per problem. The gateway's and the control plane's configuration errors
//! and `unitctl` all print through [`Problem::render`] / [`render_problems`].

use std::fmt;

use serde::Serialize;

/// A position in a source text. Both numbers start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One thing wrong with a table: where (field path and, for YAML, line and column) and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Problem {
    /// Field path in the table, e.g. `units[3].slots[1]`; empty for the document itself.
    pub path: String,
    /// Line and column in the source, when the source was YAML and the place is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// What is wrong, naming the bad value and what is allowed.
    pub message: String,
}

impl Problem {
    /// A problem at `path`; its location is filled in later from the source map.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            location: None,
            message: message.into(),
        }
    }

    /// The path as shown to people: `(document)` for the root.
    pub fn display_path(&self) -> &str {
        if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        }
    }

    /// `origin:line:col: path: message`, the form editors and CI logs understand. Without a
    /// location: `origin: path: message`.
    pub fn render(&self, origin: &str) -> String {
        match self.location {
            Some(location) => format!(
                "{origin}:{location}: {}: {}",
                self.display_path(),
                self.message
            ),
            None => format!("{origin}: {}: {}", self.display_path(), self.message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{}: {}", self.display_path(), self.message)
    }
}

/// Why a table was refused: every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TableError {
    /// Never empty.
    pub problems: Vec<Problem>,
}

impl TableError {
    /// One problem.
    pub fn single(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }

    /// Every problem as `origin:line:col: path: message`, one per line.
    pub fn render(&self, origin: &str) -> String {
        render_problems(origin, &self.problems)
    }
}

/// Every problem as `origin:line:col: path: message` (or `origin: path: message` where its
/// place is not known), each line ending in a newline.
pub fn render_problems(origin: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for problem in problems {
        out.push_str(&problem.render(origin));
        out.push('\n');
    }
    out
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "routing table refused: {count} problem{}",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::source::{SourceFile, SourceMap, from_yaml};

    /// A configuration-like document: what the gateway and the control plane parse.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        region: String,
        #[serde(default)]
        listen: Listen,
        #[serde(default)]
        hop_secret: Option<String>,
        #[serde(default)]
        admins: Vec<Admin>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Admin {
        name: String,
        role: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Listen {
        #[serde(default)]
        http: Vec<std::net::SocketAddr>,
    }

    fn shape_error(text: &str) -> String {
        let problem = from_yaml::<Config>(text).expect_err("refused");
        problem.render("gw.yaml")
    }

    #[test]
    fn one_line_with_file_line_column_path_and_message() {
        let problem = Problem {
            path: "units[3].slots".to_owned(),
            location: Some(Location {
                line: 12,
                column: 7,
            }),
            message: "overlaps u02 at slot 1700".to_owned(),
        };
        assert_eq!(
            problem.render("table.yaml"),
            "table.yaml:12:7: units[3].slots: overlaps u02 at slot 1700"
        );
        assert_eq!(
            problem.to_string(),
            "12:7: units[3].slots: overlaps u02 at slot 1700"
        );
    }

    #[test]
    fn without_a_place_file_path_and_message() {
        let problem = Problem::at("hop_secret", "missing");
        assert_eq!(problem.render("gw.yaml"), "gw.yaml: hop_secret: missing");
        let root = Problem::at("", "table is empty");
        assert_eq!(root.render("t.yaml"), "t.yaml: (document): table is empty");
    }

    #[test]
    fn several_problems_one_line_each() {
        let problems = [
            Problem::at("a", "first"),
            Problem {
                path: "b[0]".to_owned(),
                location: Some(Location { line: 2, column: 3 }),
                message: "second".to_owned(),
            },
        ];
        assert_eq!(
            render_problems("f.yaml", &problems),
            "f.yaml: a: first\nf.yaml:2:3: b[0]: second\n"
        );
        assert_eq!(
            TableError {
                problems: problems.to_vec()
            }
            .render("f.yaml"),
            render_problems("f.yaml", &problems)
        );
        assert_eq!(render_problems("f.yaml", &[]), "");
    }

    #[test]
    fn problems_found_after_parsing_are_placed_at_their_field() {
        let text = "region: hz\nlisten:\n  http: [\"127.0.0.1:80\"]\nhop_secret: short\n";
        let (_, map) = from_yaml::<Config>(text).expect("parses");
        assert_eq!(
            Problem::at("hop_secret", "5 bytes; at least 32 are needed")
                .located(&map)
                .render("gw.yaml"),
            "gw.yaml:4:13: hop_secret: 5 bytes; at least 32 are needed"
        );
        assert_eq!(
            Problem::at("listen.http[0]", "taken")
                .located(&map)
                .render("gw.yaml"),
            "gw.yaml:3:10: listen.http[0]: taken"
        );
        // A missing field is placed at its nearest present ancestor.
        assert_eq!(
            Problem::at("listen.https", "missing")
                .located(&map)
                .render("gw.yaml"),
            "gw.yaml:3:3: listen.https: missing"
        );
        // A place already known is kept.
        let placed = Problem {
            path: "region".to_owned(),
            location: Some(Location { line: 9, column: 9 }),
            message: "m".to_owned(),
        };
        assert_eq!(placed.clone().located(&map), placed);
        // Nothing mapped (an empty document): no place.
        assert_eq!(
            Problem::at("region", "missing")
                .located(&SourceMap::default())
                .render("gw.yaml"),
            "gw.yaml: region: missing"
        );
    }

    #[test]
    fn several_problems_are_placed_and_put_in_source_order() {
        let text = "region: hz\nlisten:\n  http: []\nhop_secret: short\n";
        let (_, map) = from_yaml::<Config>(text).expect("parses");
        let mut problems = vec![
            Problem::at("hop_secret", "short"),
            Problem::at("listen.http", "empty"),
            Problem::at("region", "unknown"),
        ];
        map.place(&mut problems);
        assert_eq!(
            render_problems("gw.yaml", &problems),
            "gw.yaml:1:9: region: unknown\ngw.yaml:3:9: listen.http: empty\ngw.yaml:4:13: hop_secret: short\n"
        );
        // Nothing mapped: no places, the order found.
        let mut problems = vec![Problem::at("b", "2"), Problem::at("a", "1")];
        SourceMap::default().place(&mut problems);
        assert_eq!(
            render_problems("gw.yaml", &problems),
            "gw.yaml: b: 2\ngw.yaml: a: 1\n"
        );
    }

    #[test]
    fn a_source_file_places_and_writes_out_problems() {
        let text = "region: hz\nhop_secret: short\n";
        let (_, map) = from_yaml::<Config>(text).expect("parses");
        let file = SourceFile::new("gw.yaml", map);
        assert_eq!(
            file.problem("hop_secret", "too short"),
            "gw.yaml:2:13: hop_secret: too short"
        );
        assert_eq!(
            file.render(vec![
                Problem::at("hop_secret", "too short"),
                Problem::at("region", "unknown"),
            ]),
            "gw.yaml:1:9: region: unknown\ngw.yaml:2:13: hop_secret: too short"
        );
    }

    #[test]
    fn unknown_fields_are_placed_at_their_key() {
        assert_eq!(
            shape_error("region: hz\nlistne: {}\n"),
            "gw.yaml:2:1: listne: unknown field `listne`, expected one of region, listen, hop_secret, admins"
        );
        assert_eq!(
            shape_error("region: hz\nlisten:\n  htp: []\n"),
            "gw.yaml:3:3: listen.htp: unknown field `htp`, expected one of http"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(
            shape_error("region: hz\nlisten: { http: [\"nope\"] }\n"),
            "gw.yaml:2:18: listen.http[0]: invalid socket address syntax"
        );
    }

    #[test]
    fn syntax_errors_have_the_same_shape() {
        assert_eq!(
            shape_error("region: hz\nlisten: { http: [\n"),
            "gw.yaml:2:17: listen.http: unclosed bracket '['"
        );
    }

    #[test]
    fn missing_fields_are_named_and_placed_at_their_mapping() {
        assert_eq!(
            shape_error("# gateway\n\nlisten: {}\n"),
            "gw.yaml:3:1: region: missing field `region`"
        );
        assert_eq!(
            shape_error(
                "region: hz\nadmins:\n  - name: a\n    role: r\n  - name: b\nhop_secret: x\n"
            ),
            "gw.yaml:5:5: admins[1].role: missing field `role`"
        );
        assert_eq!(
            shape_error("region: hz\nadmins: [{ name: a, role: r }, { name: b }]\n"),
            "gw.yaml:2:32: admins[1].role: missing field `role`"
        );
        assert_eq!(
            shape_error("region: hz\nadmins: [{}]\n"),
            "gw.yaml:2:10: admins[0].name: missing field `name`"
        );
    }

    #[test]
    fn json_shape_errors_name_the_field() {
        let error = crate::parse_json("{\"version\": 1,\n \"regions\": 3}").expect_err("refused");
        assert_eq!(
            error.render("t.json"),
            "t.json:2:13: regions: invalid type: integer `3`, expected a sequence\n"
        );
        let error = crate::parse_json("{\"version\": 1,\n \"regions\": [{\"name\": \"a\"}]}")
            .expect_err("refused");
        assert_eq!(
            error.render("t.json"),
            "t.json:2:14: regions[0].pools: missing field `pools`\n"
        );
        // Cut short: serde_json's column 0 (nothing read on the line) is column 1.
        let error = crate::parse_json("{\"version\": 1,\n").expect_err("refused");
        assert_eq!(
            error.render("t.json"),
            "t.json:2:1: (document): EOF while parsing a value\n"
        );
    }
}
