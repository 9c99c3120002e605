//! `unitctl`: validate routing tables, dry-run routing decisions, and see what a change moves.
//!
//! Exit codes: see [`EXIT_CODES`].

#![forbid(unsafe_code)]

#[macro_use]
mod out;

mod batch;
mod diff_cmd;
mod remote;
mod request;
mod route_cmd;
mod table_file;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// What each exit code means, as `unitctl --help` shows it.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  a finding or a failure: an invalid table, a difference (diff), an apply not confirmed,
     a flip that did not succeed, a request the control plane refused (400, 404, 409, 422,
     5xx, ...), its message on stderr
  2  bad usage or input: arguments, an unreadable file, no server or token given
  3  the control plane could not be reached: no connection, TLS refused, no answer in time
  4  the control plane refused the token (401) or its role (403)";

/// Operator CLI for unitgate routing tables.
#[derive(Debug, Parser)]
#[command(name = "unitctl", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: remote::Server,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check tables; print every problem as `file:line:col: path: message` (exit 1 on any).
    Validate(ValidateArgs),
    /// Show where a request goes and why, step by step, against a table file or (--live) the
    /// table in force on the control plane (dry run: nothing is sent to a gateway).
    Route(route_cmd::RouteArgs),
    /// Show what replacing OLD with NEW moves, or (--live FILE) replacing the table in force
    /// with FILE (exit 1 when anything changes, like diff(1)).
    Diff(diff_cmd::DiffArgs),
    /// Print the JSON Schema of the routing-table format.
    Schema,
    /// Control plane: units (region, state, running flip) and gateways (version, staleness).
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Control plane: get, plan or apply the routing table.
    #[command(subcommand)]
    Table(remote::TableCommand),
    /// Control plane: flip a unit, or several as one operation, to another region (planned
    /// unless --emergency).
    Flip(remote::FlipArgs),
    /// Control plane: move every unit out of a region as one flip, to each unit's standby
    /// region or --to REGION (planned unless --emergency).
    Evacuate(remote::EvacuateArgs),
    /// Control plane: bring back, as one planned flip, the units a region's last evacuation
    /// moved.
    Restore(remote::RestoreArgs),
    /// Control plane: confirm that a flip's data caught up.
    FlipConfirm {
        /// Flip id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Control plane: wait longer for a flip's confirmation (it rolls back at its deadline).
    FlipExtend {
        /// Flip id.
        id: String,
        /// Seconds to add to the deadline (1 to 86400).
        #[arg(long)]
        seconds: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Control plane: cancel a running flip (it rolls back).
    FlipCancel {
        /// Flip id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Control plane: settle a unit whose flip record was lost: set its state in the region
    /// it is in now and lift the lock that blocks new flips on it.
    FlipResolve(remote::ResolveArgs),
    /// Control plane: forget a gateway taken out of service (flips stop waiting for it).
    GatewayForget {
        /// Gateway id.
        id: String,
        /// Output format (json: `{"gateway": ID, "forgotten": true}`).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Control plane: show a flip's steps (--wait: follow it to its end).
    FlipShow {
        /// Flip id.
        id: String,
        /// Follow it until it ends.
        #[arg(long)]
        wait: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Control plane: the audit log.
    Audit {
        /// Only the last N entries.
        #[arg(long)]
        limit: Option<usize>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// Table files (YAML, or JSON with a .json extension).
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Exit code for a finding (invalid table, a difference) or a failed or refused operation.
pub const EXIT_FINDING: u8 = 1;
/// Exit code for bad usage or unreadable input.
pub const EXIT_INPUT: u8 = 2;
/// Exit code for a control plane that could not be reached (or did not answer in time).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code for a control plane that refused the token (401) or its role (403).
pub const EXIT_AUTH: u8 = 4;

/// An error that ends the command with a given exit code and message.
#[derive(Debug)]
pub struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// A failure that exits with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad usage or unreadable input (exit 2).
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_INPUT,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Route(args) => route_cmd::run(&args, &cli.server),
        Command::Diff(args) => diff_cmd::run(&args, &cli.server),
        Command::Schema => print_json(&router_rules::json_schema()).map(|()| 0),
        Command::Status { output } => remote::run(&cli.server, remote::Remote::Status { output }),
        Command::Table(command) => remote::run(&cli.server, remote::Remote::Table(command)),
        Command::Flip(args) => remote::run(&cli.server, remote::Remote::Flip(args)),
        Command::Evacuate(args) => remote::run(&cli.server, remote::Remote::Evacuate(args)),
        Command::Restore(args) => remote::run(&cli.server, remote::Remote::Restore(args)),
        Command::FlipConfirm { id, output } => {
            remote::run(&cli.server, remote::Remote::Confirm { id, output })
        }
        Command::FlipCancel { id, output } => {
            remote::run(&cli.server, remote::Remote::Cancel { id, output })
        }
        Command::FlipExtend {
            id,
            seconds,
            output,
        } => remote::run(
            &cli.server,
            remote::Remote::Extend {
                id,
                seconds,
                output,
            },
        ),
        Command::FlipResolve(args) => remote::run(&cli.server, remote::Remote::Resolve(args)),
        Command::GatewayForget { id, output } => {
            remote::run(&cli.server, remote::Remote::ForgetGateway { id, output })
        }
        Command::FlipShow { id, wait, output } => {
            remote::run(&cli.server, remote::Remote::Show { id, wait, output })
        }
        Command::Audit { limit, output } => {
            remote::run(&cli.server, remote::Remote::Audit { limit, output })
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            // A closed stderr is no reason to panic: the exit code still tells.
            let newline = if failure.message.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            let _ = write!(std::io::stderr(), "{}{newline}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn validate(args: &ValidateArgs) -> Result<u8, Failure> {
    let mut code = 0;
    let mut reports = Vec::new();
    for path in &args.files {
        let shown = path.display().to_string();
        let text = table_file::read(path)?;
        match table_file::load(path, &text) {
            Ok(table) => {
                if args.output == Output::Text {
                    outln!(
                        "{shown}: ok (version {}, {} regions, {} units, {} routes)",
                        table.version(),
                        table.regions().len(),
                        table.units().len(),
                        table.routes().len()
                    );
                }
                reports.push(
                    serde_json::json!({"file": shown, "valid": true, "version": table.version()}),
                );
            }
            Err(error) => {
                code = EXIT_FINDING;
                if args.output == Output::Text {
                    out!("{}", error.render(&shown));
                }
                reports.push(
                    serde_json::json!({"file": shown, "valid": false, "problems": error.problems}),
                );
            }
        }
    }
    if args.output == Output::Json {
        print_json(&serde_json::Value::Array(reports))?;
    }
    Ok(code)
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::input(format!("cannot write JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}
