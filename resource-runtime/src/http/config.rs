//! [`EndpointConfig`]: what an [`Endpoint`](super::Endpoint) calls and how, readable
//! from a configuration file with serde.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::retry::RetryPolicy;

/// The configuration of an [`Endpoint`](super::Endpoint).
///
/// Built in code with [`EndpointConfig::new`] and the setters, or read with serde (any
/// format).
///
/// Durations are strings in the grammar of the derive's `#[resource(timeout = "...")]`:
/// numbers with units, as [humantime](https://docs.rs/humantime) reads them (`"500ms"`,
/// `"30s"`, `"1m 30s"`, `"1.5s"`, `"2 min"`, `"1h"`; units `ms`, `s`, `m`, `h`, `d`,
/// `w` and their long names). They are kept to the millisecond: a value that is not a
/// whole number of milliseconds (`"1500us"`) is an error, not rounded. A deadline
/// (`request_timeout`, `connect_timeout`, `close_timeout`) may not be zero, since it
/// would cut what it bounds at once; a delay (`initial_delay`, `max_delay`,
/// `max_retry_after` in [`RetryPolicy`]) may.
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
///     "retry": { "max_attempts": 4, "initial_delay": "200ms" }
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
    /// The deadline of one attempt, from connect to the last byte (default 60 s); a
    /// call may give its own ([`CallOptions::timeout`](super::CallOptions::timeout)).
    #[serde(default = "default_request_timeout", deserialize_with = "deadline")]
    pub request_timeout: Duration,
    /// The deadline to connect (default 10 s).
    #[serde(default = "default_connect_timeout", deserialize_with = "deadline")]
    pub connect_timeout: Duration,
    /// When and how failed attempts are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long a close lets in-flight calls finish before it cuts them (default 10 s).
    #[serde(default = "default_close_timeout", deserialize_with = "deadline")]
    pub close_timeout: Duration,
    /// How many bytes of a reply that is not a success are read and kept, for the
    /// retry policy's classifier and for the error ([`CallError::body`]), in bytes
    /// (default 65 536). The rest of such a body is not read.
    ///
    /// [`CallError::body`]: super::CallError::body
    #[serde(default = "default_error_body_limit")]
    pub error_body_limit: usize,
    /// How long a streamed answer ([`Endpoint::stream`](super::Endpoint::stream)) may
    /// send nothing before it ends with a timeout error (default 60 s); a call may give
    /// its own ([`CallOptions::stream_idle_timeout`](super::CallOptions::stream_idle_timeout)).
    #[serde(default = "default_stream_idle_timeout", deserialize_with = "deadline")]
    pub stream_idle_timeout: Duration,
    /// The longest line a streamed answer may send, in bytes (default 1 MiB, at least
    /// 1); a longer one is an error that ends the stream.
    #[serde(default = "default_stream_line_limit")]
    pub stream_line_limit: usize,
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
fn default_error_body_limit() -> usize {
    64 * 1024
}
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_stream_line_limit() -> usize {
    1024 * 1024
}

// The duration grammar below is the one the derive's `#[resource(timeout = "...")]`
// takes (`resource-derive/src/attr.rs`): the same parser, the same rules and the same
// messages. A change here is a change there.

/// A duration in [humantime]'s grammar (`"500ms"`, `"2s"`, `"1m 30s"`, `"1.5s"`,
/// `"1h"`), in whole milliseconds: a timer keeps nothing finer, so a value that is not
/// a whole number of milliseconds is an error rather than silently rounded.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| not_a_duration(text, &e))?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        let down = duration.as_millis();
        let hint = if down == 0 {
            "write \"1ms\"".to_owned()
        } else {
            format!("write \"{down}ms\" or \"{}ms\"", down + 1)
        };
        return Err(format!(
            "`{text}` is not a whole number of milliseconds, the finest step a deadline or delay keeps: {hint}"
        ));
    }
    u64::try_from(duration.as_millis())
        .map(Duration::from_millis)
        .map_err(|_| too_long(text))
}

