//! Flow control: a rate limit (GCRA, one atomic) and a concurrency limit per route and per
//! unit, as the routing table declares them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use router_rules::RawLimits;

/// One route's or one unit's limits, shared by every request that falls under them.
#[derive(Debug)]
pub struct Limiter {
    limits: RawLimits,
    rate: Option<Gcra>,
    in_flight: AtomicU32,
}

/// The generic cell rate algorithm: each admitted request pushes the "theoretical arrival
/// time" one emission interval later; a request is refused while that time is more than the
/// burst tolerance ahead of now.
#[derive(Debug)]
struct Gcra {
    epoch: Instant,
    interval_ns: u64,
    tolerance_ns: u64,
    tat_ns: AtomicU64,
}

impl Gcra {
    fn new(rate: u32, burst: u32) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(rate.max(1));
        Self {
            epoch: Instant::now(),
            interval_ns,
            tolerance_ns: interval_ns * u64::from(burst.max(1) - 1),
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Admit one request now, or say how long until one would be.
    fn try_admit(&self) -> Result<(), Duration> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance_ns {
                return Err(Duration::from_nanos(start - now - self.tolerance_ns));
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                start + self.interval_ns,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the rate; retry after this long.
    Rate(Duration),
    /// Too many in flight.
    Concurrency,
}

impl Refusal {
    /// Seconds for `Retry-After` (at least 1).
    pub fn retry_after_s(self) -> u64 {
        match self {
            Refusal::Rate(wait) => wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            Refusal::Concurrency => 1,
        }
        .max(1)
    }

    /// `rate` or `concurrency`.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::Rate(_) => "rate",
            Refusal::Concurrency => "concurrency",
        }
    }
}

impl Limiter {
    /// A limiter for `limits`.
    pub fn new(limits: RawLimits) -> Self {
        Self {
            limits,
            rate: limits
                .rate
                .map(|rate| Gcra::new(rate, limits.burst.unwrap_or(1))),
            in_flight: AtomicU32::new(0),
        }
    }

    /// The limits this limiter enforces.
    pub fn limits(&self) -> RawLimits {
        self.limits
    }

    /// Admit a request: a permit that holds a concurrency slot until dropped.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if let Some(max) = self.limits.concurrency {
            let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
            if previous >= max {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Concurrency);
            }
        }
        let permit = Permit {
            limiter: self.limits.concurrency.map(|_| Arc::clone(self)),
        };
        if let Some(rate) = &self.rate {
            rate.try_admit().map_err(Refusal::Rate)?;
        }
        Ok(permit)
    }
}

/// Holds a concurrency slot while a request is in flight.
#[derive(Debug)]
pub struct Permit {
    limiter: Option<Arc<Limiter>>,
}

/// A request's permits: its route's and its unit's, and for a write its place among its
/// unit's writes in flight.
pub type Permits = (
    Option<Permit>,
    Option<Permit>,
    Option<crate::store::WriteInFlight>,
);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(limiter) = &self.limiter {
            limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Memory for the request bodies the gateway holds whole — an HTTP/1.1 client's request to an
/// `h2` pool is read whole before it is sent — over every worker at once. A body that would
/// not fit is refused (`503`), so that many large bodies at once cannot take the process's
/// memory; every other body is relayed as it comes and needs none.
#[derive(Debug)]
pub struct BodyBudget {
    limit: u64,
    held: AtomicU64,
}

/// What one request holds of the [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub struct BodyHold {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicU64::new(0),
        })
    }

    /// Nothing held yet, for one request.
    pub fn hold(self: &Arc<Self>) -> BodyHold {
        BodyHold {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes held now, over every request.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl BodyHold {
    /// Hold `bytes` in all (more than before, or as much): `false`, holding no more than
    /// before, when the budget has not that much left.
    pub fn grow_to(&mut self, bytes: u64) -> bool {
        self.grow_under(bytes, self.budget.limit)
    }

    /// As [`BodyHold::grow_to`], but only while no more than half the budget is held: for what
    /// the gateway keeps by choice (copies for a retry), so that it runs short of room before
    /// a body that must be held whole is refused.
    pub fn grow_to_within_half(&mut self, bytes: u64) -> bool {
        self.grow_under(bytes, self.budget.limit / 2)
    }

    /// Hold `bytes` in all unless that takes the budget's total past `ceiling`.
    fn grow_under(&mut self, bytes: u64, ceiling: u64) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        let taken = self
            .budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(more).filter(|total| *total <= ceiling)
            });
        if taken.is_ok() {
            self.bytes = bytes;
        }
        taken.is_ok()
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: Option<u32>, burst: Option<u32>, concurrency: Option<u32>) -> Arc<Limiter> {
        Arc::new(Limiter::new(RawLimits {
            rate,
            burst,
            concurrency,
        }))
    }

    #[test]
    fn rate_admits_the_burst_then_refuses() {
        let limiter = limits(Some(1), Some(5), None);
        for _ in 0..5 {
            assert!(limiter.admit().is_ok());
        }
        let refusal = limiter.admit().expect_err("over the burst");
        assert!(matches!(refusal, Refusal::Rate(_)));
        assert_eq!(refusal.retry_after_s(), 1);
    }

    #[test]
    fn concurrency_frees_slots_on_drop() {
        let limiter = limits(None, None, Some(2));
        let a = limiter.admit().expect("first");
        let _b = limiter.admit().expect("second");
        assert_eq!(limiter.admit().expect_err("third"), Refusal::Concurrency);
        drop(a);
        assert!(limiter.admit().is_ok());
    }

    #[test]
    fn body_budget_refuses_what_does_not_fit_and_frees_on_drop() {
        let budget = BodyBudget::new(100);
        let mut a = budget.hold();
        assert!(a.grow_to(60));
        let mut b = budget.hold();
        assert!(!b.grow_to(50), "60 + 50 is over 100");
        assert!(b.grow_to(40));
        assert_eq!(budget.held(), 100);
        assert!(!a.grow_to(61), "no room left");
        assert!(a.grow_to(60), "as much as held already");
        drop(a);
        assert_eq!(budget.held(), 40);
        assert!(b.grow_to(100));
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
