//! `ResourceStack` (docs/design.md, "Using a resource"): Python's `AsyncExitStack` for
//! resources known only at run time. Entries of any type, deferred steps, LIFO close
//! with the derive's aggregation, per-entry deadlines, `pop_all` for the rollback of a
//! half-built setup, typed slots, and a background close when dropped or when a close
//! or an enter is cancelled half-way.

use std::time::Duration;

use resource_runtime::{AsyncResource, ResourceError, ResourceStack, scope, wait_detached};
use resource_tests::{
    Events, Log, Probe, ProbeError, StartsThenPanics, Tracked, Tracker, YieldsThenCancels, paths,
    runtime_without_timers, strings,
};
use tokio_util::sync::CancellationToken;
use tracing::Level;

async fn wait() {
    wait_detached(Duration::from_secs(10))
        .await
        .expect("detached closes finish");
}

/// A deferred step that writes `entry` into `log`.
fn note(log: &Log, entry: &str) -> impl Future<Output = Result<(), std::io::Error>> + Send + use<> {
    let (log, entry) = (log.clone(), entry.to_owned());
    async move {
        log.push(entry);
        Ok(())
    }
}

struct HeteroTag;

#[tokio::test]
async fn holds_resources_of_different_types_reached_by_their_slots() {
    let log = Log::new();
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    let probe = stack.enter(log.probe("probe")).await.unwrap();
    let token = stack.enter(CancellationToken::new()).await.unwrap();
    let tracked = stack
        .enter(Tracked::<HeteroTag>::new(&tracker).close_yields(2))
        .await
        .unwrap();
    let list = stack
        .enter(vec![log.probe("v0"), log.probe("v1")])
        .await
        .unwrap();
    let maybe = stack.enter(Some(log.probe("opt"))).await.unwrap();
    assert_eq!(stack.len(), 5);

    assert_eq!(stack.get(&probe).unwrap().name(), "probe");
    let token_clone = stack.get(&token).unwrap().clone();
    assert!(!token_clone.is_cancelled());
    assert!(stack.get(&tracked).is_some());
    assert_eq!(stack.get(&list).unwrap().len(), 2);
    stack.get_mut(&list).unwrap().push(log.probe("v2"));
    assert_eq!(stack.get(&maybe).unwrap().as_ref().unwrap().name(), "opt");
    assert_eq!(tracker.tally().enter_done, 1);

    log.clear();
    stack.close().await.unwrap();
    assert_eq!(
        log.entries(),
        strings(&[
            "close opt",
            "close v2",
            "close v1",
            "close v0",
            "close probe"
        ])
    );
    assert!(token_clone.is_cancelled());
    let tally = tracker.tally();
    assert_eq!((tally.close_done, tally.dropped), (1, 1));
    assert!(stack.is_empty());
    assert!(stack.get(&probe).is_none(), "a closed stack holds nothing");
}

#[tokio::test]
async fn closes_last_in_first_out_with_deferred_steps_in_their_place() {
    let log = Log::new();
    let mut stack = ResourceStack::new();
    stack.defer(note(&log, "deferred 0"));
    stack.enter(log.probe("a")).await.unwrap();
    stack.defer(note(&log, "deferred 2"));
    stack.enter(log.probe("b")).await.unwrap();
    stack.enter(log.probe("c")).await.unwrap();
    stack.defer(note(&log, "deferred 5"));
    assert_eq!(stack.len(), 6);
    assert_eq!(log.entries(), strings(&["enter a", "enter b", "enter c"]));
    log.clear();
    stack.close().await.unwrap();
    assert_eq!(
        log.entries(),
        strings(&[
            "deferred 5",
            "close c",
            "close b",
            "deferred 2",
            "close a",
            "deferred 0",
        ])
    );
    // Everything was removed: a second close does nothing.
    log.clear();
    stack.close().await.unwrap();
    assert!(log.entries().is_empty());
}

#[tokio::test]
async fn failures_aggregate_at_their_indices_and_every_entry_still_closes() {
    let log = Log::new();
    let mut stack = ResourceStack::new();
    let probes = [
        log.probe("p0"),
        log.probe("p1").fail_close(),
        log.probe("p2"),
        log.probe("p3").fail_close(),
        log.probe("p4"),
    ];
    let counters: Vec<_> = probes.iter().map(Probe::close_counter).collect();
    for probe in probes {
        stack.enter(probe).await.unwrap();
    }
    let error = stack.close().await.expect_err("two entries fail");
    // LIFO: index 3 fails first, then index 1.
    assert_eq!(paths(&error), ["3", "1"]);
    let names: Vec<_> = error
        .failures()
        .map(|f| f.downcast_ref::<ProbeError>().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["p3", "p1"]);
    let closes: Vec<usize> = counters.iter().map(|c| c.get()).collect();
    assert_eq!(closes, [1, 1, 1, 1, 1]);
    assert_eq!(
        log.entries().split_off(5),
        strings(&["close p4", "close p3", "close p2", "close p1", "close p0"])
    );
}

