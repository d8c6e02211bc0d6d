//! [`RateLimiter`]: `rate` tokens per `period` with a `burst`, scheduled by GCRA on
//! tokio's clock, fair between waiters.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::AsyncResource;
use crate::error::{ConfigError, ResourceError};

/// A rate limiter: at most `rate` tokens per `period`, with bursts of up to `burst`
/// tokens, shared by every clone.
///
/// It schedules from ideal arrival times (the generic cell rate algorithm): each token
/// moves a theoretical arrival time forward by `period / rate`, and a request is
/// admitted once that time is within `burst` tokens of now. So the configured rate
/// holds exactly, even at burst 1, and a caller that waited consumes its tokens like
/// any other (many waiters released together cannot overshoot the rate).
///
/// - [`acquire`](Self::acquire) waits, first come first served: a waiter is never
///   overtaken by a later one, whatever their weights. A cancelled `acquire` gives its
///   place up at once.
/// - [`try_acquire`](Self::try_acquire) never waits, and never jumps the queue.
/// - A request for more than `burst` tokens could never be admitted: it is an error at
///   once, not a hang.
/// - [`pause_until`](Self::pause_until) holds every caller back until an instant: the
///   answer to a `429` with `Retry-After`.
/// - It runs on tokio's clock, so `tokio::time::pause` drives it in tests. Timers fire
///   on a 1 ms tick, up to a tick late; when a token's interval is a whole number of
///   ticks, the waiter at the head of the queue is owed the time its wake-up lost, up
///   to one tick, so the limiter keeps its rate (0.999 of 1000/s at burst 1). The
///   bound that holds whatever the wake-up lateness: in any window of length `w`, at
///   most `burst + 1 + floor(w × rate / period)` tokens are admitted (the `+ 1` only
///   after a late wake-up; `burst + floor(w × rate / period)` otherwise).
/// - Closing it wakes every waiter with an error for which
///   [`ResourceError::is_closed`] is true; later calls fail the same way.
/// - It is configured once, when it is built ([`builder`](Self::builder)): every clone
///   shares the one schedule, and an invalid configuration is an error then.
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::limiter::RateLimiter;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), resource_runtime::ResourceError> {
/// let limiter = RateLimiter::builder(10, Duration::from_secs(1)).burst(2).build()?;
/// let start = tokio::time::Instant::now();
/// for _ in 0..4 {
///     limiter.acquire(1).await?;
/// }
/// // Two at once (the burst), then one every 100 ms.
/// assert_eq!(start.elapsed(), Duration::from_millis(200));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Limiter>,
}

struct Limiter {
    /// The period in nanoseconds. Times are kept scaled by `rate` (a token is
    /// `period_ns` scaled units), so the rate holds exactly whatever it is.
    period_ns: u128,
    /// Where scaled times count from.
    epoch: Instant,
    /// The token interval is a whole number of timer ticks.
    whole_ticks: bool,
    burst: u32,
    rate: u32,
    period: Duration,
    state: Mutex<State>,
}

struct State {
    /// The theoretical arrival time, scaled: when the limiter is back to a full burst.
    tat: Option<u128>,
    /// Nobody is admitted before this.
    paused_until: Option<Instant>,
    /// Waiters in arrival order (ids only grow).
    queue: BTreeMap<u64, Option<Waker>>,
    next_id: u64,
    closed: bool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (waiting, closed) = {
            let state = self.inner.lock();
            (state.queue.len(), state.closed)
        };
        f.debug_struct("RateLimiter")
            .field("rate", &self.inner.rate)
            .field("period", &self.inner.period)
            .field("burst", &self.inner.burst)
            .field("waiting", &waiting)
            .field("closed", &closed)
            .finish()
    }
}

/// Configures a [`RateLimiter`] before it exists, so that every clone shares one
/// configuration; from [`RateLimiter::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RateLimiterBuilder {
    rate: u32,
    period: Duration,
    burst: Option<u32>,
}

