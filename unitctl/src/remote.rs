//! Remote commands: talk to the control plane (`--server`, `--token-file` or `--token`, or
//! `UNITGATE_SERVER`, `UNITGATE_TOKEN_FILE` or `UNITGATE_TOKEN`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use comfy_table::{CellAlignment, Table};
use control_api::client::Trust;
use control_api::{
    AuditOutcome, Client, ClientError, EvacuateRequest, FlipAccepted, FlipMode, FlipRecord,
    FlipRequest, FlipState, FlipStep, MultiFlipRequest, PlanResult, PutResult, PutTable,
    ReplicationCheck, ResolveRequest, RestoreRequest, StepOutcome, TableText, now_ms,
};
use http::{HeaderValue, StatusCode};

use crate::{
    EXIT_AUTH, EXIT_FINDING, EXIT_INPUT, EXIT_UNREACHABLE, Failure, Output, print_json, table_file,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the control plane is.
#[derive(Debug, clap::Args)]
pub struct Server {
    /// Control-plane URL.
    #[arg(long, env = "UNITGATE_SERVER", global = true)]
    server: Option<String>,
    /// API token, or UNITGATE_TOKEN (prefer --token-file: it keeps the token out of the
    /// process list).
    #[arg(long, global = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the API token, or UNITGATE_TOKEN_FILE.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// server besides the system's trust store,
    /// e.g. a private CA.
    #[arg(long, env = "UNITGATE_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// A variable of the environment, when set and not empty.
fn env_var(name: &str) -> Result<Option<String>, Failure> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Failure::input(format!("{name}: not valid UTF-8")))
        }
    }
}

/// The token in `file` (surrounding whitespace, such as a final newline, removed).
fn read_token(file: &Path, from: &str) -> Result<String, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::input(format!("{from}: {}: {e}", file.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::input(format!(
            "{from}: {}: holds no token",
            file.display()
        )));
    }
    Ok(token.to_owned())
}

impl Server {
    /// The token: `--token`, `--token-file`, then `UNITGATE_TOKEN` or `UNITGATE_TOKEN_FILE`
    /// (not both).
    fn token(&self) -> Result<String, Failure> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        if let Some(file) = &self.token_file {
            return read_token(file, "--token-file");
        }
        match (env_var("UNITGATE_TOKEN")?, env_var("UNITGATE_TOKEN_FILE")?) {
            (Some(_), Some(_)) => Err(Failure::input(
                "both UNITGATE_TOKEN and UNITGATE_TOKEN_FILE are set: unset one (or give --token-file FILE)",
            )),
            (Some(token), None) => Ok(token),
            (None, Some(file)) => read_token(Path::new(&file), "UNITGATE_TOKEN_FILE"),
            (None, None) => Err(Failure::input(
                "no token: give --token-file FILE (or --token) or set UNITGATE_TOKEN_FILE (or UNITGATE_TOKEN)",
            )),
        }
    }

    pub(crate) fn client(&self) -> Result<Client, Failure> {
        let server = self.server.as_deref().ok_or_else(|| {
            Failure::input("no control plane: give --server URL or set UNITGATE_SERVER")
        })?;
        let token = self.token()?;
        Client::with_trust(server, Some(&token), Trust::system_and(self.ca.as_deref()))
            .map(|client| client.with_timeout(TIMEOUT))
            .map_err(failed)
    }
}

/// `unitctl table ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TableCommand {
    /// Print the table in force (YAML-compatible JSON). Its `version` field is the version
    /// fetched: `table apply` of an edited copy sends it as `If-Match`, so an edit of a version
    /// that has since been replaced is refused instead of undoing the change made meanwhile.
    Get {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Validate FILE on the control plane and show what it would change; stores nothing.
    /// Exits 1 when FILE is invalid or an apply of it would be refused (stale, or moving
    /// units without a flip).
    Plan {
        /// The proposed table.
        file: PathBuf,
        /// The version FILE is an edit of, as `table apply --base` takes it, instead of
        /// FILE's own `version`.
        #[arg(long, value_name = "VERSION")]
        base: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show the plan for FILE, ask, then store it as the next version. FILE's own `version`
    /// (the version it was fetched as, by `table get`) is sent as `If-Match`: if the table
    /// changed since, the control plane refuses it (409).
    Apply(ApplyArgs),
}

/// `unitctl table apply ...`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The proposed table.
    file: PathBuf,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
    /// Why: kept in the audit log.
    #[arg(long)]
    reason: Option<String>,
    /// Admins: store it even though it moves units to other regions or slots without a flip
    /// (sent as `X-Unitgate-Force: REASON`, kept on the version and in the audit log).
    #[arg(long, value_name = "REASON")]
    force_moves: Option<String>,
    /// The version FILE is an edit of, sent as `If-Match` instead of FILE's own `version`
    /// (e.g. to store an old version's content again on top of VERSION).
    #[arg(long, value_name = "VERSION")]
    base: Option<u64>,
    /// Output format (json: `{"plan": ..., "stored": {"version": N}}`, `stored` absent when
    /// nothing was stored).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `unitctl flip-resolve ...`.
#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// The unit.
    unit: String,
    /// The state the unit is to have, in the region it is in now.
    #[arg(long, value_enum)]
    state: ResolveState,
    /// Why: kept in the audit log.
    #[arg(long)]
    reason: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The state `flip-resolve` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResolveState {
    /// Reads and writes flow.
    Active,
    /// Writes are refused (503); reads flow.
    #[value(name = "write_frozen", alias = "write-frozen")]
    WriteFrozen,
}

impl From<ResolveState> for router_rules::UnitState {
    fn from(state: ResolveState) -> Self {
        match state {
            ResolveState::Active => router_rules::UnitState::Active,
            ResolveState::WriteFrozen => router_rules::UnitState::WriteFrozen,
        }
    }
}

/// How a planned flip learns that the data caught up, and how long its convergence steps may
/// take: shared by `flip`, `evacuate` and `restore`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Planned flips: wait for `unitctl flip-confirm ID` before switching.
    #[arg(long, conflicts_with_all = ["delay_s", "probe"], group = "waits_for_check")]
    confirm: bool,
    /// Planned flips: wait this many seconds for replication before switching.
    #[arg(long, conflicts_with = "probe")]
    delay_s: Option<u64>,
    /// Planned flips: poll this URL until it answers lag 0 before switching (`{unit}` in it
    /// stands for each unit's name: every unit is probed, in parallel).
    #[arg(long, group = "waits_for_check")]
    probe: Option<String>,
    /// How long --probe may take to answer lag 0, or --confirm may wait, in seconds (the
    /// control plane's default: 60); the flip rolls back after it.
    #[arg(long, conflicts_with = "delay_s", requires = "waits_for_check")]
    check_timeout_s: Option<u64>,
    /// How long each convergence step may take, in seconds.
    #[arg(long)]
    converge_timeout_s: Option<u64>,
}