async fn deferred_panic() -> Result<(), std::io::Error> {
    panic!("deferred step blew up")
}

#[tokio::test]
async fn a_panicking_step_or_close_is_reported_and_the_rest_still_close() {
    let log = Log::new();
    let mut stack = ResourceStack::new();
    stack.enter(log.probe("a")).await.unwrap();
    stack.defer(deferred_panic());
    stack.enter(log.probe("b").panic_on_close()).await.unwrap();
    stack.defer(note(&log, "deferred 3"));
    log.clear();
    let error = stack.close().await.expect_err("two steps panic");
    assert_eq!(paths(&error), ["2", "1"]);
    assert!(error.failures().all(|f| f.is_panic()), "{error:?}");
    let messages: Vec<_> = error.failures().filter_map(|f| f.panic_message()).collect();
    assert_eq!(
        messages,
        ["probe b panicked in close", "deferred step blew up"]
    );
    assert_eq!(
        log.entries(),
        strings(&["deferred 3", "close b", "close a"])
    );
}

struct HungTag;

#[tokio::test(start_paused = true)]
async fn a_step_timeout_cuts_a_hung_entry_and_reports_it() {
    let log = Log::new();
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new().with_step_timeout(Duration::from_secs(1));
    stack.enter(log.probe("a")).await.unwrap();
    stack
        .enter(log.probe("slow").close_delay(60_000))
        .await
        .unwrap();
    // Its close never finishes: the gate is never opened.
    stack
        .enter(Tracked::<HungTag>::new(&tracker).gated())
        .await
        .unwrap();
    stack.enter(log.probe("d")).await.unwrap();
    log.clear();
    let error = stack.close().await.expect_err("two entries time out");
    assert_eq!(paths(&error), ["2", "1"]);
    for failure in error.failures() {
        assert!(failure.is_timeout(), "{failure:?}");
        assert_eq!(failure.deadline(), Some(Duration::from_secs(1)));
    }
    // The slow close was cut (it never wrote "finished"), and every other entry closed.
    assert_eq!(
        log.entries(),
        strings(&["close d", "close slow", "close a"])
    );
    let tally = tracker.tally();
    assert_eq!(
        (tally.close_started, tally.close_done, tally.dropped),
        (1, 0, 1),
        "the hung entry is dropped at its deadline: {tally:?}"
    );
    assert!(stack.is_empty());
}

/// Builds a setup of three resources, the third failing to enter if `third_fails`:
/// every `?` drops the stack, which releases what was entered in the background.
async fn build_by_drop(log: &Log, third_fails: bool) -> Result<ResourceStack, ResourceError> {
    let mut stack = ResourceStack::new();
    stack.enter(log.probe("first")).await?;
    stack.enter(log.probe("second")).await?;
    let third = log.probe("third");
    stack
        .enter(if third_fails {
            third.fail_enter()
        } else {
            third
        })
        .await?;
    Ok(stack.pop_all())
}

/// The same setup, closing the stack explicitly on the error path.
async fn build_closing_on_error(
    log: &Log,
    third_fails: bool,
) -> Result<ResourceStack, ResourceError> {
    let mut stack = ResourceStack::new();
    let built: Result<(), ResourceError> = async {
        stack.enter(log.probe("first")).await?;
        stack.enter(log.probe("second")).await?;
        let third = log.probe("third");
        stack
            .enter(if third_fails {
                third.fail_enter()
            } else {
                third
            })
            .await?;
        Ok(())
    }
    .await;
    match built {
        Ok(()) => Ok(stack.pop_all()),
        Err(error) => match stack.close().await {
            Ok(()) => Err(error),
            Err(closing) => Err(error.combine(closing)),
        },
    }
}

#[tokio::test]
async fn a_half_built_setup_closed_on_the_error_path_releases_what_was_entered() {
    let (events, _guard) = Events::install();
    let log = Log::new();
    let error = build_closing_on_error(&log, true)
        .await
        .expect_err("the third enter fails");
    assert_eq!(
        error.downcast_ref::<ProbeError>().map(|e| e.name.as_str()),
        Some("third")
    );
    assert_eq!(
        log.entries(),
        strings(&[
            "enter first",
            "enter second",
            "enter third",
            "close second",
            "close first",
        ])
    );
    assert!(
        events.at(Level::WARN, "ResourceStack").is_empty(),
        "{:?}",
        events.all()
    );
}

