#!/usr/bin/env bash
# Line coverage of resource-runtime and of the derive's code (through its unit tests and
# every test that derives), measured with cargo-tarpaulin. Not part of .ci/run: it
# installs a tool and takes minutes. Installs cargo-tarpaulin from crates.io if missing.
#
#   scripts/coverage.sh            # prints the summary and per-file lines
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-tarpaulin >/dev/null 2>&1; then
    cargo install --locked cargo-tarpaulin
fi

# ui-tests run trybuild, which compiles cases in subprocesses: nothing to trace there.
exec cargo tarpaulin \
    --workspace --exclude ui-tests \
    --skip-clean \
    --timeout 600 \
    --include-files 'resource-runtime/src/*' 'resource-runtime/src/**/*' 'resource-derive/src/*' \
    --exclude-files 'resource-derive/src/tests.rs' \
    --out Stdout \
    "$@"
