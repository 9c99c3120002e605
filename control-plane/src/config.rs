//! The control plane's configuration file (YAML). Unknown fields are errors, and every error
//! names its line and column.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use router_rules::Problem;

use crate::auth::{TokenConfig, Tokens};

/// Everything `unitgate-control` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Where the API listens. Loopback by default, so nothing is exposed unless asked for.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS instead of HTTP.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Where versions, flips and the audit log are kept.
    pub store: StoreConfig,
    /// A table to store as the first version when the store holds none yet.
    #[serde(default)]
    pub initial_table: Option<PathBuf>,
    /// API tokens. At least one; each at least 32 characters.
    pub tokens: Vec<TokenConfig>,
    /// A gateway not heard from for this long is stale: shown so (`unitctl status`, metrics)
    /// and named as such when a flip waits for it. Flips still wait for it until it reports,
    /// leaves (a gateway that stops says so) or an operator forgets it.
    #[serde(default = "default_stale_s")]
    pub gateway_stale_after_s: u64,
    /// The fewest gateways of a region that must serve a version before a flip step goes on,
    /// by region (e.g. `{hz: 2, sh: 2}`): a step never finishes with a region's gateways
    /// unaccounted for, even when the control plane knows none of them.
    #[serde(default)]
    pub min_gateways: BTreeMap<String, u32>,
    /// Longest a watch request is held open before it is answered `204`.
    #[serde(default = "default_watch_hold_s")]
    pub watch_hold_s: u64,
    /// Largest request body accepted (`413` above).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// This replica's name, shown as the owner of the flips it runs. Default: host name and
    /// process id.
    #[serde(default)]
    pub replica: Option<String>,
    /// `text` (default) or `json`, one object per line.
    #[serde(default)]
    pub log_format: control_api::logging::LogFormat,
    /// How planned flips' replication probes (`replication_check.url`) are called: the CA
    /// that signs the replication monitor's certificate and the headers it needs (a bearer
    /// token, say). Kept here, not in flip requests, so that no secret lands in a flip record.
    #[serde(default)]
    pub replication_probe: ProbeConfig,
    /// The file this was read from and where each field sits in it: problems found after
    /// parsing (a token file or the initial table that cannot be read) are placed like parse
    /// errors.
    #[serde(skip)]
    origin: router_rules::SourceFile,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_stale_s() -> u64 {
    60
}
fn default_watch_hold_s() -> u64 {
    25
}
fn default_max_body() -> usize {
    4 * 1024 * 1024
}

/// How replication probes are called.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// PEM certificates to trust for `https://` probes instead of the system's store (a
    /// private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Headers sent with every probe, e.g. `{authorization: "Bearer ..."}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// PEM files for HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum StoreConfig {
    /// A local directory: one control plane.
    File {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// An etcd cluster shared by several control-plane replicas (needs the `etcd` build
    /// feature).
    Etcd {
        /// Client URLs, e.g. `http://10.0.0.1:2379`.
        endpoints: Vec<String>,
        /// Key prefix for everything this control plane stores.
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Time-to-live of the lease that holds a running flip, in seconds: a replica that
        /// dies mid-flip loses its flips this long after, and another replica rolls them back.
        #[serde(default = "default_lease_s")]
        flip_lease_s: u64,
    },
}

fn default_prefix() -> String {
    "/unitgate/".to_owned()
}
fn default_lease_s() -> u64 {
    5
}

