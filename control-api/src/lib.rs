//! The control plane's API as both ends see it: the JSON bodies of `/v1/...` and a small HTTP
//! client. The control plane serves these types, the gateway's table source and `unitctl`'s
//! remote commands consume them, so a field renamed on one side is renamed on all.
#![forbid(unsafe_code)]

pub mod client;
pub mod files;
pub mod logging;
pub mod paths;
pub mod process_metrics;
pub mod throttle;
pub mod tls;

use std::collections::BTreeMap;

use router_rules::RawTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError, PutTable, Reply, TableText, WatchQuery};

/// Header carrying a table version: on `GET /v1/table` and `GET /v1/watch` answers.
pub const VERSION_HEADER: &str = "x-unitgate-table-version";

/// Header carrying a table version's digest ([`table_digest`]) beside [`VERSION_HEADER`].
pub const DIGEST_HEADER: &str = "x-unitgate-table-digest";

/// Header with which an admin stores a table that moves units without a flip: its value is
/// the reason, kept on the version and in the audit log.
pub const FORCE_HEADER: &str = "x-unitgate-force";

/// Header carrying the reason for a `PUT /v1/table`, kept on the version and in the audit log.
pub const REASON_HEADER: &str = "x-unitgate-reason";

/// The digest of a table's canonical content: `sha256:` and the hex SHA-256 of its JSON as
/// serialised here. A version number names exactly one content; the digest is how the
/// control plane, the gateways and their caches tell whether they hold the same one.
pub fn table_digest(table: &RawTable) -> String {
    // RawTable holds only ordered collections, so its JSON is canonical.
    let json = serde_json::to_vec(table).unwrap_or_default();
    let sha = ring::digest::digest(&ring::digest::SHA256, &json);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in sha.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A stored table version with how it got there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoredTable {
    /// The version (equal to `table.version`).
    pub version: u64,
    /// When it was stored, in milliseconds since the epoch.
    pub stored_at_ms: u64,
    /// Name of the token that stored it.
    pub author: String,
    /// Why: the reason given with the change, or the flip step that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The flip that made this version, if a flip did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<String>,
    /// Set when an admin stored this version although it moves units without a flip
    /// (`X-Unitgate-Force`): the reason given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    /// [`table_digest`] of `table`. Versions stored before digests existed have none on
    /// disk; the store fills it in when it reads them.
    #[serde(default)]
    pub digest: String,
    /// The table.
    pub table: RawTable,
}

impl StoredTable {
    /// A version to store now: `table` (whose `version` it takes) by `author`, with its digest.
    pub fn new(
        table: RawTable,
        author: &str,
        reason: Option<String>,
        flip: Option<String>,
    ) -> Self {
        Self {
            version: table.version,
            stored_at_ms: now_ms(),
            author: author.to_owned(),
            reason,
            flip,
            forced: None,
            digest: table_digest(&table),
            table,
        }
    }

    /// Check the record against itself: its version matches the table's, and its digest
    /// (filled in when absent) matches the content. `Err` says what does not match.
    pub fn verified(mut self) -> Result<Self, String> {
        if self.version != self.table.version {
            return Err(format!(
                "the record says version {} but its table says {}",
                self.version, self.table.version
            ));
        }
        let digest = table_digest(&self.table);
        if self.digest.is_empty() {
            self.digest = digest;
        } else if self.digest != digest {
            return Err(format!(
                "its content does not match its digest (recorded {}, content {digest}): it was changed after it was stored",
                self.digest
            ));
        }
        Ok(self)
    }
}

/// What a gateway reports after it tried to apply a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayReport {
    /// The gateway's id (unique among gateways).
    pub gateway: String,
    /// Its region.
    pub region: String,
    /// The version it serves (0: none yet).
    pub applied: u64,
    /// The digest of the table it serves ([`table_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The last version it refused, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<RejectedVersion>,
    /// It is stopping for good (a graceful stop, not an upgrade that hands its sockets on):
    /// the control plane forgets it, so that flips stop waiting for it. A gateway that stops
    /// without saying so stays in the fleet, and flips wait for it until it comes back or an
    /// operator forgets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// A version a gateway refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectedVersion {
    /// The refused version, when it could be read.
    pub version: Option<u64>,
    /// Every problem, one per line.
    pub error: String,
}

