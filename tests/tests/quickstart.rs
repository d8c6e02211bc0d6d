//! The README's main job, end to end: the quickstart example's own code, run with a
//! smaller load against its embedded API on 127.0.0.1.

#[allow(dead_code)]
#[path = "../../examples/quickstart.rs"]
mod quickstart;

use tracing_subscriber::layer::SubscriberExt;

#[test]
fn the_quickstart_sends_every_request_rides_out_the_faults_and_closes_every_field() {
    let steps = quickstart::StepLog::default();
    let subscriber = tracing_subscriber::registry().with(steps.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = quickstart::Options {
        url: None,
        model: "test-model".to_owned(),
        requests: 160,
        rate: 400,
        stream: false,
        stop_after: None,
    };
    let report = runtime
        .block_on(quickstart::run(options, steps))
        .expect("the quickstart succeeds");
    assert_eq!((report.sent, report.answered, report.failed), (160, 160, 0));
    assert_eq!((report.requests, report.not_sent), (160, 0), "{report:?}");
    assert_eq!(report.open_after_close, Some(0));
    // The embedded API answers 429 to the 100th request and 503 to the 75th and 150th.
    assert!(report.retries >= 3, "{report:?}");
    // Every field closed, jobs before the endpoint before the log, each ok.
    let closes: Vec<&str> = report
        .closed
        .iter()
        .filter(|row| row.starts_with("close") && row.contains("Provider"))
        .map(|row| row.split_whitespace().nth(2).unwrap_or("?"))
        .collect();
    assert_eq!(closes, ["jobs", "api", "log"], "{:?}", report.closed);
    assert!(
        report.closed.iter().all(|row| row.ends_with("ok")),
        "{:?}",
        report.closed
    );
}

#[test]
fn the_streamed_quickstart_closed_mid_stream_cuts_the_streams_and_releases_every_connection() {
    let steps = quickstart::StepLog::default();
    let subscriber = tracing_subscriber::registry().with(steps.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = quickstart::Options {
        url: None,
        model: "test-model".to_owned(),
        requests: 60,
        rate: 400,
        stream: true,
        stop_after: Some(20),
    };
    let report = runtime
        .block_on(quickstart::run(options, steps))
        .expect("the quickstart succeeds");
    // The 20th answer stops the run; any answer after it completed as the close took
    // effect, and is counted so.
    assert!(report.answered >= 20, "{report:?}");
    assert_eq!(
        report.answered - report.answered_after_stop,
        20,
        "{report:?}"
    );
    // Every request is answered, failed after it was sent, or never sent; and every one
    // without an answer is the stop's doing.
    assert_eq!(
        report.answered + report.failed + report.not_sent,
        60,
        "{report:?}"
    );
    // The endpoint counted every request sent (and none it refused).
    assert!(report.sent <= report.stats.calls, "{report:?}");
    assert_eq!(
        report.failed + report.not_sent,
        report.stopped,
        "{report:?}"
    );
    assert_eq!(report.answered + report.stopped, 60, "{report:?}");
    // The embedded API's answers take about 100 ms each: some were streaming when the
    // endpoint closed, and every one of those was cut, most after their first event.
    assert!(report.stats.streams_cut > 0, "{report:?}");
    assert!(report.cut_mid_answer > 0, "{report:?}");
    assert!(
        report.cut_mid_answer <= report.stats.streams_cut,
        "{report:?}"
    );
    assert_eq!(report.open_after_close, Some(0), "{report:?}");
    let closes: Vec<&str> = report
        .closed
        .iter()
        .filter(|row| row.starts_with("close") && row.contains("Provider"))
        .map(|row| row.split_whitespace().nth(2).unwrap_or("?"))
        .collect();
    assert_eq!(closes, ["jobs", "api", "log"], "{:?}", report.closed);
}