impl ControlConfig {
    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse config text; `origin` names it in errors. Every error reads
    /// `origin:line:col: path: message` (see [`router_rules::render_problems`]), one line per
    /// problem.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let (mut config, map) =
            router_rules::from_yaml::<Self>(text).map_err(|problem| problem.render(origin))?;
        config.origin = router_rules::SourceFile::new(origin, map);
        let mut problems = Vec::new();
        if config.tokens.is_empty() {
            problems.push(Problem::at(
                "tokens",
                "no API tokens configured; the control plane does not run open",
            ));
        }
        for (name, value) in &config.replication_probe.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_bytes(value.as_bytes()).is_err()
            {
                problems.push(Problem::at(
                    format!("replication_probe.headers.{name}"),
                    "not a valid HTTP header name and value",
                ));
            }
        }
        if let Some(ca) = &config.replication_probe.ca_file
            && let Err(error) = std::fs::metadata(ca)
        {
            problems.push(Problem::at(
                "replication_probe.ca_file",
                format!("cannot read {}: {error}", ca.display()),
            ));
        }
        if config.watch_hold_s == 0 || config.watch_hold_s > 300 {
            problems.push(Problem::at(
                "watch_hold_s",
                format!("{} is outside 1..=300", config.watch_hold_s),
            ));
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(config.origin.render(problems))
        }
    }

    /// A problem with the field at `path`, as `file:line:col: path: message`.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> String {
        self.origin.problem(path, message)
    }

    /// The API tokens, with every token that cannot be used (a digest that is not one, a token
    /// file that cannot be read, the same token twice) named at its place in the file.
    pub fn tokens(&self) -> Result<Tokens, String> {
        let mut problems = Vec::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if let Err(error) = Tokens::load(std::slice::from_ref(token)) {
                problems.push(token_problem(i, token, 0, &error));
            }
        }
        if problems.is_empty() {
            // Each token is fine on its own: what is left is between tokens.
            match Tokens::load(&self.tokens) {
                Ok(tokens) => return Ok(tokens),
                Err(error) => problems.push(
                    self.tokens
                        .iter()
                        .enumerate()
                        .map(|(i, token)| token_problem(i, token, i, &error))
                        .find(|p| p.path.starts_with("tokens["))
                        .unwrap_or_else(|| Problem::at("tokens", error)),
                ),
            }
        }
        Err(self.origin.render(problems))
    }

    /// Read and validate `initial_table` (YAML, or JSON by its extension), if one is given.
    pub fn initial_table(&self) -> Result<Option<router_rules::CompiledTable>, String> {
        let Some(path) = &self.initial_table else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            self.problem(
                "initial_table",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let table = if control_api::files::is_json(path) {
            router_rules::load_json(&text)
        } else {
            router_rules::load_yaml(&text)
        };
        table
            .map(Some)
            .map_err(|e| e.render(&path.display().to_string()))
    }

    /// The replica name.
    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "control".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Token `i`'s problem, from what [`Tokens::load`] said about it as its `at`-th token
/// (`tokens[at] (name).field: message`): the same problem at `tokens[i].field`. A message in
/// another form is kept whole, at `tokens`.
fn token_problem(i: usize, token: &TokenConfig, at: usize, error: &str) -> Problem {
    let named = format!("tokens[{at}] ({})", token.name);
    let bare = format!("tokens[{at}]");
    let rest = error
        .strip_prefix(named.as_str())
        .or_else(|| error.strip_prefix(bare.as_str()));
    match rest.and_then(|rest| rest.split_once(": ")) {
        Some((field, message))
            if field.is_empty()
                || (field.starts_with('.')
                    && field[1..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')) =>
        {
            Problem::at(format!("tokens[{i}]{field}"), message)
        }
        _ => Problem::at("tokens", error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn token(name: &str) -> TokenConfig {
        TokenConfig {
            name: name.to_owned(),
            role: Role::Viewer,
            sha256: None,
            token_file: None,
            gateway_id: None,
            region: None,
        }
    }

    #[test]
    fn token_problems_are_moved_to_the_token_s_path() {
        let ops = token("ops");
        let at = |error: &str| {
            let problem = token_problem(3, &ops, 0, error);
            format!("{}|{}", problem.path, problem.message)
        };
        assert_eq!(
            at("tokens[0] (ops).sha256: not hex"),
            "tokens[3].sha256|not hex"
        );
        assert_eq!(
            at("tokens[0] (ops): give exactly one"),
            "tokens[3]|give exactly one"
        );
        assert_eq!(at("tokens[0].name: empty"), "tokens[3].name|empty");
        assert_eq!(
            at("tokens[0] (ops).token_file: /run/t: gone"),
            "tokens[3].token_file|/run/t: gone"
        );
        // Said of another token, or in another form: kept whole.
        assert_eq!(at("tokens[1] (x): twice"), "tokens|tokens[1] (x): twice");
        assert_eq!(at("no tokens"), "tokens|no tokens");
    }
}
