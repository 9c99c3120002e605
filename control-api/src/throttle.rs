//! Log lines that a client can trigger — one per request or per connection — written at most
//! once a second, with the number of occurrences since the last line. The metrics count every
//! occurrence; the log only says that it is happening. A flood of forged markers or broken
//! handshakes must not turn into a flood of log lines (and of disk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How often a throttled line may be written.
const INTERVAL_MS: u64 = 1000;

/// One kind of throttled log line.
#[derive(Debug, Default)]
pub struct LogThrottle {
    next_ms: AtomicU64,
    pending: AtomicU64,
}

impl LogThrottle {
    /// A throttle that lets the first occurrence through.
    pub const fn new() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Count an occurrence. `Some(n)` when a line is due now: `n` occurrences (this one
    /// included) happened since the last line.
    pub fn occurred(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now + INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return None;
        }
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.occurred(), Some(1));
        for _ in 0..999 {
            assert_eq!(throttle.occurred(), None);
        }
        // The next interval's line counts everything held back.
        throttle.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(throttle.occurred(), Some(1000));
    }
}
