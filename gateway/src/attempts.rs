//! Which endpoints a decided request is sent to, in what order and by when, and what the client
//! hears when none of them answered. Every front end goes through here — hyper's, the codec's
//! HTTP/1.1 path and its HTTP/2 detour — so retries, key affinity, deadlines, health counting
//! and the replies for an upstream's failure are the same whichever way a request came in.
//!
//! A request goes to another endpoint only when nothing of it reached the one before: an
//! idempotent one when no connection could be made, any one when an HTTP/2 upstream left it
//! unprocessed (RFC 9113 section 8.7) and it can be sent again; any other failure ends the
//! request.

use std::cell::Cell;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use router_rules::Balance;
use router_rules::table::Pool as TablePool;
use serde_json::json;

use crate::decide::Decided;
use crate::metrics::{ClientEvent, UpstreamFailure};
use crate::proxy::{Ctx, Reply, Shared, Target};
use crate::store::{EndpointState, Health, PoolState};

/// Endpoints a request is tried on at most (see [`Attempts::after`]).
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Methods whose requests may be sent again: RFC 9110's idempotent ones.
const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// Whether a request with `method` and the method-override field values `overrides` may be
/// sent again: its method is idempotent and every override is empty or plainly names an
/// idempotent method, which a framework would execute instead
/// (`router_rules::RequestView::method_overrides`).
pub(crate) fn may_resend<'a>(
    method: &Method,
    mut overrides: impl Iterator<Item = &'a [u8]>,
) -> bool {
    IDEMPOTENT.contains(&method.as_str())
        && overrides.all(|value| {
            let named = value.trim_ascii();
            named.is_empty()
                || IDEMPOTENT
                    .iter()
                    .any(|m| m.as_bytes().eq_ignore_ascii_case(named))
        })
}

/// The attempts of one request on the endpoints of the pool it was decided for.
pub(crate) struct Attempts<'a> {
    /// This region's pool for the route, or the target region's gateways.
    pool: &'a PoolState,
    /// A key the route keeps on the same endpoints, with the table's side of the pool, which
    /// orders the endpoints for it.
    affinity: Option<(&'a str, &'a TablePool)>,
    /// Positions in `pool` tried so far, `usize::MAX` past the last.
    tried: [usize; MAX_ATTEMPTS],
    made: usize,
    limit: usize,
    /// Whether a connect failure lets the request go on (an unprocessed one goes on anyway).
    idempotent: bool,
    /// When the request started: the first attempt's time counts from there.
    start: Instant,
    read: Duration,
    /// The request's total deadline, or the client's own when that comes first.
    total_deadline: Instant,
    /// The client's own deadline (`grpc-timeout`), when it comes before the gateway's.
    client_deadline: Option<Instant>,
    /// Whether the last deadline handed out was the client's own, sooner than the gateway's:
    /// a wait that timed out ran out at it.
    clients_deadline: Cell<bool>,
}

impl<'a> Attempts<'a> {
    /// The attempts `decided` allows: up to `MAX_ATTEMPTS`, never more than the pool has
    /// endpoints; after the first, only as [`Attempts::next`] and [`Attempts::after`] say.
    pub(crate) fn new<'s: 'a>(shared: &Shared, ctx: &Ctx, decided: &'a Decided<'s>) -> Self {
        let (pool, affinity) = match decided.target {
            Target::Local(pool) => {
                let table_pool = decided.snapshot.table.regions()[decided.snapshot.region]
                    .pool(decided.route.service);
                let key = (decided.route.balance == Balance::KeyAffinity)
                    .then_some(decided.routed.key.as_deref())
                    .flatten();
                (pool, key.zip(table_pool))
            }
            Target::Region(region) => (&decided.snapshot.regions[region].gateways, None),
        };
        let limit = pool.endpoints.len().clamp(1, MAX_ATTEMPTS);
        let timeouts = shared.config.timeouts;
        let total_deadline = ctx.start + timeouts.total();
        let client_deadline = ctx.client_deadline.filter(|d| *d < total_deadline);
        Self {
            pool,
            affinity,
            tried: [usize::MAX; MAX_ATTEMPTS],
            made: 0,
            limit,
            idempotent: ctx.resendable,
            start: ctx.start,
            read: timeouts.read(),
            total_deadline: client_deadline.unwrap_or(total_deadline),
            client_deadline,
            clients_deadline: Cell::new(false),
        }
    }

    /// The first endpoint to try, or the next one after a connect failure: counted as an
    /// attempt; `None` once the attempts are used up, every endpoint was tried, or the request
    /// is not idempotent and had its one.
    pub(crate) fn next(&mut self) -> Option<(usize, &'a EndpointState)> {
        if self.made > 0 && !self.idempotent {
            return None;
        }
        self.pick()
    }

