//! The summary table of BENCHMARKS.md from the figures the other benches just wrote.
//! `cargo bench -p resource-benches` runs it last (benches run in name order); alone,
//! `cargo bench -p resource-benches --bench summary` prints the last figures measured.
//! The limiter accuracy and executor memory rows are printed by their own binaries.

use std::path::{Path, PathBuf};

/// One comparison: the bench group, the two functions, the target and how to read it.
struct Row {
    what: &'static str,
    group: &'static str,
    ours: &'static str,
    peer: &'static str,
    target: Target,
}

enum Target {
    AtMost(f64),
    AtLeastFaster(f64),
    Report,
}

const ROWS: &[Row] = &[
    Row {
        what: "derived close, 16 token fields / by hand",
        group: "tokens_16",
        ours: "derived",
        peer: "hand_written",
        target: Target::AtMost(1.05),
    },
    Row {
        what: "concurrent group / sequential, 16 x 1 ms",
        group: "sleep_1ms_x16",
        ours: "group",
        peer: "sequential",
        target: Target::AtLeastFaster(10.0),
    },
    Row {
        what: "scope / by hand",
        group: "scope_worker",
        ours: "scope",
        peer: "hand_written",
        target: Target::AtMost(1.10),
    },
    Row {
        what: "ResourceStack of 16 / derived struct",
        group: "stack_16",
        ours: "resource_stack",
        peer: "derived",
        target: Target::Report,
    },
    Row {
        what: "try_acquire pass, 1 thread / governor",
        group: "try_acquire_pass",
        ours: "1t_resource_runtime",
        peer: "1t_governor",
        target: Target::AtMost(1.2),
    },
    Row {
        what: "try_acquire reject, 1 thread / governor",
        group: "try_acquire_reject",
        ours: "1t_resource_runtime",
        peer: "1t_governor",
        target: Target::AtMost(1.0),
    },
    Row {
        what: "200k tasks at 64 / TaskTracker+Semaphore",
        group: "spawn_200k_c64",
        ours: "async_executor_shutdown",
        peer: "tracker_semaphore",
        target: Target::AtMost(1.10),
    },
    Row {
        what: "close with 10k in-flight tasks / tracker+token",
        group: "close_10k",
        ours: "async_executor",
        peer: "tracker_token",
        target: Target::Report,
    },
    Row {
        what: "Endpoint latency / plain reqwest (criterion rows)",
        group: "latency",
        ours: "endpoint",
        peer: "reqwest",
        target: Target::AtMost(1.05),
    },
    Row {
        what: "Endpoint close, 64 idle / dropping the client",
        group: "close_64_idle",
        ours: "endpoint",
        peer: "reqwest_drop",
        target: Target::Report,
    },
];

fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// The median point estimate criterion recorded for `group/function`, in ns.
fn median(dir: &Path, group: &str, function: &str) -> Option<f64> {
    let text =
        std::fs::read_to_string(dir.join(group).join(function).join("new/estimates.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    // `cargo test --benches` runs every bench binary once: nothing to summarise there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = criterion_dir();
    println!(
        "{:<50} {:>10} {:>10} {:>9}  target",
        "row", "ours", "peer", "ratio"
    );
    for row in ROWS {
        let (Some(ours), Some(peer)) = (
            median(&dir, row.group, row.ours),
            median(&dir, row.group, row.peer),
        ) else {
            println!(
                "{:<50} not measured yet: run `cargo bench -p resource-benches`",
                row.what
            );
            continue;
        };
        let ratio = ours / peer;
        let verdict = match row.target {
            Target::AtMost(t) => {
                format!("<= {t:.2}: {}", if ratio <= t { "met" } else { "missed" })
            }
            Target::AtLeastFaster(t) => {
                format!(
                    "{:.1}x faster, >= {t:.0}x: {}",
                    1.0 / ratio,
                    if 1.0 / ratio >= t { "met" } else { "missed" }
                )
            }
            Target::Report => "reported".to_owned(),
        };
        println!(
            "{:<50} {:>8.1}ns {:>8.1}ns {ratio:>9.3}  {verdict}",
            row.what, ours, peer
        );
    }
    println!(
        "(limiter accuracy: --bench limiter_accuracy; memory per task: --bench executor_memory; paired endpoint rows: --bench endpoint)"
    );
}
