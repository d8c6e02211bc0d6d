//! The close report (`resource_runtime::report`): which steps it records, in what
//! order, with what type, path, time and outcome, under the subscribers a program
//! actually installs.

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resource_runtime::report::{CloseRecorder, CloseReport, CloseStep, StepOutcome};
use resource_runtime::{AsyncResource, Managed, Operation, wait_detached};
use resource_tests::{Log, Probe};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// A current-thread runtime on a paused clock: sleeps end in order, at once.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Runs `work` with the recorder's layer installed on this thread, and returns its
/// output with the report.
fn recorded<F: Future>(work: F) -> (F::Output, CloseReport) {
    let recorder = CloseRecorder::new();
    let subscriber = tracing_subscriber::registry().with(recorder.layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let output = runtime().block_on(work);
    (output, recorder.take())
}

/// Each step as (operation, type, path, outcome).
fn rows(report: &CloseReport) -> Vec<(Operation, &str, &str, StepOutcome)> {
    report
        .iter()
        .map(|s| (s.operation, s.resource.as_str(), s.path.as_str(), s.outcome))
        .collect()
}

fn step<'r>(report: &'r CloseReport, path: &str) -> &'r CloseStep {
    report
        .iter()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("no step `{path}` in\n{report}"))
}

use Operation::{Close, Enter};
use StepOutcome::{Dropped, Error, Ok as Fine, Panic, Timeout};

#[derive(AsyncResource)]
struct Inner {
    #[resource]
    x: Probe,
    #[resource]
    y: Probe,
}

#[derive(AsyncResource)]
struct Outer {
    #[resource]
    a: Probe,
    #[resource]
    inner: Inner,
    #[resource(name = "last")]
    b: Probe,
}

#[test]
fn a_nested_struct_reports_every_step_in_the_order_it_finished_with_its_path() {
    let log = Log::new();
    let mut outer = Outer {
        a: log.probe("a"),
        inner: Inner {
            x: log.probe("x"),
            y: log.probe("y"),
        },
        b: log.probe("b"),
    };
    let (result, report) = recorded(async {
        outer.enter().await?;
        outer.close().await
    });
    result.expect("enter and close succeed");
    assert_eq!(
        rows(&report),
        [
            (Enter, "Outer", "a", Fine),
            (Enter, "Inner", "inner.x", Fine),
            (Enter, "Inner", "inner.y", Fine),
            (Enter, "Outer", "inner", Fine),
            (Enter, "Outer", "last", Fine),
            (Close, "Outer", "last", Fine),
            (Close, "Inner", "inner.y", Fine),
            (Close, "Inner", "inner.x", Fine),
            (Close, "Outer", "inner", Fine),
            (Close, "Outer", "a", Fine),
        ],
        "\n{report}"
    );
    let x = step(&report, "inner.x");
    assert_eq!(
        (x.field.as_str(), x.detached, &x.error),
        ("x", false, &None)
    );
    assert_eq!(report.failures().count(), 0);
    assert_eq!(report.skipped(), 0);
}

#[derive(AsyncResource)]
struct Failing {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource]
    c: Probe,
}

#[test]
fn a_failing_field_is_an_error_row_and_the_others_still_close() {
    let log = Log::new();
    let mut failing = Failing {
        a: log.probe("a"),
        b: log.probe("b").fail_close(),
        c: log.probe("c"),
    };
    let (result, report) = recorded(failing.close());
    assert!(result.is_err());
    assert_eq!(
        rows(&report),
        [
            (Close, "Failing", "c", Fine),
            (Close, "Failing", "b", Error),
            (Close, "Failing", "a", Fine),
        ]
    );
    let failures: Vec<&CloseStep> = report.failures().collect();
    assert_eq!(failures.len(), 1);
    let error = failures[0].error.as_deref().expect("the error is kept");
    assert!(error.contains("probe b failed to close"), "{error}");
    assert_eq!(step(&report, "a").error, None);
}

#[derive(AsyncResource)]
struct Slow {
    #[resource]
    quick: Probe,
    #[resource(timeout = "50ms")]
    slow: Probe,
}