/// A gateway as the control plane last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayStatus {
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// The version it serves.
    pub applied_version: u64,
    /// The digest of the table it serves, as it reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// It serves a table whose digest differs from the stored version of that number: it
    /// counts as not serving that version, and is sent the stored one.
    #[serde(default)]
    pub diverged: bool,
    /// When it last polled or reported, in milliseconds since the epoch.
    pub last_seen_ms: u64,
    /// The last version it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<RejectedVersion>,
    /// Not seen for longer than the control plane's `gateway_stale_after_s` (after a
    /// control-plane restart, counted from the restart for the gateways that were live):
    /// flips do not wait for it, and it is shown so that someone looks.
    #[serde(default)]
    pub stale: bool,
}

/// `planned` or `emergency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlipMode {
    /// Freeze writes, wait for data, switch, unfreeze; any failure rolls back.
    Planned,
    /// Switch at once, without waiting for replication (the region is gone).
    Emergency,
}

/// How a planned flip learns that the target region has caught up. Give exactly one of
/// `url`, `confirm` or `delay_s`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationCheck {
    /// Probe URL (`http://` or `https://`), polled until it answers `200` with a body of `0`,
    /// `lag 0` or a JSON object whose `lag` is `0`. The CA and headers it is called with are
    /// the control plane's `replication_probe` configuration. `{unit}` in it stands for the
    /// unit: a flip of several units probes each unit's URL, in parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How long the probe may take to say `lag 0` (default 60 s); also the wait for an
    /// operator's confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Wait for `POST /v1/flips/{id}/confirm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<bool>,
    /// Wait a fixed time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_s: Option<u64>,
}

/// Body of `POST /v1/units/{unit}/flip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlipRequest {
    /// The region the unit moves to.
    pub to: String,
    /// `planned` or `emergency`.
    pub mode: FlipMode,
    /// Why: kept in the audit log.
    pub reason: String,
    /// Planned flips: how to know the data caught up. Default: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_check: Option<ReplicationCheck>,
    /// How long each "wait until every gateway applied it" step may take (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge_timeout_s: Option<u64>,
}

/// Body of `POST /v1/flips`: several units moved as one operation, each step one version for
/// all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiFlipRequest {
    /// The units, each in the table and named once.
    pub units: Vec<String>,
    /// The region every unit moves to (or give `placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Where each unit moves, by unit (instead of `to`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placement: BTreeMap<String, String>,
    /// `planned` or `emergency`.
    pub mode: FlipMode,
    /// Why: kept in the audit log.
    pub reason: String,
    /// Planned flips: how to know the data caught up. Default: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_check: Option<ReplicationCheck>,
    /// How long each "wait until every gateway applied it" step may take (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge_timeout_s: Option<u64>,
}

/// Body of `POST /v1/regions/{region}/evacuate`: every unit living in the region moves out,
/// as one multi-unit flip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvacuateRequest {
    /// `planned` or `emergency` (the region is down).
    pub mode: FlipMode,
    /// Where every unit goes; default: each unit's standby region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why: kept in the audit log.
    pub reason: String,
    /// Planned evacuations: how to know the data caught up. Default: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_check: Option<ReplicationCheck>,
    /// How long each convergence step may take (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge_timeout_s: Option<u64>,
}

/// Body of `POST /v1/regions/{region}/restore`: the units the region's last evacuation moved
/// go back, as one planned multi-unit flip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Why: kept in the audit log.
    pub reason: String,
    /// How to know the data caught up. Default: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_check: Option<ReplicationCheck>,
    /// How long each convergence step may take (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge_timeout_s: Option<u64>,
}

/// One unit a flip moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlipUnit {
    /// The unit.
    pub unit: String,
    /// The region it was in.
    pub from: String,
    /// The region it moves to.
    pub to: String,
}

/// Answer to `POST /v1/units/{unit}/flip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlipAccepted {
    /// The flip's id.
    pub id: String,
    /// Where to follow it.
    pub location: String,
}

/// Body of `POST /v1/explain`: a request to explain against the table in force, as
/// `unitctl route --live` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// The path, with a query string if any.
    pub path: String,
    /// Headers, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A user's routing key, put where the matched route looks for it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The region the request enters (default: the center unit's region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_region: Option<String>,
}

fn default_method() -> String {
    "GET".to_owned()
}

/// Answer to `POST /v1/explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainResult {
    /// The version of the table that decided.
    pub version: u64,
    /// The decision, as `unitctl route --output json` prints it (docs/routing-table.md lists
    /// its fields).
    pub decision: serde_json::Value,
    /// Why the user's key was not used, when it was not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Body of `POST /v1/flips/{id}/extend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Seconds to add to the wait for a confirmation (1 to 86400).
    pub seconds: u64,
}

