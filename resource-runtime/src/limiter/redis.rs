//! The Redis backend of [`RateLimiter`](super::RateLimiter): a GCRA schedule kept in
//! one Redis hash and moved by Lua scripts on the server's clock, with a queue in each
//! process in front of it.
//!
//! Each acquisition is one round trip (`acquire.lua`): it books its tokens in the
//! schedule and learns how long to wait, then sleeps here. Within a process only the
//! waiter at the head of the queue talks to Redis; it stays the head while it sleeps,
//! so a process has at most one booking ahead of now, and the next waiter books when
//! the head goes. A head cancelled after booking gives its tokens back
//! (`give_back.lua`) when the schedule still ends where its booking left it.
//! `pause_until` sets the pause here at once and sends it in a task (`pause.lua`).

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, Script, ScriptInvocation, ServerErrorKind};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use super::{LimiterClock, LimiterError, check_burst, local, no_timer};
use crate::error::{ConfigError, ResourceError};
use crate::sync::CatchUnwind;

/// Where a [`RateLimiter`](super::RateLimiter) keeps a schedule shared by many
/// processes, and what it does when Redis does not answer; given to
/// [`RateLimiterBuilder::redis`](super::RateLimiterBuilder::redis).
///
/// Every process that uses the same `prefix` on the same Redis is held to one
/// schedule, so they must agree on the rate, the period and the burst. The schedule is
/// one hash, `{prefix}:gcra`: the braces are a hash tag, so every key of one limiter
/// lands in one Redis Cluster slot. Each script that writes it sets its expiry a second
/// past the end of the schedule (or of a pause), so an idle limiter leaves nothing
/// behind. The server needs Lua scripting with effects replication: Redis 5 or later,
/// or Valkey.
///
/// `Debug` and every error show the URL without its password.
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::limiter::{Fallback, RedisConfig};
///
/// let config = RedisConfig::new("redis://:hunter2@10.0.0.5:6379/0", "myorg:openai")
///     .connect_timeout(Duration::from_secs(1))
///     .timeout(Duration::from_millis(200))
///     .fallback(Fallback::Local { share: 0.25 });
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    timeout: Duration,
    fallback: Fallback,
    probe_interval: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url).0)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("fallback", &self.fallback)
            .field("probe_interval", &self.probe_interval)
            .finish()
    }
}

impl RedisConfig {
    /// The schedule named `prefix` on the Redis server at `url` (`redis://`,
    /// `redis+unix://`, `valkey://`; a password in the URL is used to log in and shown
    /// nowhere). Defaults: a connect timeout of 2 s, a timeout of 500 ms for every
    /// other round trip, [`Fallback::Fail`], and a probe every second while falling
    /// back.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            fallback: Fallback::Fail,
            probe_interval: Duration::from_secs(1),
        }
    }

    /// How long [`RateLimiter::enter`](super::RateLimiter::enter) may take to connect
    /// and load the scripts before it fails with an error for which
    /// [`ResourceError::is_unavailable`] is true.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long any other round trip may take (a booking, a pause, a returned place),
    /// reconnecting included, before Redis counts as unavailable. A waiter that gets
    /// no answer is told (or falls back) within this time of its turn.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What the limiter does while Redis does not answer (default:
    /// [`Fallback::Fail`]).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// While falling back, how often the head of the queue asks Redis again (and
    /// waits up to the timeout for it) before it takes the local limiter's tokens.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }
}

/// What a [`RateLimiter`](super::RateLimiter) whose schedule is in Redis does while
/// Redis does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Fallback {
    /// Every waiter fails with an error for which [`ResourceError::is_unavailable`] is
    /// true: the one whose turn it was after its timeout, and every waiter of the
    /// process queued behind it at once. Each later call asks Redis again.
    #[default]
    Fail,
    /// The process goes on under a limiter of its own at `share` of the rate
    /// (`0 < share <= 1`; `1 / N` for N processes sharing the quota), with the same
    /// burst, until Redis answers again (asked every
    /// [`probe_interval`](RedisConfig::probe_interval)). The switch is logged as a
    /// warning and the way back as info.
    Local {
        /// The share of the rate this process takes on its own.
        share: f64,
    },
}

/// Milliseconds a limiter's hash outlives the end of its schedule.
const EXPIRY_MARGIN_MS: u64 = 1_000;

/// The longest schedule or pause, in microseconds: Lua counts in doubles, exact to
/// 2^53, and the clock is already near 2^51 microseconds since the Unix epoch.
const MAX_SPAN_US: u128 = 1 << 50;

/// Who a Redis-backed part is, for its errors and logs: its key prefix, its URL
/// without the password, and the password itself, scrubbed from any message that
/// might repeat it. The limiter and the fleet permits build their errors from it.
pub(super) struct Server {
    /// The key prefix: it names the part in errors and logs.
    pub(super) prefix: String,
    /// The URL without its password.
    pub(super) url: String,
    secrets: Vec<String>,
}

