//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use control_api::FlipState;

/// The control plane's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// API answers by status class (index 1..=5 for 1xx..5xx).
    pub responses: [AtomicU64; 6],
    /// Table versions stored by this replica (puts and flip steps).
    pub table_writes: AtomicU64,
    /// Watch requests being held open.
    pub watches_open: AtomicI64,
    /// Flips ended, by outcome.
    pub flips_succeeded: AtomicU64,
    /// Flips rolled back.
    pub flips_rolled_back: AtomicU64,
    /// Flips failed (rollback failed too).
    pub flips_failed: AtomicU64,
    /// Audit appends that failed.
    pub audit_errors: AtomicU64,
    /// Unreadable flip records set aside.
    pub flips_quarantined: AtomicU64,
    /// Gateway watches and reports refused: the token's binding, or a version never stored.
    pub gateway_reports_refused: AtomicU64,
    /// Calls refused for a missing or unknown token (counted, not audited one by one).
    pub unauthenticated: AtomicU64,
}

impl Metrics {
    /// Count an answer.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a flip's end.
    pub fn flip_ended(&self, state: FlipState) {
        let counter = match state {
            FlipState::Succeeded => &self.flips_succeeded,
            FlipState::RolledBack => &self.flips_rolled_back,
            FlipState::Failed | FlipState::Running => &self.flips_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Render every metric: this replica's counters, the version in force and the fleet as
/// `gateways` shows it.
pub fn render(m: &Metrics, version: u64, gateways: &[control_api::GatewayStatus]) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, lines: &[(String, i128)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let load = |a: &AtomicU64| i128::from(a.load(Ordering::Relaxed));
    gauge(
        "unitgate_control_table_version",
        "Version of the routing table in force.",
        "gauge",
        &[(String::new(), i128::from(version))],
    );
    let count = |f: &dyn Fn(&control_api::GatewayStatus) -> bool| {
        gateways.iter().filter(|g| f(g)).count() as i128
    };
    gauge(
        "unitgate_control_gateways",
        "Gateways seen, by state: current (serving the version in force), behind, diverged (serving other content under a stored version number), stale (not heard from).",
        "gauge",
        &[
            (
                "{state=\"current\"}".into(),
                count(&|g| !g.stale && !g.diverged && g.applied_version >= version),
            ),
            (
                "{state=\"behind\"}".into(),
                count(&|g| !g.stale && !g.diverged && g.applied_version < version),
            ),
            (
                "{state=\"diverged\"}".into(),
                count(&|g| !g.stale && g.diverged),
            ),
            ("{state=\"stale\"}".into(), count(&|g| g.stale)),
        ],
    );
    gauge(
        "unitgate_control_gateways_rejecting",
        "Gateways whose last report is a refused version newer than what they serve.",
        "gauge",
        &[(
            String::new(),
            count(&|g| {
                g.rejected
                    .as_ref()
                    .is_some_and(|r| r.version.is_some_and(|v| v > g.applied_version))
            }),
        )],
    );
    gauge(
        "unitgate_control_watches_open",
        "Gateway watch requests held open by this replica.",
        "gauge",
        &[(
            String::new(),
            i128::from(m.watches_open.load(Ordering::Relaxed)),
        )],
    );
    gauge(
        "unitgate_control_table_writes_total",
        "Table versions stored through this replica.",
        "counter",
        &[(String::new(), load(&m.table_writes))],
    );
    gauge(
        "unitgate_control_flips_total",
        "Flips ended on this replica, by outcome.",
        "counter",
        &[
            ("{outcome=\"succeeded\"}".into(), load(&m.flips_succeeded)),
            (
                "{outcome=\"rolled_back\"}".into(),
                load(&m.flips_rolled_back),
            ),
            ("{outcome=\"failed\"}".into(), load(&m.flips_failed)),
        ],
    );
    gauge(
        "unitgate_control_responses_total",
        "API answers by status class.",
        "counter",
        &(1..=5)
            .map(|c| (format!("{{class=\"{c}xx\"}}"), load(&m.responses[c])))
            .collect::<Vec<_>>(),
    );
    gauge(
        "unitgate_control_flips_quarantined_total",
        "Unreadable flip records set aside at recovery; their units stay locked until resolved.",
        "counter",
        &[(String::new(), load(&m.flips_quarantined))],
    );
    gauge(
        "unitgate_control_gateway_reports_refused_total",
        "Gateway watches and reports refused: outside the token's binding, or naming a version never stored.",
        "counter",
        &[(String::new(), load(&m.gateway_reports_refused))],
    );
    gauge(
        "unitgate_control_unauthenticated_total",
        "Calls refused for a missing or unknown token; logged once a second with a count, not audited one by one.",
        "counter",
        &[(String::new(), load(&m.unauthenticated))],
    );
    gauge(
        "unitgate_control_audit_errors_total",
        "Audit entries that could not be written.",
        "counter",
        &[(String::new(), load(&m.audit_errors))],
    );
    control_api::process_metrics::render_build_info(
        &mut out,
        "control-plane",
        env!("CARGO_PKG_VERSION"),
    );
    control_api::process_metrics::render(&mut out);
    out
}