/// Answer to `POST /v1/flips/{id}/confirm`, `.../cancel` and `.../extend`: the signal was
/// recorded; the flip acts on it at its next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlipSignalled {
    /// The flip's id.
    pub id: String,
    /// `confirm`, `cancel` or `extend`.
    pub signal: String,
}

/// Where a flip stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlipState {
    /// Steps are running.
    Running,
    /// Done: the unit serves from its new region.
    Succeeded,
    /// A step failed, timed out or was cancelled; the unit is back where it was.
    RolledBack,
    /// A step failed and so did the rollback: needs an operator (the audit says what stands).
    Failed,
}

impl FlipState {
    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FlipState::Running => "running",
            FlipState::Succeeded => "succeeded",
            FlipState::RolledBack => "rolled_back",
            FlipState::Failed => "failed",
        }
    }

    /// Whether the flip has ended.
    pub fn is_final(self) -> bool {
        self != FlipState::Running
    }
}

/// The steps of a flip, in order: a planned flip runs `freeze` to `converge_unfreeze` and, on
/// any failure, timeout or cancel, `rollback` and `converge_rollback`; an emergency flip runs
/// `emergency_switch` and `converge_emergency` (docs/control-plane.md, "Flips").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    /// Store a version with the unit write-frozen.
    Freeze,
    /// Wait until every live gateway applied the freeze.
    ConvergeFreeze,
    /// Wait until the data caught up (probe, confirmation or delay).
    Replication,
    /// Store a version with the unit in its new region, still frozen.
    Switch,
    /// Wait until every live gateway applied the switch.
    ConvergeSwitch,
    /// Store a version with the unit active again.
    Unfreeze,
    /// Wait until every live gateway applied the unfreeze.
    ConvergeUnfreeze,
    /// Emergency: store a version with the unit in its new region, active.
    EmergencySwitch,
    /// Emergency: wait (without rolling back) until every live gateway applied it.
    ConvergeEmergency,
    /// Store a version with the unit as it was before the flip.
    Rollback,
    /// Wait until every live gateway applied the rollback.
    ConvergeRollback,
}

impl StepName {
    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Freeze => "freeze",
            StepName::ConvergeFreeze => "converge_freeze",
            StepName::Replication => "replication",
            StepName::Switch => "switch",
            StepName::ConvergeSwitch => "converge_switch",
            StepName::Unfreeze => "unfreeze",
            StepName::ConvergeUnfreeze => "converge_unfreeze",
            StepName::EmergencySwitch => "emergency_switch",
            StepName::ConvergeEmergency => "converge_emergency",
            StepName::Rollback => "rollback",
            StepName::ConvergeRollback => "converge_rollback",
        }
    }
}

impl std::fmt::Display for StepName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Still running.
    Running,
    /// Done.
    Ok,
    /// Failed or timed out (see `detail`).
    Failed,
}

/// One step of a flip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlipStep {
    /// Which step.
    pub name: StepName,
    /// When it started, in milliseconds since the epoch.
    pub started_at_ms: u64,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How it ended.
    pub outcome: StepOutcome,
    /// The version it stored or waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A flip: what was asked, and every step so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlipRecord {
    /// Its id.
    pub id: String,
    /// The unit.
    pub unit: String,
    /// The region it was in.
    pub from: String,
    /// The region it moves to.
    pub to: String,
    /// `planned` or `emergency`.
    pub mode: FlipMode,
    /// Why.
    pub reason: String,
    /// The token that asked for it.
    pub actor: String,
    /// How the planned flip waits for data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_check: Option<ReplicationCheck>,
    /// Per convergence step, in seconds.
    pub converge_timeout_s: u64,
    /// The version in force when the flip started.
    pub pre_flip_version: u64,
    /// Where it stands.
    pub state: FlipState,
    /// The control-plane replica running it.
    pub owner: String,
    /// When it was asked for, in milliseconds since the epoch.
    pub created_at_ms: u64,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// An operator confirmed that the data caught up.
    #[serde(default)]
    pub confirmed: bool,
    /// An operator asked to cancel it.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Why it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Steps, in the order they ran.
    pub steps: Vec<FlipStep>,
    /// A flip of several units (`POST /v1/flips`, evacuations): each unit and where it goes.
    /// Then `unit`, `from` and `to` name them all, comma-separated. Empty for a flip of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<FlipUnit>,
    /// While it waits for an operator's confirmation: until when, in milliseconds since the
    /// epoch (`POST /v1/flips/{id}/extend` moves it); then it rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_by_ms: Option<u64>,
    /// The region this flip evacuates, or restores (`evacuate:hz`, `restore:hz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl FlipRecord {
    /// Every unit the flip moves, with where from and where to.
    pub fn moves(&self) -> Vec<FlipUnit> {
        if self.units.is_empty() {
            vec![FlipUnit {
                unit: self.unit.clone(),
                from: self.from.clone(),
                to: self.to.clone(),
            }]
        } else {
            self.units.clone()
        }
    }

    /// Whether the flip moves `unit`.
    pub fn moves_unit(&self, unit: &str) -> bool {
        if self.units.is_empty() {
            self.unit == unit
        } else {
            self.units.iter().any(|u| u.unit == unit)
        }
    }
}

