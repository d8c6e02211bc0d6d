//! Fleet permits for an [`AsyncExecutor`](crate::executor::AsyncExecutor): a cap on
//! the tasks in flight across every process that names the same prefix on one Redis.
//!
//! It lives beside the Redis rate limiter because it is built from the same parts:
//! the connection, the bounded round trips and their classification into
//! "unavailable" or "refused" (`super::redis`), and [`LimiterError`] for its errors.
//!
//! A permit is a lease: a member of the sorted set `{prefix}:permits`, scored by its
//! expiry on the server's clock. `permits_acquire.lua` drops the expired leases, then
//! admits if fewer than the limit are held. One background task per process renews
//! all of its leases in one call (`permits_renew.lua`) every third of the lease's
//! time to live; a lease is released (`permits_release.lua`) when its task ends,
//! however it ends. A process killed while holding leases stops renewing them, and
//! they expire after their time to live.

use std::collections::BTreeSet;
use std::fmt;
use std::future::{Future, poll_fn};
use std::hash::{BuildHasher, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Client, Script};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::LimiterError;
use super::redis::{Server, connect, invoke, redact};
use crate::error::{ConfigError, ResourceError};

/// Where an [`AsyncExecutor`](crate::executor::AsyncExecutor) takes a fleet-wide
/// permit for every task, beside its local slot; given to
/// [`AsyncExecutorBuilder::redis_permits`](crate::executor::AsyncExecutorBuilder::redis_permits).
///
/// Every process whose executor names the same `prefix` on the same Redis shares
/// `limit` permits, so they must agree on the limit. The leases are one sorted set,
/// `{prefix}:permits` (the braces are a hash tag: one Redis Cluster slot), which
/// expires a second after its last lease. The server needs Lua scripting with effects
/// replication: Redis 5 or later, or Valkey.
///
/// - A lease lives `lease_ttl` (default 10 s) unless renewed: this process renews
///   all of its leases in one call every third of it. A process that dies holding
///   leases loses them after at most `lease_ttl`.
/// - A caller that finds the fleet full waits without polling Redis in a tight loop:
///   the process's first waiter alone asks again, after a backoff that starts at
///   5 ms, doubles up to `max_backoff` (default 200 ms) and is jittered (each wait is
///   drawn between half and all of it), and sooner when a lease of this process is
///   released. So a full fleet costs each process at most about `1 / max_backoff`
///   round trips a second once the backoff is at its cap, whatever its waiters.
/// - Redis that does not answer within `timeout` (default 500 ms; `connect_timeout`,
///   default 2 s, at enter) fails the caller with an error for which
///   [`ResourceError::is_unavailable`] is true, and every caller of the process
///   queued behind it at once.
///
/// `Debug` and every error show the URL without its password.
///
/// ```
/// use std::time::Duration;
/// use resource_runtime::executor::RedisPermits;
///
/// let permits = RedisPermits::new("redis://:hunter2@10.0.0.5:6379/0", "myorg:openai", 50)
///     .lease_ttl(Duration::from_secs(5))
///     .timeout(Duration::from_millis(200));
/// assert!(!format!("{permits:?}").contains("hunter2"));
/// ```
#[derive(Clone)]
pub struct RedisPermits {
    url: String,
    prefix: String,
    limit: u32,
    lease_ttl: Duration,
    connect_timeout: Duration,
    timeout: Duration,
    max_backoff: Duration,
}

impl fmt::Debug for RedisPermits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPermits")
            .field("url", &redact(&self.url).0)
            .field("prefix", &self.prefix)
            .field("limit", &self.limit)
            .field("lease_ttl", &self.lease_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl RedisPermits {
    /// `limit` permits shared under `prefix` on the Redis server at `url`
    /// (`redis://`, `redis+unix://`, `valkey://`). Defaults: leases of 10 s, a
    /// connect timeout of 2 s, a timeout of 500 ms for every other round trip, and a
    /// backoff of at most 200 ms between the attempts of a waiter.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>, limit: u32) -> Self {
        RedisPermits {
            url: url.into(),
            prefix: prefix.into(),
            limit,
            lease_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            max_backoff: Duration::from_millis(200),
        }
    }

    /// How long a lease lives without renewal: how long the permits of a process that
    /// died stay taken. At least 30 ms, and at least twice the
    /// [`timeout`](Self::timeout), so that a renewal always lands in time.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long entering may take to connect and load the scripts.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long any other round trip may take, reconnecting included, before Redis
    /// counts as unavailable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest backoff between two attempts of a waiter while the fleet is full.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }
}

