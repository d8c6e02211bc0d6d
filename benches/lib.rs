//! The benchmarks of `resource-runtime`, each beside a peer it is measured against in
//! the same run; `cargo bench -p resource-benches` runs them all and ends with the
//! summary of every target in BENCHMARKS.md.
//!
//! Every ratio is measured by [`paired`]: interleaved rounds of ours and the peer in
//! one process, the order alternating, reported as the median of the per-round
//! ratios with their spread. Each bench writes its rows with [`Results`] to
//! `target/bench-results/<bench>.json`, which the `summary` bench reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The rounds every paired ratio takes unless a bench says otherwise.
pub const ROUNDS: usize = 21;

/// What [`paired`] measured: each side's median, and the per-round ratios ours /
/// peer as a median and a spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Our median figure.
    pub ours: f64,
    /// The peer's median figure.
    pub peer: f64,
    /// The median of the per-round ratios ours / peer.
    pub ratio: f64,
    /// The lowest per-round ratio.
    pub ratio_min: f64,
    /// The highest per-round ratio.
    pub ratio_max: f64,
    /// How many rounds.
    pub rounds: usize,
}

/// Runs `ours` and `peer` (each returning its figure for one round: a time, lower is
/// better, or a rate, as long as both are the same kind) in `rounds` interleaved
/// rounds, alternating which goes first, and returns each side's median and the
/// median, minimum and maximum of the per-round ratios ours / peer.
pub fn paired(rounds: usize, ours: impl FnMut() -> f64, peer: impl FnMut() -> f64) -> Paired {
    let (o, p): (Vec<f64>, Vec<f64>) = interleaved(rounds, ours, peer).into_iter().unzip();
    Paired::from_rounds(&o, &p)
}

/// Runs `ours` and `peer` in `rounds` interleaved rounds, alternating which goes first,
/// and returns each round's pair (ours, peer): the order of [`paired`], for a bench
/// whose round measures several figures at once.
pub fn interleaved<T>(
    rounds: usize,
    mut ours: impl FnMut() -> T,
    mut peer: impl FnMut() -> T,
) -> Vec<(T, T)> {
    assert!(rounds > 0, "at least one round");
    (0..rounds)
        .map(|round| {
            if round.is_multiple_of(2) {
                let a = ours();
                (a, peer())
            } else {
                let b = peer();
                (ours(), b)
            }
        })
        .collect()
}

impl Paired {
    /// Each side's figures of the same rounds, in order (for a bench whose round
    /// measures several rows at once): the medians and the per-round ratios.
    pub fn from_rounds(ours: &[f64], peer: &[f64]) -> Paired {
        assert!(
            !ours.is_empty() && ours.len() == peer.len(),
            "one figure a side a round"
        );
        let mut ratios: Vec<f64> = ours.iter().zip(peer).map(|(o, p)| o / p).collect();
        let ratio = median(&mut ratios);
        Paired {
            ours: median(&mut ours.to_vec()),
            peer: median(&mut peer.to_vec()),
            ratio,
            ratio_min: ratios[0],
            ratio_max: ratios[ratios.len() - 1],
            rounds: ours.len(),
        }
    }
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Nanoseconds per call of `op`, over `calls` calls.
pub fn ns_per_call(calls: u64, mut op: impl FnMut()) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..calls {
        op();
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// How a row's ratio is judged.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The ratio ours / peer is at most this.
    AtMost(f64),
    /// The ratio ours / peer is at least this (a rate, higher is better).
    AtLeast(f64),
    /// Reported, no target.
    Report,
}

/// The rows one bench measured, written to `target/bench-results/<bench>.json` by
/// [`write`](Self::write), once every row is in: a bench that panics half-way leaves
/// the file of its last complete run.
#[derive(Debug)]
pub struct Results {
    bench: &'static str,
    rows: BTreeMap<String, Value>,
}

impl Results {
    /// No rows yet, for the bench called `bench`.
    pub fn new(bench: &'static str) -> Self {
        Results {
            bench,
            rows: BTreeMap::new(),
        }
    }

    /// Records a paired row: what it is, the peer, the unit of each side's figure,
    /// the target, and the command that measures it. Prints it too.
    pub fn paired(&mut self, row: &str, peer: &str, unit: &str, target: Target, measured: Paired) {
        let (target_text, met) = match target {
            Target::AtMost(limit) => (format!("≤ {limit}"), Some(measured.ratio <= limit)),
            Target::AtLeast(limit) => (format!("≥ {limit}"), Some(measured.ratio >= limit)),
            Target::Report => ("report".to_owned(), None),
        };
        println!(
            "{}/{row}: ours {:.3} {unit}, {peer} {:.3} {unit}; ratio {:.3} (rounds {}: {:.3}–{:.3}); target {target_text}{}",
            self.bench,
            measured.ours,
            measured.peer,
            measured.ratio,
            measured.rounds,
            measured.ratio_min,
            measured.ratio_max,
            match met {
                Some(true) => ", met",
                Some(false) => ", NOT met",
                None => "",
            }
        );
        self.rows.insert(
            row.to_owned(),
            json!({
                "peer": peer,
                "unit": unit,
                "ours": measured.ours,
                "peer_value": measured.peer,
                "ratio_median": measured.ratio,
                "ratio_min": measured.ratio_min,
                "ratio_max": measured.ratio_max,
                "rounds": measured.rounds,
                "target": target_text,
                "met": met,
                "command": format!("cargo bench -p resource-benches --bench {}", self.bench),
            }),
        );
    }

    /// Records a figure without a peer (a count, a size).
    pub fn figure(&mut self, row: &str, unit: &str, value: f64) {
        println!("{}/{row}: {value:.3} {unit}", self.bench);
        self.rows.insert(
            row.to_owned(),
            json!({
                "unit": unit,
                "ours": value,
                "command": format!("cargo bench -p resource-benches --bench {}", self.bench),
            }),
        );
    }

    /// Writes the rows, replacing the bench's previous file.
    pub fn write(&self) {
        let dir = results_dir();
        let path = dir.join(format!("{}.json", self.bench));
        let text = serde_json::to_string_pretty(&self.rows).expect("rows serialize");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("{}: could not write {}: {e}", self.bench, path.display());
        }
    }
}

/// `target/bench-results` of the workspace (or of `CARGO_TARGET_DIR`).
pub fn results_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench-results")
}

/// Whether this process runs as `cargo bench` (not `cargo test --benches`, which runs
/// each bench once as a smoke test), and `name` is selected by the filter, if any (a
/// plain substring test).
pub fn selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return false;
    }
    let mut filters = args.iter().filter(|a| !a.starts_with('-')).peekable();
    filters.peek().is_none() || filters.any(|f| name.contains(f.as_str()))
}
