//! The local backend of [`RateLimiter`](super::RateLimiter): GCRA on tokio's clock, in
//! this process alone.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::{check_burst, no_timer};
use crate::error::ResourceError;

/// One schedule in this process: what a [`RateLimiter`](super::RateLimiter) built
/// without a shared store holds, and the fallback of one that has a store.
pub(super) struct Limiter {
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

impl Limiter {
    /// A schedule of `rate` tokens per `period` with bursts of `burst`; the caller has
    /// checked that none of them is zero.
    pub(super) fn new(rate: u32, period: Duration, burst: u32) -> Self {
        Limiter {
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
        }
    }

    /// How many callers are waiting in [`acquire`](Self::acquire), and whether the
    /// limiter is closed.
    pub(super) fn status(&self) -> (usize, bool) {
        let state = self.lock();
        (state.queue.len(), state.closed)
    }

    /// The configured burst.
    pub(super) fn burst(&self) -> u32 {
        self.burst
    }

    /// The configured rate and period.
    pub(super) fn rate(&self) -> (u32, Duration) {
        (self.rate, self.period)
    }

    /// Takes `n` tokens now if they are admitted and nobody is waiting.
    pub(super) fn try_acquire(&self, n: u32) -> Result<bool, ResourceError> {
        check_burst(n, self.burst)?;
        let mut state = self.lock();
        if state.closed {
            return Err(ResourceError::closed("RateLimiter"));
        }
        if !state.queue.is_empty() {
            return Ok(false);
        }
        let now = Instant::now();
        Ok(self.take_if_ready(&mut state, now, n, None).is_none())
    }

    /// Waits, first come first served, until `n` tokens are admitted, and takes them.
    pub(super) async fn acquire(&self, n: u32) -> Result<(), ResourceError> {
        check_burst(n, self.burst)?;
        let id = {
            let mut state = self.lock();
            if state.closed {
                return Err(ResourceError::closed("RateLimiter"));
            }
            if state.queue.is_empty()
                && self
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
        let queued = Queued { limiter: self, id };
        let mut sleep = pin!(None::<Sleep>);
        poll_fn(|cx| {
            loop {
                let mut state = self.lock();
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
                let Some(later) = self.take_if_ready(&mut state, now, n, slept_until) else {
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

    /// Corrects an acquisition of `taken` tokens whose real cost was `used`: charges
    /// the difference (the schedule may go into debt: later callers wait it out) or
    /// gives it back (never past a full burst at the present instant).
    pub(super) fn settle(&self, taken: u32, used: u32) {
        if taken == used {
            return;
        }
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let now_s = self.scaled(Instant::now());
        let tat = state.tat.map_or(now_s, |tat| tat.max(now_s));
        if used > taken {
            state.tat = Some(tat + self.period_ns * u128::from(used - taken));
        } else {
            let refund = self.period_ns * u128::from(taken - used);
            state.tat = Some(tat.saturating_sub(refund).max(now_s));
            // The head may be admitted now.
            wake_head(&mut state);
        }
    }

    /// Admits nobody before `until`; a later call with an earlier instant does not
    /// shorten the pause.
    pub(super) fn pause_until(&self, until: Instant) {
        let mut state = self.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
        // The head recomputes its time; the others wait behind it anyway.
        wake_head(&mut state);
    }

    /// Closes the schedule: every waiter wakes with a closed error, and every later
    /// call fails the same way.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for waker in state.queue.values_mut().filter_map(Option::take) {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a handful of assignments that cannot panic
        // half-way: a poisoned lock still guards consistent state.
        crate::sync::lock(&self.state)
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

/// The tick of tokio's timer wheel.
const TIMER_TICK: Duration = Duration::from_millis(1);

fn wake_head(state: &mut State) {
    if let Some(waker) = state.queue.values_mut().next().and_then(Option::take) {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::super::RateLimiter;
    use std::time::Duration;

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
