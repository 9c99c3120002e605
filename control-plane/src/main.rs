//! `unitgate-control`: the control plane's binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use control_plane::ControlPlane;
use control_plane::config::ControlConfig;
use control_plane::server::{Server, tls_config};

/// unitgate control plane: versioned routing tables, unit flips, push to every gateway.
#[derive(Debug, Parser)]
#[command(name = "unitgate-control", version, about)]
struct Cli {
    /// Configuration file (YAML). Accepted before or after the command.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration (and the initial table) without starting.
    Check,
    /// Read a token on standard input and print its SHA-256 for the `tokens` list.
    HashToken,
    /// Print a new random token and its SHA-256.
    NewToken,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashToken) => hash_token(),
        Some(Command::NewToken) => {
            let token = control_plane::auth::new_token();
            println!(
                "token:  {token}\nsha256: {}",
                control_plane::auth::hash_token(&token)
            );
            ExitCode::SUCCESS
        }
        Some(Command::Check) => match load(cli.config).map(|config| check(&config)) {
            Ok(Ok(())) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Ok(Err(problems)) => config_error(&problems),
            Err(code) => code,
        },
        None => match load(cli.config) {
            Ok(config) => match config.tokens() {
                Ok(_) => {
                    control_api::logging::init(config.log_format);
                    run(config)
                }
                Err(problems) => config_error(&problems),
            },
            Err(code) => code,
        },
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("unitgate-control: {message}");
    ExitCode::from(2)
}

/// Problems with the configuration (or the files it names), one `file:line:col: path:
/// message` line each, as they are: editors and CI logs jump to the place.
fn config_error(problems: &str) -> ExitCode {
    eprintln!("{}", problems.trim_end());
    ExitCode::from(2)
}

fn load(path: Option<PathBuf>) -> Result<ControlConfig, ExitCode> {
    let Some(path) = path else {
        return Err(fail("--config FILE is required"));
    };
    ControlConfig::load(&path).map_err(|problems| config_error(&problems))
}

/// Everything `check` can know without starting: tokens, TLS files, the initial table. Every
/// problem found, one line each.
fn check(config: &ControlConfig) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Err(e) = config.tokens() {
        problems.push(e);
    }
    if let Some(tls) = &config.tls
        && let Err(e) = tls_config(tls)
    {
        problems.push(config.problem("tls", e.strip_prefix("tls: ").unwrap_or(&e)));
    }
    if let Err(e) = config.initial_table() {
        problems.push(e.trim_end().to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn hash_token() -> ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_line(&mut token).is_err() {
        return fail("cannot read the token from standard input");
    }
    let token = token.trim();
    if token.chars().count() < control_plane::auth::MIN_TOKEN_LEN {
        return fail(&format!(
            "the token has {} characters; at least {} are required",
            token.chars().count(),
            control_plane::auth::MIN_TOKEN_LEN
        ));
    }
    println!("{}", control_plane::auth::hash_token(token));
    ExitCode::SUCCESS
}

fn run(config: ControlConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result: Result<(), String> = runtime.block_on(async move {
        let tls = config.tls.as_ref().map(tls_config).transpose()?;
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let cp = ControlPlane::open(config).await?;
        let server = Server::start(cp.clone(), listener, tls)?;
        // One line on stdout for whoever started the process (and chose port 0).
        println!("unitgate-control listening on {}", server.addr);
        tracing::info!(
            addr = %server.addr,
            store = cp.store.kind(),
            version = cp.store.current_version(),
            replica = cp.replica,
            "control plane serving"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("signals: {e}"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        server.shutdown(Duration::from_secs(2)).await;
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}