impl RateLimiterBuilder {
    /// Bursts of up to `burst` tokens (default: `rate`). A burst of 1 spaces every
    /// token by `period / rate`.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Builds the limiter; fails when it could admit nothing: a rate of 0, a zero
    /// period or a burst of 0 (a [`ConfigError`] inside the error).
    pub fn build(self) -> Result<RateLimiter, ResourceError> {
        let RateLimiterBuilder {
            rate,
            period,
            burst,
        } = self;
        let burst = burst.unwrap_or(rate);
        let invalid = |setting, why| Err(ConfigError::new("RateLimiter", setting, why).into());
        if rate == 0 {
            return invalid("rate", "is 0, so nothing is ever admitted: give at least 1");
        }
        if period.is_zero() {
            return invalid("period", "is zero, so there is no rate: give at least 1ns");
        }
        if burst == 0 {
            return invalid(
                "burst",
                "is 0, so nothing is ever admitted: give at least 1",
            );
        }
        Ok(RateLimiter {
            inner: Arc::new(Limiter {
                period_ns: period.as_nanos(),
                epoch: Instant::now(),
                whole_ticks: period
                    .as_nanos()
                    .is_multiple_of(u128::from(rate) * TIMER_TICK.as_nanos()),
                burst,
                rate,
                period,
                state: Mutex::new(State {
                    tat: None,
                    paused_until: None,
                    queue: BTreeMap::new(),
                    next_id: 0,
                    closed: false,
                }),
            }),
        })
    }
}

impl RateLimiter {
    /// `rate` tokens per `period`, with a burst of `rate`. Fails on a rate of 0 or a
    /// zero period; use [`builder`](Self::builder) for another burst.
    pub fn new(rate: u32, period: Duration) -> Result<Self, ResourceError> {
        Self::builder(rate, period).build()
    }

    /// A limiter of `rate` tokens per `period`, to configure before it is built.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::limiter::RateLimiter;
    ///
    /// # fn main() -> Result<(), resource_runtime::ResourceError> {
    /// let limiter = RateLimiter::builder(100, Duration::from_secs(60)).burst(10).build()?;
    /// assert_eq!(limiter.burst(), 10);
    /// assert!(RateLimiter::builder(100, Duration::from_secs(60)).burst(0).build().is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(rate: u32, period: Duration) -> RateLimiterBuilder {
        RateLimiterBuilder {
            rate,
            period,
            burst: None,
        }
    }

    /// The configured burst.
    pub fn burst(&self) -> u32 {
        self.inner.burst
    }

    /// How many callers are waiting in [`acquire`](Self::acquire).
    pub fn waiting(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Takes `n` tokens now if the limiter admits them and nobody is waiting; never
    /// waits. `Ok(false)` means "not now".
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::limiter::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), resource_runtime::ResourceError> {
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1))?;
    /// assert!(limiter.try_acquire(1)?);
    /// assert!(!limiter.try_acquire(1)?);
    /// assert!(limiter.try_acquire(2).is_err()); // more than the burst: never
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_acquire(&self, n: u32) -> Result<bool, ResourceError> {
        self.inner.check(n)?;
        let mut state = self.inner.lock();
        if state.closed {
            return Err(ResourceError::closed("RateLimiter"));
        }
        if !state.queue.is_empty() {
            return Ok(false);
        }
        let now = Instant::now();
        Ok(self.inner.take_if_ready(&mut state, now, n, None).is_none())
    }

    /// Waits, first come first served, until `n` tokens are admitted, and takes them.
    ///
    /// Fails at once when `n` is more than the burst, and with a closed error when the
    /// limiter is closed, also while waiting. Dropping the future gives its place up.
    /// Waiting needs tokio's timer: on a runtime built without `enable_time`, a call
    /// that would wait fails with an error that says so.
    pub async fn acquire(&self, n: u32) -> Result<(), ResourceError> {
        let limiter = &*self.inner;
        limiter.check(n)?;
        let id = {
            let mut state = limiter.lock();
            if state.closed {
                return Err(ResourceError::closed("RateLimiter"));
            }
            if state.queue.is_empty()
                && limiter
                    .take_if_ready(&mut state, Instant::now(), n, None)
                    .is_none()
            {
                return Ok(());
            }
            let id = state.next_id;
            state.next_id += 1;
            state.queue.insert(id, None);
            id
        };
        let queued = Queued { limiter, id };
        let mut sleep = pin!(None::<Sleep>);
        poll_fn(|cx| {
            loop {
                let mut state = limiter.lock();
                if state.closed {
                    return Poll::Ready(Err(ResourceError::closed("RateLimiter")));
                }
                let head = state.queue.first_key_value().map(|(head, _)| *head);
                if head != Some(id) {
                    if let Some(waker) = state.queue.get_mut(&id) {
                        *waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                let now = Instant::now();
                let slept_until = sleep.as_ref().as_pin_ref().map(|timer| timer.deadline());
                let Some(later) = limiter.take_if_ready(&mut state, now, n, slept_until) else {
                    state.queue.remove(&id);
                    wake_head(&mut state);
                    return Poll::Ready(Ok(()));
                };
                let at = later.at();
                if let Some(waker) = state.queue.get_mut(&id) {
                    *waker = Some(cx.waker().clone());
                }
                drop(state);
                match sleep.as_mut().as_pin_mut() {
                    Some(timer) => {
                        if timer.deadline() != at {
                            timer.reset(at);
                        }
                    }
                    None => match crate::step::try_sleep_until(at) {
                        Some(timer) => sleep.set(Some(timer)),
                        // Waiting for a token needs a timer: say so instead of
                        // panicking in the caller's task.
                        None => return Poll::Ready(Err(no_timer())),
                    },
                }
                let Some(timer) = sleep.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The time has come: take the tokens on the next turn of the loop.
            }
        })
        .await
        .inspect(|()| queued.admitted())
    }

    /// Admits nobody before `until`, for every caller (a `429` with `Retry-After` from
    /// an API, say). A later call with an earlier instant does not shorten the pause.
    pub fn pause_until(&self, until: Instant) {
        let mut state = self.inner.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
        // The head recomputes its time; the others wait behind it anyway.
        wake_head(&mut state);
    }

    /// Closes the limiter for every clone: every waiter wakes with a closed error, and
    /// every later call fails the same way. Closing a closed limiter does nothing. It
    /// never waits; it is `async` to share one shape with the other handles' `close`.
    pub async fn close(&self) -> Result<(), ResourceError> {
        self.close_sync();
        Ok(())
    }

    pub(crate) fn close_sync(&self) {
        let mut state = self.inner.lock();
        state.closed = true;
        for waker in state.queue.values_mut().filter_map(Option::take) {
            waker.wake();
        }
    }
}

/// Takes a waiter out of the queue when its `acquire` ends, however it ends, and lets
/// the next one take its turn.
struct Queued<'a> {
    limiter: &'a Limiter,
    id: u64,
}