impl Server {
    /// Opens a client for `url`, or says (password scrubbed) why the URL cannot be used.
    pub(super) fn open(url: &str, prefix: String) -> Result<(Server, Client), String> {
        let (shown, secrets) = redact(url);
        let server = Server {
            prefix,
            url: shown,
            secrets,
        };
        match Client::open(url) {
            Ok(client) => Ok((server, client)),
            Err(error) => {
                Err(server.scrub(format!("is not a Redis URL this build can use: {error}")))
            }
        }
    }

    /// An unreachable or silent server is unavailable; one that answered with an
    /// error refused the request.
    pub(super) fn classify(&self, error: &RedisError, doing: &str) -> LimiterError {
        let reason = format!("{doing}: {error}");
        if is_unavailable_error(error) {
            self.unavailable(reason)
        } else {
            self.store_error(reason)
        }
    }

    pub(super) fn unavailable(&self, reason: String) -> LimiterError {
        LimiterError::Unavailable {
            prefix: self.prefix.clone(),
            url: self.url.clone(),
            reason: self.scrub(reason),
        }
    }

    pub(super) fn store_error(&self, reason: String) -> LimiterError {
        LimiterError::Store {
            prefix: self.prefix.clone(),
            url: self.url.clone(),
            reason: self.scrub(reason),
        }
    }

    fn scrub(&self, mut text: String) -> String {
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// The schedule of a [`RateLimiter`](super::RateLimiter) in Redis.
pub(super) struct RedisLimiter {
    /// The prefix and URL it names in errors and logs.
    server: Server,
    client: Client,
    /// The schedule's hash.
    key: String,
    connect_timeout: Duration,
    timeout: Duration,
    probe_interval: Duration,
    /// The local schedule used while Redis does not answer, and its share of the rate.
    fallback: Option<(local::Limiter, f64)>,
    rate: u32,
    period: Duration,
    burst: u32,
    /// The clock of the local fallback, as built.
    clock: LimiterClock,
    period_ns: u128,
    /// A token is `period_ns / denom` microseconds: `denom` is 1000 × rate, so the
    /// schedule keeps whole microseconds and a fraction, exactly.
    denom: u64,
    acquire_script: Script,
    give_back_script: Script,
    pause_script: Script,
    settle_script: Script,
    state: Mutex<State>,
    /// The pauses and returned places on their way to Redis.
    tasks: TaskTracker,
}

struct State {
    /// Set by `enter`, taken by `close`.
    conn: Option<ConnectionManager>,
    /// The runtime of `enter`, for the tasks a call from outside any runtime starts.
    runtime: Option<tokio::runtime::Handle>,
    closed: bool,
    /// Waiters in arrival order (ids only grow); only the first talks to Redis.
    queue: BTreeMap<u64, Option<Waker>>,
    next_id: u64,
    /// The waiters up to this id fail with this error: Redis did not answer the
    /// head they queued behind.
    failed: Option<(u64, LimiterError)>,
    /// Nobody of this process goes before this.
    paused_until: Option<Instant>,
    /// The latest pause end sent to Redis, or on its way.
    pause_sent: Option<Instant>,
    /// While Redis does not answer: when to ask it again (with a fallback).
    outage: Option<Instant>,
}

/// What `acquire.lua` answered.
struct Reply {
    booked: bool,
    wait: Duration,
    tat: i64,
    frac: i64,
}

/// A booking whose waiter has not gone yet: what `give_back.lua` needs.
#[derive(Clone, Copy)]
struct Booked {
    tat: i64,
    frac: i64,
    tokens: u32,
}

impl RedisLimiter {
    /// Checks the configuration and parses the URL; connects nothing.
    pub(super) fn new(
        rate: u32,
        period: Duration,
        burst: u32,
        config: RedisConfig,
        clock: LimiterClock,
    ) -> Result<Self, ResourceError> {
        let RedisConfig {
            url,
            prefix,
            connect_timeout,
            timeout,
            fallback,
            probe_interval,
        } = config;
        let handle = format!("RateLimiter `{prefix}`");
        let invalid = |setting, why: String| -> ResourceError {
            ConfigError::new(handle.clone(), setting, why).into()
        };
        if prefix.is_empty() {
            return Err(invalid(
                "prefix",
                "is empty: name the quota every process shares, such as \"myorg:openai\"".into(),
            ));
        }
        if prefix.contains(['{', '}']) {
            return Err(invalid(
                "prefix",
                "holds a brace: the limiter wraps the prefix in braces itself, as the hash tag of its keys".into(),
            ));
        }
        if connect_timeout.is_zero() {
            return Err(invalid(
                "connect_timeout",
                "is zero: give at least 1ms".into(),
            ));
        }
        if timeout.is_zero() {
            return Err(invalid("timeout", "is zero: give at least 1ms".into()));
        }
        let period_ns = period.as_nanos();
        let denom = 1000 * u64::from(rate);
        if u128::from(burst) * period_ns / u128::from(denom) > MAX_SPAN_US {
            return Err(invalid(
                "period",
                "is so long that a burst spans more than 35 years, which a schedule in Redis cannot count in microseconds".into(),
            ));
        }
        let fallback = match fallback {
            Fallback::Fail => None,
            Fallback::Local { share } => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(invalid(
                        "fallback",
                        format!("has a share of {share}: give one above 0 and at most 1"),
                    ));
                }
                if probe_interval.is_zero() {
                    return Err(invalid(
                        "probe_interval",
                        "is zero: give at least 1ms".into(),
                    ));
                }
                // `rate` per `period / share` is `share` of the rate.
                let Ok(local_period) = Duration::try_from_secs_f64(period.as_secs_f64() / share)
                else {
                    return Err(invalid(
                        "fallback",
                        format!(
                            "has a share of {share}, which stretches the period past what a duration holds"
                        ),
                    ));
                };
                Some((local::Limiter::new(rate, local_period, burst, clock), share))
            }
        };
        let key = format!("{{{prefix}}}:gcra");
        let (server, client) = Server::open(&url, prefix).map_err(|why| invalid("url", why))?;
        Ok(RedisLimiter {
            key,
            server,
            client,
            connect_timeout,
            timeout,
            probe_interval,
            fallback,
            rate,
            period,
            burst,
            clock,
            period_ns,
            denom,
            acquire_script: Script::new(include_str!("acquire.lua")),
            give_back_script: Script::new(include_str!("give_back.lua")),
            pause_script: Script::new(include_str!("pause.lua")),
            settle_script: Script::new(include_str!("settle.lua")),
            state: Mutex::new(State {
                conn: None,
                runtime: None,
                closed: false,
                queue: BTreeMap::new(),
                next_id: 0,
                failed: None,
                paused_until: None,
                pause_sent: None,
                outage: None,
            }),
            tasks: TaskTracker::new(),
        })
    }