impl CheckArgs {
    /// The replication check asked for (none: the flip switches once writes are frozen).
    fn replication_check(&self) -> Option<ReplicationCheck> {
        if self.confirm {
            Some(ReplicationCheck {
                confirm: Some(true),
                timeout_s: self.check_timeout_s,
                ..Default::default()
            })
        } else if let Some(delay) = self.delay_s {
            Some(ReplicationCheck {
                delay_s: Some(delay),
                ..Default::default()
            })
        } else {
            self.probe.clone().map(|url| ReplicationCheck {
                url: Some(url),
                timeout_s: self.check_timeout_s,
                ..Default::default()
            })
        }
    }
}

/// `unitctl flip ...`.
#[derive(Debug, clap::Args)]
pub struct FlipArgs {
    /// The unit to move; several move as one operation (each step one table version for all
    /// of them, rolled back together).
    #[arg(required = true, value_name = "UNIT")]
    units: Vec<String>,
    /// The region it moves to.
    #[arg(long)]
    to: String,
    /// Switch at once, without waiting for replication (the old region is gone).
    #[arg(long, conflicts_with_all = ["confirm", "delay_s", "probe", "check_timeout_s"])]
    emergency: bool,
    /// Why: kept in the audit log (required, as the console and the API require it).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    check: CheckArgs,
    /// Follow the flip, a line per step, until it ends (exit 1 unless it succeeded).
    #[arg(long)]
    wait: bool,
    /// Output format (json: the flip as accepted, `{"id", "location"}`; with --wait the flip's
    /// record once it ended, as `flip-show --output json` prints it).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `unitctl evacuate ...`.
#[derive(Debug, clap::Args)]
pub struct EvacuateArgs {
    /// The region to empty: every unit living there moves out, as one flip.
    region: String,
    /// The region every unit moves to (default: each unit's standby region).
    #[arg(long)]
    to: Option<String>,
    /// Switch at once, without waiting for replication (the region is down).
    #[arg(long, conflicts_with_all = ["confirm", "delay_s", "probe", "check_timeout_s"])]
    emergency: bool,
    /// Why: kept in the audit log.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    check: CheckArgs,
    /// Follow the flip, a line per step, until it ends (exit 1 unless it succeeded).
    #[arg(long)]
    wait: bool,
    /// Output format (json: the flip as accepted, `{"id", "location"}`; with --wait the flip's
    /// record once it ended, as `flip-show --output json` prints it).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `unitctl restore ...`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The region whose last evacuation is undone: the units it moved (and that are still
    /// where it put them) come back, as one planned flip.
    region: String,
    /// Why: kept in the audit log.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    check: CheckArgs,
    /// Follow the flip, a line per step, until it ends (exit 1 unless it succeeded).
    #[arg(long)]
    wait: bool,
    /// Output format (json: the flip as accepted, `{"id", "location"}`; with --wait the flip's
    /// record once it ended, as `flip-show --output json` prints it).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Run a remote command.
pub fn run(server: &Server, command: Remote) -> Result<u8, Failure> {
    let client = server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::input(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        match command {
            Remote::Status { output } => status(&client, output).await,
            Remote::Table(TableCommand::Get { output }) => table_get(&client, output).await,
            Remote::Table(TableCommand::Plan { file, base, output }) => {
                plan(&client, &file, base, output).await
            }
            Remote::Table(TableCommand::Apply(args)) => apply(&client, args).await,
            Remote::Flip(args) => flip(&client, args).await,
            Remote::Evacuate(args) => evacuate(&client, args).await,
            Remote::Restore(args) => restore(&client, args).await,
            Remote::Resolve(args) => resolve(&client, args).await,
            Remote::ForgetGateway { id, output } => forget_gateway(&client, &id, output).await,
            Remote::Confirm { id, output } => signal(&client, &id, Signal::Confirm, output).await,
            Remote::Cancel { id, output } => signal(&client, &id, Signal::Cancel, output).await,
            Remote::Extend {
                id,
                seconds,
                output,
            } => signal(&client, &id, Signal::Extend(seconds), output).await,
            Remote::Audit { limit, output } => audit(&client, limit, output).await,
            Remote::Show { id, wait, output } => show(&client, &id, wait, output).await,
        }
    })
}

/// The remote commands.
#[derive(Debug)]
pub enum Remote {
    /// Units and gateways.
    Status {
        /// Output format.
        output: Output,
    },
    /// Table commands.
    Table(TableCommand),
    /// Start a flip.
    Flip(FlipArgs),
    /// Move every unit out of a region, as one flip.
    Evacuate(EvacuateArgs),
    /// Undo a region's last evacuation, as one flip.
    Restore(RestoreArgs),
    /// Settle a unit whose flip record was lost: set its state, lift its lock.
    Resolve(ResolveArgs),
    /// Forget a gateway taken out of service.
    ForgetGateway {
        /// Gateway id.
        id: String,
        /// Output format.
        output: Output,
    },
    /// Confirm a flip's replication.
    Confirm {
        /// Flip id.
        id: String,
        /// Output format.
        output: Output,
    },
    /// Cancel a flip.
    Cancel {
        /// Flip id.
        id: String,
        /// Output format.
        output: Output,
    },
    /// Wait longer for a flip's confirmation.
    Extend {
        /// Flip id.
        id: String,
        /// Seconds to add.
        seconds: u64,
        /// Output format.
        output: Output,
    },
    /// One flip.
    Show {
        /// Flip id.
        id: String,
        /// Follow it until it ends.
        wait: bool,
        /// Output format.
        output: Output,
    },
    /// The audit log.
    Audit {
        /// Only the last N entries.
        limit: Option<usize>,
        /// Output format.
        output: Output,
    },
}

/// The exit code for a request that got `error`: see [`crate::EXIT_CODES`].
fn exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Setup(_) => EXIT_INPUT,
        ClientError::Transport { .. } | ClientError::Timeout { .. } => EXIT_UNREACHABLE,
        ClientError::Api { status, .. } | ClientError::Decode { status, .. }
            if matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) =>
        {
            EXIT_AUTH
        }
        ClientError::Api { .. } | ClientError::Decode { .. } => EXIT_FINDING,
    }
}