/// A deadline: a duration that is not zero. A zero deadline would expire before the
/// work it bounds could run, so it is refused rather than given a meaning.
pub(crate) fn parse_deadline(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "`{text}` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out"
        )),
        duration => Ok(duration),
    }
}

fn too_long(text: &str) -> String {
    format!("`{text}` is too long a duration: keep it under 500 years")
}

/// What a duration looks like, ending every message about a malformed one.
const DURATION_HINT: &str = "write numbers with units, like \"500ms\", \"2s\", \"1m 30s\" or \"1h\" (units: `ms`, `s`, `m`, `h`, `d`, `w`, and long names such as `sec`, `min`, `hours`)";

/// What is wrong with `text`, and what to write instead.
fn not_a_duration(text: &str, error: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    let detail = match error {
        E::Empty => return format!("an empty string is not a duration: {DURATION_HINT}"),
        E::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("the number needs a unit, like \"{value}s\" or \"{value}ms\"")
        }
        E::UnknownUnit { unit, .. } => format!("`{unit}` is not a unit"),
        E::NumberExpected(at) => match text.get(*at..).map(str::trim_start) {
            Some(rest) if !rest.is_empty() => format!("expected a number at `{rest}`"),
            _ => "expected a number".to_owned(),
        },
        E::InvalidCharacter(at) => match text.get(*at..).and_then(|rest| rest.chars().next()) {
            Some(c) => format!("unexpected `{c}`"),
            None => "unexpected character".to_owned(),
        },
        E::NumberOverflow if text.contains('.') => {
            return format!(
                "`{text}` is too long a duration, or finer than a millisecond: keep it under 500 years, in whole milliseconds"
            );
        }
        E::NumberOverflow => return too_long(text),
    };
    format!("`{text}` is not a duration: {detail}; {DURATION_HINT}")
}

/// A delay: any duration, zero included.
pub(super) fn duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A deadline: a duration that is not zero.
pub(super) fn deadline<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_deadline(&text).map_err(serde::de::Error::custom)
}

impl EndpointConfig {
    /// A configuration for `base_url` with every default: `POST`, JSON, no auth, 60 s
    /// request and 10 s connect timeouts, [`RetryPolicy::default`], a 10 s close
    /// deadline, 64 KiB of an error's body kept.
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
            error_body_limit: default_error_body_limit(),
            stream_idle_timeout: default_stream_idle_timeout(),
            stream_line_limit: default_stream_line_limit(),
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

    /// How many bytes of a reply that is not a success are kept.
    #[must_use]
    pub fn error_body_limit(mut self, bytes: usize) -> Self {
        self.error_body_limit = bytes;
        self
    }