#[test]
fn a_field_past_its_deadline_is_a_timeout_row_with_the_time_it_was_given() {
    let log = Log::new();
    let mut slow = Slow {
        quick: log.probe("quick"),
        slow: log.probe("slow").close_delay(1_000),
    };
    let (result, report) = recorded(slow.close());
    assert!(result.is_err());
    assert_eq!(
        rows(&report),
        [
            (Close, "Slow", "slow", Timeout),
            (Close, "Slow", "quick", Fine),
        ]
    );
    let slow = step(&report, "slow");
    assert!(
        slow.elapsed >= Duration::from_millis(50) && slow.elapsed < Duration::from_millis(100),
        "{:?}",
        slow.elapsed
    );
    assert!(slow.error.is_some());
}

#[derive(AsyncResource)]
#[resource(timeout = "100ms")]
struct Cut {
    #[resource]
    later: Probe,
    #[resource]
    hangs: Probe,
    #[resource]
    first: Probe,
}

#[test]
fn a_step_cut_by_the_whole_close_deadline_is_dropped_and_the_unreached_are_absent() {
    let log = Log::new();
    let mut cut = Cut {
        later: log.probe("later"),
        hangs: log.probe("hangs").close_delay(10_000),
        first: log.probe("first"),
    };
    let (result, report) = recorded(cut.close());
    assert!(result.is_err());
    assert_eq!(
        rows(&report),
        [
            (Close, "Cut", "first", Fine),
            (Close, "Cut", "hangs", Dropped),
        ],
        "\n{report}"
    );
    let hangs = step(&report, "hangs");
    assert!(
        hangs.elapsed >= Duration::from_millis(100) && hangs.elapsed < Duration::from_secs(1),
        "{:?}",
        hangs.elapsed
    );
}

#[derive(AsyncResource)]
struct Panicking {
    #[resource]
    a: Probe,
    #[resource]
    boom: Probe,
}

#[test]
fn a_panicking_close_is_a_panic_row() {
    let log = Log::new();
    let mut panicking = Panicking {
        a: log.probe("a"),
        boom: log.probe("boom").panic_on_close(),
    };
    let (result, report) = recorded(panicking.close());
    assert!(result.is_err_and(|e| e.is_panic()));
    assert_eq!(
        rows(&report),
        [
            (Close, "Panicking", "boom", Panic),
            (Close, "Panicking", "a", Fine),
        ]
    );
    let boom = step(&report, "boom");
    assert!(
        boom.error
            .as_deref()
            .is_some_and(|e| e.contains("probe boom panicked in close")),
        "{boom:?}"
    );
}

#[derive(AsyncResource)]
struct Grouped {
    #[resource]
    after: Probe,
    #[resource(group = "io")]
    long: Probe,
    #[resource(group = "io")]
    short: Probe,
    #[resource(group = "io")]
    middle: Probe,
    #[resource]
    before: Probe,
}

#[test]
fn a_group_closing_concurrently_reports_its_members_as_they_finish() {
    let log = Log::new();
    let mut grouped = Grouped {
        after: log.probe("after"),
        long: log.probe("long").close_delay(30),
        short: log.probe("short").close_delay(10),
        middle: log.probe("middle").close_delay(20),
        before: log.probe("before"),
    };
    let (result, report) = recorded(grouped.close());
    result.expect("the close succeeds");
    assert_eq!(
        rows(&report),
        [
            (Close, "Grouped", "before", Fine),
            (Close, "Grouped", "short", Fine),
            (Close, "Grouped", "middle", Fine),
            (Close, "Grouped", "long", Fine),
            (Close, "Grouped", "after", Fine),
        ],
        "\n{report}"
    );
    // Concurrent: each member took its own delay, not the sum of those before it.
    for (path, ms) in [("short", 10), ("middle", 20), ("long", 30)] {
        let elapsed = step(&report, path).elapsed;
        assert!(
            elapsed >= Duration::from_millis(ms) && elapsed < Duration::from_millis(ms + 5),
            "{path}: {elapsed:?}"
        );
    }
}

