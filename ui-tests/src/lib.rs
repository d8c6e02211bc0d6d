//! Hosts the trybuild cases for `#[derive(AsyncResource)]`: the compile-fail cases in
//! `ui/fail/` and the compile-pass cases in `ui/pass/`, driven by `tests/ui.rs`. The
//! library itself is empty.

#![forbid(unsafe_code)]
