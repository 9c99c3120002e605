//! The control plane's configuration file (YAML). Unknown fields are errors, and every error
//! names its line and column.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Role;

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
    /// A gateway not heard from for this long is stale: flips stop waiting for it. Keep it
    /// well above `watch_hold_s` and the gateways' longest reconnect back-off (5 s).
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

/// One API token. Give its SHA-256 (`unitgate-control hash-token`) or a file holding it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: shown in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A file holding the token (e.g. a mounted secret); read at start, kept only as a hash.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `gateway` tokens: the gateway id, or a pattern with `*` (`hz-*`), the token may speak
    /// for. Required for that role.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// `gateway` tokens: the region of the gateways the token may speak for. Required for
    /// that role.
    #[serde(default)]
    pub region: Option<String>,
}

impl ControlConfig {
    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let config: Self = serde_saphyr::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        if config.tokens.is_empty() {
            return Err(format!(
                "{origin}: tokens: no API tokens configured; the control plane does not run open"
            ));
        }
        if config.watch_hold_s == 0 || config.watch_hold_s > 300 {
            return Err(format!(
                "{origin}: watch_hold_s: {} is outside 1..=300",
                config.watch_hold_s
            ));
        }
        Ok(config)
    }

    /// Read and validate `initial_table` (YAML, or JSON by its extension), if one is given.
    pub fn initial_table(&self) -> Result<Option<router_rules::CompiledTable>, String> {
        let Some(path) = &self.initial_table else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("initial_table: {}: {e}", path.display()))?;
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
