//! [`EndpointConfig`]: what an [`Endpoint`](super::Endpoint) calls and how, readable
//! from a configuration file with serde.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The configuration of an [`Endpoint`](super::Endpoint).
///
/// Built in code with [`EndpointConfig::new`] and the setters, or read with serde (any
/// format; durations are strings such as `"500ms"`, `"30s"`, `"2m"`):
///
/// ```
/// use resource_runtime::http::{Auth, EndpointConfig, Secret};
///
/// let json = r#"{
///     "name": "chat",
///     "base_url": "https://api.example.com/v1",
///     "path": "chat/completions",
///     "auth": { "bearer": { "env": "EXAMPLE_API_KEY" } },
///     "request_timeout": "30s",
///     "retry": { "max_attempts": 4, "base_delay": "200ms" }
/// }"#;
/// let config: EndpointConfig = serde_json::from_str(json).unwrap();
/// assert_eq!(config.request_timeout.as_secs(), 30);
/// assert!(matches!(config.auth, Some(Auth::Bearer(Secret::Env(_)))));
///
/// let same = EndpointConfig::new("https://api.example.com/v1")
///     .name("chat")
///     .path("chat/completions")
///     .bearer(Secret::env("EXAMPLE_API_KEY"));
/// assert_eq!(same.path, config.path);
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// A name for logs and errors (default `"endpoint"`).
    #[serde(default = "default_name")]
    pub name: String,
    /// The API's base URL, e.g. `https://api.example.com/v1`.
    pub base_url: String,
    /// The path of this endpoint under the base URL (default: none).
    #[serde(default)]
    pub path: String,
    /// The HTTP method of [`call`](super::Endpoint::call) (default `POST`).
    #[serde(default = "default_method")]
    pub method: String,
    /// The `Content-Type` of request bodies (default `application/json`).
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// How requests authenticate, if they do.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The deadline of one attempt, from connect to the last byte (default 60 s).
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// The deadline to connect (default 10 s).
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// When and how failed attempts are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long a close lets in-flight calls finish before it cuts them (default 10 s).
    #[serde(default = "default_close_timeout", deserialize_with = "duration")]
    pub close_timeout: Duration,
}

/// How requests authenticate.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer(Secret),
    /// The key in a header of its own, e.g. `x-api-key`.
    Header {
        /// The header's name.
        name: String,
        /// The key.
        key: Secret,
    },
}

/// An API key: given, or read from an environment variable when the endpoint is
/// entered. Neither `Debug` nor any error ever shows the key itself.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Secret {
    /// The key itself.
    Value(String),
    /// The name of the environment variable that holds the key.
    Env(String),
}

impl Secret {
    /// A key given in code.
    pub fn value(key: impl Into<String>) -> Self {
        Secret::Value(key.into())
    }

    /// A key read from the environment variable `var` at `enter`.
    pub fn env(var: impl Into<String>) -> Self {
        Secret::Env(var.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(<redacted>)"),
            Secret::Env(var) => write!(f, "Secret(env {var})"),
        }
    }
}

/// When and how failed attempts are retried: connect errors, timeouts, connections
/// reset before an answer, `429` and `5xx` are; other `4xx` are not, and neither is a
/// `2xx` whose body broke off. A reset may come after the API took the request, so a
/// call that must not happen twice should carry an idempotency key. The delay before attempt `k + 1` is drawn at random
/// between zero and `min(max_delay, base_delay · 2^k)` (full jitter); a `Retry-After`
/// header replaces it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 3; 1 means no retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The backoff's base (default 250 ms).
    #[serde(default = "default_base_delay", deserialize_with = "duration")]
    pub base_delay: Duration,
    /// The longest backoff, and the longest `Retry-After` honoured (default 30 s).
    #[serde(default = "default_max_delay", deserialize_with = "duration")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_attempts(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
        }
    }
}

fn default_name() -> String {
    "endpoint".to_owned()
}
fn default_method() -> String {
    "POST".to_owned()
}
fn default_content_type() -> String {
    "application/json".to_owned()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_close_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_attempts() -> u32 {
    3
}
fn default_base_delay() -> Duration {
    Duration::from_millis(250)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(30)
}

/// `"500ms"`, `"30s"`, `"2m"`, `"1h"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let malformed = || {
        format!(
            "`{text}` is not a duration: write a whole number and a unit, like \"500ms\", \"30s\" or \"2m\""
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| malformed())?;
    let millis = match unit.trim() {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(malformed()),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

fn duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

impl EndpointConfig {
    /// A configuration for `base_url` with every default: `POST`, JSON, no auth, 60 s
    /// request and 10 s connect timeouts, 3 attempts, a 10 s close deadline.
    pub fn new(base_url: impl Into<String>) -> Self {
        EndpointConfig {
            name: default_name(),
            base_url: base_url.into(),
            path: String::new(),
            method: default_method(),
            content_type: default_content_type(),
            auth: None,
            headers: BTreeMap::new(),
            request_timeout: default_request_timeout(),
            connect_timeout: default_connect_timeout(),
            retry: RetryPolicy::default(),
            close_timeout: default_close_timeout(),
        }
    }

    /// The name in logs and errors.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The path under the base URL.
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The HTTP method of `call`.
    #[must_use]
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// The `Content-Type` of request bodies.
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// `Authorization: Bearer <key>`.
    #[must_use]
    pub fn bearer(mut self, key: Secret) -> Self {
        self.auth = Some(Auth::Bearer(key));
        self
    }

    /// The key in the header `name`.
    #[must_use]
    pub fn api_key_header(mut self, name: impl Into<String>, key: Secret) -> Self {
        self.auth = Some(Auth::Header {
            name: name.into(),
            key,
        });
        self
    }

    /// A header sent with every request.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The deadline of one attempt.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The deadline to connect.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long a close lets in-flight calls finish.
    #[must_use]
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts in all, backing off from `base_delay` up to `max_delay`.
    pub fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            base_delay,
            max_delay,
        }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy::new(1, Duration::ZERO, Duration::ZERO)
    }

    /// The backoff before the retry that follows attempt `attempt` (0-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(2_u32.saturating_pow(attempt))
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 {
            0
        } else {
            fastrand::u64(0..=nanos)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_say_what_is_wrong() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").unwrap_err().contains("\"30s\""));
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let config = EndpointConfig::new("http://x").bearer(Secret::value("sk-very-secret"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        let policy = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_millis(300));
        for attempt in 0..10 {
            let cap = Duration::from_millis(100 * 2_u64.pow(attempt).min(3));
            assert!(policy.backoff(attempt) <= cap.min(Duration::from_millis(300)));
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_json::from_str::<EndpointConfig>(r#"{"base_url": "http://x", "retries": 3}"#)
                .unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
    }
}