impl Queued<'_> {
    /// The tokens were taken and the waiter left the queue already.
    fn admitted(self) {
        std::mem::forget(self);
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        let was_head = state.queue.first_key_value().map(|(head, _)| *head) == Some(self.id);
        state.queue.remove(&self.id);
        if was_head {
            wake_head(&mut state);
        }
    }
}

/// Not admitted yet: when it will be, computed only for a caller that waits (the
/// conversion divides, and `try_acquire` has no use for it).
struct Later<'a> {
    limiter: &'a Limiter,
    ready_s: u128,
    paused: Option<Instant>,
}

impl Later<'_> {
    fn at(&self) -> Instant {
        let ready = self.limiter.instant(self.ready_s);
        self.paused.map_or(ready, |paused| ready.max(paused))
    }
}

/// The error of a waiter on a runtime without timers.
fn no_timer() -> ResourceError {
    ResourceError::other(LimiterError::NoTimer)
}

/// Why a [`RateLimiter`] refused a request (beside a closed limiter, for which
/// [`ResourceError::is_closed`] is true): inside the [`ResourceError`] its calls
/// return (reach it with [`ResourceError::downcast_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimiterError {
    /// More tokens than the burst were asked for at once: they could never be admitted.
    ExceedsBurst {
        /// The tokens asked for.
        requested: u32,
        /// The limiter's burst.
        burst: u32,
    },
    /// The caller would have to wait, and waiting needs tokio's timer, which this
    /// runtime does not have.
    NoTimer,
}

