//! `unitgate-demo`: a control plane and three regions on this machine, in one process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Run a control plane (127.0.0.1:7070) and three regions — a gateway each (127.0.0.1:8001-8003,
/// admin :9101-9103) following it, and demo upstreams — routing by
/// deploy/examples/three-regions.yaml.
#[derive(Debug, Parser)]
#[command(name = "unitgate-demo", version, about)]
struct Cli {
    /// Added to every cross-region hop, each way, in milliseconds (a simulated WAN link).
    #[arg(long, default_value_t = 0)]
    wan_delay_ms: u64,
    /// Directory for the demo's store, caches, table, tokens and env file.
    #[arg(long, default_value = ".unitgate-demo")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run one demo upstream on its own: it prints `listening on ADDR`, then one JSON line per
    /// request it receives (method, path, headers).
    Upstream {
        /// Service name it answers as.
        #[arg(long)]
        service: String,
        /// Region name it answers as.
        #[arg(long)]
        region: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Serve HTTP/1.1 over TLS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("unitgate-demo: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    if let Some(Command::Upstream {
        service,
        region,
        listen,
        tls_cert,
        tls_key,
    }) = cli.command
    {
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => match gateway::demo::tls_config(&cert, &key) {
                Ok(tls) => Some(tls),
                Err(error) => {
                    eprintln!("unitgate-demo upstream: {error}");
                    return ExitCode::from(1);
                }
            },
            _ => None,
        };
        return runtime.block_on(upstream(&service, &region, listen, tls));
    }
    let wan_delay = Duration::from_millis(cli.wan_delay_ms);
    runtime.block_on(async move {
        let layout = unitgate_demo::Layout::standard();
        let demo = match unitgate_demo::start(&cli.dir, wan_delay, &layout).await {
            Ok(demo) => demo,
            Err(error) => {
                eprintln!("unitgate-demo: {error}");
                return ExitCode::from(1);
            }
        };
        println!("{}", unitgate_demo::tour(&demo, wan_delay));
        wait_for_signal().await;
        println!("stopping the demo");
        unitgate_demo::stop(demo).await;
        ExitCode::SUCCESS
    })
}

async fn upstream(
    service: &str,
    region: &str,
    listen: std::net::SocketAddr,
    tls: Option<gateway::demo::DemoTls>,
) -> ExitCode {
    use std::io::Write;
    let print: gateway::demo::OnRequest = std::sync::Arc::new(|received| {
        if let Ok(line) = serde_json::to_string(received) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    let started =
        gateway::demo::DemoUpstream::start_with(listen, service, region, false, Some(print), tls)
            .await;
    match started {
        Ok(upstream) => {
            println!("listening on {}", upstream.addr);
            let _ = std::io::stdout().flush();
            wait_for_signal().await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("unitgate-demo upstream: cannot listen on {listen}: {error}");
            ExitCode::from(1)
        }
    }
}

/// Until SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
