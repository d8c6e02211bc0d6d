//! `AsyncExecutor` (docs/design.md, "Runtime types"): bounded concurrency, input order kept
//! by `map`, panics returned to the caller, closed errors after close, a close that
//! drains running and waiting work up to the deadline and then aborts and counts the
//! rest, one shared state for every clone, the `Executor` protocol, `TaskHandle::abort`.
//!
//! Time is tokio's paused clock: durations are virtual and exact.

use std::sync::atomic::Ordering;
use std::time::Duration;

use resource_runtime::{
    AsyncResource, ConfigError, ResourceError,
    executor::{AsyncExecutor, Executor, ExecutorError},
};
use resource_tests::{
    Gauge, Log, at_once, block_on_without_runtime, counter, get, runtime_without_timers, strings,
};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const HOUR: Duration = Duration::from_secs(3600);

/// Checks that `err` reports `n` aborted tasks, as a typed value.
fn assert_reports_aborted(err: &ResourceError, n: usize) {
    let aborted = err
        .failures()
        .find_map(|f| f.downcast_ref::<ExecutorError>())
        .unwrap_or_else(|| panic!("not an executor error: {err}"));
    assert!(
        matches!(aborted, ExecutorError::Aborted { count, .. } if *count == n),
        "expected {n} aborted task(s), got {aborted:?}"
    );
    assert!(err.to_string().contains("abort"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn concurrency_never_exceeds_the_bound() {
    let exec = AsyncExecutor::new(4).unwrap();
    let gauge = Gauge::new();
    let mut callers = Vec::new();
    for i in 0..40_u64 {
        let (exec, gauge) = (exec.clone(), gauge.clone());
        callers.push(tokio::spawn(async move {
            exec.execute(async move {
                let _inside = gauge.enter();
                sleep(ms(10 + i % 7)).await;
                i
            })
            .await
        }));
    }
    // Sample the executor while the callers queue up and drain.
    let mut most_in_flight = 0;
    for _ in 0..200 {
        most_in_flight = most_in_flight.max(exec.in_flight());
        sleep(ms(1)).await;
    }
    for (i, caller) in callers.into_iter().enumerate() {
        assert_eq!(caller.await.unwrap().unwrap(), i as u64);
    }
    assert_eq!(gauge.max(), 4, "most tasks seen running at once");
    assert_eq!(most_in_flight, 4, "most tasks in_flight reported");
    assert_eq!(gauge.current(), 0);
    assert_eq!(exec.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn spawn_holds_the_producer_back_while_the_executor_is_full() {
    let exec = AsyncExecutor::new(3).unwrap();
    let gauge = Gauge::new();
    let start = Instant::now();
    let mut handles = Vec::new();
    let mut spawned_at = Vec::new();
    for _ in 0..9 {
        let gauge = gauge.clone();
        handles.push(
            exec.spawn(async move {
                let _inside = gauge.enter();
                sleep(ms(100)).await;
            })
            .await
            .unwrap(),
        );
        spawned_at.push(start.elapsed());
        assert!(exec.in_flight() <= 3, "in_flight {}", exec.in_flight());
    }
    for handle in handles {
        handle.await.unwrap();
    }
    // Three at once, then each wave waits for the one before to finish.
    let expected: Vec<Duration> = [0, 0, 0, 100, 100, 100, 200, 200, 200]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(spawned_at, expected);
    assert_eq!(gauge.max(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_the_bound_on_many_threads() {
    let exec = AsyncExecutor::new(3).unwrap();
    let gauge = Gauge::new();
    let mut callers = Vec::new();
    for _ in 0..60 {
        let (exec, gauge) = (exec.clone(), gauge.clone());
        callers.push(tokio::spawn(async move {
            exec.execute(async move {
                let _inside = gauge.enter();
                tokio::time::sleep(ms(1)).await;
            })
            .await
        }));
    }
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(gauge.max(), 3);
}

#[tokio::test(start_paused = true)]
async fn map_keeps_input_order_when_later_items_finish_first() {
    let exec = AsyncExecutor::new(8).unwrap();
    let finished = Log::new();
    let outputs = exec
        .map(0..8_u64, |i| {
            let finished = finished.clone();
            async move {
                // The later the item, the sooner it finishes.
                sleep(ms(80 - 10 * i)).await;
                finished.push(i.to_string());
                i * 10
            }
        })
        .await;
    let outputs: Vec<u64> = outputs.into_iter().map(Result::unwrap).collect();
    assert_eq!(outputs, [0, 10, 20, 30, 40, 50, 60, 70]);
    assert_eq!(
        finished.entries(),
        strings(&["7", "6", "5", "4", "3", "2", "1", "0"])
    );
}

#[tokio::test(start_paused = true)]
async fn map_keeps_input_order_with_fewer_slots_than_items_and_keeps_every_result() {
    let exec = AsyncExecutor::new(2).unwrap();
    let outputs = exec
        .map(0..6_u64, |i| async move {
            sleep(ms(60 - 10 * i)).await;
            assert!(i != 3, "item 3 fails");
            i
        })
        .await;
    assert_eq!(outputs.len(), 6);
    for (i, output) in outputs.iter().enumerate() {
        match output {
            Ok(v) => assert_eq!(*v, i as u64),
            Err(e) => {
                assert_eq!(i, 3, "only item 3 fails, item {i} failed with {e}");
                assert!(e.is_panic());
            }
        }
    }
    assert!(outputs[3].is_err());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_comes_back_as_an_error_and_the_executor_keeps_working() {
    // One slot: if the panic leaked the slot, the next call would wait forever.
    let exec = AsyncExecutor::new(1).unwrap();
    let n = 42_u32;
    let err = exec
        .execute(async move {
            if n == 42 {
                panic!("task exploded at {n}");
            }
            n
        })
        .await
        .unwrap_err();
    assert!(err.is_panic(), "not a panic error: {err}");
    assert_eq!(err.panic_message(), Some("task exploded at 42"));
    assert!(err.to_string().contains("task exploded at 42"), "{err}");
    assert!(!err.is_closed());

    // Through `spawn` too.
    let handle = exec
        .spawn(async {
            sleep(ms(5)).await;
            panic!("spawned task exploded");
        })
        .await
        .unwrap();
    let err = handle.await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("spawned task exploded"));

    assert_eq!(at_once(exec.execute(async { 7 })).await.unwrap(), 7);
    assert_eq!(exec.in_flight(), 0);
    let exec = exec;
    exec.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn execute_spawn_and_map_after_close_fail_at_once_with_closed_errors() {
    let exec = AsyncExecutor::new(2).unwrap();
    assert_eq!(exec.execute(async { 1 }).await.unwrap(), 1);
    exec.close().await.unwrap();

    let ran = counter();
    let r = ran.clone();
    let err = at_once(exec.execute(async move { r.fetch_add(1, Ordering::SeqCst) }))
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err}");
    let r = ran.clone();
    let err = at_once(exec.spawn(async move { r.fetch_add(1, Ordering::SeqCst) }))
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err}");
    let outputs = at_once(exec.map(0..3, |i| async move { i })).await;
    assert_eq!(outputs.len(), 3);
    assert!(outputs.iter().all(|o| o.as_ref().unwrap_err().is_closed()));
    sleep(ms(10)).await;
    assert_eq!(get(&ran), 0, "a closed executor ran a task");

    // A second close has nothing left to do: it returns at once.
    at_once(exec.close()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn submissions_fail_at_once_while_a_close_is_draining() {
    let exec = AsyncExecutor::builder(2)
        .shutdown_timeout(ms(10_000))
        .build()
        .unwrap();
    let finished = counter();
    let f = finished.clone();
    let running = exec
        .spawn(async move {
            sleep(ms(1000)).await;
            f.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    let closer = exec.clone();
    let start = Instant::now();
    let close = tokio::spawn(async move { closer.close().await });
    sleep(ms(1)).await;
    // The close is still waiting for the running task; new work is refused already,
    // although a slot is free.
    let err = at_once(exec.execute(async { 1 })).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
    let err = at_once(exec.spawn(async { 1 })).await.unwrap_err();
    assert!(err.is_closed(), "{err}");

    close.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(get(&finished), 1);
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn close_lets_running_tasks_finish_before_the_deadline() {
    let exec = AsyncExecutor::builder(4)
        .shutdown_timeout(ms(1000))
        .build()
        .unwrap();
    let done = Log::new();
    let mut handles = Vec::new();
    for (name, delay) in [("a", 50), ("b", 150), ("c", 100)] {
        let done = done.clone();
        handles.push(
            exec.spawn(async move {
                sleep(ms(delay)).await;
                done.push(name);
                delay
            })
            .await
            .unwrap(),
        );
    }
    assert_eq!(exec.in_flight(), 3);
    let start = Instant::now();
    exec.close().await.unwrap();
    // Waited for the last task, not for the deadline.
    assert_eq!(start.elapsed(), ms(150));
    assert_eq!(done.entries(), strings(&["a", "c", "b"]));
    assert_eq!(exec.in_flight(), 0);
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    assert_eq!(outputs, [50, 150, 100]);
}

#[tokio::test(start_paused = true)]
async fn close_past_the_deadline_aborts_the_rest_and_counts_them() {
    let exec = AsyncExecutor::builder(4)
        .shutdown_timeout(ms(100))
        .build()
        .unwrap();
    let woke = counter();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let woke = woke.clone();
        handles.push(
            exec.spawn(async move {
                sleep(HOUR).await;
                woke.fetch_add(1, Ordering::SeqCst);
            })
            .await
            .unwrap(),
        );
    }
    let start = Instant::now();
    let err = exec.close().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ms(100) && elapsed <= ms(101),
        "close took {elapsed:?}"
    );
    assert_reports_aborted(&err, 3);
    assert_eq!(exec.in_flight(), 0);
    for handle in handles {
        let e = handle.await.unwrap_err();
        assert!(e.is_closed(), "an aborted task's handle: {e}");
    }
    sleep(2 * HOUR).await;
    assert_eq!(get(&woke), 0, "an aborted task ran on");
    // A later close has nothing left to do: Ok at once (the close contract).
    at_once(exec.close()).await.unwrap();
}

/// One slot, held by a task that runs for an hour, and three callers waiting in
/// `execute` for it; then a close with a deadline of 100 ms.
#[tokio::test(start_paused = true)]
async fn close_aborts_and_counts_callers_still_waiting_for_a_slot() {
    let exec = AsyncExecutor::builder(1)
        .shutdown_timeout(ms(100))
        .build()
        .unwrap();
    let ran = counter();
    let r = ran.clone();
    let long = exec
        .spawn(async move {
            sleep(HOUR).await;
            r.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let (exec, ran) = (exec.clone(), ran.clone());
        waiters.push(tokio::spawn(async move {
            let out = exec
                .execute(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .await;
            (out, Instant::now())
        }));
    }
    sleep(ms(1)).await; // every waiter is in `execute` now
    let start = Instant::now();
    let err = exec.clone().close().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ms(100) && elapsed <= ms(101),
        "close took {elapsed:?}"
    );
    // The running task and the three waiters.
    assert_reports_aborted(&err, 4);
    for waiter in waiters {
        let (out, at) = waiter.await.unwrap();
        let e = out.unwrap_err();
        assert!(e.is_closed(), "a waiter's error: {e}");
        assert!(at <= start + ms(101), "a waiter was released late");
    }
    assert!(long.await.unwrap_err().is_closed());
    sleep(2 * HOUR).await;
    assert_eq!(get(&ran), 0, "an aborted task or waiter ran");
}

/// The same, with a deadline long enough: the waiters get the slot in turn and run.
#[tokio::test(start_paused = true)]
async fn close_lets_callers_waiting_for_a_slot_run_before_the_deadline() {
    let exec = AsyncExecutor::builder(1)
        .shutdown_timeout(HOUR)
        .build()
        .unwrap();
    let ran = Log::new();
    let r = ran.clone();
    let first = exec
        .spawn(async move {
            sleep(ms(50)).await;
            r.push("first");
        })
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for i in 0..3_u64 {
        let (exec, ran) = (exec.clone(), ran.clone());
        waiters.push(tokio::spawn(async move {
            exec.execute(async move {
                sleep(ms(50)).await;
                ran.push(format!("waiter {i}"));
                i
            })
            .await
        }));
    }
    sleep(ms(1)).await; // every waiter is in `execute` now
    let start = Instant::now();
    exec.clone().close().await.unwrap();
    // 49 ms left of the first task, then three 50 ms tasks one after another.
    assert_eq!(start.elapsed(), ms(199));
    assert_eq!(
        ran.entries(),
        strings(&["first", "waiter 0", "waiter 1", "waiter 2"])
    );
    first.await.unwrap();
    for (i, waiter) in waiters.into_iter().enumerate() {
        assert_eq!(waiter.await.unwrap().unwrap(), i as u64);
    }
}

/// A caller that started waiting for a slot and was then never polled again cannot
/// wake to leave: a close past its deadline counts it without waiting for it.
#[tokio::test(start_paused = true)]
async fn a_close_past_its_deadline_does_not_wait_for_a_waiter_nobody_polls() {
    let executor = AsyncExecutor::builder(1)
        .shutdown_timeout(ms(100))
        .build()
        .unwrap();
    let _running = executor.spawn(std::future::pending::<()>()).await.unwrap();
    let other = executor.clone();
    let mut stuck = Box::pin(async move { other.spawn(async {}).await });
    assert!(
        stuck
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_pending()
    );
    assert_eq!(executor.waiting(), 1);
    let started = Instant::now();
    let error = executor.close().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The running task and the waiter.
    assert_reports_aborted(&error, 2);
    drop(stuck);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_executor() {
    let exec = AsyncExecutor::new(2).unwrap();
    let clone = exec.clone();
    assert_eq!(clone.max_concurrency(), 2);
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let handle = exec.spawn(async move { rx.await.unwrap() }).await.unwrap();
    assert_eq!(exec.in_flight(), 1);
    assert_eq!(clone.in_flight(), 1);
    tx.send(5).unwrap();
    assert_eq!(handle.await.unwrap(), 5);
    assert_eq!(exec.in_flight(), 0);
    assert_eq!(clone.in_flight(), 0);

    clone.close().await.unwrap();
    let err = at_once(exec.execute(async { 1 })).await.unwrap_err();
    assert!(err.is_closed(), "the original after closing a clone: {err}");
    let late_clone = exec.clone();
    assert!(
        at_once(late_clone.execute(async { 1 }))
            .await
            .unwrap_err()
            .is_closed()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_closes_from_two_clones_wait_for_the_same_drain() {
    let exec = AsyncExecutor::builder(2)
        .shutdown_timeout(HOUR)
        .build()
        .unwrap();
    let done = counter();
    let d = done.clone();
    let _task = exec
        .spawn(async move {
            sleep(ms(100)).await;
            d.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    let (mut a, mut b) = (exec.clone(), exec.clone());
    let start = Instant::now();
    let close = async |e: &mut AsyncExecutor| {
        let out = e.close().await;
        (out, start.elapsed(), get(&done))
    };
    let ((out_a, took_a, done_a), (out_b, took_b, done_b)) =
        tokio::join!(close(&mut a), close(&mut b));
    out_a.unwrap();
    out_b.unwrap();
    assert_eq!((took_a, took_b), (ms(100), ms(100)));
    assert_eq!(
        (done_a, done_b),
        (1, 1),
        "a close returned before the drain"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_closes_from_two_clones_return_the_same_failure() {
    let exec = AsyncExecutor::builder(2)
        .shutdown_timeout(ms(100))
        .build()
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..2 {
        handles.push(exec.spawn(sleep(HOUR)).await.unwrap());
    }
    let (mut a, mut b) = (exec.clone(), exec.clone());
    let start = Instant::now();
    let close = async |e: &mut AsyncExecutor| {
        let out = e.close().await;
        (out, start.elapsed())
    };
    let ((out_a, took_a), (out_b, took_b)) = tokio::join!(close(&mut a), close(&mut b));
    let (err_a, err_b) = (out_a.unwrap_err(), out_b.unwrap_err());
    assert_reports_aborted(&err_a, 2);
    assert_eq!(err_a.to_string(), err_b.to_string());
    for took in [took_a, took_b] {
        assert!(took >= ms(100) && took <= ms(101), "close took {took:?}");
    }
    for handle in handles {
        assert!(handle.await.unwrap_err().is_closed());
    }
}

/// Generic code written against the protocol alone.
async fn sum_of_squares<E: Executor>(executor: &E, n: u64) -> Result<u64, ResourceError> {
    let mut total = 0;
    for i in 0..n {
        total += executor.execute(async move { i * i }).await?;
    }
    Ok(total)
}

async fn close_generic<E: Executor>(mut executor: E) -> Result<(), ResourceError> {
    executor.close().await
}

#[tokio::test(start_paused = true)]
async fn usable_through_the_executor_trait() {
    let exec = AsyncExecutor::new(2).unwrap();
    assert_eq!(sum_of_squares(&exec, 4).await.unwrap(), 14);
    // The protocol's futures are `Send`: generic code can run on another task.
    let e = exec.clone();
    let spawned = tokio::spawn(async move { sum_of_squares(&e, 3).await });
    assert_eq!(spawned.await.unwrap().unwrap(), 5);
    close_generic(exec.clone()).await.unwrap();
    let err = sum_of_squares(&exec, 1).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
}

#[test]
fn max_concurrency_zero_is_refused_when_the_executor_is_built() {
    for err in [
        AsyncExecutor::new(0).unwrap_err(),
        AsyncExecutor::builder(0)
            .shutdown_timeout(ms(10))
            .build()
            .unwrap_err(),
    ] {
        let config = err
            .downcast_ref::<ConfigError>()
            .expect("a typed configuration error");
        assert_eq!(config.handle(), "AsyncExecutor");
        assert_eq!(config.setting(), "max_concurrency");
        assert!(!err.is_closed());
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn task_handle_abort_stops_the_task_and_frees_its_slot() {
    let exec = AsyncExecutor::new(1).unwrap();
    let woke = counter();
    let w = woke.clone();
    let handle = exec
        .spawn(async move {
            sleep(HOUR).await;
            w.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    assert_eq!(exec.in_flight(), 1);
    handle.abort();
    let err = at_once(handle).await.unwrap_err();
    assert!(!err.is_panic(), "{err}");
    // The slot is free again: the next call runs at once.
    assert_eq!(at_once(exec.execute(async { 3 })).await.unwrap(), 3);
    assert_eq!(exec.in_flight(), 0);
    sleep(2 * HOUR).await;
    assert_eq!(get(&woke), 0, "the aborted task ran on");
    // Aborted by its owner, not by the shutdown: the close has nothing to report.
    at_once(exec.close()).await.unwrap();
}

/// The count of aborted work must not depend on the runtime's flavour: on a
/// multi-threaded runtime, callers waiting for a slot are aborted and counted too.
/// (Real time here, but no duration is asserted: the 20 ms deadline only has to pass.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_counts_every_aborted_waiter_on_many_threads() {
    for round in 0..5 {
        let exec = AsyncExecutor::builder(1)
            .shutdown_timeout(ms(20))
            .build()
            .unwrap();
        let long = exec.spawn(tokio::time::sleep(HOUR)).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..100 {
            let exec = exec.clone();
            waiters.push(tokio::spawn(async move { exec.execute(async {}).await }));
        }
        // Let every waiter reach `execute`.
        tokio::time::sleep(ms(5)).await;
        let err = exec.clone().close().await.unwrap_err();
        for waiter in waiters {
            assert!(waiter.await.unwrap().unwrap_err().is_closed());
        }
        assert!(long.await.unwrap_err().is_closed());
        // One running task and 100 waiters were aborted.
        assert!(
            matches!(
                err.downcast_ref::<ExecutorError>(),
                Some(ExecutorError::Aborted { count: 101, .. })
            ),
            "round {round}: expected 101 aborted, got: {err}"
        );
    }
}

/// Submissions racing a close on many threads: every one either fails as closed or
/// runs its task to the end before the close returns. No task starts or ends after the
/// close returned, every task let in ran, and nothing is left counted. Each task sleeps
/// a millisecond, so one the shutdown did not wait for is still running when the close
/// returns. The same order without a race: a caller waiting for a slot when the close
/// starts (`close_lets_callers_waiting_for_a_slot_run_before_the_deadline`), and one
/// holding its slot while it waits for tokens (`rate_limited.rs`,
/// `closing_the_executor_waits_for_a_caller_between_its_slot_and_its_task`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_racing_submissions_on_many_threads_waits_for_every_task_it_let_in() {
    for round in 0..200 {
        let exec = AsyncExecutor::new(4).unwrap();
        let (accepted, started, ran) = (counter(), counter(), counter());
        let mut producers = Vec::new();
        for _ in 0..4 {
            let (exec, accepted, started, ran) =
                (exec.clone(), accepted.clone(), started.clone(), ran.clone());
            producers.push(tokio::spawn(async move {
                let mut refused = 0;
                loop {
                    let (started, ran) = (started.clone(), ran.clone());
                    let task = async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        sleep(ms(1)).await;
                        ran.fetch_add(1, Ordering::SeqCst);
                    };
                    match exec.spawn(task).await {
                        Ok(handle) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            drop(handle);
                        }
                        Err(e) => {
                            assert!(e.is_closed(), "{e}");
                            refused += 1;
                            if refused == 3 {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        // Close while the producers submit: in most rounds as they start, when callers
        // are between their open check and their task's start; in every fourth once
        // tasks run, when most callers wait for a slot.
        let steady = round % 4 == 3;
        tokio::task::yield_now().await;
        while steady && get(&accepted) == 0 {
            tokio::task::yield_now().await;
        }
        exec.close().await.unwrap();
        let (started_at_close, ran_at_close) = (get(&started), get(&ran));
        assert_eq!(exec.in_flight(), 0, "round {round}");
        for producer in producers {
            producer.await.unwrap();
        }
        assert_eq!(exec.waiting(), 0, "round {round}");
        assert_eq!(
            (get(&started), get(&ran)),
            (started_at_close, ran_at_close),
            "round {round}: a task started or ran on after the close returned"
        );
        assert_eq!(
            get(&ran),
            get(&accepted),
            "round {round}: a task let in did not run to its end"
        );
        if steady {
            assert!(get(&ran) > 0, "round {round}: no task ran");
        }
    }
}

/// A close cut short on a runtime that then went away: the next close, on another
/// runtime, finishes the shutdown instead of waiting for a task that no longer exists.
#[test]
fn a_close_cut_short_on_a_runtime_that_is_gone_is_finished_by_the_next_close() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let executor = AsyncExecutor::builder(1)
        .shutdown_timeout(ms(200))
        .build()
        .unwrap();
    let clone = executor.clone();
    first.block_on(async {
        let _task = executor.spawn(sleep(HOUR)).await.unwrap();
        let cut = tokio::time::timeout(ms(20), executor.close()).await;
        assert!(cut.is_err(), "the close was expected to be cut short");
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        // The hour-long task died with its runtime; nothing is left to wait for.
        at_once(clone.close()).await.unwrap();
        assert!(
            at_once(clone.execute(async {}))
                .await
                .unwrap_err()
                .is_closed()
        );
        assert_eq!(clone.in_flight(), 0);
    });
}

/// Closed with no runtime at all: no panic, and a close on a runtime afterwards returns.
#[test]
fn a_close_outside_any_runtime_does_not_panic_and_a_later_close_returns() {
    let executor = AsyncExecutor::builder(2)
        .shutdown_timeout(ms(200))
        .build()
        .unwrap();
    block_on_without_runtime(executor.close()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        at_once(executor.close()).await.unwrap();
        assert!(
            at_once(executor.execute(async {}))
                .await
                .unwrap_err()
                .is_closed()
        );
    });
}

/// A close outside any runtime while a task runs on another thread's runtime: no timer
/// to keep the deadline with, so it waits for the task and says why.
#[test]
fn a_close_without_a_timer_waits_for_running_tasks_and_says_why() {
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let executor = AsyncExecutor::builder(2)
        .shutdown_timeout(ms(10))
        .build()
        .unwrap();
    let finished = counter();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (executor, finished) = (executor.clone(), finished.clone());
        workers.spawn(async move {
            executor
                .execute(async move {
                    started_tx.send(()).unwrap();
                    let _ = release_rx.await;
                    finished.fetch_add(1, Ordering::SeqCst);
                })
                .await
        })
    };
    started_rx.recv().unwrap();
    // The task is released only once the close is under way on the timerless runtime.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        release_tx.send(()).unwrap();
    });
    let err = runtime_without_timers()
        .block_on(executor.close())
        .unwrap_err();
    release.join().unwrap();
    assert!(err.is_unenforced_deadline(), "{err}");
    assert_eq!(err.deadline(), Some(ms(10)));
    assert_eq!(
        get(&finished),
        1,
        "the close returned before the task finished"
    );
    workers.block_on(task).unwrap().unwrap();
    // The same close without a runtime at all.
    let executor = AsyncExecutor::new(1).unwrap();
    block_on_without_runtime(executor.close()).unwrap();
}

/// A task that closes its own executor is told at once instead of waiting for itself;
/// the shutdown still runs and a close from outside returns its outcome.
#[tokio::test(start_paused = true)]
async fn a_task_closing_its_own_executor_gets_an_error_at_once() {
    let executor = AsyncExecutor::builder(2)
        .shutdown_timeout(ms(100))
        .build()
        .unwrap();
    let inner = executor.clone();
    let started = Instant::now();
    let from_inside = executor
        .execute(async move { inner.close().await })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let err = from_inside.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<ExecutorError>(),
            Some(ExecutorError::CloseFromOwnTask)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("own executor"), "{err}");
    // The shutdown began: new work is refused, and a close from outside completes.
    assert!(
        at_once(executor.execute(async {}))
            .await
            .unwrap_err()
            .is_closed()
    );
    executor.close().await.unwrap();
}