impl std::fmt::Display for LimiterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimiterError::ExceedsBurst { requested, burst } => write!(
                f,
                "{requested} tokens can never be admitted by a rate limiter with a burst of {burst}: ask for at most {burst} at a time, or raise the burst"
            ),
            LimiterError::NoTimer => f.write_str(
                "RateLimiter: waiting for a token needs a timer, and this tokio runtime has none: build it with `enable_time` (or `enable_all`)",
            ),
        }
    }
}

impl std::error::Error for LimiterError {}

/// The tick of tokio's timer wheel.
const TIMER_TICK: Duration = Duration::from_millis(1);

fn wake_head(state: &mut State) {
    if let Some(waker) = state.queue.values_mut().next().and_then(Option::take) {
        waker.wake();
    }
}

impl Limiter {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a handful of assignments that cannot panic
        // half-way: a poisoned lock still guards consistent state.
        crate::sync::lock(&self.state)
    }

    fn check(&self, n: u32) -> Result<(), ResourceError> {
        if n > self.burst {
            return Err(ResourceError::other(LimiterError::ExceedsBurst {
                requested: n,
                burst: self.burst,
            }));
        }
        Ok(())
    }

    /// `now` in scaled units since the epoch.
    fn scaled(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.epoch).as_nanos() * u128::from(self.rate)
    }

    /// The first instant at or after a scaled time.
    fn instant(&self, scaled: u128) -> Instant {
        let rate = u128::from(self.rate.max(1));
        let ns = scaled.div_ceil(rate);
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(ns)
    }

    /// Takes `n` tokens if they are admitted at `now`; otherwise the instant they will
    /// be.
    ///
    /// `slept_until` is, for the head of the queue, the instant its timer was set for.
    /// Timers fire on a 1 ms tick, up to a tick after the instant they were set for;
    /// if the next token were counted from the wake-up, a limiter at 1 ms a token would
    /// lose most of a tick on every token and run near half its rate. So, when the
    /// interval is a whole number of ticks, a late head's tokens count from the instant
    /// it slept until, but never from more than one tick before now: lateness beyond
    /// a tick is a busy runtime, not the timer, and owing it would let a burst through.
    /// Since a tick is at most one token's interval, the schedule is never owed more
    /// than one token: in any window `w`, at most `burst + 1 + floor(w / T)` tokens
    /// are admitted.
    fn take_if_ready(
        &self,
        state: &mut State,
        now: Instant,
        n: u32,
        slept_until: Option<Instant>,
    ) -> Option<Later<'_>> {
        let now_s = self.scaled(now);
        let floor = match slept_until.filter(|at| self.whole_ticks && *at < now) {
            Some(at) => self
                .scaled(at)
                .max(now_s.saturating_sub(TIMER_TICK.as_nanos() * u128::from(self.rate))),
            None => now_s,
        };
        let tat = state.tat.map_or(floor, |tat| tat.max(floor));
        // Admitted once `tat + n·T - burst·T <= now`: `tat` is at most `burst - n`
        // tokens ahead of now (`T` is `period_ns` in scaled units).
        let ahead = self.period_ns * u128::from(self.burst - n);
        let ready_s = tat.saturating_sub(ahead).max(now_s);
        let paused = state.paused_until.filter(|paused| *paused > now);
        if ready_s > now_s || paused.is_some() {
            return Some(Later {
                limiter: self,
                ready_s,
                paused,
            });
        }
        state.tat = Some(tat + self.period_ns * u128::from(n));
        None
    }
}

impl AsyncResource for RateLimiter {
    /// Closes the limiter for every clone; see [`close`](RateLimiter::close).
    async fn close(&mut self) -> Result<(), ResourceError> {
        RateLimiter::close(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_finer_than_a_nanosecond_a_token_holds() {
        // 600 million a second is 1.67 ns a token: rounding the interval to whole
        // nanoseconds would admit 1 million in a millisecond's burst.
        let burst = 1_000_000;
        let limiter = RateLimiter::builder(600_000_000, Duration::from_secs(1))
            .burst(burst)
            .build()
            .unwrap();
        let mut admitted = 0_u32;
        while limiter.try_acquire(1).unwrap() {
            admitted += 1;
        }
        assert_eq!(admitted, burst);
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut refilled = 0_u32;
        while limiter.try_acquire(1).unwrap() {
            refilled += 1;
        }
        assert_eq!(refilled, 600_000);
    }
}