#[derive(AsyncResource)]
struct HalfUp {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
    #[resource]
    broken: Probe,
    #[resource]
    never: Probe,
}

#[test]
fn a_failed_enter_reports_the_failure_then_the_rollback_closes() {
    let log = Log::new();
    let mut half = HalfUp {
        a: log.probe("a"),
        b: log.probe("b"),
        broken: log.probe("broken").fail_enter(),
        never: log.probe("never"),
    };
    let (result, report) = recorded(half.enter());
    assert!(result.is_err());
    assert_eq!(
        rows(&report),
        [
            (Enter, "HalfUp", "a", Fine),
            (Enter, "HalfUp", "b", Fine),
            (Enter, "HalfUp", "broken", Error),
            (Close, "HalfUp", "b", Fine),
            (Close, "HalfUp", "a", Fine),
        ],
        "\n{report}"
    );
}

#[derive(AsyncResource)]
struct Background {
    #[resource]
    a: Probe,
    #[resource]
    b: Probe,
}

#[test]
fn a_close_left_to_the_background_is_marked_detached() {
    let log = Log::new();
    let background = Background {
        a: log.probe("a"),
        b: log.probe("b"),
    };
    let (result, report) = recorded(async {
        let managed = Managed::enter(background).await?;
        drop(managed);
        wait_detached(Duration::from_secs(1)).await
    });
    result.expect("the detached close finishes");
    let closes: Vec<(&str, bool)> = report
        .iter()
        .filter(|s| s.operation == Close)
        .map(|s| (s.path.as_str(), s.detached))
        .collect();
    assert_eq!(closes, [("b", true), ("a", true)], "\n{report}");
    assert!(
        report
            .iter()
            .filter(|s| s.operation == Enter)
            .all(|s| !s.detached)
    );
}

/// A resource whose close waits once before it finishes.
struct Yields;

impl AsyncResource for Yields {
    async fn close(&mut self) -> Result<(), resource_runtime::ResourceError> {
        tokio::task::yield_now().await;
        Ok(())
    }
}

#[derive(AsyncResource)]
struct Timed {
    #[resource(timeout = "1s")]
    bounded: Yields,
}

#[test]
fn a_deadline_the_runtime_cannot_enforce_is_a_failed_step_with_its_reason() {
    let recorder = CloseRecorder::new();
    let subscriber = tracing_subscriber::registry().with(recorder.layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let no_timer = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut timed = Timed { bounded: Yields };
    let result = no_timer.block_on(timed.close());
    assert!(result.is_err_and(|e| e.is_unenforced_deadline()));
    let report = recorder.take();
    let bounded = step(&report, "bounded");
    assert_eq!(
        bounded.outcome,
        StepOutcome::UnenforcedDeadline,
        "{bounded:?}"
    );
    assert!(bounded.error.is_some(), "{bounded:?}");
}

/// A `fmt` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[test]
fn next_to_a_fmt_layer_at_info_it_raises_the_level_for_its_steps_only() {
    let captured = Captured::default();
    let writer = captured.clone();
    let fmt_layer = || {
        let writer = writer.clone();
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(LevelFilter::INFO)
    };

    // Alone, the fmt layer keeps the subscriber at INFO: the steps would not trace.
    let fmt_only = tracing_subscriber::registry().with(fmt_layer());
    assert_eq!(fmt_only.max_level_hint(), Some(LevelFilter::INFO));

    let recorder = CloseRecorder::new();
    let subscriber = tracing_subscriber::registry()
        .with(fmt_layer())
        .with(recorder.layer());
    assert_eq!(subscriber.max_level_hint(), Some(LevelFilter::DEBUG));
    let _guard = tracing::subscriber::set_default(subscriber);

    let log = Log::new();
    let mut failing = Failing {
        a: log.probe("a"),
        b: log.probe("b").fail_close(),
        c: log.probe("c"),
    };
    tracing::info!("before the close");
    tracing::debug!("a debug line of the program");
    let result = runtime().block_on(failing.close());
    assert!(result.is_err());

    let report = recorder.take();
    assert_eq!(
        rows(&report),
        [
            (Close, "Failing", "c", Fine),
            (Close, "Failing", "b", Error),
            (Close, "Failing", "a", Fine),
        ]
    );
    // The fmt layer still prints INFO and up, and none of the DEBUG the report needed.
    let printed = captured.text();
    assert!(printed.contains("before the close"), "{printed}");
    assert!(!printed.contains("a debug line"), "{printed}");
    assert!(!printed.contains("DEBUG"), "{printed}");
}

#[test]
fn the_recorder_alone_is_a_layer_too() {
    let recorder = CloseRecorder::new();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let log = Log::new();
    let mut outer = Outer {
        a: log.probe("a"),
        inner: Inner {
            x: log.probe("x"),
            y: log.probe("y"),
        },
        b: log.probe("b"),
    };
    runtime()
        .block_on(outer.close())
        .expect("the close succeeds");
    let paths: Vec<String> = recorder.take().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["last", "inner.y", "inner.x", "inner", "a"]);
}