    /// What follows an attempt on `endpoint` that failed with `fault`, its request handed back
    /// (`unsent`) when it may be sent again as it is: the failure counted, and the endpoint to
    /// try next with that request when it may go on. After a connect failure an idempotent
    /// request may; after the upstream left it unprocessed any request may, whatever its
    /// method: the upstream did nothing with it (RFC 9113 section 8.7).
    pub(crate) fn after<R>(
        &mut self,
        shared: &Shared,
        endpoint: &EndpointState,
        fault: &UpstreamFault,
        unsent: Option<R>,
    ) -> Option<((usize, &'a EndpointState), R)> {
        match fault {
            UpstreamFault::Connect(_) => connect_failed(shared, endpoint),
            // Counted for operators to see, never against the endpoint's health: an upstream
            // refuses streams at its concurrency limit, or while it goes away, not because it
            // is failing.
            UpstreamFault::Unprocessed(_) => shared
                .metrics
                .upstream_error(endpoint.id, UpstreamFailure::Unprocessed),
            UpstreamFault::Timeout
            | UpstreamFault::Broken(_)
            | UpstreamFault::Stale(_)
            | UpstreamFault::Refused(_) => {
                return None;
            }
        }
        let unsent = unsent?;
        let next = match fault {
            UpstreamFault::Unprocessed(_) => self.pick().or_else(|| self.again()),
            _ => self.next(),
        }?;
        Some((next, unsent))
    }

    /// The next endpoint (healthy ones first: by the key's order under key affinity, else by
    /// round robin), counted as an attempt; `None` once the attempts are used up or every
    /// endpoint was tried.
    fn pick(&mut self) -> Option<(usize, &'a EndpointState)> {
        if self.made == self.limit {
            return None;
        }
        let tried = &self.tried[..self.made];
        let index = match self.affinity {
            Some((key, table_pool)) => self
                .pool
                .first_healthy(table_pool.affinity_indices(key), tried),
            None => self.pool.round_robin(tried),
        }?;
        self.tried[self.made] = index;
        self.made += 1;
        Some((index, &self.pool.endpoints[index]))
    }

    /// The last attempt's endpoint once more, counted as an attempt, when no other is left to
    /// try: a request an upstream left unprocessed may find it able to take it on a new
    /// connection (a draining instance's GOAWAY, behind a single address such as a Service's)
    /// or a stream free (REFUSED_STREAM at its concurrency limit). `None` once the attempts
    /// are used up.
    fn again(&mut self) -> Option<(usize, &'a EndpointState)> {
        if self.made == 0 || self.made == MAX_ATTEMPTS {
            return None;
        }
        let index = self.tried[self.made - 1];
        self.tried[self.made] = index;
        self.made += 1;
        Some((index, &self.pool.endpoints[index]))
    }

    /// Take the last attempt back: its endpoint may be chosen again, and it does not count
    /// (a pooled connection the upstream had closed as it was taken).
    pub(crate) fn take_back(&mut self) {
        if self.made > 0 {
            self.made -= 1;
            self.tried[self.made] = usize::MAX;
        }
    }

    /// The endpoint at position `index` of the pool.
    pub(crate) fn endpoint(&self, index: usize) -> &'a EndpointState {
        &self.pool.endpoints[index]
    }

    /// The current attempt's deadline: a read timeout from the request's start for the first
    /// attempt (no clock read), from now for the ones after, never past the request's total
    /// deadline.
    pub(crate) fn deadline(&self) -> Instant {
        let start = if self.made <= 1 {
            self.start
        } else {
            Instant::now()
        };
        self.deadline_from(start)
    }

    /// A read timeout from `start`, never past the request's total deadline.
    pub(crate) fn deadline_from(&self, start: Instant) -> Instant {
        let read = start + self.read;
        self.clients_deadline
            .set(self.client_deadline.is_some_and(|deadline| deadline < read));
        read.min(self.total_deadline)
    }

    /// When the request as a whole runs out of time: the client's deadline, when it has one,
    /// or the gateway's total one. (A wait bounded by it is judged by the attempt's deadline:
    /// the client's when that was sooner than the gateway's own.)
    pub(crate) fn total_deadline(&self) -> Instant {
        self.total_deadline
    }

    /// The reply to a request whose last attempt, on the endpoint at `index`, failed with
    /// `fault`. Time that ran out on the client's own deadline is the client's: a `504` that
    /// says so (gRPC's `DEADLINE_EXCEEDED`), never counted against the endpoint.
    pub(crate) fn failed(&self, shared: &Shared, index: usize, fault: UpstreamFault) -> Reply {
        // The client's deadline is the one that ran out when it was the one waited for, sooner
        // than the gateway's own (timers fire a little late, so the clock alone could not tell
        // the two apart).
        if let (UpstreamFault::Timeout, Some(deadline)) = (&fault, self.client_deadline)
            && self.clients_deadline.get()
        {
            shared.metrics.client_event(ClientEvent::DeadlineExceeded);
            let after = deadline.saturating_duration_since(self.start);
            return Reply::new(
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": "the client's deadline (grpc-timeout) ran out", "deadline_ms": after.as_millis()}),
            );
        }
        upstream_fault(shared, self.endpoint(index), fault)
    }