/// The first backoff of a waiter that found the fleet full.
const MIN_BACKOFF: Duration = Duration::from_millis(5);

/// Milliseconds the set outlives its last lease.
const EXPIRY_MARGIN_MS: u64 = 1_000;

/// The fleet permits of one executor.
pub(crate) struct Permits {
    server: Server,
    client: Client,
    key: String,
    limit: u32,
    ttl: Duration,
    connect_timeout: Duration,
    timeout: Duration,
    max_backoff: Duration,
    acquire_script: Script,
    renew_script: Script,
    release_script: Script,
    /// Names this process's leases: random, so two processes never share one.
    process: String,
    next_lease: AtomicU64,
    state: Mutex<State>,
    /// Held by the one waiter of this process that asks Redis; tokio's mutex is
    /// first come, first served.
    head: tokio::sync::Mutex<()>,
    /// Cancelled when the executor closes: waiters leave with a closed error.
    closed: CancellationToken,
    /// Cancelled once every task has ended: the renewal stops.
    stop_renewal: CancellationToken,
    /// A lease of this process was released: the head asks again at once.
    released: Notify,
    /// The releases on their way to Redis.
    tasks: TaskTracker,
}

struct State {
    conn: Option<ConnectionManager>,
    runtime: Option<tokio::runtime::Handle>,
    /// The leases this process holds: what the renewal renews.
    held: BTreeSet<String>,
    next_ticket: u64,
    /// The waiters up to this ticket fail with this error: Redis did not answer the
    /// head they queued behind.
    failed: Option<(u64, LimiterError)>,
}