    /// How long a streamed answer may send nothing while its caller waits for the next
    /// event before it ends with an error. `Duration::MAX` puts no limit on the silence.
    #[must_use]
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// The longest line a streamed answer may send, in bytes.
    #[must_use]
    pub fn stream_line_limit(mut self, bytes: usize) -> Self {
        self.stream_line_limit = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs and what a deadline makes of them: whole milliseconds, or the whole message
    /// (`HINT` standing for [`DURATION_HINT`]). A delay reads them the same, except that
    /// a zero is `Ok(0)`. The same table is in the derive (`resource-derive/src/attr.rs`)
    /// and in the endpoint's configuration (`resource-runtime/src/http/config.rs`), and a
    /// test of the latter checks that the two are equal.
    const DURATION_CASES: &[(&str, Result<u64, &str>)] = &[
        ("500ms", Ok(500)),
        ("2s", Ok(2_000)),
        ("2 s", Ok(2_000)),
        (" 2s ", Ok(2_000)),
        ("2 seconds", Ok(2_000)),
        ("1.5s", Ok(1_500)),
        ("1m", Ok(60_000)),
        ("2 min", Ok(120_000)),
        ("1m 30s", Ok(90_000)),
        ("1m30s", Ok(90_000)),
        ("1h", Ok(3_600_000)),
        ("1d", Ok(86_400_000)),
        ("1w", Ok(604_800_000)),
        ("2000us", Ok(2)),
        (
            "0s",
            Err(
                "`0s` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "0ms",
            Err(
                "`0ms` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "0",
            Err(
                "`0` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "0.0s",
            Err(
                "`0.0s` is a zero deadline, which would cut what it bounds at once: give at least \"1ms\", or leave the deadline out",
            ),
        ),
        (
            "1500us",
            Err(
                "`1500us` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\" or \"2ms\"",
            ),
        ),
        (
            "1.5ms",
            Err(
                "`1.5ms` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\" or \"2ms\"",
            ),
        ),
        (
            "500us",
            Err(
                "`500us` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\"",
            ),
        ),
        (
            "1ns",
            Err(
                "`1ns` is not a whole number of milliseconds, the finest step a deadline or delay keeps: write \"1ms\"",
            ),
        ),
        ("", Err("an empty string is not a duration: HINT")),
        ("  ", Err("an empty string is not a duration: HINT")),
        (
            "2",
            Err("`2` is not a duration: the number needs a unit, like \"2s\" or \"2ms\"; HINT"),
        ),
        (
            "1m 30",
            Err(
                "`1m 30` is not a duration: the number needs a unit, like \"30s\" or \"30ms\"; HINT",
            ),
        ),
        ("2x", Err("`2x` is not a duration: `x` is not a unit; HINT")),
        (
            "2 fortnights",
            Err("`2 fortnights` is not a duration: `fortnights` is not a unit; HINT"),
        ),
        ("2S", Err("`2S` is not a duration: `S` is not a unit; HINT")),
        (
            "soon",
            Err("`soon` is not a duration: expected a number at `soon`; HINT"),
        ),
        (
            "-1s",
            Err("`-1s` is not a duration: expected a number at `-1s`; HINT"),
        ),
        (
            "2 seconds later",
            Err("`2 seconds later` is not a duration: expected a number at `later`; HINT"),
        ),
        (
            "1,5s",
            Err("`1,5s` is not a duration: unexpected `,`; HINT"),
        ),
        ("1.s", Err("`1.s` is not a duration: unexpected `.`; HINT")),
        (
            "18446744073709551615h",
            Err("`18446744073709551615h` is too long a duration: keep it under 500 years"),
        ),
        (
            "18446744073709551615s",
            Err("`18446744073709551615s` is too long a duration: keep it under 500 years"),
        ),
        (
            "99999999999999999999ms",
            Err("`99999999999999999999ms` is too long a duration: keep it under 500 years"),
        ),
        (
            "0.5ns",
            Err(
                "`0.5ns` is too long a duration, or finer than a millisecond: keep it under 500 years, in whole milliseconds",
            ),
        ),
    ];

    /// What the table says of `text` as a deadline (`zero: None`) or as a delay.
    fn expected(want: &Result<u64, &str>, zero: Option<u64>) -> Result<u64, String> {
        match (want, zero) {
            (Err(message), Some(zero)) if message.contains("zero deadline") => Ok(zero),
            _ => want.map_err(|message| message.replace("HINT", DURATION_HINT)),
        }
    }

    #[test]
    fn deadlines_follow_the_shared_table() {
        for (text, want) in DURATION_CASES {
            let want = expected(want, None).map(Duration::from_millis);
            assert_eq!(parse_deadline(text), want, "{text:?}");
        }
    }

    #[test]
    fn durations_follow_the_shared_table_and_take_zero() {
        for (text, want) in DURATION_CASES {
            let want = expected(want, Some(0)).map(Duration::from_millis);
            assert_eq!(parse_duration(text), want, "{text:?}");
        }
    }

    /// The lines of `source` from `const DURATION_CASES` to the end of the table.
    fn table_in(source: &str) -> Vec<&str> {
        source
            .lines()
            .map(str::trim)
            .skip_while(|line| !line.starts_with("const DURATION_CASES"))
            .take_while(|line| *line != "];")
            .collect()
    }

    #[test]
    fn the_derive_checks_the_same_table() {
        let derive = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../resource-derive/src/attr.rs"
        );
        let Ok(derive) = std::fs::read_to_string(derive) else {
            eprintln!("note: skipped: the derive's source is not beside this crate");
            return;
        };
        let ours = table_in(include_str!("config.rs"));
        assert!(ours.len() > 10, "the table was not found here");
        assert_eq!(
            table_in(&derive),
            ours,
            "the two tables of duration cases differ"
        );
    }

    #[test]
    fn configuration_files_take_the_grammar() {
        let config: EndpointConfig = serde_json::from_str(
            r#"{
                "base_url": "http://x",
                "request_timeout": "1m 30s",
                "connect_timeout": "2 s",
                "close_timeout": "1.5s",
                "retry": { "initial_delay": "0s", "max_delay": "0", "max_retry_after": "1m" }
            }"#,
        )
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(90));
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.close_timeout, Duration::from_millis(1_500));
        assert_eq!(config.retry.initial_delay, Duration::ZERO);
        assert_eq!(config.retry.max_delay, Duration::ZERO);
        assert_eq!(config.retry.max_retry_after, Duration::from_secs(60));
    }

