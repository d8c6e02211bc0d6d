//! `testing::assert_all_closed`: fails naming every type with resources still open, and
//! their counts. One test alone in its binary: it looks at every type in the process.

use std::any::type_name;
use std::time::Duration;

use resource_runtime::{Managed, testing};
use resource_tests::{Tracked, Tracker};

struct Alpha;
struct Beta;

#[tokio::test]
async fn assert_all_closed_names_every_type_left_open() {
    const WAIT: Duration = Duration::from_secs(10);
    let tracker = Tracker::new();
    testing::assert_all_closed(WAIT).await.unwrap();
    let a1 = Managed::enter(Tracked::<Alpha>::new(&tracker))
        .await
        .unwrap();
    let a2 = Managed::enter(Tracked::<Alpha>::new(&tracker))
        .await
        .unwrap();
    let b = Managed::enter(Tracked::<Beta>::new(&tracker))
        .await
        .unwrap();

    let error = testing::assert_all_closed(WAIT)
        .await
        .expect_err("three are open");
    let mut counts: Vec<(String, usize)> = error
        .failures()
        .map(|f| {
            let left = f
                .downcast_ref::<testing::LeftOpen>()
                .unwrap_or_else(|| panic!("not a count of resources left open: {f:?}"));
            (f.path().unwrap_or("?").to_owned(), left.count)
        })
        .collect();
    counts.sort();
    let mut expected = vec![
        (type_name::<Tracked<Alpha>>().to_owned(), 2),
        (type_name::<Tracked<Beta>>().to_owned(), 1),
    ];
    expected.sort();
    assert_eq!(counts, expected);
    // Each type on its own line of the error's `Display`.
    let mut lines: Vec<String> = error.failures().map(|f| f.to_string()).collect();
    lines.sort();
    let mut expected = vec![
        format!("close `{}`: 2 left open", type_name::<Tracked<Alpha>>()),
        format!("close `{}`: 1 left open", type_name::<Tracked<Beta>>()),
    ];
    expected.sort();
    assert_eq!(lines, expected);

    a1.close().await.unwrap();
    b.close().await.unwrap();
    drop(a2); // closed in the background, which assert_all_closed waits for
    testing::assert_all_closed(WAIT).await.unwrap();
    assert_eq!(tracker.tally().close_done, 3);
}
