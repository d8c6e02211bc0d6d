//! The clock a local schedule reads: tokio's, or (with the `quanta` feature) the CPU's
//! counter.

/// The clock a [`RateLimiter`](super::RateLimiter)'s local schedule reads, chosen when
/// it is built ([`RateLimiterBuilder::clock`](super::RateLimiterBuilder::clock)).
///
/// The clock is most of what a call that does not wait costs: a `try_acquire` is a
/// read of it and one compare-and-swap. Reading tokio's clock asks the OS
/// (`clock_gettime`, through the vDSO on Linux: tens of nanoseconds on a virtual
/// machine); reading the CPU's counter is one instruction and a multiplication (a few
/// nanoseconds), the clock governor reads.
///
/// Only the schedule reads this clock. Pauses ([`RateLimiter::pause_until`]) and the
/// instants a waiter sleeps until are tokio's, whichever clock the schedule reads: a
/// waiter converts the wait it computed on the schedule's clock into a sleep from
/// tokio's present instant.
///
/// [`RateLimiter::pause_until`]: super::RateLimiter::pause_until
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimiterClock {
    /// `tokio::time::Instant::now()`, the default: `tokio::time::pause` and `advance`
    /// drive the limiter in tests.
    #[default]
    Tokio,
    /// The CPU's counter through [quanta](https://docs.rs/quanta) (the TSC on x86-64
    /// when it is invariant, the system counter on aarch64; the OS clock elsewhere),
    /// calibrated against the OS clock: the cheapest call, and the only choice on which
    /// the limiter's hot path costs what governor's does. It does **not** follow
    /// `tokio::time::pause`: tests that pause tokio's clock should build their limiter
    /// with [`Tokio`](Self::Tokio).
    ///
    /// The counter is calibrated once a process, on a thread of its own started by the
    /// first limiter built with this clock (quanta stops calibrating after 200 ms at
    /// the most): no tokio worker waits for it. Until it is done, the limiter reads
    /// tokio's clock and then goes on from the same instant on the counter. Entering
    /// the limiter ([`RateLimiter::enter`](super::RateLimiter::enter), or a derived
    /// struct or `scope` that holds it) waits for the calibration, on tokio's
    /// blocking pool.
    #[cfg(feature = "quanta")]
    #[cfg_attr(docsrs, doc(cfg(feature = "quanta")))]
    Quanta,
}

impl LimiterClock {
    /// The name of the clock, for people to read.
    pub(super) fn name(self) -> &'static str {
        match self {
            LimiterClock::Tokio => "tokio",
            #[cfg(feature = "quanta")]
            LimiterClock::Quanta => "quanta",
        }
    }
}

/// The counter, calibrated once for the whole process.
#[cfg(feature = "quanta")]
pub(super) mod counter {
    use std::sync::{Once, OnceLock};

    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    static STARTED: Once = Once::new();

    /// The calibrated counter, once it is.
    #[inline]
    pub(in crate::limiter) fn get() -> Option<&'static quanta::Clock> {
        CLOCK.get()
    }

    /// Starts the calibration on a thread of its own, once a process; nothing waits
    /// for it.
    pub(in crate::limiter) fn start() {
        STARTED.call_once(|| {
            if CLOCK.get().is_some() {
                return;
            }
            let spawned = std::thread::Builder::new()
                .name("resource-runtime-clock".into())
                .spawn(|| {
                    CLOCK.get_or_init(quanta::Clock::new);
                });
            if let Err(err) = spawned {
                // Entering the limiter calibrates on tokio's blocking pool instead;
                // until then the limiter reads tokio's clock, which is always right.
                tracing::debug!(
                    error = %err,
                    "RateLimiter: could not start the thread that calibrates the counter clock"
                );
            }
        });
    }

    /// Waits, off the runtime's workers, until the counter is calibrated.
    pub(in crate::limiter) async fn ready() {
        if CLOCK.get().is_some() {
            return;
        }
        // Waits for the thread `start` began, if it is still calibrating: a
        // `OnceLock` runs one initialiser at a time.
        let calibrated = tokio::task::spawn_blocking(|| {
            CLOCK.get_or_init(quanta::Clock::new);
        })
        .await;
        if let Err(err) = calibrated {
            // The runtime is shutting down, or quanta panicked: the limiter goes on
            // reading tokio's clock, which is always right.
            tracing::debug!(
                error = %err,
                "RateLimiter: the counter clock could not be calibrated; reading tokio's clock"
            );
        }
    }
}
