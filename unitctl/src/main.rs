//! `unitctl`: validate routing tables, dry-run routing decisions, and see what a change moves.
//!
//! Exit codes: 0 ok, 1 a finding (invalid table, differences), 2 usage or input error.

#![forbid(unsafe_code)]

mod batch;
mod diff_cmd;
mod remote;
mod route_cmd;
mod table_file;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Operator CLI for unitgate routing tables.
#[derive(Debug, Parser)]
#[command(name = "unitctl", version, about, long_about = None)]
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
    /// Show where a request goes and why, step by step (dry run: nothing is sent).
    Route(route_cmd::RouteArgs),
    /// Show what replacing OLD with NEW moves (exit 1 when anything changes, like diff(1)).
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
    /// Control plane: flip a unit to another region (planned unless --emergency).
    Flip(remote::FlipArgs),
    /// Control plane: confirm that a flip's data caught up.
    FlipConfirm {
        /// Flip id.
        id: String,
    },
    /// Control plane: cancel a running flip (it rolls back).
    FlipCancel {
        /// Flip id.
        id: String,
    },
    /// Control plane: settle a unit whose flip record was lost: set its state in the region
    /// it is in now and lift the lock that blocks new flips on it.
    FlipResolve(remote::ResolveArgs),
    /// Control plane: forget a gateway taken out of service (flips stop waiting for it).
    GatewayForget {
        /// Gateway id.
        id: String,
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

/// Exit code for a finding (invalid table, a difference).
pub const EXIT_FINDING: u8 = 1;
/// Exit code for bad usage or unreadable input.
pub const EXIT_INPUT: u8 = 2;

/// An error that ends the command with a given exit code and message.
#[derive(Debug)]
pub struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
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
        Command::Route(args) => route_cmd::run(&args),
        Command::Diff(args) => diff_cmd::run(&args),
        Command::Schema => print_json(&router_rules::json_schema()).map(|()| 0),
        Command::Status { output } => remote::run(&cli.server, remote::Remote::Status { output }),
        Command::Table(command) => remote::run(&cli.server, remote::Remote::Table(command)),
        Command::Flip(args) => remote::run(&cli.server, remote::Remote::Flip(args)),
        Command::FlipConfirm { id } => remote::run(&cli.server, remote::Remote::Confirm { id }),
        Command::FlipCancel { id } => remote::run(&cli.server, remote::Remote::Cancel { id }),
        Command::FlipResolve(args) => remote::run(&cli.server, remote::Remote::Resolve(args)),
        Command::GatewayForget { id } => {
            remote::run(&cli.server, remote::Remote::ForgetGateway { id })
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
            eprint!("{}", failure.message);
            if !failure.message.ends_with('\n') {
                eprintln!();
            }
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
                    println!(
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
                    print!("{}", error.render(&shown));
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
    println!("{text}");
    Ok(())
}