    /// The reply when no endpoint could be tried.
    pub(crate) fn no_endpoint(&self) -> Reply {
        Reply::new(
            StatusCode::BAD_GATEWAY,
            json!({"error": "no endpoint to forward to", "tried": self.made}),
        )
    }
}

/// A connection to `endpoint` could not be made: counted against it (and may eject it).
pub(crate) fn connect_failed(shared: &Shared, endpoint: &EndpointState) {
    shared
        .metrics
        .upstream_error(endpoint.id, UpstreamFailure::Connect);
    eject(shared, &endpoint.health);
}

/// How the last attempt on an endpoint failed on the upstream's side.
pub(crate) enum UpstreamFault {
    /// No connection could be made (counted by `connect_failed` when it happened).
    Connect(String),
    /// No answer in time.
    Timeout,
    /// The exchange broke (closed, reset, or something malformed came).
    Broken(String),
    /// A pooled connection closed or reset as it was taken, before any byte of the answer:
    /// the upstream's idle timeout met the request on the wire. That says nothing of the
    /// endpoint's health (a new connection is what tells), so it is not counted against it;
    /// the request fails as a broken one when it may not go again on a new connection.
    Stale(String),
    /// The upstream refused this one request as malformed (an HTTP/2 stream reset with
    /// PROTOCOL_ERROR) on a connection that goes on serving others: the request's doing, so
    /// not counted against the endpoint.
    Refused(String),
    /// The upstream did not process the request (an HTTP/2 stream reset with REFUSED_STREAM,
    /// or one a GOAWAY says it left alone): counted by [`Attempts::after`] when it happened,
    /// never against the endpoint. Answered as a refusal when it cannot go on.
    Unprocessed(String),
}

/// The reply to a request whose last attempt `endpoint` failed; a timeout or a broken exchange
/// (not a stale pooled connection) counts against the endpoint (and may eject it).
fn upstream_fault(shared: &Shared, endpoint: &EndpointState, fault: UpstreamFault) -> Reply {
    let address = &*endpoint.address;
    let stale = matches!(fault, UpstreamFault::Stale(_));
    match fault {
        UpstreamFault::Connect(message) => {
            tracing::debug!(%message, upstream = address, "upstream connect failed");
            Reply::new(
                StatusCode::BAD_GATEWAY,
                json!({"error": "upstream unreachable", "upstream": address}),
            )
        }
        UpstreamFault::Timeout => {
            shared
                .metrics
                .upstream_error(endpoint.id, UpstreamFailure::Timeout);
            eject(shared, &endpoint.health);
            Reply::new(
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": "upstream timed out", "upstream": address}),
            )
        }
        UpstreamFault::Broken(message) | UpstreamFault::Stale(message) => {
            tracing::debug!(%message, upstream = address, "upstream exchange failed");
            if stale {
                shared
                    .metrics
                    .upstream_error(endpoint.id, UpstreamFailure::Stale);
            } else {
                shared
                    .metrics
                    .upstream_error(endpoint.id, UpstreamFailure::Other);
                eject(shared, &endpoint.health);
            }
            Reply::new(
                StatusCode::BAD_GATEWAY,
                json!({"error": "upstream exchange failed", "upstream": address, "detail": message}),
            )
        }
        UpstreamFault::Refused(message) | UpstreamFault::Unprocessed(message) => {
            tracing::debug!(%message, upstream = address, "upstream refused the request");
            Reply::new(
                StatusCode::BAD_GATEWAY,
                json!({"error": "upstream refused the request", "upstream": address, "detail": message}),
            )
        }
    }
}

/// One more failed exchange for an endpoint's health: enough in a row eject it for a while.
fn eject(shared: &Shared, health: &Health) {
    let config = &shared.config.health_check;
    health.failure(
        config.eject_after_failures,
        Duration::from_millis(config.eject_for_ms),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plainly_idempotent_overrides_let_a_request_go_again() {
        let resend =
            |method: Method, overrides: &[&[u8]]| may_resend(&method, overrides.iter().copied());
        assert!(resend(Method::GET, &[]));
        assert!(resend(Method::GET, &[b" delete\t", b""]));
        assert!(!resend(Method::POST, &[]));
        assert!(!resend(Method::PUT, &[b"POST"]));
        // Express executes what comes before a comma; bytes that are not text name nothing
        // the gateway can be sure of.
        assert!(!resend(Method::GET, &[b"POST,\xff"]));
        assert!(!resend(Method::GET, &[b"GET, POST"]));
        assert!(!resend(Method::GET, &[b"\xa0GET"]));
    }
}