#[test]
fn snapshot_keeps_take_empties_and_the_limit_keeps_the_last_steps() {
    let recorder = CloseRecorder::with_limit(2);
    let subscriber = tracing_subscriber::registry().with(recorder.layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let log = Log::new();
    let mut failing = Failing {
        a: log.probe("a"),
        b: log.probe("b"),
        c: log.probe("c"),
    };
    runtime()
        .block_on(failing.close())
        .expect("the close succeeds");

    let snapshot = recorder.snapshot();
    let paths: Vec<&str> = snapshot.iter().map(|s| s.path.as_str()).collect();
    assert_eq!((paths, snapshot.skipped()), (vec!["b", "a"], 1));
    assert_eq!(recorder.take(), snapshot);
    let empty = recorder.take();
    assert!(empty.is_empty() && empty.skipped() == 0);
}

#[test]
fn the_table_has_a_header_and_one_numbered_row_per_step() {
    let log = Log::new();
    let mut slow = Slow {
        quick: log.probe("quick"),
        slow: log.probe("slow").close_delay(1_000),
    };
    let (_, report) = recorded(slow.close());
    assert_eq!(report.len(), 2);
    let table = report.to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "    #   step   type                 field            took  outcome"
    );
    assert_eq!(lines.len(), 1 + report.len(), "{table}");
    for (i, (line, step)) in lines[1..].iter().zip(&report).enumerate() {
        // A row is its number, then the step's own `Display`.
        assert_eq!(*line, format!("    {:<3} {step}", i + 1));
    }
    assert!(lines[1].starts_with("    1   close  Slow "), "{table}");
    assert!(lines[1].contains(" 50.0 ms  timeout: "), "{table}");
    assert!(lines[2].starts_with("    2   close  Slow "), "{table}");
    assert!(lines[2].ends_with("  ok"), "{table}");

    assert_eq!(
        CloseReport::default().to_string(),
        "    #   step   type                 field            took  outcome\n    (no steps recorded)"
    );
}

#[derive(AsyncResource)]
struct AResourceWithARatherLongName {
    #[resource(name = "a_field_with_a_long_label")]
    field: Probe,
    #[resource]
    b: Probe,
}

#[test]
fn longer_names_widen_their_column_and_every_row_keeps_to_it() {
    let log = Log::new();
    let mut long = AResourceWithARatherLongName {
        field: log.probe("field"),
        b: log.probe("b"),
    };
    let (_, report) = recorded(long.close());
    let table = report.to_string();
    let lines: Vec<&str> = table.lines().collect();
    // Columns in characters: the time column holds a `µ`.
    let column = |line: &str, text: &str| line.find(text).map(|at| line[..at].chars().count());
    let outcome_at = column(lines[0], "  outcome").expect("a header");
    assert!(outcome_at > 60, "{table}");
    for line in &lines[1..] {
        assert_eq!(column(line, "  ok"), Some(outcome_at), "{table}");
    }
    assert!(lines[2].contains(" a_field_with_a_long_label "), "{table}");
}
