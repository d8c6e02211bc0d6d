//! Every derived enter and close step runs in a `tracing` span naming the type and the
//! field, and records its duration and outcome (docs/design.md, "The derive"). A
//! recording layer captures the spans as a subscriber would see them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use resource_runtime::AsyncResource;
use resource_tests::{Log, Probe};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One finished span: its name, its fields, and the `path` field of its parent span.
#[derive(Debug, Clone, Default)]
struct SpanRecord {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent_path: Option<String>,
}

impl SpanRecord {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Keeps every span's record in its extensions while it is open, and appends it to
/// `finished` when it closes.
#[derive(Clone, Default)]
struct Recorder {
    finished: Arc<Mutex<Vec<SpanRecord>>>,
}

impl<S> Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut record = SpanRecord {
            name: attrs.metadata().name(),
            ..SpanRecord::default()
        };
        attrs.record(&mut Fields(&mut record.fields));
        record.parent_path = span.parent().and_then(|parent| {
            parent
                .extensions()
                .get::<SpanRecord>()
                .and_then(|p| p.fields.get("path").cloned())
        });
        span.extensions_mut().insert(record);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(record) = span.extensions_mut().get_mut::<SpanRecord>() {
            values.record(&mut Fields(&mut record.fields));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if let Some(record) = span.extensions_mut().remove::<SpanRecord>() {
            self.finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record);
        }
    }
}

impl Recorder {
    /// Installs the recorder for this thread (the tests run on a current-thread
    /// runtime, so every step is polled here).
    fn install() -> (Self, DefaultGuard) {
        let recorder = Recorder::default();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        (recorder, tracing::subscriber::set_default(subscriber))
    }

    fn spans(&self, name: &str) -> Vec<SpanRecord> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    db: Probe,
}

#[derive(AsyncResource)]
#[resource(before_close = drain)]
struct Service {
    #[resource]
    inner: Inner,
    #[resource(timeout = "100ms")]
    slow: Probe,
    #[resource]
    boom: Probe,
}

impl Service {
    async fn drain(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn service(log: &Log) -> Service {
    Service {
        inner: Inner {
            db: log.probe("db").fail_close(),
        },
        slow: log.probe("slow").close_delay(10_000),
        boom: log.probe("boom").panic_on_close(),
    }
}

#[tokio::test]
async fn each_enter_step_is_a_span_naming_the_type_and_field() {
    let (recorder, _guard) = Recorder::install();
    let log = Log::new();
    let mut value = service(&log);
    value.enter().await.unwrap();
    let spans: Vec<(String, String, String)> = recorder
        .spans("resource.enter")
        .iter()
        .map(|s| {
            (
                s.field("resource").unwrap_or("-").to_owned(),
                s.field("path").unwrap_or("-").to_owned(),
                s.field("outcome").unwrap_or("-").to_owned(),
            )
        })
        .collect();
    // Spans close innermost first: `Inner.db` finishes before `Service.inner`.
    let expected = [
        ("Inner", "db", "ok"),
        ("Service", "inner", "ok"),
        ("Service", "slow", "ok"),
        ("Service", "boom", "ok"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(spans, expected);
}

#[tokio::test(start_paused = true)]
async fn each_close_step_records_its_outcome_and_duration() {
    let (recorder, _guard) = Recorder::install();
    let log = Log::new();
    let mut value = service(&log);
    value.close().await.unwrap_err();

    let spans = recorder.spans("resource.close");
    let outcomes: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| {
            (
                s.field("path").unwrap_or("-"),
                s.field("outcome").unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("boom", "panic"),
            ("slow", "timeout"),
            ("db", "error"),
            ("inner", "error"),
        ]
    );
    for span in &spans {
        assert!(span.field("elapsed_us").is_some(), "{span:?}");
    }
    let slow = &spans[1];
    let slow_us: u64 = slow.field("elapsed_us").unwrap().parse().unwrap();
    assert!((100_000..150_000).contains(&slow_us), "{slow:?}");
    // The nested step is a child of its parent's step, so the path reads in the tree.
    let db = &spans[2];
    assert_eq!(db.field("resource"), Some("Inner"));
    assert_eq!(db.parent_path.as_deref(), Some("inner"));
}

#[tokio::test]
async fn a_hook_runs_in_its_own_span() {
    let (recorder, _guard) = Recorder::install();
    let log = Log::new();
    let mut value = Service {
        inner: Inner {
            db: log.probe("db"),
        },
        slow: log.probe("slow"),
        boom: log.probe("boom"),
    };
    value.close().await.unwrap();
    let hooks = recorder.spans("resource.hook");
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].field("hook"), Some("before_close"));
    assert_eq!(hooks[0].field("resource"), Some("Service"));
}
