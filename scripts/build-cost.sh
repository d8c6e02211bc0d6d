#!/usr/bin/env bash
# What adding resource-runtime costs a user's build: for the core (no default
# features), the default set and every feature, beside tokio-util and reqwest alone,
# the number of crates in the normal dependency tree and the time of a cold
# `cargo build --release` (an empty target folder, sources already downloaded), all in
# one run on this machine. Prints a Markdown table for BENCHMARKS.md.
#
#   scripts/build-cost.sh            # every row
#   scripts/build-cost.sh core reqwest
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

runtime="path = \"$root/resource-runtime\""
declare -A deps=(
    [core]="resource-runtime = { $runtime, default-features = false }"
    [default]="resource-runtime = { $runtime }"
    [all]="resource-runtime = { $runtime, features = [\"http\", \"native-tls\", \"testing\", \"report\"] }"
    [tokio-util]="tokio-util = \"0.7\""
    [reqwest]="reqwest = \"0.13\""
)
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(core default all tokio-util reqwest)

echo "| build | crates | cold release build |"
echo "|---|---:|---:|"
for row in "${rows[@]}"; do
    dir="$work/$row"
    mkdir -p "$dir/src"
    cat > "$dir/Cargo.toml" <<TOML
[package]
name = "cost-$row"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
${deps[$row]}

[workspace]
TOML
    : > "$dir/src/lib.rs"
    # The workspace's versions, so the rows compare the crates the tests run.
    cp "$root/Cargo.lock" "$dir/Cargo.lock"
    (cd "$dir" && cargo fetch -q)
    crates=$(cd "$dir" && cargo tree -e normal --prefix none \
        | sed 's/ v[0-9].*//' | sort -u | grep -vx "cost-$row" | wc -l)
    start=$(date +%s.%N)
    (cd "$dir" && CARGO_TARGET_DIR="$work/target-$row" cargo build --release -q)
    end=$(date +%s.%N)
    rm -rf "$work/target-$row"
    awk -v r="$row" -v c="$crates" -v s="$start" -v e="$end" 'BEGIN { printf "| %s | %d | %.1f s |\n", r, c, e - s }'
done
