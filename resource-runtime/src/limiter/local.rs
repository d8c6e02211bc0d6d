//! The local backend of [`RateLimiter`](super::RateLimiter): GCRA on tokio's clock or
//! the CPU's counter, in this process alone.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::pin::pin;
#[cfg(feature = "quanta")]
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use portable_atomic::AtomicU128;
use tokio::time::{Instant, Sleep};

#[cfg(feature = "quanta")]
use super::clock::counter;
use super::{LimiterClock, check_burst, no_timer};
use crate::error::ResourceError;

/// One schedule in this process: what a [`RateLimiter`](super::RateLimiter) built
/// without a shared store holds, and the fallback of one that has a store.
///
/// The schedule itself is one atomic word, `tat`. While nobody waits, no pause holds
/// and the limiter is open (`slow` is false), a call takes its tokens with a
/// compare-and-swap on it and touches nothing else: no lock. Waiters, pauses and the
/// close live under the lock, and set `slow` so that every call takes the lock and
/// keeps its place behind them; waiters take their tokens by the same
/// compare-and-swap.
pub(super) struct Limiter {
    /// A token's interval in scaled units: times are nanoseconds times `scale`, chosen
    /// so that a token is a whole number of units, and the rate holds exactly whatever
    /// it is.
    token: u128,
    /// Scaled units per nanosecond.
    scale: u128,
    /// `token` and `scale` in 64 bits, for a narrow schedule.
    narrow: Narrow,
    /// Where times count from, on tokio's clock.
    epoch: Instant,
    /// What the schedule reads the time on.
    clock: Clock,
    /// How far, scaled, the schedule may fall behind now and still go on from where it
    /// is rather than from now: [`GRACE`] less what the burst absorbs itself
    /// (`(burst - 1)` tokens), when a token's interval is a whole number of timer
    /// ticks; zero otherwise.
    grace: u128,
    burst: u32,
    rate: u32,
    period: Duration,
    /// The theoretical arrival time, scaled: when the limiter is back to a full burst.
    /// Zero (the epoch) until the first token is taken.
    tat: Tat,
    /// Someone waits, a pause may hold, or the limiter is closed: calls take the lock.
    slow: AtomicBool,
    state: Mutex<State>,
}

