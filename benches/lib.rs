//! The benchmarks of `resource-runtime`, each beside a peer it is measured against in
//! the same run; `cargo bench -p resource-benches` runs them all and ends with the
//! summary of every target in BENCHMARKS.md.
