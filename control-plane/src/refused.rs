//! Why the control plane refuses a request, in its own terms. The domain modules (table
//! admission, flips, units) say what is wrong and which kind of wrong it is; the API turns the
//! kind into an HTTP status and the rest into the JSON error body.

use control_api::ApiProblem;

use crate::store::StoreError;

/// Which kind of wrong: each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed (400).
    BadRequest,
    /// What it names does not exist (404).
    NotFound,
    /// It conflicts with the state in force: another version, a running flip (409).
    Conflict,
    /// Well-formed, but what it asks for is not allowed (422).
    Unprocessable,
    /// The store cannot be reached, or fenced the write off (503).
    Unavailable,
    /// The control plane itself failed (500).
    Internal,
}

/// A refusal: its kind, a stable code for programs, a message for people and, for a table,
/// each problem with its field path.
#[derive(Debug)]
pub struct Refused {
    /// Which kind of wrong.
    pub kind: Kind,
    /// Stable code, e.g. `stale_version`.
    pub code: &'static str,
    /// What is wrong and what to do, naming the field or unit.
    pub message: String,
    /// A refused table's problems, one per field.
    pub problems: Vec<ApiProblem>,
}

impl Refused {
    /// A refusal without field problems.
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// A refused table: `message` and the table's problems, rendered and one by one.
    pub fn table(
        kind: Kind,
        code: &'static str,
        message: &str,
        error: &router_rules::TableError,
    ) -> Self {
        Self {
            kind,
            code,
            message: format!("{message}: {}", error.render("body").trim_end()),
            problems: error.problems.iter().map(ApiProblem::from).collect(),
        }
    }
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Self {
        Self::new(Kind::Unavailable, "store_unavailable", error.to_string())
    }
}

/// Run CPU-heavy work (table validation) on the blocking pool: a large table takes its time
/// there, not on the threads that answer `/healthz` and hold the gateways' watches.
pub async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refused> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        Refused::new(
            Kind::Internal,
            "internal",
            format!("table validation did not finish: {e}"),
        )
    })
}