struct State {
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
    pub(super) fn new(rate: u32, period: Duration, burst: u32, clock: LimiterClock) -> Self {
        let period_ns = period.as_nanos();
        // A token is `period_ns / rate` ns: scaled by `rate / gcd`, it is the whole
        // number `period_ns / gcd` of units.
        let gcd = gcd(period_ns, u128::from(rate));
        let scale = u128::from(rate) / gcd;
        let token = period_ns / gcd;
        // One 64-bit word holds the schedule when it can count a century (and a full
        // burst past it) in these units; otherwise two do.
        let century_ns: u128 = 100 * 365 * 24 * 3600 * 1_000_000_000;
        let narrow = scale * century_ns + token * u128::from(burst) < u128::from(u64::MAX);
        let whole_ticks = period_ns.is_multiple_of(u128::from(rate) * TIMER_TICK.as_nanos());
        // A burst of more than one token absorbs `(burst - 1)` tokens of lateness by
        // itself: only the rest of the grace is needed.
        let grace = if whole_ticks {
            (GRACE.as_nanos() * scale).saturating_sub(token * u128::from(burst - 1))
        } else {
            0
        };
        let now = Instant::now();
        Limiter {
            token,
            scale,
            narrow: Narrow {
                token: u64::try_from(token).unwrap_or(u64::MAX),
                scale: u64::try_from(scale).unwrap_or(u64::MAX),
                grace: u64::try_from(grace).unwrap_or(u64::MAX),
            },
            // Set back past the grace, so that the empty schedule (0) is idle from the
            // start: the first calls get the burst, not the burst and the grace.
            epoch: now.checked_sub(GRACE + TIMER_TICK).unwrap_or(now),
            clock: Clock::new(clock),
            grace,
            burst,
            rate,
            period,
            tat: if narrow {
                Tat::Narrow(AtomicU64::new(0))
            } else {
                Tat::Wide(AtomicU128::new(0))
            },
            slow: AtomicBool::new(false),
            state: Mutex::new(State {
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

    /// The clock the schedule reads.
    pub(super) fn clock(&self) -> LimiterClock {
        match self.clock {
            Clock::Tokio => LimiterClock::Tokio,
            #[cfg(feature = "quanta")]
            Clock::Counter(_) => LimiterClock::Quanta,
        }
    }

    /// Waits until the schedule reads the clock it was built with: for the counter,
    /// until it is calibrated (off the runtime's workers).
    pub(super) async fn ready(&self) {
        match &self.clock {
            Clock::Tokio => {}
            #[cfg(feature = "quanta")]
            Clock::Counter(_) => {
                counter::ready().await;
                self.now_ns();
            }
        }
    }

    /// Nanoseconds since the epoch on the schedule's clock.
    #[inline]
    fn now_ns(&self) -> u64 {
        match &self.clock {
            Clock::Tokio => self.tokio_ns(Instant::now()),
            #[cfg(feature = "quanta")]
            Clock::Counter(anchor) => match anchor.get() {
                Some(anchor) => anchor.ns(),
                None => self.anchor_ns(anchor),
            },
        }
    }

    /// The present on both clocks: tokio's instant for pauses and sleeps, and the
    /// schedule's.
    fn now(&self) -> Now {
        let at = Instant::now();
        let ns = match &self.clock {
            Clock::Tokio => self.tokio_ns(at),
            #[cfg(feature = "quanta")]
            Clock::Counter(_) => self.now_ns(),
        };
        Now {
            at,
            scaled: u128::from(ns) * self.scale,
        }
    }

    /// Nanoseconds since the epoch on tokio's clock (saturating after five centuries).
    #[inline]
    fn tokio_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
    }

    /// `now_ns` before the schedule is anchored on the counter: anchors it once the
    /// counter is calibrated, at tokio's present instant, so that the schedule goes on
    /// from where tokio's clock left it; reads tokio's clock until then.
    #[cfg(feature = "quanta")]
    #[cold]
    fn anchor_ns(&self, anchor: &OnceLock<Anchor>) -> u64 {
        match counter::get() {
            Some(clock) => anchor
                .get_or_init(|| Anchor {
                    clock,
                    raw: clock.raw(),
                    ns: self.tokio_ns(Instant::now()),
                })
                .ns(),
            None => self.tokio_ns(Instant::now()),
        }
    }

    /// Takes `n` tokens (at most the burst) without a lock when nobody waits, no
    /// pause holds and the limiter is open: `Some(taken)`; `None` when the lock must
    /// decide.
    #[inline]
    fn take_fast(&self, n: u32) -> Option<bool> {
        if self.slow.load(Ordering::Acquire) {
            return None;
        }
        let ns = self.now_ns();
        Some(match &self.tat {
            // All in 64 bits: the schedule's word holds a century and a burst.
            Tat::Narrow(tat) => {
                // Whole nanoseconds are already the schedule's units when the rate
                // divides its period in nanoseconds: no multiplication after the
                // clock read, the one part of a call that waits on the clock.
                let now_s = if self.narrow.scale == 1 {
                    ns
                } else {
                    ns.saturating_mul(self.narrow.scale)
                };
                let ahead = self.narrow.token * u64::from(self.burst - n);
                let step = self.narrow.token * u64::from(n);
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    // `base` in 64 bits, rearranged so that what depends on the
                    // schedule's word alone is computed while the clock is read: an
                    // idle schedule (further behind now than the grace) goes on from
                    // now and admits, a busy one admits when it is at most `ahead`
                    // past now.
                    let idle = current.saturating_add(self.narrow.grace) < now_s;
                    if !idle && current.saturating_sub(ahead) > now_s {
                        break false;
                    }
                    let next = if idle {
                        now_s.saturating_add(step)
                    } else {
                        current.saturating_add(step)
                    };
                    match tat.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break true,
                        Err(found) => current = found,
                    }
                }
            }
            Tat::Wide(_) => self.take(u128::from(ns) * self.scale, n).is_ok(),
        })
    }

    /// Takes `n` tokens now if they are admitted and nobody is waiting.
    #[inline]
    pub(super) fn try_acquire(&self, n: u32) -> Result<bool, ResourceError> {
        check_burst(n, self.burst)?;
        if let Some(taken) = self.take_fast(n) {
            return Ok(taken);
        }
        self.try_acquire_locked(n)
    }

    /// `try_acquire` when the lock decides: someone waits, a pause may hold, or the
    /// limiter is closed.
    #[cold]
    fn try_acquire_locked(&self, n: u32) -> Result<bool, ResourceError> {
        let mut state = self.lock();
        if state.closed {
            return Err(ResourceError::closed("RateLimiter"));
        }
        if !state.queue.is_empty() {
            return Ok(false);
        }
        let now = self.now();
        let taken = self.take_if_ready(&mut state, &now, n).is_none();
        self.refresh(&mut state, now.at);
        Ok(taken)
    }

    /// Waits, first come first served, until `n` tokens are admitted, and takes them.
    pub(super) async fn acquire(&self, n: u32) -> Result<(), ResourceError> {
        check_burst(n, self.burst)?;
        if self.take_fast(n) == Some(true) {
            return Ok(());
        }
        let id = {
            let mut state = self.lock();
            if state.closed {
                return Err(ResourceError::closed("RateLimiter"));
            }
            let now = self.now();
            if state.queue.is_empty() && self.take_if_ready(&mut state, &now, n).is_none() {
                self.refresh(&mut state, now.at);
                return Ok(());
            }
            let id = state.next_id;
            state.next_id += 1;
            state.queue.insert(id, None);
            self.slow.store(true, Ordering::Release);
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
                let now = self.now();
                let Some(later) = self.take_if_ready(&mut state, &now, n) else {
                    state.queue.remove(&id);
                    wake_head(&mut state);
                    self.refresh(&mut state, now.at);
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
        if taken == used || self.status().1 {
            return;
        }
        let now_s = u128::from(self.now_ns()) * self.scale;
        let mut tat = self.tat.load();
        loop {
            let base = tat.max(now_s);
            let settled = if used > taken {
                base + self.token * u128::from(used - taken)
            } else {
                let refund = self.token * u128::from(taken - used);
                base.saturating_sub(refund).max(now_s)
            };
            match self.tat.swap_if(tat, settled) {
                Ok(()) => break,
                Err(current) => tat = current,
            }
        }
        if used < taken {
            // The head may be admitted now.
            wake_head(&mut self.lock());
        }
    }

    /// Admits nobody before `until`; a later call with an earlier instant does not
    /// shorten the pause.
    pub(super) fn pause_until(&self, until: Instant) {
        let mut state = self.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
        self.slow.store(true, Ordering::Release);
        // The head recomputes its time; the others wait behind it anyway.
        wake_head(&mut state);
    }

    /// Closes the schedule: every waiter wakes with a closed error, and every later
    /// call fails the same way.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.slow.store(true, Ordering::Release);
        for waker in state.queue.values_mut().filter_map(Option::take) {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a handful of assignments that cannot panic
        // half-way: a poisoned lock still guards consistent state.
        crate::sync::lock(&self.state)
    }

    /// Lets calls take the fast path again once nobody waits, no pause holds and the
    /// limiter is open; called under the lock whenever one of those may have ended.
    fn refresh(&self, state: &mut State, now: Instant) {
        if state.paused_until.is_some_and(|paused| paused <= now) {
            state.paused_until = None;
        }
        let slow = state.closed || !state.queue.is_empty() || state.paused_until.is_some();
        self.slow.store(slow, Ordering::Release);
    }

    /// Where the schedule goes on from at `now_s`: `tat`, or `now_s` when the
    /// schedule fell behind now by more than the grace.
    ///
    /// A timer fires on a 1 ms tick, after the tick its instant falls in, and a
    /// wake-up adds its own delay (a few hundred microseconds on a busy machine). If
    /// every waiter's token were counted from its wake-up, a limiter at one token a
    /// tick and a burst of 1 would lose most of a tick on every token and run far
    /// below its rate. So a call that comes within the grace `g` of its token's due
    /// time is counted as on time: the schedule goes on from the due time, not from
    /// the call. `g` is two ticks less what the burst absorbs by itself,
    /// `max(0, 2 ms − (burst − 1)·T)`: 2 ms at a burst of 1, 1 ms at a burst of 2 and
    /// one token a millisecond, none from there on. A call later than that finds the
    /// limiter idle, and the schedule starts again from now, as for the first call
    /// (the empty schedule is idle from the start): after an idle spell a burst is
    /// still `burst` tokens.
    ///
    /// The bound: a schedule counted up to `g` behind now is at most `g` ahead of a
    /// strict one, so in any window `w` at most `burst + floor((w + g) / T)` tokens are
    /// admitted: `burst + 2 + floor(w / T)` at one token a millisecond and a burst of
    /// 1, `+ 1` at a burst of 2 or from two milliseconds a token, and the strict
    /// `burst + floor(w / T)` when `g` is zero (a larger burst, or a token's interval
    /// that is not a whole number of ticks).
    #[inline]
    fn base(&self, tat: u128, now_s: u128) -> u128 {
        if tat.saturating_add(self.grace) >= now_s {
            tat
        } else {
            now_s
        }
    }

    /// Takes `n` tokens by compare-and-swap if the schedule admits them at `now_s`;
    /// otherwise the scaled time they will be admitted at.
    fn take(&self, now_s: u128, n: u32) -> Result<(), u128> {
        // Admitted once `tat + n·T - burst·T <= now`: `tat` is at most `burst - n`
        // tokens ahead of now (`T` is `token` in scaled units).
        let ahead = self.token * u128::from(self.burst - n);
        let mut tat = self.tat.load();
        loop {
            let base = self.base(tat, now_s);
            let ready_s = base.saturating_sub(ahead).max(now_s);
            if ready_s > now_s {
                return Err(ready_s);
            }
            let next = base + self.token * u128::from(n);
            match self.tat.swap_if(tat, next) {
                Ok(()) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Takes `n` tokens if they are admitted at `now`; otherwise the instant they will
    /// be.
    fn take_if_ready(&self, state: &mut State, now: &Now, n: u32) -> Option<Later<'_>> {
        let now_s = now.scaled;
        let paused = state.paused_until.filter(|paused| *paused > now.at);
        if let Some(paused) = paused {
            let ahead = self.token * u128::from(self.burst - n);
            let tat = self.base(self.tat.load(), now_s);
            return Some(Later {
                limiter: self,
                now: *now,
                ready_s: tat.saturating_sub(ahead).max(now_s),
                paused: Some(paused),
            });
        }
        match self.take(now_s, n) {
            Ok(()) => None,
            Err(ready_s) => Some(Later {
                limiter: self,
                now: *now,
                ready_s,
                paused: None,
            }),
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
        self.limiter.refresh(&mut state, Instant::now());
    }
}

/// Not admitted yet: when it will be, computed only for a caller that waits (the
/// conversion divides, and `try_acquire` has no use for it).
struct Later<'a> {
    limiter: &'a Limiter,
    /// When the decision was made.
    now: Now,
    /// When the schedule admits the tokens, on its clock (at or after `now`).
    ready_s: u128,
    paused: Option<Instant>,
}

impl Later<'_> {
    /// The instant on tokio's clock to sleep until: the wait on the schedule's clock,
    /// rounded up to a whole nanosecond, from tokio's instant of the decision. On
    /// tokio's clock this is the schedule's own instant; on the counter, a clock that
    /// drifts from tokio's by a few parts in a million costs that much of one wait,
    /// never a wake-up that finds its time not come and spins.
    fn at(&self) -> Instant {
        let wait = (self.ready_s - self.now.scaled).div_ceil(self.limiter.scale);
        let wait = Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX));
        // Past what `Instant` can hold (a schedule centuries ahead): as far as tokio's
        // timer reaches, about thirty years.
        let ready = self
            .now
            .at
            .checked_add(wait)
            .or_else(|| self.now.at.checked_add(FAR_FUTURE))
            .unwrap_or(self.now.at);
        self.paused.map_or(ready, |paused| ready.max(paused))
    }
}

/// The present, on tokio's clock and on the schedule's.
#[derive(Clone, Copy)]
struct Now {
    at: Instant,
    /// Scaled units since the epoch on the schedule's clock.
    scaled: u128,
}

/// What a schedule reads the time on.
enum Clock {
    Tokio,
    /// The counter, anchored once it is calibrated.
    #[cfg(feature = "quanta")]
    Counter(OnceLock<Anchor>),
}

impl Clock {
    fn new(clock: LimiterClock) -> Self {
        match clock {
            LimiterClock::Tokio => Clock::Tokio,
            #[cfg(feature = "quanta")]
            LimiterClock::Quanta => {
                counter::start();
                Clock::Counter(OnceLock::new())
            }
        }
    }
}

/// Where the counter meets tokio's clock for one schedule: its reading `raw` was
/// taken at `ns` nanoseconds since the epoch.
#[cfg(feature = "quanta")]
struct Anchor {
    clock: &'static quanta::Clock,
    raw: u64,
    ns: u64,
}

#[cfg(feature = "quanta")]
impl Anchor {
    /// Nanoseconds since the epoch, read on the counter.
    #[inline]
    fn ns(&self) -> u64 {
        self.ns
            .saturating_add(self.clock.delta_as_nanos(self.raw, self.clock.raw()))
    }
}

/// A narrow schedule's units in 64 bits (both fit when the schedule is narrow).
#[derive(Clone, Copy)]
struct Narrow {
    token: u64,
    scale: u64,
    grace: u64,
}

/// The schedule's word: 64 bits when they are enough (a compare-and-swap on them is
/// the cheaper), 128 otherwise.
enum Tat {
    Narrow(AtomicU64),
    Wide(AtomicU128),
}

impl Tat {
    fn load(&self) -> u128 {
        match self {
            Tat::Narrow(tat) => u128::from(tat.load(Ordering::Acquire)),
            Tat::Wide(tat) => tat.load(Ordering::Acquire),
        }
    }

    /// Replaces `current` by `new`, or returns the value found instead.
    fn swap_if(&self, current: u128, new: u128) -> Result<(), u128> {
        match self {
            Tat::Narrow(tat) => {
                // Both fit: values come from `load`, and a narrow schedule counts a
                // century and a burst within 64 bits (past that, it saturates).
                let current = u64::try_from(current).unwrap_or(u64::MAX);
                let new = u64::try_from(new).unwrap_or(u64::MAX);
                tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
                    .map(drop)
                    .map_err(u128::from)
            }
            Tat::Wide(tat) => tat
                .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
                .map(drop),
        }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// As far ahead as tokio's timer reaches (about thirty years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The tick of tokio's timer wheel.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// How late a call may come after its token's due time and still be counted as on
/// time (see `Limiter::base`): a tick for the timer's rounding up to its tick, and one
/// for the wake-up's own delay.
const GRACE: Duration = Duration::from_millis(2);

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
