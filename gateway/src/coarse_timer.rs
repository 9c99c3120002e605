//! The proxy's timeouts: coarse (they fire up to one [`TICK`] late, never early) and cheap.
//!
//! Each proxy worker keeps its pending deadlines in one list that one task sweeps every tick.
//! Arming a deadline is an insert into that list and disarming it a remove, both under a lock
//! only its own worker takes; a tokio timer costs a timer-wheel registration, its removal and
//! clock reads on polls. Every request arms two (hyper's header-read timeout, through
//! [`hyper::rt::Timer`], and the upstream deadline) and nearly none fires: moving both here
//! saved about 840 instructions per request (`bench/instructions.sh`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// How often pending deadlines are checked: the most a timeout fires late.
pub const TICK: Duration = Duration::from_millis(50);

struct Entry {
    at: Instant,
    waker: Option<Waker>,
    fired: bool,
}

type Pending = Mutex<Slab<Entry>>;

/// One worker's deadlines.
#[derive(Clone, Default)]
pub struct CoarseTimer {
    pending: Arc<Pending>,
}

impl CoarseTimer {
    /// A timer whose deadlines fire once [`CoarseTimer::sweeper`] runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The task that fires due deadlines every tick; it ends when the timer is dropped.
    pub fn sweeper(&self) -> impl Future<Output = ()> + Send + 'static {
        let pending: Weak<Pending> = Arc::downgrade(&self.pending);
        async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pending) = pending.upgrade() else {
                    return;
                };
                fire_due(&pending, Instant::now());
            }
        }
    }

    /// A future that completes at `at` (or up to a tick later).
    pub fn deadline(&self, at: Instant) -> CoarseSleep {
        CoarseSleep {
            pending: self.pending.clone(),
            at,
            key: None,
            done: false,
        }
    }

    /// `future`'s output, or `Err(TimedOut)` once `at` has passed.
    pub fn timeout_at<F: Future>(&self, at: Instant, future: F) -> Timeout<F> {
        Timeout {
            future,
            deadline: self.deadline(at),
        }
    }

    /// `future`'s output, or `Err(TimedOut)` once it has waited `after`: the clock is read
    /// only if `future` has to wait at all, so a write that goes straight into the socket
    /// costs no clock reading and no deadline.
    pub fn timeout_after<F: Future>(&self, after: Duration, future: F) -> TimeoutAfter<'_, F> {
        TimeoutAfter {
            future,
            timer: self,
            after,
            deadline: None,
        }
    }

    /// Deadlines armed and not yet dropped.
    #[cfg(test)]
    fn armed(&self) -> usize {
        lock(&self.pending).len()
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, Slab<Entry>> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

fn fire_due(pending: &Pending, now: Instant) {
    let mut due = Vec::new();
    for (_, entry) in lock(pending).iter_mut() {
        if !entry.fired && entry.at <= now {
            entry.fired = true;
            due.extend(entry.waker.take());
        }
    }
    // Woken outside the lock: a woken task may arm or drop a deadline at once.
    for waker in due {
        waker.wake();
    }
}

/// A coarse deadline; dropping it disarms it.
pub struct CoarseSleep {
    pending: Arc<Pending>,
    at: Instant,
    key: Option<usize>,
    done: bool,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        let mut pending = lock(&this.pending);
        let Some(key) = this.key else {
            this.key = Some(pending.insert(Entry {
                at: this.at,
                waker: Some(cx.waker().clone()),
                fired: false,
            }));
            return Poll::Pending;
        };
        let entry = &mut pending[key];
        if entry.fired {
            pending.remove(key);
            this.key = None;
            this.done = true;
            return Poll::Ready(());
        }
        match &mut entry.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.pending).remove(key);
        }
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.deadline(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.deadline(deadline))
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

pin_project_lite::pin_project! {
    /// See [`CoarseTimer::timeout_at`].
    pub struct Timeout<F> {
        #[pin]
        future: F,
        deadline: CoarseSleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(this.deadline).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`CoarseTimer::timeout_after`].
    pub struct TimeoutAfter<'a, F> {
        #[pin]
        future: F,
        timer: &'a CoarseTimer,
        after: Duration,
        deadline: Option<CoarseSleep>,
    }
}

impl<F: Future> Future for TimeoutAfter<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let (timer, after) = (*this.timer, *this.after);
        let deadline = this
            .deadline
            .get_or_insert_with(|| timer.deadline(Instant::now() + after));
        match Pin::new(deadline).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn deadlines_fire_within_a_tick_and_disarm_when_dropped() {
        let timer = CoarseTimer::new();
        tokio::spawn(timer.sweeper());
        let start = Instant::now();
        let slow = std::future::pending::<()>();
        let result = timer
            .timeout_at(start + Duration::from_millis(120), slow)
            .await;
        assert_eq!(result, Err(TimedOut));
        assert_eq!(timer.armed(), 0, "a fired deadline leaves the list");

        let quick = timer
            .timeout_at(Instant::now() + Duration::from_secs(60), async { 7 })
            .await;
        assert_eq!(quick, Ok(7));
        let mut pending = Box::pin(timer.deadline(Instant::now() + Duration::from_secs(60)));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(pending.as_mut().poll(&mut cx).is_pending());
        assert_eq!(timer.armed(), 1);
        drop(pending);
        assert_eq!(timer.armed(), 0, "a dropped deadline is disarmed");

        let ready = timer.timeout_after(Duration::from_millis(1), async { 3 });
        tokio::pin!(ready);
        assert_eq!(ready.as_mut().await, Ok(3));
        assert_eq!(
            timer.armed(),
            0,
            "nothing armed for a future that did not wait"
        );
        let waited = timer
            .timeout_after(Duration::from_millis(120), std::future::pending::<()>())
            .await;
        assert_eq!(waited, Err(TimedOut));
        assert!(start.elapsed() >= Duration::from_millis(240));
        assert_eq!(timer.armed(), 0);
    }
}