pub(crate) fn failed(error: ClientError) -> Failure {
    failed_for(error, None)
}

/// [`failed`] for a request that sent `file`: the server's problems with a place in it read
/// `file:line:col: path: message`, as `unitctl validate` writes them.
fn failed_for(error: ClientError, file: Option<&Path>) -> Failure {
    let code = exit_code(&error);
    let mut message = error.to_string();
    if let ClientError::Api { error, .. } = &error {
        let origin = file.map(|f| f.display().to_string());
        for problem in &error.problems {
            let at = match (&origin, problem.line, problem.column) {
                (Some(origin), Some(line), Some(column)) => format!("{origin}:{line}:{column}: "),
                (Some(origin), _, _) => format!("{origin}: "),
                (None, Some(line), Some(column)) => format!("{line}:{column}: "),
                (None, _, _) => String::new(),
            };
            message.push_str(&format!("\n  {at}{}: {}", problem.path, problem.message));
        }
    }
    if matches!(&error, ClientError::Api { status, .. } if *status == StatusCode::UNAUTHORIZED) {
        message.push_str(
            "\nhint: check the token (--token-file, UNITGATE_TOKEN_FILE, --token, UNITGATE_TOKEN)",
        );
    }
    Failure::new(code, message)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn ago(ms: u64) -> String {
    let seconds = now_ms().saturating_sub(ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}

/// A table for people: a header row and aligned columns, two spaces apart, no borders; the
/// columns numbered in `right` aligned to the right (numbers).
fn grid(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Print `table` (without the spaces that pad its last column).
fn print_grid(table: &Table) {
    outln!("{}", table.trim_fmt());
}

async fn status(client: &Client, output: Output) -> Result<u8, Failure> {
    let status = client.status().await.map_err(failed)?;
    if output == Output::Json {
        print_json(&status)?;
        return Ok(0);
    }
    outln!("table version {}\n", status.version);
    // A running flip that evacuates or restores a region says so beside its id.
    let mut operations = std::collections::BTreeMap::new();
    for id in status.units.iter().filter_map(|u| u.flip.as_deref()) {
        if !operations.contains_key(id) {
            let operation = client.flip(id).await.ok().and_then(|f| f.operation);
            operations.insert(id, operation);
        }
    }
    let mut units = grid(
        &["UNIT", "REGION", "STATE", "STANDBY", "SLOTS", "FLIP"],
        &[4],
    );
    for unit in &status.units {
        let name = if unit.center {
            format!("{}*", unit.name)
        } else {
            unit.name.clone()
        };
        let flip = match (&unit.flip, &unit.locked) {
            (Some(flip), _) => match operations.get(flip.as_str()) {
                Some(Some(operation)) => format!("{flip} ({operation})"),
                _ => flip.clone(),
            },
            (None, Some(why)) => format!("LOCKED: {why}"),
            (None, None) => String::new(),
        };
        units.add_row(vec![
            name,
            unit.region.clone(),
            unit.state.clone(),
            unit.standby.clone().unwrap_or_else(|| "-".to_owned()),
            unit.slots.to_string(),
            flip,
        ]);
    }
    print_grid(&units);
    outln!("(* center unit)");
    if status.units.iter().any(|u| u.locked.is_some()) {
        outln!(
            "LOCKED: no flip may start on the unit until it is settled: unitctl flip-resolve UNIT --state active|write_frozen --reason TEXT"
        );
    }
    outln!();
    if status.gateways.is_empty() {
        outln!("no gateway has connected yet");
        return Ok(0);
    }
    let mut gateways = grid(&["GATEWAY", "REGION", "VERSION", "SEEN", "STATE"], &[2]);
    for gateway in &status.gateways {
        let state = if gateway.stale {
            "stale".to_owned()
        } else if gateway.applied_version >= status.version {
            "current".to_owned()
        } else {
            "behind".to_owned()
        };
        let state = match &gateway.rejected {
            Some(r) if r.version.is_some_and(|v| v > gateway.applied_version) => format!(
                "{state}; refused v{}: {}",
                r.version.unwrap_or_default(),
                r.error.lines().next().unwrap_or_default()
            ),
            _ => state,
        };
        gateways.add_row(vec![
            gateway.id.clone(),
            gateway.region.clone(),
            gateway.applied_version.to_string(),
            ago(gateway.last_seen_ms),
            state,
        ]);
    }
    print_grid(&gateways);
    Ok(0)
}

async fn table_get(client: &Client, output: Output) -> Result<u8, Failure> {
    let mut stored = client.table().await.map_err(failed)?;
    // The table records the version it was fetched as: `table apply` sends it as If-Match.
    stored.table.version = stored.version;
    match output {
        Output::Json => print_json(&stored)?,
        Output::Text => {
            eprintln!(
                "# version {} stored by {}{}{}",
                stored.version,
                stored.author,
                stored
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                stored
                    .forced
                    .as_deref()
                    .map(|r| format!(" (forced, moving units without a flip: {r})"))
                    .unwrap_or_default()
            );
            print_json(&stored.table)?;
        }
    }
    Ok(0)
}

/// A table file as `plan` and `apply` send it.
struct TableFile {
    text: String,
    json: bool,
    /// The `version` it records: the version it was fetched as (`table get`), when it parses.
    version: Option<u64>,
}

impl TableFile {
    fn read(file: &Path) -> Result<Self, Failure> {
        let text = table_file::read(file)?;
        let json = control_api::files::is_json(file);
        let version = if json {
            router_rules::parse_json(&text).ok().map(|t| t.version)
        } else {
            router_rules::parse_yaml(&text).ok().map(|(t, _)| t.version)
        };
        Ok(Self {
            text,
            json,
            version,
        })
    }

    fn body(&self) -> TableText {
        if self.json {
            TableText::json(self.text.clone())
        } else {
            TableText::yaml(self.text.clone())
        }
    }
}

async fn request_plan(client: &Client, table: &TableFile) -> Result<PlanResult, Failure> {
    client.plan(&table.body()).await.map_err(failed)
}

/// What to do about a file that is an edit of a version no longer in force.
fn stale_hint(file: &Path) -> String {
    format!(
        "fetch the table in force again (unitctl table get > {}), redo the edit on it, then apply",
        file.display()
    )
}

/// Append a line to a `String`.
macro_rules! push_line {
    ($text:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($text, $($arg)*);
    }};
}

/// The plan for `file`, an edit of version `base`, for people; `forced`: applied with
/// `--force-moves`.
fn plan_text(file: &Path, plan: &PlanResult, base: Option<u64>, forced: bool) -> String {
    let mut text = String::new();
    let shown = file.display();
    if !plan.valid {
        push_line!(text, "{shown}: refused ({} problems)", plan.problems.len());
        for p in &plan.problems {
            let at = match (p.line, p.column) {
                (Some(line), Some(column)) => format!(":{line}:{column}"),
                _ => String::new(),
            };
            push_line!(text, "  {shown}{at}: {}: {}", p.path, p.message);
        }
        return text;
    }
    push_line!(
        text,
        "{shown}: valid; would be stored as version {} (in force: {})",
        plan.next_version,
        plan.current_version
    );
    if let Some(base) = base.filter(|&b| b != plan.current_version) {
        push_line!(
            text,
            "  STALE: it is an edit of version {base}, but version {} is in force: an apply would be refused (409 stale_version); {}",
            plan.current_version,
            stale_hint(file)
        );
    }
    if let Some(diff) = &plan.diff {
        diff_text(&mut text, diff);
    }
    if !plan.moves.is_empty() {
        push_line!(text, "  moves {} unit(s) without a flip:", plan.moves.len());
        for m in &plan.moves {
            push_line!(text, "    unit {}: {}", m.unit, m.hint);
        }
    }
    match (&plan.put_refused, plan.moves.is_empty()) {
        (Some(_), false) if forced => push_line!(
            text,
            "  --force-moves: to be stored although it moves units without a flip (admins only; the version and the audit log record it as forced)"
        ),
        (Some(_), false) => push_line!(
            text,
            "  an apply would be REFUSED (422 moves_units): move units with flips (unitctl flip UNIT --to REGION --reason TEXT), or, as an admin, store it anyway with --force-moves REASON"
        ),
        (Some(why), true) => push_line!(text, "  an apply would be REFUSED: {why}"),
        (None, _) => {}
    }
    text
}

fn diff_text(text: &mut String, diff: &serde_json::Value) {
    let share = |key: &str| diff[key].as_f64().unwrap_or_default() * 100.0;
    push_line!(
        text,
        "  slots changing unit: {} ({:.2}%), changing region: {} ({:.2}%)",
        diff["slots_changing_unit"],
        share("share_changing_unit"),
        diff["slots_changing_region"],
        share("share_changing_region")
    );
    for unit in diff["units"].as_array().into_iter().flatten() {
        let mut what = Vec::new();
        if let Some([a, b]) = unit["region"]
            .as_array()
            .map(|v| [v[0].clone(), v[1].clone()])
        {
            what.push(format!(
                "region {} -> {}",
                a.as_str().unwrap_or(""),
                b.as_str().unwrap_or("")
            ));
        }
        if let Some([a, b]) = unit["state"]
            .as_array()
            .map(|v| [v[0].clone(), v[1].clone()])
        {
            what.push(format!(
                "state {} -> {}",
                a.as_str().unwrap_or(""),
                b.as_str().unwrap_or("")
            ));
        }
        for field in unit["fields"].as_array().into_iter().flatten() {
            what.push(field.as_str().unwrap_or_default().to_owned());
        }
        push_line!(
            text,
            "  unit {} {}: {}",
            unit["unit"].as_str().unwrap_or_default(),
            unit["change"].as_str().unwrap_or_default(),
            what.join(", ")
        );
    }
    for kind in ["regions", "routes"] {
        for change in diff[kind].as_array().into_iter().flatten() {
            push_line!(
                text,
                "  {} {} {}",
                kind.trim_end_matches('s'),
                change["name"].as_str().unwrap_or_default(),
                change["change"].as_str().unwrap_or_default()
            );
        }
    }
    for setting in diff["settings"].as_array().into_iter().flatten() {
        push_line!(text, "  setting {}", setting.as_str().unwrap_or_default());
    }
}

async fn plan(
    client: &Client,
    file: &Path,
    base: Option<u64>,
    output: Output,
) -> Result<u8, Failure> {
    let table = TableFile::read(file)?;
    let plan = request_plan(client, &table).await?;
    let base = base.or(table.version);
    if output == Output::Json {
        print_json(&plan)?;
    } else {
        out!("{}", plan_text(file, &plan, base, false));
    }
    let stale = base.is_some_and(|b| b != plan.current_version);
    let refused = !plan.valid || stale || plan.put_refused.is_some();
    Ok(if refused { EXIT_FINDING } else { 0 })
}

/// An operator's text to be sent in a header, or an input error naming the flag.
fn header_text<'a>(flag: &str, text: &'a str) -> Result<&'a str, Failure> {
    // Sent as UTF-8 bytes, which the control plane reads as such: any language, but no
    // control characters (a line break would end the header).
    HeaderValue::from_bytes(text.as_bytes())
        .map(|_| text)
        .map_err(|_| Failure::input(format!("{flag}: no control characters or line breaks")))
}

