//! The summary of every bench's rows, read from the files the benches write themselves
//! (`target/bench-results/<bench>.json`, see `resource_benches::Results`), so it does
//! not depend on the order the benches run in.
//!
//! `cargo bench -p resource-benches` runs every bench; this one prints every row found,
//! as a Markdown table, with its ratio's spread and its target. It also compares the
//! rows with the run before (kept in `target/bench-results/previous/`): a row whose
//! median ratio falls outside the other run's spread is flagged, so two back-to-back
//! runs of the whole suite show whether they agree within the spread they report.
//! Alone, `cargo bench -p resource-benches --bench summary` prints the last figures
//! measured (and compares them with themselves' predecessors).

use std::collections::BTreeMap;
use std::path::Path;

use resource_benches::results_dir;
use serde_json::{Value, json};

/// One row as a bench wrote it.
#[derive(Debug, Clone)]
struct Row {
    unit: String,
    ours: Option<f64>,
    peer: Option<f64>,
    peer_label: String,
    ratio: Option<(f64, f64, f64)>,
    rounds: Option<u64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn read(value: &Value) -> Row {
        let number = |key: &str| value.get(key).and_then(Value::as_f64);
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        // The peer's figure is `peer_value` when `peer` names it, else `peer` itself.
        let peer = number("peer_value").or_else(|| number("peer"));
        let ratio = match (
            number("ratio_median"),
            number("ratio_min"),
            number("ratio_max"),
        ) {
            (Some(median), Some(min), Some(max)) => Some((median, min, max)),
            (Some(median), _, _) => Some((median, median, median)),
            _ => None,
        };
        Row {
            unit: text("unit"),
            ours: number("ours"),
            peer,
            peer_label: text("peer"),
            ratio,
            rounds: value.get("rounds").and_then(Value::as_u64),
            target: text("target"),
            met: value.get("met").and_then(Value::as_bool),
        }
    }
}

/// Every bench's rows in `dir`, by bench then row name.
fn read_all(dir: &Path) -> BTreeMap<String, BTreeMap<String, Row>> {
    let mut all = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return all;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(bench) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(Value::Object(rows)) = serde_json::from_str::<Value>(&text) else {
            eprintln!("summary: {} is not a JSON object of rows", path.display());
            continue;
        };
        // A row is an object of fields, or (in a flat file) a figure alone.
        let rows = rows
            .iter()
            .filter_map(|(name, value)| match value {
                Value::Object(_) => Some((name.clone(), Row::read(value))),
                Value::Number(_) => Some((name.clone(), Row::read(&json!({ "ours": value })))),
                _ => None,
            })
            .collect();
        all.insert(bench.to_owned(), rows);
    }
    all
}

fn figure(value: Option<f64>) -> String {
    match value {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
        None => "—".to_owned(),
    }
}

fn main() {
    // `cargo test --benches` runs every bench binary once: nothing to summarise there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = results_dir();
    let current = read_all(&dir);
    if current.is_empty() {
        println!(
            "no results in {}: run `cargo bench -p resource-benches`",
            dir.display()
        );
        return;
    }
    let previous_dir = dir.join("previous");
    let previous = read_all(&previous_dir);

    println!(
        "| bench | row | ours | peer | unit | ratio (median, min–max, rounds) | target | met | same as the run before |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut compared, mut agree) = (0, 0);
    for (bench, rows) in &current {
        for (name, row) in rows {
            let ratio = match (row.ratio, row.rounds) {
                (Some((median, min, max)), Some(rounds)) => {
                    format!("{median:.3} ({min:.3}–{max:.3}, {rounds})")
                }
                (Some((median, min, max)), None) => format!("{median:.3} ({min:.3}–{max:.3})"),
                (None, _) => "—".to_owned(),
            };
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            // Two runs agree on a row when each one's median lies within the other's
            // spread.
            let before = previous
                .get(bench)
                .and_then(|rows| rows.get(name))
                .and_then(|row| row.ratio);
            let same = match (row.ratio, before) {
                (Some((now, now_min, now_max)), Some((then, then_min, then_max))) => {
                    compared += 1;
                    let within =
                        (then_min..=then_max).contains(&now) && (now_min..=now_max).contains(&then);
                    if within {
                        agree += 1;
                        format!("yes (before {then:.3})")
                    } else {
                        format!("**no** (before {then:.3}, {then_min:.3}–{then_max:.3})")
                    }
                }
                _ => "—".to_owned(),
            };
            let peer = if row.peer_label.is_empty() {
                figure(row.peer)
            } else {
                format!("{} ({})", figure(row.peer), row.peer_label)
            };
            println!(
                "| {bench} | {name} | {} | {peer} | {} | {ratio} | {} | {met} | {same} |",
                figure(row.ours),
                row.unit,
                if row.target.is_empty() {
                    "—"
                } else {
                    &row.target
                },
            );
        }
    }
    if compared > 0 {
        println!(
            "\n{agree} of {compared} ratios agree with the run before within both runs' spreads."
        );
    } else {
        println!("\nno earlier run to compare with: run the suite again to compare two runs.");
    }
    // This run becomes the one the next compares with.
    if let Err(e) = std::fs::create_dir_all(&previous_dir) {
        eprintln!(
            "summary: could not keep this run in {}: {e}",
            previous_dir.display()
        );
        return;
    }
    for bench in current.keys() {
        let file = format!("{bench}.json");
        if let Err(e) = std::fs::copy(dir.join(&file), previous_dir.join(&file)) {
            eprintln!("summary: could not keep {file}: {e}");
        }
    }
}