#[tokio::test]
async fn a_half_built_setup_dropped_on_the_error_path_is_released_in_the_background() {
    let log = Log::new();
    let error = build_by_drop(&log, true)
        .await
        .expect_err("the third enter fails");
    assert_eq!(
        error.downcast_ref::<ProbeError>().map(|e| e.name.as_str()),
        Some("third")
    );
    wait().await;
    assert_eq!(
        log.entries(),
        strings(&[
            "enter first",
            "enter second",
            "enter third",
            "close second",
            "close first",
        ])
    );
}

#[tokio::test]
async fn a_complete_setup_is_handed_over_by_pop_all() {
    let (events, _guard) = Events::install();
    for build in [true, false] {
        let log = Log::new();
        let mut stack = if build {
            build_by_drop(&log, false).await.unwrap()
        } else {
            build_closing_on_error(&log, false).await.unwrap()
        };
        wait().await;
        // Nothing was closed when the emptied original went out of scope.
        assert_eq!(
            log.entries(),
            strings(&["enter first", "enter second", "enter third"])
        );
        assert_eq!(stack.len(), 3);
        log.clear();
        stack.close().await.unwrap();
        assert_eq!(
            log.entries(),
            strings(&["close third", "close second", "close first"])
        );
    }
    assert!(
        events.at(Level::WARN, "ResourceStack").is_empty(),
        "an emptied stack drops silently: {:?}",
        events.all()
    );
}

#[tokio::test]
async fn pop_all_leaves_the_original_empty_and_slots_follow_the_entries() {
    let log = Log::new();
    let mut original = ResourceStack::new();
    let a = original.enter(log.probe("a")).await.unwrap();
    original.defer(note(&log, "deferred"));
    let b = original.enter(log.probe("b")).await.unwrap();
    log.clear();

    let mut taken = original.pop_all();
    assert!(original.is_empty());
    assert_eq!(taken.len(), 3);
    assert!(
        original.get(&a).is_none(),
        "the original handed its entries over"
    );
    assert!(original.get_mut(&b).is_none());
    assert_eq!(taken.get(&a).unwrap().name(), "a");
    assert_eq!(taken.get_mut(&b).unwrap().name(), "b");

    original.close().await.unwrap();
    assert!(
        log.entries().is_empty(),
        "the emptied original closes nothing"
    );
    // New entries on the original do not make old slots reach them.
    let c = original.enter(log.probe("c")).await.unwrap();
    assert!(original.get(&a).is_none());
    assert!(taken.get(&c).is_none());
    original.close().await.unwrap();

    log.clear();
    taken.close().await.unwrap();
    assert_eq!(log.entries(), strings(&["close b", "deferred", "close a"]));
}

#[tokio::test]
async fn a_slot_from_another_stack_reaches_nothing() {
    let log = Log::new();
    let mut one = ResourceStack::new();
    let mut two = ResourceStack::new();
    let in_one = one.enter(log.probe("one")).await.unwrap();
    let in_two = two.enter(log.probe("two")).await.unwrap();
    // Same type, same index: only the stack tells them apart.
    assert_eq!(one.get(&in_one).unwrap().name(), "one");
    assert_eq!(two.get(&in_two).unwrap().name(), "two");
    assert!(one.get(&in_two).is_none());
    assert!(two.get(&in_one).is_none());
    assert!(one.get_mut(&in_two).is_none());
    assert!(two.get_mut(&in_one).is_none());
    one.close().await.unwrap();
    two.close().await.unwrap();
}

#[tokio::test]
async fn a_slot_of_a_closed_entry_does_not_reach_a_later_entry() {
    let log = Log::new();
    let mut stack = ResourceStack::new();
    let old = stack.enter(log.probe("old")).await.unwrap();
    stack.close().await.unwrap();
    assert!(stack.get(&old).is_none());
    let new = stack.enter(log.probe("new")).await.unwrap();
    assert_eq!(stack.get(&new).unwrap().name(), "new");
    let reached = stack.get(&old).map(|p| p.name().to_owned());
    stack.close().await.unwrap();
    assert_eq!(
        reached, None,
        "the slot of the closed `old` reaches the later entry"
    );
}

#[derive(AsyncResource)]
struct Service {
    #[resource]
    first: Probe,
    #[resource]
    plugins: ResourceStack,
    #[resource]
    last: Probe,
}

#[tokio::test]
async fn a_stack_field_of_a_derived_struct_closes_with_it() {
    let log = Log::new();
    let mut plugins = ResourceStack::new();
    let p0 = plugins.enter(log.probe("p0")).await.unwrap();
    plugins.enter(log.probe("p1").fail_close()).await.unwrap();
    plugins.defer(note(&log, "plugins deferred"));
    let service = Service {
        first: log.probe("first"),
        plugins,
        last: log.probe("last"),
    };
    let error = scope(service, async |s: &mut Service| {
        s.plugins.get(&p0).map(|p| p.name().to_owned())
    })
    .await
    .expect_err("p1 fails to close");
    assert_eq!(paths(&error), ["plugins.1"]);
    assert_eq!(
        log.entries(),
        strings(&[
            "enter p0",
            "enter p1",
            "enter first",
            "enter last",
            "close last",
            "plugins deferred",
            "close p1",
            "close p0",
            "close first",
        ])
    );
}