/// What `table apply --output json` prints: the plan, and the version stored when one was.
#[derive(Debug, serde::Serialize)]
struct ApplyReport<'a> {
    plan: &'a PlanResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<PutResult>,
}

/// Text for people: on stdout, or on stderr when stdout carries JSON.
fn note(output: Output, text: &str) {
    match output {
        Output::Text => out!("{text}"),
        Output::Json => {
            let _ = write!(std::io::stderr(), "{text}");
        }
    }
}

async fn apply(client: &Client, args: ApplyArgs) -> Result<u8, Failure> {
    let file = args.file.as_path();
    let output = args.output;
    let table = TableFile::read(file)?;
    let base = args.base.or(table.version);
    let plan = request_plan(client, &table).await?;
    let shown_plan = plan_text(file, &plan, base, args.force_moves.is_some());
    // With JSON on stdout, the plan is shown (on stderr) only to someone asked to confirm it.
    if output == Output::Text {
        out!("{shown_plan}");
    }
    if !plan.valid {
        if output == Output::Json {
            print_json(&ApplyReport {
                plan: &plan,
                stored: None,
            })?;
        }
        return Ok(EXIT_FINDING);
    }
    let Some(base) = base else {
        return Err(Failure::input(format!(
            "{}: no version to apply it against: give --base VERSION",
            file.display()
        )));
    };
    let forcing = args.force_moves.is_some() && !plan.moves.is_empty();
    if args.force_moves.is_some() && plan.moves.is_empty() {
        note(
            output,
            "  (--force-moves has nothing to force: the table moves no unit)\n",
        );
    }
    let put = PutTable {
        if_match: base,
        reason: args
            .reason
            .as_deref()
            .map(|reason| header_text("--reason", reason))
            .transpose()?,
        force: args
            .force_moves
            .as_deref()
            .map(|why| header_text("--force-moves", why))
            .transpose()?,
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::input(
                "not applied: confirm with --yes when not at a terminal",
            ));
        }
        if output == Output::Json {
            note(output, &shown_plan);
        }
        note(
            output,
            &format!(
                "Store it as version {}{}? [y/N] ",
                plan.next_version,
                if forcing {
                    ", moving units without a flip"
                } else {
                    ""
                }
            ),
        );
        if output == Output::Text {
            crate::out::flush();
        }
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            note(output, "not applied\n");
            return Ok(EXIT_FINDING);
        }
    }
    let stored = match client.put_table(&table.body(), &put).await {
        Ok(stored) => stored,
        // The control plane answered: refused.
        Err(error) if error.status().is_some() => return Err(put_refused(file, base, error)),
        Err(error) => return Err(failed(error)),
    };
    if output == Output::Json {
        print_json(&ApplyReport {
            plan: &plan,
            stored: Some(stored),
        })?;
        return Ok(0);
    }
    outln!(
        "stored as version {}{}; gateways are picking it up (unitctl status)",
        stored.version,
        if forcing {
            " (forced: it moves units without a flip)"
        } else {
            ""
        }
    );
    Ok(0)
}

