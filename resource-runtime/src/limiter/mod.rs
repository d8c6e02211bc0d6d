//! [`RateLimiter`]: `rate` tokens per `period` with a `burst`, scheduled by GCRA, fair
//! between waiters: on tokio's clock in this process, or (with the `redis` feature) on
//! a Redis server, shared by every process that names the same key prefix.

mod clock;
mod local;
#[cfg(all(feature = "redis", feature = "executor"))]
pub(crate) mod permits;
#[cfg(feature = "redis")]
mod redis;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::AsyncResource;
use crate::error::{ConfigError, ResourceError};

pub use self::clock::LimiterClock;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{Fallback, RedisConfig};

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
/// - While nobody waits, a call takes its tokens with one compare-and-swap and no
///   lock: its cost is a read of the clock and that instruction. Waiters queue under a
///   lock, and while they do, every call takes it too, so none overtakes them.
/// - It runs on tokio's clock, so `tokio::time::pause` drives it in tests (or, when
///   built so, on the CPU's counter: see [`LimiterClock`]). Timers fire
///   on a 1 ms tick, after the tick their instant falls in, and the wake-up adds its
///   own delay. So when a token's interval `T` is a whole number of ticks, a call up to
///   a grace `g` after its token's due time counts as on time: the schedule goes on
///   from the due time, not from the call, and the limiter keeps its rate (0.999 of
///   1000/s at burst 1, where a waiter woken late loses a tick on every token
///   otherwise). `g` is 2 ms (two ticks) less what the burst absorbs by itself:
///   `max(0, 2 ms − (burst − 1)·T)`. A call later than that finds the limiter idle:
///   the schedule starts again from it, and a burst stays `burst` tokens. The bound
///   that holds whatever the lateness: in any window of length `w`, at most
///   `burst + floor((w + g) / T)` tokens are admitted (`+ 2` over the strict
///   `burst + floor(w / T)` at 1000/s and a burst of 1, `+ 1` at a burst of 2 or from
///   2 ms a token, nothing more with a larger burst).
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
///
/// # One quota for many processes
///
/// With the `redis` feature, `RateLimiterBuilder::redis` keeps the schedule in Redis
/// instead, so every process that builds its limiter with the same key prefix (and the
/// same rate, period and burst) is held to one quota together. It is the same type:
/// whatever takes a `RateLimiter` (an endpoint, a `RateLimitedExecutor`, a user's own
/// code) takes either. What changes:
///
/// - It must be entered before use: [`enter`](Self::enter) (or
///   [`AsyncResource::enter`], so a derived struct or a `scope` enters it) connects;
///   a call before that fails with an error for which
///   [`ResourceError::is_not_entered`] is true. [`close`](Self::close) wakes the
///   waiters with a closed error and releases the connection.
/// - Each acquisition is one round trip: one Lua script, atomic on the server, books
///   its place in the schedule (on the server's clock, so the processes' clocks do not
///   matter) and learns when it may go; then it sleeps here until then. Nothing polls.
///   Within a process the waiters queue first come first served in front of Redis:
///   only the first one talks to Redis, and the next one books when its turn comes.
/// - A waiter cancelled after it booked gives its place back when nobody booked after
///   it; otherwise (or when it is cancelled while its booking is on the wire) its
///   tokens stay spent: the schedule loses at most that many tokens' worth of time.
/// - [`pause_until`](Self::pause_until) holds this process back at once and is sent to
///   Redis in the background, where every process's next booking honours it. A waiter
///   that already booked its time (at most one per process) keeps it.
/// - When Redis does not answer within the configured timeout, the waiters get an
///   error for which [`ResourceError::is_unavailable`] is true, or, when configured
///   (`Fallback`), go on under a local limiter at a share of the rate until Redis
///   answers again; each switch is logged. A Redis that comes back without its data
///   admits at most one extra burst.
/// - [`try_acquire`](Self::try_acquire) cannot ask Redis without waiting: it fails
///   with [`LimiterError::NotLocal`]; [`try_acquire_async`](Self::try_acquire_async)
///   asks with one round trip.
///
/// The bound on any window holds across processes for the instants Redis books; a
/// waiter goes at its booked instant plus the reply's way back and its timer's
/// lateness, so admissions seen in one place stay within
/// `burst + 1 + floor(w × rate / period)` while those delays are shorter than a
/// token's interval.
#[derive(Clone)]
pub struct RateLimiter {
    backend: Backend,
}