    #[test]
    fn configuration_files_refuse_a_zero_deadline_and_say_why() {
        for key in ["request_timeout", "connect_timeout", "close_timeout"] {
            let json = format!(r#"{{"base_url": "http://x", "{key}": "0s"}}"#);
            let err = serde_json::from_str::<EndpointConfig>(&json).unwrap_err();
            let want = parse_deadline("0s").unwrap_err();
            assert!(err.to_string().starts_with(&want), "{key}: {err}");
        }
        let err = serde_json::from_str::<EndpointConfig>(
            r#"{"base_url": "http://x", "retry": {"initial_delay": "soon"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"500ms\""), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let config = EndpointConfig::new("http://x").bearer(Secret::value("sk-very-secret"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_retry_policy_reads_every_field_by_name() {
        let config: EndpointConfig = serde_json::from_str(
            r#"{
                "base_url": "http://x",
                "error_body_limit": 1024,
                "retry": {
                    "max_attempts": 6,
                    "initial_delay": "100ms",
                    "max_delay": "8s",
                    "multiplier": 1.5,
                    "max_retry_after": "2m",
                    "statuses": [429, 529]
                }
            }"#,
        )
        .unwrap();
        let retry = &config.retry;
        assert_eq!(retry.max_attempts, 6);
        assert_eq!(retry.initial_delay, Duration::from_millis(100));
        assert_eq!(retry.max_delay, Duration::from_secs(8));
        assert!((retry.multiplier - 1.5).abs() < f64::EPSILON);
        assert_eq!(retry.max_retry_after, Duration::from_secs(120));
        assert_eq!(retry.statuses, [429, 529]);
        assert!(retry.classifier.is_none());
        assert_eq!(config.error_body_limit, 1024);

        let defaults: EndpointConfig = serde_json::from_str(r#"{"base_url": "http://x"}"#).unwrap();
        assert_eq!(defaults.retry.statuses, [408, 409, 429, 500, 502, 503, 504]);
        assert_eq!(defaults.error_body_limit, 64 * 1024);

        // A name that is not a field is refused, and the message lists the fields.
        let err = serde_json::from_str::<EndpointConfig>(
            r#"{"base_url": "http://x", "retry": {"base_delay": "1s"}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("base_delay") && err.to_string().contains("initial_delay"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_json::from_str::<EndpointConfig>(r#"{"base_url": "http://x", "retries": 3}"#)
                .unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
    }
}