/// A refused `PUT /v1/table`, with what to do about it.
fn put_refused(file: &Path, base: u64, error: ClientError) -> Failure {
    let code = error.code().unwrap_or_default().to_owned();
    let mut failure = failed_for(error, Some(file));
    let hint = match code.as_str() {
        "stale_version" => Some(format!(
            "{} is an edit of version {base}, which is no longer in force; {}",
            file.display(),
            stale_hint(file)
        )),
        "moves_units" => Some(
            "move units with flips (unitctl flip UNIT --to REGION --reason TEXT); to store it anyway, an admin adds --force-moves REASON"
                .to_owned(),
        ),
        _ => None,
    };
    failure.message = format!("not applied: {}", failure.message);
    if let Some(hint) = hint {
        failure.message.push_str(&format!("\nhint: {hint}"));
    }
    failure
}

fn step_line(step: &FlipStep) -> String {
    let took = step
        .finished_at_ms
        .map(|end| format!("{} ms", end.saturating_sub(step.started_at_ms)))
        .unwrap_or_default();
    let outcome = match step.outcome {
        StepOutcome::Running => "…",
        StepOutcome::Ok => "ok",
        StepOutcome::Failed => "FAILED",
    };
    let version = step.version.map(|v| format!("v{v}")).unwrap_or_default();
    let detail = step.detail.as_deref().unwrap_or_default();
    format!(
        "  {:<20} {:<7} {:<6} {:>8}  {detail}",
        step.name.as_str(),
        outcome,
        version,
        took
    )
}

