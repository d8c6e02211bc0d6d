//! Compile-fail and compile-pass cases for `#[derive(AsyncResource)]`.

use std::process::Command;

/// The toolchain the `.stderr` files were generated with: rustc's messages change
/// between releases, so on any other version the comparison would fail for reasons
/// that have nothing to do with the derive.
const EXPECTED_RUSTC: &str = "1.95.";

/// `rustc --version`, as cargo would run it (`RUSTC` wins over the one on `PATH`).
fn rustc_version() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("could not run `{} --version`: {e}", rustc.to_string_lossy()));
    assert!(
        output.status.success(),
        "`{} --version` failed: {}",
        rustc.to_string_lossy(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn ui() {
    let version = rustc_version();
    // "rustc 1.95.0 (hash date)": the second word is the version.
    let number = version.split_whitespace().nth(1).unwrap_or_default();
    if !number.starts_with(EXPECTED_RUSTC) {
        // Another rustc words its errors differently: comparing would fail for reasons
        // that have nothing to do with the derive. Say so, and pass.
        eprintln!(
            "note: ui tests skipped: the .stderr files match rustc {EXPECTED_RUSTC}x and this is \
             {version}; run them on rustc {EXPECTED_RUSTC}x, or regenerate them with \
             `TRYBUILD=overwrite cargo test -p ui-tests` and read every diff"
        );
        return;
    }

    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/fail/*.rs");
    cases.pass("ui/pass/*.rs");
}