/// How a change ended, in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It took effect (or, for a flip, was accepted and started).
    Ok,
    /// It was refused (bad input, stale version, wrong role, conflict).
    Refused,
    /// It was tried and failed.
    Failed,
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// Token name (`-` when the token was missing or unknown).
    pub actor: String,
    /// What was asked: `table.put`, `flip.start`, `flip.step`, `flip.confirm`, ...
    pub action: String,
    /// What it was asked of: a unit, a flip id, `table`.
    pub target: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The HTTP status answered, for API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Version in force before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_before: Option<u64>,
    /// Version in force after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_after: Option<u64>,
    /// The reason given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The flip this belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<String>,
    /// Anything else worth knowing (the error, the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A JSON error body: every 4xx and 5xx answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// A stable code: `unauthorized`, `forbidden`, `invalid_table`, `stale_version`, ...
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
    /// For a refused table: every problem, with its field path and (YAML) line and column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ApiProblem>,
}

/// One problem with a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiProblem {
    /// Field path, e.g. `units[3].slots[1]`.
    pub path: String,
    /// Line in the YAML source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Column in the YAML source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// What is wrong.
    pub message: String,
}

impl From<&router_rules::Problem> for ApiProblem {
    fn from(problem: &router_rules::Problem) -> Self {
        Self {
            path: problem.display_path().to_owned(),
            line: problem.location.map(|l| l.line),
            column: problem.location.map(|l| l.column),
            message: problem.message.clone(),
        }
    }
}

/// Answer to `POST /v1/table/plan`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanResult {
    /// Whether the table passed validation and may succeed the one in force.
    pub valid: bool,
    /// The version in force.
    pub current_version: u64,
    /// The version it would be stored as.
    pub next_version: u64,
    /// Every problem (empty when valid).
    pub problems: Vec<ApiProblem>,
    /// Units whose region or slots the table changes: `PUT /v1/table` refuses it (`422`)
    /// unless forced; a flip is the way to move a unit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<UnitMove>,
    /// Why `PUT /v1/table` with this table would be refused, if it would (without
    /// `X-Unitgate-Force`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put_refused: Option<String>,
    /// What it changes against the table in force (as `unitctl diff --output json`); absent
    /// when invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub diff: Option<serde_json::Value>,
}

/// A unit that a proposed table moves: to another region, or to other slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitMove {
    /// The unit.
    pub unit: String,
    /// Its region in force (absent: the unit is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Its region in the proposed table (absent: the unit is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Whether its slot ranges change.
    pub slots_change: bool,
    /// What to do instead, in words.
    pub hint: String,
}

/// Body of `POST /v1/units/{unit}/resolve`: an operator settles a unit whose flip record was
/// lost (quarantined), stating the state the unit is to have in the region it is in now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `active` (writes flow again) or `write_frozen`.
    pub state: router_rules::UnitState,
    /// Why: kept in the audit log.
    pub reason: String,
}

/// Answer to `POST /v1/units/{unit}/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveResult {
    /// The unit.
    pub unit: String,
    /// The version in force afterwards (a new one when the state changed).
    pub version: u64,
    /// The lock that was lifted (the quarantined flip), if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<String>,
}

/// Answer to `PUT /v1/table`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutResult {
    /// The version stored.
    pub version: u64,
}

/// A unit as `GET /v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitStatus {
    /// Unit name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// `active` or `write_frozen`.
    pub state: String,
    /// Its standby region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Whether it is the center unit.
    pub center: bool,
    /// Slots it owns.
    pub slots: u32,
    /// The flip running on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<String>,
    /// Why no flip may start on it until an operator resolves it (`POST
    /// /v1/units/{unit}/resolve`), e.g. its flip record was unreadable and quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<String>,
}

/// Answer to `GET /v1/status`: units and gateways in one look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The version in force.
    pub version: u64,
    /// Every unit.
    pub units: Vec<UnitStatus>,
    /// Every gateway seen.
    pub gateways: Vec<GatewayStatus>,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