impl Permits {
    /// Checks the configuration; connects nothing.
    pub(crate) fn new(config: RedisPermits) -> Result<Self, ResourceError> {
        let RedisPermits {
            url,
            prefix,
            limit,
            lease_ttl,
            connect_timeout,
            timeout,
            max_backoff,
        } = config;
        let handle = format!("AsyncExecutor permits `{prefix}`");
        let invalid = |setting, why: &str| -> ResourceError {
            ConfigError::new(handle.clone(), setting, why.to_owned()).into()
        };
        if prefix.is_empty() {
            return Err(invalid(
                "prefix",
                "is empty: name the cap every process shares, such as \"myorg:openai\"",
            ));
        }
        if prefix.contains(['{', '}']) {
            return Err(invalid(
                "prefix",
                "holds a brace: the permits wrap the prefix in braces themselves, as the hash tag of their key",
            ));
        }
        if limit == 0 {
            return Err(invalid(
                "limit",
                "is 0, so no task could ever run: give at least 1",
            ));
        }
        if connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "is zero: give at least 1ms"));
        }
        if timeout.is_zero() {
            return Err(invalid("timeout", "is zero: give at least 1ms"));
        }
        if lease_ttl < Duration::from_millis(30)
            || timeout.checked_mul(2).is_none_or(|t| lease_ttl < t)
        {
            return Err(invalid(
                "lease_ttl",
                "is shorter than 30ms or than twice the timeout: a renewal could land after its leases expired",
            ));
        }
        if lease_ttl.as_millis() > 1 << 40 {
            return Err(invalid(
                "lease_ttl",
                "is longer than the server's clock can count in a Lua number",
            ));
        }
        if max_backoff < MIN_BACKOFF {
            return Err(invalid("max_backoff", "is shorter than 5ms"));
        }
        let key = format!("{{{prefix}}}:permits");
        let (server, client) = Server::open(&url, prefix)
            .map_err(|why| ConfigError::new(handle.clone(), "url", why))?;
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Ok(Permits {
            key,
            server,
            client,
            limit,
            ttl: lease_ttl,
            connect_timeout,
            timeout,
            max_backoff,
            acquire_script: Script::new(include_str!("permits_acquire.lua")),
            renew_script: Script::new(include_str!("permits_renew.lua")),
            release_script: Script::new(include_str!("permits_release.lua")),
            process: format!("{}-{seed:016x}", std::process::id()),
            next_lease: AtomicU64::new(0),
            state: Mutex::new(State {
                conn: None,
                runtime: None,
                held: BTreeSet::new(),
                next_ticket: 0,
                failed: None,
            }),
            head: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
            stop_renewal: CancellationToken::new(),
            released: Notify::new(),
            tasks: TaskTracker::new(),
        })
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.server.prefix
    }

    /// How many leases this process holds.
    pub(crate) fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Connects, loads the scripts and starts the renewal; entering again does nothing.
    pub(crate) async fn enter(self: &Arc<Self>) -> Result<(), ResourceError> {
        {
            let state = self.lock();
            if self.closed.is_cancelled() {
                return Err(self.closed_error());
            }
            if state.conn.is_some() {
                return Ok(());
            }
        }
        if crate::step::try_sleep(Duration::ZERO).is_none() {
            return Err(ResourceError::other(LimiterError::NoTimer));
        }
        let scripts = [
            &self.acquire_script,
            &self.renew_script,
            &self.release_script,
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
            Some(Ok(Err(error))) if !error.is_timeout() => {
                return Err(ResourceError::other(
                    self.classify(&error, "could not connect"),
                ));
            }
            Some(Err(panic)) => return Err(ResourceError::from_panic(panic)),
            Some(Ok(Err(_))) | None => {
                return Err(ResourceError::other(self.server.unavailable(format!(
                    "could not connect and load the scripts within the connect timeout of {:?}",
                    self.connect_timeout
                ))));
            }
        };
        let runtime = tokio::runtime::Handle::try_current().ok();
        {
            let mut state = self.lock();
            if self.closed.is_cancelled() {
                return Err(self.closed_error());
            }
            if state.conn.is_some() {
                return Ok(());
            }
            state.conn = Some(conn);
            state.runtime.clone_from(&runtime);
        }
        if let Some(runtime) = runtime {
            runtime.spawn(renew(Arc::downgrade(self), self.stop_renewal.clone()));
        }
        Ok(())
    }

    /// Waits, first come first served within this process, for a fleet permit.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Lease, ResourceError> {
        let (conn, ticket) = {
            let mut state = self.lock();
            if self.closed.is_cancelled() {
                return Err(self.closed_error());
            }
            let conn = state.conn.clone().ok_or_else(|| {
                ResourceError::not_entered(format!(
                    "AsyncExecutor permits `{}`",
                    self.server.prefix
                ))
            })?;
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            (conn, ticket)
        };
        let Some(_head) = unless_cancelled(&self.closed, self.head.lock()).await else {
            return Err(self.closed_error());
        };
        if let Some((upto, error)) = &self.lock().failed
            && ticket <= *upto
        {
            return Err(ResourceError::other(error.clone()));
        }
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let mut pending = Pending {
            permits: self,
            id: Some(format!("{}:{n}", self.process)),
            sent: false,
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some(id) = pending.id.clone() else {
                return Err(self.closed_error());
            };
            let mut call = self.acquire_script.key(&self.key);
            call.arg(self.limit)
                .arg(ttl_ms(self.ttl))
                .arg(EXPIRY_MARGIN_MS)
                .arg(&id);
            // Notified from here on: a release during the round trip is not missed.
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            pending.sent = true;
            let round_trip = self.round_trip::<i64>(&conn, &call, "no permit");
            let Some(reply) = unless_cancelled(&self.closed, round_trip).await else {
                return Err(self.closed_error());
            };
            match reply {
                Ok(1) => {
                    self.lock().held.insert(id.clone());
                    pending.id = None;
                    return Ok(Lease {
                        permits: Arc::clone(self),
                        id,
                    });
                }
                // Not admitted: there is nothing to release if the caller leaves now.
                Ok(0) => pending.sent = false,
                Ok(other) => {
                    return Err(ResourceError::other(self.server.store_error(format!(
                        "the acquisition script answered {other}, not 0 or 1"
                    ))));
                }
                Err(error) => {
                    if error.is_unavailable() {
                        let mut state = self.lock();
                        let upto = state.next_ticket.saturating_sub(1);
                        state.failed = Some((upto, error.clone()));
                    }
                    return Err(ResourceError::other(error));
                }
            }
            let Some(sleep) = crate::step::try_sleep(jitter(backoff)) else {
                return Err(ResourceError::other(LimiterError::NoTimer));
            };
            if unless_cancelled(&self.closed, either(released, sleep))
                .await
                .is_none()
            {
                return Err(self.closed_error());
            }
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }

    /// The executor is closing: every waiter leaves with a closed error, and no new
    /// one comes. The leases held stay held until their tasks end.
    pub(crate) fn stop_waiters(&self) {
        self.closed.cancel();
    }

    /// Every task has ended: stops the renewal, waits for the releases on their way,
    /// releases whatever is still held (each round trip within the timeout), and drops
    /// the connection. Any close may call it; the later ones wait for the first.
    pub(crate) async fn finish(self: &Arc<Self>) {
        self.closed.cancel();
        self.stop_renewal.cancel();
        let (conn, left) = {
            let mut state = self.lock();
            let left: Vec<String> = std::mem::take(&mut state.held).into_iter().collect();
            state.runtime = None;
            (state.conn.take(), left)
        };
        if let Some(conn) = conn
            && !left.is_empty()
        {
            self.send_release(conn, left);
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Releases `id` in a task (without a runtime to run it on, it expires after the
    /// lease's time to live).
    fn release(self: &Arc<Self>, id: String) {
        let conn = {
            let mut state = self.lock();
            if !state.held.remove(&id) && state.conn.is_none() {
                return;
            }
            state.conn.clone()
        };
        // Without a connection (closed), `finish` released what was held.
        if let Some(conn) = conn {
            self.send_release(conn, vec![id]);
        }
    }

    fn send_release(self: &Arc<Self>, conn: ConnectionManager, ids: Vec<String>) {
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle),
            Err(_) => self.lock().runtime.clone(),
        };
        let Some(handle) = handle else {
            tracing::debug!(
                permits = %self.server.prefix,
                leases = ids.len(),
                "fleet permits left to expire: no tokio runtime to release them on"
            );
            return;
        };
        let script = self.release_script.clone();
        let key = self.key.clone();
        let timeout = self.timeout;
        let prefix = self.server.prefix.clone();
        // The task wakes the head through a weak reference: it must not keep the
        // permits alive.
        let released = Arc::downgrade(self);
        self.tasks.spawn_on(
            async move {
                let mut call = script.key(&key);
                for id in &ids {
                    call.arg(id);
                }
                match invoke::<i64>(&conn, &call, timeout).await {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => tracing::warn!(
                        permits = %prefix,
                        %error,
                        leases = ids.len(),
                        "fleet permits not released: they expire after their time to live"
                    ),
                    None => tracing::warn!(
                        permits = %prefix,
                        leases = ids.len(),
                        "fleet permits not released within the timeout: they expire after their time to live"
                    ),
                }
                if let Some(permits) = released.upgrade() {
                    permits.released.notify_waiters();
                }
            },
            &handle,
        );
    }

    async fn round_trip<T: ::redis::FromRedisValue>(
        &self,
        conn: &ConnectionManager,
        invocation: &::redis::ScriptInvocation<'_>,
        doing: &str,
    ) -> Result<T, LimiterError> {
        match invoke(conn, invocation, self.timeout).await {
            Some(Ok(value)) => Ok(value),
            Some(Err(error)) if !error.is_timeout() => Err(self.classify(&error, doing)),
            Some(Err(_)) | None => Err(self.server.unavailable(format!(
                "{doing}: no answer within the timeout of {:?}",
                self.timeout
            ))),
        }
    }

    fn classify(&self, error: &::redis::RedisError, doing: &str) -> LimiterError {
        self.server
            .classify(error, &format!("fleet permits: {doing}"))
    }

    fn closed_error(&self) -> ResourceError {
        ResourceError::closed(format!("AsyncExecutor permits `{}`", self.server.prefix))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

/// Renews every lease of the process every third of the lease's time to live, until
/// stopped or the permits are gone.
async fn renew(permits: Weak<Permits>, stop: CancellationToken) {
    let Some(every) = permits.upgrade().map(|p| p.ttl / 3) else {
        return;
    };
    loop {
        let Some(sleep) = crate::step::try_sleep(every) else {
            return;
        };
        if unless_cancelled(&stop, sleep).await.is_none() {
            return;
        }
        let Some(permits) = permits.upgrade() else {
            return;
        };
        let (conn, ids) = {
            let state = permits.lock();
            let ids: Vec<String> = state.held.iter().cloned().collect();
            (state.conn.clone(), ids)
        };
        let Some(conn) = conn else { return };
        if ids.is_empty() {
            continue;
        }
        let mut call = permits.renew_script.key(&permits.key);
        call.arg(ttl_ms(permits.ttl)).arg(EXPIRY_MARGIN_MS);
        for id in &ids {
            call.arg(id);
        }
        let round_trip = permits.round_trip::<i64>(&conn, &call, "no renewal");
        let Some(renewal) = unless_cancelled(&stop, round_trip).await else {
            return;
        };
        match renewal {
            Ok(renewed) if usize::try_from(renewed).is_ok_and(|n| n >= ids.len()) => {}
            Ok(renewed) => {
                // Released meanwhile, or expired and taken by others: the fleet may
                // run over its limit until these tasks end.
                let still_held = permits.lock().held.len();
                if usize::try_from(renewed).is_ok_and(|n| n < still_held.min(ids.len())) {
                    tracing::warn!(
                        permits = %permits.server.prefix,
                        renewed,
                        held = ids.len(),
                        "fleet permits lost: their leases expired before they were renewed"
                    );
                }
            }
            Err(error) => tracing::warn!(
                permits = %permits.server.prefix,
                %error,
                "fleet permits not renewed: they expire unless a later renewal lands in time"
            ),
        }
    }
}

/// Runs `fut` until `token` is cancelled (looked at first); `None` then.
async fn unless_cancelled<F: Future>(token: &CancellationToken, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut cancelled = pin!(token.cancelled());
    poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Ends when either future ends.
async fn either(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// A wait drawn between half and all of `backoff`.
fn jitter(backoff: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = backoff / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_micros(random % span)
}

/// A fleet permit held: released when dropped.
pub(crate) struct Lease {
    permits: Arc<Permits>,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.permits.release(std::mem::take(&mut self.id));
    }
}

/// A lease being asked for: if the caller leaves with its request sent, the lease
/// may be held in Redis without this process knowing, so it is released.
struct Pending<'a> {
    permits: &'a Arc<Permits>,
    id: Option<String>,
    sent: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take()
            && self.sent
        {
            let conn = self.permits.lock().conn.clone();
            if let Some(conn) = conn {
                self.permits.send_release(conn, vec![id]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: RedisPermits) -> Option<&'static str> {
        Permits::new(config)
            .err()
            .and_then(|e| e.downcast_ref::<ConfigError>().map(ConfigError::setting))
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused() {
        let url = "redis://127.0.0.1/";
        assert_eq!(refused(RedisPermits::new(url, "", 3)), Some("prefix"));
        assert_eq!(refused(RedisPermits::new(url, "a{b}", 3)), Some("prefix"));
        assert_eq!(refused(RedisPermits::new(url, "p", 0)), Some("limit"));
        assert_eq!(
            refused(RedisPermits::new(url, "p", 3).timeout(Duration::ZERO)),
            Some("timeout")
        );
        assert_eq!(
            refused(RedisPermits::new(url, "p", 3).connect_timeout(Duration::ZERO)),
            Some("connect_timeout")
        );
        // A renewal must land before the leases it renews expire.
        assert_eq!(
            refused(
                RedisPermits::new(url, "p", 3)
                    .lease_ttl(Duration::from_millis(500))
                    .timeout(Duration::from_millis(300))
            ),
            Some("lease_ttl")
        );
        assert_eq!(
            refused(RedisPermits::new(url, "p", 3).timeout(Duration::MAX)),
            Some("lease_ttl")
        );
        assert_eq!(
            refused(RedisPermits::new(url, "p", 3).max_backoff(Duration::from_millis(1))),
            Some("max_backoff")
        );
        let err = Permits::new(RedisPermits::new("http://:pw@127.0.0.1/", "p", 3))
            .err()
            .unwrap();
        assert!(!err.to_string().contains("pw@"), "{err}");
        let permits = Permits::new(
            RedisPermits::new(url, "p", 3)
                .lease_ttl(Duration::from_millis(500))
                .timeout(Duration::from_millis(250)),
        )
        .unwrap();
        assert_eq!(permits.key, "{p}:permits");
        assert_eq!(permits.limit(), 3);
    }

    #[test]
    fn a_jittered_wait_is_between_half_and_all_of_the_backoff() {
        for backoff in [MIN_BACKOFF, Duration::from_millis(200)] {
            for _ in 0..100 {
                let wait = jitter(backoff);
                assert!(
                    wait >= backoff / 2 && wait <= backoff,
                    "{wait:?} of {backoff:?}"
                );
            }
        }
    }
}
