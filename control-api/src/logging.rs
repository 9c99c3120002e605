//! Logging set-up shared by the gateway and the control plane: text for people, JSON for
//! collectors, colour only on a terminal, and `RUST_LOG` honoured. rustls warns once per
//! connection about what a client sent in its handshake (an IP address as the server name,
//! say): it is held to errors unless `RUST_LOG` names rustls, so clients cannot fill the log.

use serde::Deserialize;

/// Log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log to standard error in `format`, at `info` unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat) {
    let directives = match std::env::var("RUST_LOG") {
        Ok(asked) if asked.contains("rustls") => asked,
        Ok(asked) => format!("{asked},rustls=error"),
        Err(_) => "info,rustls=error".to_owned(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