    pub(super) fn burst(&self) -> u32 {
        self.burst
    }

    pub(super) fn clock(&self) -> LimiterClock {
        self.clock
    }

    pub(super) fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    pub(super) fn fmt_debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (waiting, entered, closed, falling_back) = {
            let state = self.lock();
            (
                state.queue.len(),
                state.conn.is_some(),
                state.closed,
                self.fallback.is_some() && state.outage.is_some(),
            )
        };
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .field("redis", &self.server.url)
            .field("prefix", &self.server.prefix)
            .field("waiting", &waiting)
            .field("entered", &entered)
            .field("closed", &closed)
            .field("falling_back", &falling_back)
            .finish()
    }

    /// Connects, loads the scripts, and sends a pause set before.
    pub(super) async fn enter(self: &Arc<Self>) -> Result<(), ResourceError> {
        {
            let state = self.lock();
            if state.closed {
                return Err(self.closed_error());
            }
            if state.conn.is_some() {
                return Ok(());
            }
        }
        // The client's own timeouts and reconnections run on tokio's timer.
        if crate::step::try_sleep(Duration::ZERO).is_none() {
            return Err(no_timer());
        }
        let scripts = [
            &self.acquire_script,
            &self.give_back_script,
            &self.pause_script,
            &self.settle_script,
        ];
        let connected = connect(
            self.client.clone(),
            self.connect_timeout,
            self.timeout,
            &scripts,
        )
        .await;
        let conn = match connected {
            Some(Ok(Ok(conn))) => conn,
            // The client's own connect timeout is the same one.
            Some(Ok(Err(error))) if !error.is_timeout() => {
                let error = self.server.classify(&error, "could not connect");
                return Err(ResourceError::other(error));
            }
            // A runtime without its IO driver, say: the client panics in this task.
            Some(Err(panic)) => return Err(ResourceError::from_panic(panic)),
            Some(Ok(Err(_))) | None => {
                let error = self.server.unavailable(format!(
                    "could not connect and load the scripts within the connect timeout of {:?}",
                    self.connect_timeout
                ));
                return Err(ResourceError::other(error));
            }
        };
        let pause = {
            let mut state = self.lock();
            if state.closed {
                return Err(self.closed_error());
            }
            if state.conn.is_some() {
                // Another clone entered meanwhile: keep its connection.
                return Ok(());
            }
            state.conn = Some(conn.clone());
            state.runtime = tokio::runtime::Handle::try_current().ok();
            let pending = state.paused_until.filter(|until| *until > Instant::now());
            if pending.is_some() {
                state.pause_sent = pending;
            }
            pending
        };
        if let Some(until) = pause {
            self.send_pause(conn, until);
        }
        Ok(())
    }

    /// Wakes every waiter with a closed error, waits for the tasks on their way to
    /// Redis, and drops the connection.
    pub(super) async fn close(&self) -> Result<(), ResourceError> {
        let conn = {
            let mut state = self.lock();
            state.closed = true;
            state.runtime = None;
            for waker in state.queue.values_mut().filter_map(Option::take) {
                waker.wake();
            }
            state.conn.take()
        };
        if let Some((fallback, _)) = &self.fallback {
            fallback.close();
        }
        // Each of them is one round trip within the timeout.
        self.tasks.close();
        self.tasks.wait().await;
        drop(conn);
        Ok(())
    }

    /// Never waits, so it cannot ask Redis.
    pub(super) fn try_acquire(&self, n: u32) -> Result<bool, ResourceError> {
        check_burst(n, self.burst)?;
        if self.lock().closed {
            return Err(self.closed_error());
        }
        Err(ResourceError::other(LimiterError::NotLocal {
            prefix: self.server.prefix.clone(),
        }))
    }

    /// Takes `n` tokens if Redis admits them now; books nothing otherwise.
    pub(super) async fn try_acquire_async(self: &Arc<Self>, n: u32) -> Result<bool, ResourceError> {
        check_burst(n, self.burst)?;
        let conn = {
            let state = self.lock();
            let conn = self.connection(&state)?;
            if !state.queue.is_empty() || state.paused_until.is_some_and(|p| p > Instant::now()) {
                return Ok(false);
            }
            conn
        };
        if let Some(fallback) = self.falling_back() {
            return fallback.try_acquire(n);
        }
        match self.book(conn, n, false).await {
            Ok(reply) => {
                self.answered();
                Ok(reply.booked)
            }
            Err(error) if error.is_unavailable() => match self.unanswered(&error, false) {
                Some(fallback) => fallback.try_acquire(n),
                None => Err(ResourceError::other(error)),
            },
            Err(error) => Err(ResourceError::other(error)),
        }
    }

    /// Queues, books when its turn comes, and sleeps until the booked time.
    pub(super) async fn acquire(self: &Arc<Self>, n: u32) -> Result<(), ResourceError> {
        check_burst(n, self.burst)?;
        let id = {
            let mut state = self.lock();
            self.connection(&state)?;
            let id = state.next_id;
            state.next_id += 1;
            state.queue.insert(id, None);
            id
        };
        let mut queued = Queued {
            limiter: self,
            id,
            booked: None,
        };
        loop {
            self.turn(id).await?;
            // A pause known here is waited out before booking: a place booked inside
            // it would be wasted.
            let paused = self.lock().paused_until.filter(|p| *p > Instant::now());
            if let Some(until) = paused {
                self.sleep_until(id, until).await?;
                continue;
            }
            if let Some(fallback) = self.falling_back() {
                self.guarded(id, fallback.acquire(n)).await??;
                return Ok(());
            }
            let conn = self.connection(&self.lock())?;
            match self.guarded(id, self.book(conn, n, true)).await? {
                Ok(reply) => {
                    self.answered();
                    queued.booked = Some(Booked {
                        tat: reply.tat,
                        frac: reply.frac,
                        tokens: n,
                    });
                    // The reply left the server before it arrived here: counting the
                    // wait from now never goes early.
                    let Some(at) = Instant::now().checked_add(reply.wait) else {
                        return Err(ResourceError::other(
                            self.server
                                .store_error(format!("it asked for a wait of {:?}", reply.wait)),
                        ));
                    };
                    self.sleep_until(id, at).await?;
                    queued.booked = None;
                    return Ok(());
                }
                Err(error) if error.is_unavailable() => {
                    if self.unanswered(&error, true).is_none() {
                        return Err(ResourceError::other(error));
                    }
                    // Falling back: take the turn again, from the local limiter.
                }
                Err(error) => return Err(ResourceError::other(error)),
            }
        }
    }

    /// Pauses this process at once, and sends the pause to Redis in a task.
    pub(super) fn pause_until(self: &Arc<Self>, until: Instant) {
        if let Some((fallback, _)) = &self.fallback {
            fallback.pause_until(until);
        }
        let conn = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
            wake_head(&mut state);
            if until <= Instant::now() || state.pause_sent.is_some_and(|sent| sent >= until) {
                return;
            }
            // Before `enter` there is nothing to send it on: `enter` sends it.
            let Some(conn) = state.conn.clone() else {
                return;
            };
            state.pause_sent = Some(until);
            conn
        };
        self.send_pause(conn, until);
    }

    /// Sends a pause in a task; a pause that cannot be sent is logged.
    fn send_pause(self: &Arc<Self>, conn: ConnectionManager, until: Instant) {
        let limiter = Arc::clone(self);
        let sent = self.spawn(async move {
            let delay = until.saturating_duration_since(Instant::now());
            if delay.is_zero() {
                return;
            }
            let delay_us = u64::try_from(delay.as_micros().min(MAX_SPAN_US)).unwrap_or(u64::MAX);
            let mut call = limiter.pause_script.key(&limiter.key);
            call.arg(delay_us).arg(EXPIRY_MARGIN_MS);
            match limiter
                .round_trip::<i64>(&conn, &call, "could not send a pause")
                .await
            {
                Ok(_) => tracing::debug!(
                    limiter = %limiter.server.prefix,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "pause sent to Redis"
                ),
                Err(error) => limiter.pause_lost(until, &error),
            }
        });
        if !sent {
            let error = self
                .server
                .unavailable("no tokio runtime to send it on".into());
            self.pause_lost(until, &error);
        }
    }

    fn pause_lost(&self, until: Instant, error: &LimiterError) {
        tracing::warn!(
            limiter = %self.server.prefix,
            %error,
            "rate limiter paused in this process only: the pause did not reach Redis, so the other processes are not held back"
        );
        let mut state = self.lock();
        if state.pause_sent == Some(until) {
            // A later pause until the same instant tries again.
            state.pause_sent = None;
        }
    }

    /// Sends a correction of an acquisition to Redis in a task (to the local limiter
    /// while it stands in for Redis); a correction that cannot be sent is logged.
    pub(super) fn settle(self: &Arc<Self>, taken: u32, used: u32) {
        if taken == used {
            return;
        }
        if let Some(fallback) = self.falling_back() {
            fallback.settle(taken, used);
            return;
        }
        let conn = {
            let state = self.lock();
            match &state.conn {
                Some(conn) if !state.closed => conn.clone(),
                // Closed, or never entered: nothing was acquired from Redis.
                _ => return,
            }
        };
        let (charge, tokens) = if used > taken {
            (true, used - taken)
        } else {
            (false, taken - used)
        };
        let limiter = Arc::clone(self);
        let spawned = self.spawn(async move {
            let (whole, part) = limiter.span(tokens);
            // A debt past 35 years is one no caller lives to see: capped, so the
            // schedule stays exact in the script's numbers.
            let whole = whole.min(u64::try_from(MAX_SPAN_US).unwrap_or(u64::MAX));
            let mut call = limiter.settle_script.key(&limiter.key);
            call.arg(u8::from(charge))
                .arg(whole)
                .arg(part)
                .arg(limiter.denom)
                .arg(EXPIRY_MARGIN_MS);
            if let Err(error) = limiter
                .round_trip::<Vec<i64>>(&conn, &call, "could not settle an acquisition")
                .await
            {
                tracing::warn!(
                    limiter = %limiter.server.prefix,
                    %error,
                    tokens,
                    charge,
                    "rate limiter: a correction of an acquisition did not reach Redis"
                );
            }
        });
        if !spawned {
            tracing::warn!(
                limiter = %self.server.prefix,
                tokens,
                charge,
                "rate limiter: a correction of an acquisition was not sent: no tokio runtime to send it on"
            );
        }
    }

    /// Gives a cancelled waiter's booking back in a task, when it can.
    fn give_back(self: &Arc<Self>, booked: Booked) {
        let Some(conn) = self.lock().conn.clone() else {
            // Closed: nobody books after it any more.
            return;
        };
        let limiter = Arc::clone(self);
        let spawned = self.spawn(async move {
            let (whole, part) = limiter.span(booked.tokens);
            let mut call = limiter.give_back_script.key(&limiter.key);
            call.arg(booked.tat)
                .arg(booked.frac)
                .arg(whole)
                .arg(part)
                .arg(limiter.denom);
            let outcome = limiter
                .round_trip::<i64>(&conn, &call, "could not give a place back")
                .await;
            tracing::debug!(
                limiter = %limiter.server.prefix,
                tokens = booked.tokens,
                given_back = matches!(outcome, Ok(1)),
                "a cancelled waiter's booking"
            );
        });
        if !spawned {
            tracing::debug!(
                limiter = %self.server.prefix,
                tokens = booked.tokens,
                "a cancelled waiter's tokens stay spent: no tokio runtime to give them back on"
            );
        }
    }

    /// Runs `task` as one of the limiter's tasks, on the current runtime or the one
    /// the limiter was entered on; `false` when there is neither.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle),
            Err(_) => self.lock().runtime.clone(),
        };
        match handle {
            Some(handle) => {
                self.tasks.spawn_on(task, &handle);
                true
            }
            None => false,
        }
    }

    /// One run of `acquire.lua`: books `n` tokens (or, with `book` false, takes them
    /// only if they are admitted now).
    async fn book(
        &self,
        conn: ConnectionManager,
        n: u32,
        book: bool,
    ) -> Result<Reply, LimiterError> {
        let (whole, part) = self.span(n);
        let (ahead_whole, ahead_part) = self.span(self.burst - n);
        let mut call = self.acquire_script.key(&self.key);
        call.arg(u8::from(book))
            .arg(whole)
            .arg(part)
            .arg(ahead_whole)
            .arg(ahead_part)
            .arg(self.denom)
            .arg(EXPIRY_MARGIN_MS);
        let reply: Vec<i64> = self.round_trip(&conn, &call, "no booking").await?;
        match reply[..] {
            [booked @ (0 | 1), wait, tat, frac] if wait >= 0 => Ok(Reply {
                booked: booked == 1,
                wait: Duration::from_micros(wait.unsigned_abs()),
                tat,
                frac,
            }),
            _ => Err(self.server.store_error(format!(
                "the acquisition script answered {reply:?}, not [booked, wait, tat, frac]"
            ))),
        }
    }

    /// `n` tokens as whole microseconds and a fraction of `denom`.
    fn span(&self, n: u32) -> (u64, u64) {
        let total = u128::from(n) * self.period_ns;
        let denom = u128::from(self.denom);
        // Both fit for up to a burst: its span was checked against `MAX_SPAN_US` at
        // build, and the remainder is below `denom`. More (a charge) saturates.
        let whole = u64::try_from(total / denom).unwrap_or(u64::MAX);
        let part = u64::try_from(total % denom).unwrap_or(0);
        (whole, part)
    }

    /// Runs `invocation` on `conn` within the timeout.
    ///
    /// A connection found broken is tried once more: the client replaces it on that
    /// error, so the second try reaches a Redis that came back (or one that closed an
    /// idle connection) at once. If the first try ran before the connection broke, a
    /// booking is made twice and its tokens are spent twice: that costs the schedule
    /// one booking's worth of time, as a cancelled waiter would.
    async fn round_trip<T: ::redis::FromRedisValue>(
        &self,
        conn: &ConnectionManager,
        invocation: &ScriptInvocation<'_>,
        doing: &str,
    ) -> Result<T, LimiterError> {
        match invoke(conn, invocation, self.timeout).await {
            Some(Ok(value)) => Ok(value),
            // The client's own response timeout is the same one.
            Some(Err(error)) if !error.is_timeout() => Err(self.server.classify(&error, doing)),
            Some(Err(_)) | None => Err(self.server.unavailable(format!(
                "{doing}: no answer within the timeout of {:?}",
                self.timeout
            ))),
        }
    }

    fn closed_error(&self) -> ResourceError {
        ResourceError::closed(format!("RateLimiter `{}`", self.server.prefix))
    }

    /// The connection, or why there is none.
    fn connection(&self, state: &State) -> Result<ConnectionManager, ResourceError> {
        if state.closed {
            return Err(self.closed_error());
        }
        state.conn.clone().ok_or_else(|| {
            ResourceError::not_entered(format!("RateLimiter `{}`", self.server.prefix))
        })
    }

    /// The local limiter, while Redis does not answer and it is not time to ask again.
    fn falling_back(&self) -> Option<&local::Limiter> {
        let (fallback, _) = self.fallback.as_ref()?;
        let probe_at = self.lock().outage?;
        (Instant::now() < probe_at).then_some(fallback)
    }

    /// Redis answered: the end of an outage, if there was one.
    fn answered(&self) {
        let ended = self.lock().outage.take().is_some();
        if ended {
            match &self.fallback {
                Some(_) => tracing::info!(
                    limiter = %self.server.prefix,
                    url = %self.server.url,
                    "rate limiter back on the schedule in Redis: Redis answers again"
                ),
                None => tracing::info!(
                    limiter = %self.server.prefix,
                    url = %self.server.url,
                    "rate limiter: Redis answers again"
                ),
            }
        }
    }

    /// Redis did not answer: the local limiter to go on with, or `None` to fail (and
    /// then, for the head of the queue, every waiter queued behind it fails too).
    fn unanswered(&self, error: &LimiterError, head: bool) -> Option<&local::Limiter> {
        let first = {
            let mut state = self.lock();
            let first = state.outage.is_none();
            state.outage = Some(Instant::now() + self.probe_interval);
            if head && self.fallback.is_none() {
                let upto = state.next_id.saturating_sub(1);
                state.failed = Some((upto, error.clone()));
                for waker in state.queue.values_mut().filter_map(Option::take) {
                    waker.wake();
                }
            }
            first
        };
        match &self.fallback {
            Some((fallback, share)) => {
                if first {
                    tracing::warn!(
                        limiter = %self.server.prefix,
                        %error,
                        share,
                        "rate limiter falling back to a limiter in this process at its share of the rate until Redis answers again"
                    );
                }
                Some(fallback)
            }
            None => {
                if first {
                    tracing::warn!(
                        limiter = %self.server.prefix,
                        %error,
                        "rate limiter: Redis is unavailable, and acquisitions fail until it answers again"
                    );
                }
                None
            }
        }
    }

    /// Waits until `id` is the head of the queue.
    async fn turn(&self, id: u64) -> Result<(), ResourceError> {
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.closed {
                return Poll::Ready(Err(self.closed_error()));
            }
            if let Some((upto, error)) = &state.failed
                && id <= *upto
            {
                return Poll::Ready(Err(ResourceError::other(error.clone())));
            }
            if state.queue.first_key_value().map(|(head, _)| *head) == Some(id) {
                return Poll::Ready(Ok(()));
            }
            register(&mut state, id, cx);
            Poll::Pending
        })
        .await
    }

    /// Runs `fut` for the head `id`, until it ends or the limiter closes.
    async fn guarded<T>(&self, id: u64, fut: impl Future<Output = T>) -> Result<T, ResourceError> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            {
                let mut state = self.lock();
                if state.closed {
                    return Poll::Ready(Err(self.closed_error()));
                }
                register(&mut state, id, cx);
            }
            fut.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Sleeps until `at`, or the end of a pause set meanwhile, until the limiter
    /// closes.
    async fn sleep_until(&self, id: u64, at: Instant) -> Result<(), ResourceError> {
        let mut sleep = pin!(None::<Sleep>);
        poll_fn(|cx| {
            loop {
                let until = {
                    let mut state = self.lock();
                    if state.closed {
                        return Poll::Ready(Err(self.closed_error()));
                    }
                    register(&mut state, id, cx);
                    state.paused_until.map_or(at, |paused| paused.max(at))
                };
                if Instant::now() >= until {
                    return Poll::Ready(Ok(()));
                }
                match sleep.as_mut().as_pin_mut() {
                    Some(timer) => {
                        if timer.deadline() != until {
                            timer.reset(until);
                        }
                    }
                    None => match crate::step::try_sleep_until(until) {
                        Some(timer) => sleep.set(Some(timer)),
                        None => return Poll::Ready(Err(no_timer())),
                    },
                }
                if let Some(timer) = sleep.as_mut().as_pin_mut()
                    && timer.poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a few assignments that cannot panic half-way.
        crate::sync::lock(&self.state)
    }
}

/// Takes a waiter out of the queue when its `acquire` ends, however it ends, lets the
/// next one take its turn, and gives back a booking it did not use.
struct Queued<'a> {
    limiter: &'a Arc<RedisLimiter>,
    id: u64,
    booked: Option<Booked>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.limiter.lock();
            let was_head = state.queue.first_key_value().map(|(head, _)| *head) == Some(self.id);
            state.queue.remove(&self.id);
            if was_head {
                wake_head(&mut state);
            }
        }
        if let Some(booked) = self.booked.take() {
            self.limiter.give_back(booked);
        }
    }
}