/// `planned` or `emergency`, as the API spells it.
fn mode_name(mode: FlipMode) -> &'static str {
    match mode {
        FlipMode::Planned => "planned",
        FlipMode::Emergency => "emergency",
    }
}

/// A line per unit that `flip` moves: `  unit u05: sz -> hz`.
fn move_lines(flip: &FlipRecord) -> Vec<String> {
    flip.moves()
        .iter()
        .map(|m| format!("  unit {}: {} -> {}", m.unit, m.from, m.to))
        .collect()
}

/// What `flip` moves, in a few words: its operation (`evacuate:sz: `) when it has one, then
/// `unit u03 sh -> sz` for a flip of one unit or `2 units` (a line each from [`move_lines`]).
fn flip_what(flip: &FlipRecord) -> String {
    let operation = flip
        .operation
        .as_deref()
        .map(|o| format!("{o}: "))
        .unwrap_or_default();
    if flip.units.is_empty() {
        format!("{operation}unit {} {} -> {}", flip.unit, flip.from, flip.to)
    } else {
        format!("{operation}{} units", flip.units.len())
    }
}

/// `flip`'s first lines, as `flip-show` prints them: what it moves, how, who asked for it and
/// where it stands; then, for several units, a line per unit.
fn flip_header(flip: &FlipRecord) -> Vec<String> {
    let mut lines = vec![format!(
        "flip {}: {} ({:?}) by {}: {}",
        flip.id,
        flip_what(flip),
        flip.mode,
        flip.actor,
        flip.state.as_str()
    )];
    if !flip.units.is_empty() {
        lines.extend(move_lines(flip));
    }
    lines
}

async fn flip(client: &Client, args: FlipArgs) -> Result<u8, Failure> {
    let mode = if args.emergency {
        FlipMode::Emergency
    } else {
        FlipMode::Planned
    };
    let replication_check = if args.emergency {
        None
    } else {
        args.check.replication_check()
    };
    let follow_args = Follow {
        wait: args.wait,
        output: args.output,
    };
    if let [unit] = args.units.as_slice() {
        // One unit: its own endpoint, as before there were flips of several.
        let request = FlipRequest {
            to: args.to.clone(),
            mode,
            reason: args.reason,
            replication_check,
            converge_timeout_s: args.check.converge_timeout_s,
        };
        let accepted = client.start_flip(unit, &request).await.map_err(failed)?;
        let line = format!(
            "flip {} started: unit {unit} -> {} ({})",
            accepted.id,
            args.to,
            mode_name(mode)
        );
        return started(client, &accepted, Some(line), follow_args).await;
    }
    let request = MultiFlipRequest {
        units: args.units,
        to: Some(args.to),
        placement: Default::default(),
        mode,
        reason: args.reason,
        replication_check,
        converge_timeout_s: args.check.converge_timeout_s,
    };
    let accepted = client.start_flips(&request).await.map_err(failed)?;
    started(client, &accepted, None, follow_args).await
}