/// Where the schedule lives. The local arm is the only one without the `redis`
/// feature, so a call costs what it did before there were two.
#[derive(Clone)]
enum Backend {
    Local(Arc<local::Limiter>),
    #[cfg(feature = "redis")]
    Redis(Arc<redis::RedisLimiter>),
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Local(local) => {
                let (waiting, closed) = local.status();
                let (rate, period) = local.rate();
                f.debug_struct("RateLimiter")
                    .field("rate", &rate)
                    .field("period", &period)
                    .field("burst", &local.burst())
                    .field("clock", &local.clock().name())
                    .field("waiting", &waiting)
                    .field("closed", &closed)
                    .finish()
            }
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.fmt_debug(f),
        }
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
    clock: LimiterClock,
    #[cfg(feature = "redis")]
    redis: Option<RedisConfig>,
}

impl RateLimiterBuilder {
    /// Bursts of up to `burst` tokens (default: `rate`). A burst of 1 spaces every
    /// token by `period / rate`.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The clock the schedule reads (default: [`LimiterClock::Tokio`], which
    /// `tokio::time::pause` drives). With Redis, the schedule is on the server's clock,
    /// and this is the clock of the local fallback, if it has one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::limiter::{LimiterClock, RateLimiter};
    ///
    /// # fn main() -> Result<(), resource_runtime::ResourceError> {
    /// let limiter = RateLimiter::builder(100, Duration::from_secs(1))
    ///     .clock(LimiterClock::Tokio)
    ///     .build()?;
    /// assert_eq!(limiter.clock(), LimiterClock::Tokio);
    /// # Ok(())
    /// # }
    /// ```
    pub fn clock(mut self, clock: LimiterClock) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps the schedule in Redis, shared by every process whose limiter has the same
    /// key prefix; see [`RedisConfig`] and the [`RateLimiter`] section on one quota for
    /// many processes. The limiter must then be entered before use.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::limiter::{RateLimiter, RedisConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), resource_runtime::ResourceError> {
    /// let limiter = RateLimiter::builder(500, Duration::from_secs(60))
    ///     .burst(20)
    ///     .redis(RedisConfig::new("redis://127.0.0.1:6379/", "myorg:openai"))
    ///     .build()?;
    /// // Nothing is connected until it is entered (`limiter.enter().await?`).
    /// assert!(limiter.acquire(1).await.unwrap_err().is_not_entered());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, config: RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// Builds the limiter; fails when it could admit nothing: a rate of 0, a zero
    /// period or a burst of 0 (a [`ConfigError`] inside the error), or, with Redis,
    /// when its configuration cannot work (see `RedisConfig`). Nothing is connected
    /// here.
    pub fn build(self) -> Result<RateLimiter, ResourceError> {
        let RateLimiterBuilder {
            rate,
            period,
            burst,
            clock,
            #[cfg(feature = "redis")]
            redis,
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
        #[cfg(feature = "redis")]
        if let Some(config) = redis {
            let shared = redis::RedisLimiter::new(rate, period, burst, config, clock)?;
            return Ok(RateLimiter {
                backend: Backend::Redis(Arc::new(shared)),
            });
        }
        Ok(RateLimiter {
            backend: Backend::Local(Arc::new(local::Limiter::new(rate, period, burst, clock))),
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
            clock: LimiterClock::Tokio,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// The configured burst.
    pub fn burst(&self) -> u32 {
        match &self.backend {
            Backend::Local(local) => local.burst(),
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.burst(),
        }
    }

    /// The clock the schedule reads, as built: for a limiter in Redis, that of its
    /// local fallback.
    pub fn clock(&self) -> LimiterClock {
        match &self.backend {
            Backend::Local(local) => local.clock(),
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.clock(),
        }
    }

    /// How many callers of this process are waiting in [`acquire`](Self::acquire).
    pub fn waiting(&self) -> usize {
        match &self.backend {
            Backend::Local(local) => local.status().0,
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.waiting(),
        }
    }

    /// Makes the limiter ready for every clone: connects to Redis and loads its
    /// scripts, within the configured connect timeout, for a limiter built with
    /// `RateLimiterBuilder::redis`; for one on the counter (`LimiterClock::Quanta`),
    /// waits until the counter is calibrated (once a process, on tokio's blocking
    /// pool); nothing for any other local one. Entering an entered limiter does
    /// nothing; entering a closed one with a store fails with a closed error. A failed
    /// enter leaves nothing open, and may be tried again.
    ///
    /// The [`AsyncResource::enter`] of the limiter calls it.
    pub async fn enter(&self) -> Result<(), ResourceError> {
        match &self.backend {
            Backend::Local(local) => {
                local.ready().await;
                Ok(())
            }
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => Box::pin(shared.enter()).await,
        }
    }

    /// Takes `n` tokens now if the limiter admits them and nobody is waiting; never
    /// waits. `Ok(false)` means "not now".
    ///
    /// A limiter whose schedule is in Redis cannot answer without a round trip: it
    /// fails with [`LimiterError::NotLocal`]; use
    /// [`try_acquire_async`](Self::try_acquire_async) there.
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
    #[inline]
    pub fn try_acquire(&self, n: u32) -> Result<bool, ResourceError> {
        match &self.backend {
            Backend::Local(local) => local.try_acquire(n),
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.try_acquire(n),
        }
    }

    /// Takes `n` tokens if the limiter admits them now and nobody in this process is
    /// waiting; never waits for the schedule. For a local limiter it is
    /// [`try_acquire`](Self::try_acquire); for one in Redis it asks with one round
    /// trip, and books nothing when the answer is "not now".
    pub async fn try_acquire_async(&self, n: u32) -> Result<bool, ResourceError> {
        match &self.backend {
            Backend::Local(local) => local.try_acquire(n),
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => Box::pin(shared.try_acquire_async(n)).await,
        }
    }

    /// Waits, first come first served, until `n` tokens are admitted, and takes them.
    ///
    /// Fails at once when `n` is more than the burst, and with a closed error when the
    /// limiter is closed, also while waiting. Dropping the future gives its place up.
    /// Waiting needs tokio's timer: on a runtime built without `enable_time`, a call
    /// that would wait fails with an error that says so.
    pub async fn acquire(&self, n: u32) -> Result<(), ResourceError> {
        match &self.backend {
            Backend::Local(local) => local.acquire(n).await,
            // Boxed, so the local arm's future stays the size it was.
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => Box::pin(shared.acquire(n)).await,
        }
    }

    /// Admits nobody before `until`, for every caller (a `429` with `Retry-After` from
    /// an API, say). A later call with an earlier instant does not shorten the pause.
    ///
    /// With the schedule in Redis, the pause holds this process at once, and is sent
    /// in the background to hold every other process too: the delay until `until` is
    /// turned into a deadline on the server's clock. A pause that cannot be sent is
    /// logged as a warning.
    pub fn pause_until(&self, until: Instant) {
        match &self.backend {
            Backend::Local(local) => local.pause_until(until),
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.pause_until(until),
        }
    }

    /// Corrects an acquisition whose real cost is known only afterwards: `taken` tokens
    /// were acquired (an estimate), `used` is what the work really cost. The difference
    /// is charged (the schedule goes into debt if it must: later callers wait it out,
    /// and nobody waits here) or given back (up to a full burst at the present
    /// instant, so a refund never admits more than a burst at once). This is how a
    /// tokens-per-minute quota is kept when the tokens of an answer are known only
    /// from its `usage`: acquire the estimate, then settle with the count.
    ///
    /// A closed limiter ignores it. With the schedule in Redis the correction is sent
    /// in the background, like [`pause_until`](Self::pause_until), and a correction
    /// that cannot be sent is logged; [`close`](Self::close) waits for those on their
    /// way.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resource_runtime::limiter::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), resource_runtime::ResourceError> {
    /// // 1 000 tokens a minute.
    /// let tokens = RateLimiter::new(1_000, Duration::from_secs(60))?;
    /// tokens.acquire(600).await?; // the estimate
    /// tokens.settle(600, 200); // the answer's usage said 200: 400 come back
    /// assert!(tokens.try_acquire(800)?);
    /// tokens.settle(0, 300); // 300 more, found after the fact: now in debt
    /// assert!(!tokens.try_acquire(1)?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn settle(&self, taken: u32, used: u32) {
        match &self.backend {
            Backend::Local(local) => local.settle(taken, used),
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => shared.settle(taken, used),
        }
    }

    /// Closes the limiter for every clone: every waiter wakes with a closed error, and
    /// every later call fails the same way. Closing a closed limiter does nothing. A
    /// local limiter never waits; one in Redis waits for the pauses and returned
    /// places still on their way (each bounded by its timeout) and releases its
    /// connection.
    pub async fn close(&self) -> Result<(), ResourceError> {
        match &self.backend {
            Backend::Local(local) => {
                local.close();
                Ok(())
            }
            #[cfg(feature = "redis")]
            Backend::Redis(shared) => Box::pin(shared.close()).await,
        }
    }
}

/// Fails a request for more tokens than the burst: it could never be admitted.
#[inline]
fn check_burst(n: u32, burst: u32) -> Result<(), ResourceError> {
    if n > burst {
        return Err(exceeds_burst(n, burst));
    }
    Ok(())
}

#[cold]
fn exceeds_burst(requested: u32, burst: u32) -> ResourceError {
    ResourceError::other(LimiterError::ExceedsBurst { requested, burst })
}

/// The error of a waiter on a runtime without timers.
fn no_timer() -> ResourceError {
    ResourceError::other(LimiterError::NoTimer)
}

/// Why a [`RateLimiter`] refused a request (beside a closed limiter, for which
/// [`ResourceError::is_closed`] is true, and one never entered, for which
/// [`ResourceError::is_not_entered`] is): inside the [`ResourceError`] its calls
/// return (reach it with [`ResourceError::downcast_ref`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The store of a shared schedule (Redis) could not be reached, or did not answer
    /// within its timeout: [`is_unavailable`](Self::is_unavailable) is true.
    Unavailable {
        /// The limiter's key prefix.
        prefix: String,
        /// The store's URL, without its password.
        url: String,
        /// What went wrong, for people to read.
        reason: String,
    },
    /// The store of a shared schedule answered, but with an error or a reply the
    /// limiter cannot use: credentials refused, a permission denied, a key of the
    /// prefix that holds something else.
    Store {
        /// The limiter's key prefix.
        prefix: String,
        /// The store's URL, without its password.
        url: String,
        /// What the store said, for people to read.
        reason: String,
    },
    /// [`RateLimiter::try_acquire`] was called on a limiter whose schedule is shared:
    /// it cannot answer without a round trip, and it never waits.
    NotLocal {
        /// The limiter's key prefix.
        prefix: String,
    },
}

impl LimiterError {
    /// Whether the shared schedule's store could not be reached or did not answer in
    /// time: the request may succeed once it answers again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LimiterError::Unavailable { .. })
    }
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
            LimiterError::Unavailable {
                prefix,
                url,
                reason,
            } => write!(
                f,
                "RateLimiter `{prefix}`: Redis at {url} is unavailable: {reason}"
            ),
            LimiterError::Store {
                prefix,
                url,
                reason,
            } => write!(
                f,
                "RateLimiter `{prefix}`: Redis at {url} refused the limiter: {reason}"
            ),
            LimiterError::NotLocal { prefix } => write!(
                f,
                "RateLimiter `{prefix}`: its schedule is in Redis, and `try_acquire` never waits for a round trip: use `try_acquire_async`"
            ),
        }
    }
}

impl std::error::Error for LimiterError {}

#[cfg_attr(docsrs, doc(cfg(feature = "limiter")))]
impl ResourceError {
    /// Whether any failure is a [`LimiterError`] for which
    /// [`is_unavailable`](LimiterError::is_unavailable) is true: a rate limiter whose
    /// schedule is in Redis could not reach it.
    ///
    /// ```
    /// use resource_runtime::ResourceError;
    /// use resource_runtime::limiter::LimiterError;
    ///
    /// let err = ResourceError::other(LimiterError::NoTimer);
    /// assert!(!err.is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        self.failures().any(|failure| {
            failure
                .downcast_ref::<LimiterError>()
                .is_some_and(LimiterError::is_unavailable)
        })
    }
}

impl AsyncResource for RateLimiter {
    /// Makes the limiter ready for every clone; see [`enter`](RateLimiter::enter).
    async fn enter(&mut self) -> Result<(), ResourceError> {
        RateLimiter::enter(self).await
    }

    /// Closes the limiter for every clone; see [`close`](RateLimiter::close).
    async fn close(&mut self) -> Result<(), ResourceError> {
        RateLimiter::close(self).await
    }
}