#[tokio::test]
async fn a_stack_dropped_without_close_warns_and_closes_its_entries_in_the_background() {
    let (events, _guard) = Events::install();
    let log = Log::new();
    let mut stack = ResourceStack::new();
    stack.enter(log.probe("a")).await.unwrap();
    stack.defer(note(&log, "deferred"));
    stack.enter(log.probe("b").close_delay(5)).await.unwrap();
    log.clear();
    drop(stack);
    let warnings = events.at(Level::WARN, "ResourceStack");
    assert_eq!(warnings.len(), 1, "{:?}", events.all());
    wait().await;
    assert_eq!(
        log.entries(),
        strings(&["close b", "close b finished", "deferred", "close a"])
    );
}

/// The enter rule in `ResourceStack::enter`: the resource whose enter panicked is
/// closed and not pushed; what the stack held before stays, and closes with it.
#[tokio::test]
async fn stack_enter_closes_a_resource_whose_enter_panicked() {
    let log = Log::new();
    let mut stack = ResourceStack::new();
    stack.enter(log.probe("a")).await.unwrap();
    let resource = StartsThenPanics::default();
    let err = stack.enter(resource.clone()).await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(!resource.is_running());
    assert_eq!(stack.len(), 1);
    stack.close().await.unwrap();
    assert_eq!(log.entries(), strings(&["enter a", "close a"]));
}

/// Polls `fut` once and reports whether it is still pending (then it is dropped by the
/// caller: a cancellation at its first await point).
fn pending_after_one_poll<F: Future>(fut: F) -> bool {
    let mut fut = std::pin::pin!(fut);
    fut.as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        .is_pending()
}

struct StackCloseTag;

#[tokio::test]
async fn a_stack_close_cancelled_half_way_still_closes_the_entry_it_was_closing() {
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    stack.push(Tracked::<StackCloseTag>::new(&tracker).close_yields(1));
    stack.push(Tracked::<StackCloseTag>::new(&tracker).close_yields(20));
    // Cut while the top entry (20 yields) is closing.
    assert!(pending_after_one_poll(stack.close()));
    assert_eq!(
        stack.len(),
        2,
        "the entry being closed is still on the stack"
    );
    drop(stack); // closes what is left in the background
    wait().await;
    let tally = tracker.tally();
    assert_eq!(tally.close_done, 2, "{tally:?}");
    assert_eq!(tally.dropped, 2, "{tally:?}");
}

struct StackEnterTag;

#[tokio::test]
async fn a_stack_enter_cancelled_half_way_closes_the_resource_in_the_background() {
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    let resource = Tracked::<StackEnterTag>::new(&tracker).enter_yields(20);
    assert!(pending_after_one_poll(stack.enter(resource)));
    assert!(stack.is_empty());
    wait().await;
    let tally = tracker.tally();
    assert_eq!(tally.close_done, 1, "{tally:?}");
    assert_eq!(tally.dropped, 1, "{tally:?}");
}

/// Panics in `enter`, after which its close must still run.
struct PanicsInEnter(Tracker);

impl AsyncResource for PanicsInEnter {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        panic!("enter exploded")
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        let _ = Tracked::<()>::new(&self.0).close().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_stack_enter_that_panics_returns_an_error_and_pushes_nothing() {
    let tracker = Tracker::new();
    let mut stack = ResourceStack::new();
    let err = stack
        .enter(PanicsInEnter(tracker.clone()))
        .await
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("enter exploded"));
    assert!(stack.is_empty());
    assert_eq!(tracker.tally().close_done, 1, "closed once after the panic");
}

/// A stack's step deadline on a runtime without timers: the step is not cut half-way
/// (that would leave the entry open); it runs to its end and the close says why.
#[test]
fn a_step_deadline_without_a_timer_runs_the_step_to_its_end_and_says_why() {
    let stop = CancellationToken::new();
    let mut stack = ResourceStack::new().with_step_timeout(Duration::from_secs(1));
    stack.push(YieldsThenCancels(stop.clone()));
    let err = runtime_without_timers()
        .block_on(stack.close())
        .unwrap_err();
    assert!(stop.is_cancelled(), "the entry's close was cut half-way");
    assert!(err.is_unenforced_deadline(), "{err}");
    assert!(!err.is_panic(), "{err}");
    assert_eq!(paths(&err), ["0"]);
    assert!(stack.is_empty());
}