/// `unitctl evacuate REGION`: every unit living in REGION moves out, as one flip.
async fn evacuate(client: &Client, args: EvacuateArgs) -> Result<u8, Failure> {
    let region = segment("region", &args.region)?;
    let mode = if args.emergency {
        FlipMode::Emergency
    } else {
        FlipMode::Planned
    };
    let request = EvacuateRequest {
        mode,
        to: args.to.clone(),
        reason: args.reason.clone(),
        replication_check: if args.emergency {
            None
        } else {
            args.check.replication_check()
        },
        converge_timeout_s: args.check.converge_timeout_s,
    };
    let accepted = client.evacuate(region, &request).await.map_err(failed)?;
    let follow_args = Follow {
        wait: args.wait,
        output: args.output,
    };
    started(client, &accepted, None, follow_args).await
}

/// `unitctl restore REGION`: the units REGION's last evacuation moved come back, as one flip.
async fn restore(client: &Client, args: RestoreArgs) -> Result<u8, Failure> {
    let region = segment("region", &args.region)?;
    let request = RestoreRequest {
        reason: args.reason.clone(),
        replication_check: args.check.replication_check(),
        converge_timeout_s: args.check.converge_timeout_s,
    };
    let accepted = client.restore(region, &request).await.map_err(failed)?;
    let follow_args = Follow {
        wait: args.wait,
        output: args.output,
    };
    started(client, &accepted, None, follow_args).await
}

/// `--wait` and `--output` of a command that starts a flip.
struct Follow {
    wait: bool,
    output: Output,
}

/// Report the flip `accepted` that a command started: as JSON the control plane's answer
/// (with --wait the record once it ended); as text `line`, or else the flip's id and every
/// unit it moves (from its record), then how to follow it or (--wait) each step to its end.
async fn started(
    client: &Client,
    accepted: &FlipAccepted,
    line: Option<String>,
    how: Follow,
) -> Result<u8, Failure> {
    let id = accepted.id.as_str();
    if how.output == Output::Json {
        if !how.wait {
            print_json(accepted)?;
            return Ok(0);
        }
        return follow(client, id, Output::Json, false).await;
    }
    match line {
        Some(line) => outln!("{line}"),
        None => match client.flip(id).await {
            Ok(flip) => {
                outln!(
                    "flip {id} started: {} ({})",
                    flip_what(&flip),
                    mode_name(flip.mode)
                );
                if !flip.units.is_empty() {
                    for line in move_lines(&flip) {
                        outln!("{line}");
                    }
                }
            }
            // It started all the same: say so, and how to see it.
            Err(error) => outln!("flip {id} started (its record could not be read: {error})"),
        },
    }
    if !how.wait {
        outln!("follow it: unitctl flip-show {id}");
        return Ok(0);
    }
    follow(client, id, Output::Text, false).await
}

/// Print a line when each step starts and when it ends, until the flip ends (`Output::Json`:
/// print nothing until then, then the flip's record); exit 1 unless it succeeded. `header`:
/// begin with the flip's first lines as `flip-show` prints them.
async fn follow(client: &Client, id: &str, output: Output, header: bool) -> Result<u8, Failure> {
    // Per step index: the outcome last printed.
    let mut shown: Vec<StepOutcome> = Vec::new();
    let mut header = header && output == Output::Text;
    loop {
        let flip = client.flip(id).await.map_err(failed)?;
        if header {
            for line in flip_header(&flip) {
                outln!("{line}");
            }
            header = false;
        }
        let succeeded = if flip.state == FlipState::Succeeded {
            0
        } else {
            EXIT_FINDING
        };
        if output == Output::Json {
            if flip.state.is_final() {
                print_json(&flip)?;
                return Ok(succeeded);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for (i, step) in flip.steps.iter().enumerate() {
            if shown.get(i) == Some(&step.outcome) {
                continue;
            }
            // Steps that store a version take milliseconds; only the waits get a line when
            // they start.
            let waits = matches!(
                step.name,
                control_api::StepName::Replication
                    | control_api::StepName::ConvergeFreeze
                    | control_api::StepName::ConvergeSwitch
                    | control_api::StepName::ConvergeUnfreeze
                    | control_api::StepName::ConvergeEmergency
                    | control_api::StepName::ConvergeRollback
            );
            if step.outcome != StepOutcome::Running || waits {
                outln!("{}", step_line(step));
            }
            let awaits_confirmation = step.outcome == StepOutcome::Running
                && step.name == control_api::StepName::Replication
                && flip
                    .replication_check
                    .as_ref()
                    .is_some_and(|c| c.confirm == Some(true));
            if awaits_confirmation {
                let until = flip
                    .confirm_by_ms
                    .map(|by| format!(" until {}; then it rolls back", utc(by)))
                    .unwrap_or_default();
                outln!("  waiting for a confirmation{until}:");
                outln!("    unitctl flip-confirm {id}");
                outln!(
                    "    (or unitctl flip-cancel {id}; unitctl flip-extend {id} --seconds N to wait longer)"
                );
            }
            if i < shown.len() {
                shown[i] = step.outcome;
            } else {
                shown.push(step.outcome);
            }
        }
        if flip.state.is_final() {
            outln!("flip {id}: {}", flip.state.as_str());
            if let Some(error) = &flip.error {
                outln!("  {error}");
            }
            return Ok(succeeded);
        }
        // Flip records have no push channel: poll, like an operator refreshing a page.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `flip-confirm` and `flip-cancel` tell a flip.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Confirm,
    Cancel,
    Extend(u64),
}

async fn signal(client: &Client, id: &str, signal: Signal, output: Output) -> Result<u8, Failure> {
    let id = segment("flip", id)?;
    // The deadline an extension moves on: the runner adds the seconds to it at its next look.
    let deadline_before = match signal {
        Signal::Extend(_) => client.flip(id).await.ok().and_then(|f| f.confirm_by_ms),
        _ => None,
    };
    // The control plane's answer: `{"id": ID, "signal": "confirm"|"cancel"|"extend"}`.
    let (answer, what) = match signal {
        Signal::Confirm => (client.confirm_flip(id).await, "confirm"),
        Signal::Cancel => (client.cancel_flip(id).await, "cancel"),
        Signal::Extend(seconds) => (client.extend_flip(id, seconds).await, "extend"),
    };
    let answer = answer.map_err(failed)?;
    if output == Output::Json {
        print_json(&answer)?;
        return Ok(0);
    }
    outln!("flip {id}: {what} sent");
    if let (Signal::Extend(seconds), Some(by)) = (signal, deadline_before) {
        outln!(
            "  {seconds} s added; it waits for a confirmation until {}",
            utc(by.saturating_add(seconds.saturating_mul(1000)))
        );
    }
    Ok(0)
}

/// `name` as one segment of an API path: the API's unit and gateway names are letters,
/// digits and `- _ . : @`.
fn segment<'a>(what: &str, name: &'a str) -> Result<&'a str, Failure> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(name)
    } else {
        Err(Failure::input(format!(
            "{what} {name:?}: use letters, digits and - _ . : @"
        )))
    }
}