/// Keeps the waker of waiter `id` for the next wake-up.
fn register(state: &mut State, id: u64, cx: &Context<'_>) {
    if let Some(slot) = state.queue.get_mut(&id) {
        match slot {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
    }
}

fn wake_head(state: &mut State) {
    if let Some(waker) = state.queue.values_mut().next().and_then(Option::take) {
        waker.wake();
    }
}

/// Whether `error` says the server could not be reached or did not answer (rather
/// than that it answered with a refusal).
pub(super) fn is_unavailable_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// Runs `invocation` on `conn` within `timeout` (`None` when the time ran out); a
/// connection found broken is tried once more, since the client replaces it on that
/// error.
pub(super) async fn invoke<T: ::redis::FromRedisValue>(
    conn: &ConnectionManager,
    invocation: &ScriptInvocation<'_>,
    timeout: Duration,
) -> Option<Result<T, RedisError>> {
    let attempt = || {
        let mut conn = conn.clone();
        async move { invocation.invoke_async::<T>(&mut conn).await }
    };
    let attempts = async {
        match attempt().await {
            Err(error) if error.is_connection_dropped() || error.is_connection_refusal() => {
                attempt().await
            }
            answered => answered,
        }
    };
    within(timeout, attempts).await
}

/// Connects to `client` with one attempt per connection (`connect_timeout` to
/// connect, `timeout` for every reply) and loads `scripts`, all within
/// `connect_timeout`: `None` when the time ran out, `Some(Err(panic))` when the client
/// panicked (a runtime without its IO driver).
pub(super) async fn connect(
    client: Client,
    connect_timeout: Duration,
    timeout: Duration,
    scripts: &[&Script],
) -> Option<Result<Result<ConnectionManager, RedisError>, crate::sync::Payload>> {
    // One attempt per connection: the timeouts here bound every wait, and a failed
    // round trip starts the next attempt.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0);
    let connect = async {
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        for script in scripts {
            script.load_async(&mut conn).await?;
        }
        Ok::<_, RedisError>(conn)
    };
    within(connect_timeout, CatchUnwind::new(connect)).await
}

/// Runs `fut` for at most `limit` from its first poll; `None` when the time ran out.
/// On a runtime without timers it runs unbounded (`enter` refuses such a runtime).
pub(super) async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut timer = pin!(None::<Sleep>);
    let mut started = false;
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !started {
            started = true;
            if let Some(sleep) = crate::step::try_sleep(limit) {
                timer.set(Some(sleep));
            }
        }
        if let Some(sleep) = timer.as_mut().as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// The URL with its password replaced by `***`, and the passwords it held (in the
/// user info, or the `pass` of a socket URL). A URL that does not parse is shown as
/// its scheme alone.
pub(super) fn redact(url: &str) -> (String, Vec<String>) {
    let Some(mut parsed) = ::redis::parse_redis_url(url) else {
        let scheme = url.split_once("://").map_or("?", |(scheme, _)| scheme);
        return (
            format!("{scheme}://(a URL that does not parse)"),
            Vec::new(),
        );
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
        secrets.push(password.to_owned());
        // Only a URL that cannot hold a password refuses one, and this one holds one.
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if pairs.iter().any(|(key, _)| key == "pass") {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (key, value) in &pairs {
            if key == "pass" {
                secrets.push(value.clone());
                query.append_pair(key, "***");
            } else {
                query.append_pair(key, value);
            }
        }
    }
    (parsed.to_string(), secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let (shown, secrets) = redact("redis://user:s3cret@127.0.0.1:6379/2");
        assert_eq!(shown, "redis://user:***@127.0.0.1:6379/2");
        assert_eq!(secrets, ["s3cret"]);
        let (shown, secrets) = redact("redis://:s3cret@localhost/");
        assert_eq!(shown, "redis://:***@localhost/");
        assert_eq!(secrets, ["s3cret"]);
        let (shown, secrets) = redact("redis+unix:///run/redis.sock?db=1&pass=s3cret");
        assert_eq!(shown, "redis+unix:///run/redis.sock?db=1&pass=***");
        assert_eq!(secrets, ["s3cret"]);
        let (shown, secrets) = redact("redis://127.0.0.1:6379/");
        assert_eq!(shown, "redis://127.0.0.1:6379/");
        assert!(secrets.is_empty());
        let (shown, _) = redact("http://:s3cret@[oops");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_token_is_whole_microseconds_and_an_exact_fraction() {
        let limiter = RedisLimiter::new(
            3,
            Duration::from_secs(1),
            2,
            RedisConfig::new("redis://127.0.0.1/", "test"),
            LimiterClock::Tokio,
        )
        .unwrap();
        // A third of a second: 333333 µs and 1000/3000 of one.
        assert_eq!(limiter.span(1), (333_333, 1_000));
        assert_eq!(limiter.span(2), (666_666, 2_000));
        assert_eq!(limiter.span(0), (0, 0));
        assert_eq!(limiter.key, "{test}:gcra");
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused() {
        let build = |config: RedisConfig| {
            RedisLimiter::new(10, Duration::from_secs(1), 1, config, LimiterClock::Tokio)
                .err()
                .and_then(|e| e.downcast_ref::<ConfigError>().map(|c| c.setting()))
        };
        let url = "redis://127.0.0.1/";
        assert_eq!(build(RedisConfig::new(url, "")), Some("prefix"));
        assert_eq!(build(RedisConfig::new(url, "a{b}")), Some("prefix"));
        assert_eq!(
            build(RedisConfig::new(url, "p").timeout(Duration::ZERO)),
            Some("timeout")
        );
        assert_eq!(
            build(RedisConfig::new(url, "p").connect_timeout(Duration::ZERO)),
            Some("connect_timeout")
        );
        for share in [0.0, -0.5, 1.5, f64::NAN] {
            assert_eq!(
                build(RedisConfig::new(url, "p").fallback(Fallback::Local { share })),
                Some("fallback")
            );
        }
        assert_eq!(
            build(RedisConfig::new("http://:pw@127.0.0.1/", "p")),
            Some("url")
        );
        let err = RedisLimiter::new(
            10,
            Duration::from_secs(1),
            1,
            RedisConfig::new("http://:pw@127.0.0.1/", "p"),
            LimiterClock::Tokio,
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("pw@"), "{err}");
        assert_eq!(
            RedisLimiter::new(
                1,
                Duration::from_secs(60 * 60 * 24 * 365 * 40),
                1,
                RedisConfig::new(url, "p"),
                LimiterClock::Tokio,
            )
            .err()
            .and_then(|e| e.downcast_ref::<ConfigError>().map(|c| c.setting())),
            Some("period")
        );
    }
}
