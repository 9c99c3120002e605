//! `unitgate`: the gateway binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::GatewayConfig;
use gateway::{Gateway, Listeners, upgrade};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// unitgate: routes every request to the region that owns its user's unit.
#[derive(Debug, Parser)]
#[command(name = "unitgate", version, about)]
struct Cli {
    /// Gateway configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Take over the listening sockets of the gateway serving on the config's
    /// `upgrade_socket` (zero-downtime upgrade); it drains and exits once this one serves.
    #[arg(long)]
    upgrade: bool,
    /// Serve the table cache even when its content does not match the digest it was saved
    /// with (it was changed by hand); by default such a cache is refused and the gateway
    /// waits for the control plane.
    #[arg(long)]
    accept_cache_as_is: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration and the routing table it names, without serving.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("unitgate: give --config FILE (see `unitgate --help`)");
        return ExitCode::from(2);
    };
    let config = match GatewayConfig::load(&path) {
        Ok(mut config) => {
            config.accept_cache_as_is = cli.accept_cache_as_is;
            config
        }
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check) => check(&config),
        None => serve(config, cli.upgrade),
    }
}

fn check(config: &GatewayConfig) -> ExitCode {
    if let Err(error) = config.hop_secret() {
        eprintln!("{error}");
        return ExitCode::from(1);
    }
    for listen in &config.listen.https {
        if let Err(error) = listen.server_config() {
            eprintln!("{error}");
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &config.table.file {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("{}: cannot read: {error}", path.display());
                return ExitCode::from(1);
            }
        };
        let origin = path.display().to_string();
        let (loaded, source) = if gateway::source::is_json(path) {
            (router_rules::load_json(&text), None)
        } else {
            match router_rules::parse_yaml(&text) {
                Ok((raw, source)) => (router_rules::validate(raw, Some(&source)), Some(source)),
                Err(error) => (Err(error), None),
            }
        };
        match loaded {
            Ok(table) if table.region_index(&config.region).is_none() => {
                let known: Vec<&str> = table.regions().iter().map(|r| &*r.name).collect();
                eprintln!(
                    "{}",
                    config.problem(
                        "region",
                        format!(
                            "the table {} has no region {:?} (it has: {})",
                            path.display(),
                            config.region,
                            known.join(", ")
                        )
                    )
                );
                return ExitCode::from(1);
            }
            Ok(table) => {
                // The TLS files the table names, read as the gateway will read them.
                let configs = gateway::connect::TlsConfigs::default();
                if let Err(mut problems) =
                    gateway::connect::TableConnectors::build(&table, &configs)
                {
                    if let Some(source) = &source {
                        source.place(&mut problems);
                    }
                    eprint!("{}", router_rules::render_problems(&origin, &problems));
                    return ExitCode::from(1);
                }
                println!("{origin}: ok (table version {})", table.version());
            }
            Err(error) => {
                eprint!("{}", error.render(&origin));
                return ExitCode::from(1);
            }
        }
    }
    println!("configuration ok");
    ExitCode::SUCCESS
}

fn serve(config: GatewayConfig, upgrade: bool) -> ExitCode {
    control_api::logging::init(config.log_format);
    // The main runtime runs the accept loops, the table source, health checks and the admin
    // listener (and, with one worker, the proxy itself); more workers are threads of their own
    // (`gateway::workers`).
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        let fail = |error: String| {
            tracing::error!(%error, "cannot start");
            eprintln!("unitgate: {error}");
            ExitCode::from(1)
        };
        let (listeners, predecessor) = match (&config.upgrade_socket, upgrade) {
            (Some(socket), true) => match upgrade::receive(socket, &config) {
                Ok((listeners, predecessor)) => (listeners, Some(predecessor)),
                Err(error) => return fail(error),
            },
            (None, true) => return fail("--upgrade needs upgrade_socket in the config".to_owned()),
            (_, false) => match Listeners::bind(&config) {
                Ok(listeners) => (listeners, None),
                Err(error) => return fail(error),
            },
        };
        let handover = match upgrade::Handover::of(&listeners) {
            Ok(handover) => handover,
            Err(error) => return fail(format!("cannot keep the sockets for upgrades: {error}")),
        };
        let drain = config.timeouts.drain();
        let upgrade_socket = config.upgrade_socket.clone();
        let gateway = match Gateway::start(config, listeners).await {
            Ok(gateway) => gateway,
            Err(error) => return fail(error),
        };
        if let Some(predecessor) = predecessor {
            match tokio::task::spawn_blocking(move || upgrade::confirm(predecessor)).await {
                Ok(Ok(())) => tracing::info!("upgrade: took over the listeners; the old process drains"),
                Ok(Err(error)) => tracing::warn!(%error, "upgrade: the old process did not confirm"),
                Err(error) => tracing::warn!(%error, "upgrade: confirmation task failed"),
            }
        }
        let handed_over = async {
            match upgrade_socket {
                Some(path) => tokio::task::spawn_blocking(move || upgrade::serve_handover(path, handover)).await,
                None => std::future::pending().await,
            }
        };
        // A stop is for good; after an upgrade the new process serves under the same id.
        let leaving = tokio::select! {
            () = wait_for_stop(&gateway) => {
                tracing::info!("stopping: draining in-flight requests");
                true
            }
            result = handed_over => {
                match result {
                    Ok(Ok(())) => tracing::info!("upgraded: a new process serves; draining in-flight requests"),
                    Ok(Err(error)) => tracing::error!(%error, "upgrade socket failed; draining"),
                    Err(error) => tracing::error!(%error, "upgrade task failed; draining"),
                }
                false
            }
        };
        if leaving {
            gateway.stop_for_good(drain).await;
        } else {
            gateway.shutdown(drain).await;
        }
        ExitCode::SUCCESS
    });
    // The upgrade socket's thread may still be blocked in accept(): do not wait for it.
    runtime.shutdown_background();
    code
}

/// Until SIGTERM or SIGINT; SIGHUP reloads the table file.
async fn wait_for_stop(gateway: &Gateway) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the table file");
                gateway.reload();
            }
        }
    }
}