/// `unitctl flip-resolve UNIT --state S --reason R`: settle a unit whose flip record was lost.
async fn resolve(client: &Client, args: ResolveArgs) -> Result<u8, Failure> {
    let unit = segment("unit", &args.unit)?;
    // What stood before, to say what changed.
    let before = client.status().await.map_err(failed)?;
    let was = before.units.iter().find(|u| u.name == unit);
    let state: router_rules::UnitState = args.state.into();
    let request = ResolveRequest {
        state,
        reason: args.reason,
    };
    let result = client.resolve_unit(unit, &request).await.map_err(failed)?;
    if args.output == Output::Json {
        print_json(&result)?;
        return Ok(0);
    }
    let region = was.map(|u| u.region.as_str()).unwrap_or("its region");
    // The control plane stores a version exactly when the state changes.
    let changed = was.map_or(result.version > before.version, |u| {
        u.state != state.as_str()
    });
    if changed {
        outln!(
            "unit {unit}: {} -> {} in {region}: stored as version {}",
            was.map(|u| u.state.as_str()).unwrap_or("?"),
            state.as_str(),
            result.version
        );
    } else {
        outln!(
            "unit {unit}: already {} in {region}: no new version (version {} in force)",
            state.as_str(),
            result.version
        );
    }
    match &result.lifted {
        Some(flip) => {
            outln!("lifted the lock of lost flip {flip}: flips of {unit} may start again")
        }
        None => outln!("no lock was held on {unit}"),
    }
    Ok(0)
}

/// `unitctl gateway-forget ID`: drop a gateway taken out of service from the fleet.
async fn forget_gateway(client: &Client, id: &str, output: Output) -> Result<u8, Failure> {
    let id = segment("gateway", id)?;
    client.forget_gateway(id).await.map_err(failed)?;
    if output == Output::Json {
        // The control plane answers 204 without a body.
        print_json(&serde_json::json!({ "gateway": id, "forgotten": true }))?;
        return Ok(0);
    }
    outln!(
        "gateway {id} forgotten: flips no longer wait for it (if it is still running, it is back at its next poll)"
    );
    Ok(0)
}

/// `unitctl flip-show ID`: the flip's steps so far (and follow it with `--wait`).
async fn show(client: &Client, id: &str, wait: bool, output: Output) -> Result<u8, Failure> {
    if wait {
        return follow(client, id, output, true).await;
    }
    let flip = client.flip(id).await.map_err(failed)?;
    if output == Output::Json {
        print_json(&flip)?;
    } else {
        for line in flip_header(&flip) {
            outln!("{line}");
        }
        for step in &flip.steps {
            outln!("{}", step_line(step));
        }
        if let Some(error) = &flip.error {
            outln!("  {error}");
        }
    }
    Ok(0)
}

async fn audit(client: &Client, limit: Option<usize>, output: Output) -> Result<u8, Failure> {
    let entries = client.audit(limit).await.map_err(failed)?;
    if output == Output::Json {
        print_json(&entries)?;
        return Ok(0);
    }
    let mut table = grid(
        &[
            "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "STATUS", "VERSION", "REASON", "DETAIL",
        ],
        &[5],
    );
    for e in &entries {
        let versions = match (e.version_before, e.version_after) {
            (Some(a), Some(b)) => format!("v{a}->v{b}"),
            (Some(a), None) => format!("v{a}"),
            _ => String::new(),
        };
        let outcome = match e.outcome {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        };
        table.add_row(vec![
            utc(e.at_ms),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            outcome.to_owned(),
            e.status.map(|s| s.to_string()).unwrap_or_default(),
            versions,
            e.reason.clone().unwrap_or_default(),
            e.detail.clone().unwrap_or_default(),
        ]);
    }
    print_grid(&table);
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_795_752_217_747), "2026-11-27 04:03:37 UTC");
    }
}
