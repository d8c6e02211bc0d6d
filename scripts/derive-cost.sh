#!/usr/bin/env bash
# What `#[derive(AsyncResource)]` adds to a user's compile time.
#
# Generates, in a temporary folder, three crates with the same structs (32 by default,
# `--structs 200` for the full size: see below) of 8 resource fields each (a
# `CancellationToken`, a `BufWriter<File>`, an `Option<Box<Conn>>`, a `Vec<Conn>`, a
# field closed by `close = sdk_close`, two fields in the group "io" (a `TcpStream` and a
# `Conn`), and a `JoinHandle` with a 2 s timeout), and the same `drive_N` function per struct that enters and closes it, so
# both impls are compiled down to machine code:
#
# - derived: `#[derive(AsyncResource)]` on every struct;
# - hand:    the same impls of `AsyncResource` written by hand: enter in declaration
#            order, closing the entered fields in reverse on a failure; close in
#            reverse order, the group through `tokio::join!`, the timeout through
#            `tokio::time::timeout`, the first error kept, no panic guard, no spans;
# - pasted:  the derived crate's source after macro expansion, pasted back as plain
#            source. The expansion is made once with the nightly toolchain
#            (`cargo +nightly rustc -- -Zunpretty=expanded`), used only as a tool to
#            print it; every measured build is a stable `cargo build`. The printed
#            form of `core::pin::pin!` (unstable `super let`) is put back as the
#            macro call, and the derive's inert `#[resource]` attributes are dropped.
#            Without a nightly toolchain this crate and the split below are left out.
#
# Each crate depends on resource-runtime by path, with the workspace's Cargo.lock, and
# builds in one temporary target folder of its own (never the workspace's). After one
# untimed build of each, every round touches a crate's src/lib.rs and times
# `cargo build` of that crate alone (dependencies already built, and brought up to date
# by an untimed build just before, should resource-runtime change; CARGO_INCREMENTAL=0,
# so each timed build compiles the whole crate rather than replaying the incremental
# cache). The crates build in interleaved rounds, the order reversed every round
# (derived, hand, pasted, then pasted, hand, derived, ...), debug then release.
#
# Reported, as medians of the per-round figures with their min–max:
#   derived / hand           what the derive costs against hand-written impls (≤ 1.3)
#   derived - pasted         the macro itself: parsing and expanding (seconds)
#   pasted - hand            compiling what it generates, beyond the hand-written code
# and the size of the expansion: lines of the impls (rustfmt-formatted) per field.
# The table is printed and written to target/bench-results/derive_cost.json (row ->
# {ours, peer, ratio_median, ratio_min, ratio_max, rounds, unit, target, ...}).
#
# On this 2-core machine, shared with other builds, a round of 200 structs takes about
# 30 s in debug (the three crates together) and 90 s in release, so the default is 32
# structs: 15 rounds of each in about 7 minutes. At 200 structs the release ratio is
# higher than at 32 (1.19 against 1.07 in the last runs), so the default understates
# what a large crate pays in release. The figures also move with the machine's load:
# the derived crate, the larger one, loses more when the cores are busy.
#
#   scripts/derive-cost.sh              # 32 structs, 15 debug and 15 release rounds
#   scripts/derive-cost.sh --quick      # 5 rounds of each
#   scripts/derive-cost.sh --structs 200 --rounds 7 --release-rounds 7   # about 30 min:
#       14 of timed rounds, the rest the untimed builds of the three crates and the expansion
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

debug_rounds=15
release_rounds=15
structs=32
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) debug_rounds=5; release_rounds=5 ;;
        --rounds) debug_rounds=$2; shift ;;
        --release-rounds) release_rounds=$2; shift ;;
        --structs) structs=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "derive-cost: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d "${TMPDIR:-/tmp}/derive-cost.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 - "$root" "$work" "$structs" "$debug_rounds" "$release_rounds" <<'PY'
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

root, work = sys.argv[1], sys.argv[2]
structs, debug_rounds, release_rounds = (int(a) for a in sys.argv[3:6])
FIELDS = 8
target_dir = os.path.join(work, "target")
env = dict(os.environ, CARGO_TARGET_DIR=target_dir, CARGO_INCREMENTAL="0")
# Whatever the caller set for the workspace's builds does not apply here.
for var in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"):
    env.pop(var, None)


def log(msg):
    print(f"derive-cost: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the crates

COMMON = """\
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use resource_runtime::{AsyncResource, ResourceError};
use tokio::fs::File;
use tokio::io::BufWriter;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A resource of the crate's own: entered and closed through its impl.
pub struct Conn {
    pub open: bool,
}

impl AsyncResource for Conn {
    async fn enter(&mut self) -> Result<(), ResourceError> {
        self.open = true;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ResourceError> {
        self.open = false;
        Ok(())
    }
}

/// A foreign type, closed by a function.
pub struct SdkClient {
    pub connected: bool,
}

pub async fn sdk_close(client: &mut SdkClient) -> std::io::Result<()> {
    client.connected = false;
    Ok(())
}

pub type Drive<'a> = Pin<Box<dyn Future<Output = Result<(), ResourceError>> + Send + 'a>>;

#[allow(dead_code)]
const DEADLINE: Duration = Duration::from_millis(2000);
"""

STRUCT_DERIVED = """\
#[derive(AsyncResource)]
pub struct Provider{i} {{
    #[resource]
    pub stop: CancellationToken,
    #[resource]
    pub log: BufWriter<File>,
    #[resource]
    pub spare: Option<Box<Conn>>,
    #[resource]
    pub pool: Vec<Conn>,
    #[resource(close = sdk_close)]
    pub sdk: SdkClient,
    #[resource(group = "io")]
    pub socket: TcpStream,
    #[resource(group = "io")]
    pub conn: Conn,
    #[resource(timeout = "2s")]
    pub task: JoinHandle<()>,
}}
"""

# The same structs without the derive and its attributes.
STRUCT_PLAIN = "".join(
    line for line in STRUCT_DERIVED.splitlines(keepends=True) if not line.lstrip().startswith("#[")
)

# Declaration order; `sdk` has nothing to enter.
ENTERED = ["stop", "log", "spare", "pool", "sdk", "socket", "conn", "task"]


def close_expr(field):
    if field == "sdk":
        return "sdk_close(&mut self.sdk).await.map_err(ResourceError::other)"
    if field == "task":
        return ("match tokio::time::timeout(DEADLINE, self.task.close()).await {\n"
                "            Ok(closed) => closed,\n"
                "            Err(_) => Err(ResourceError::timeout(DEADLINE)),\n"
                "        }")
    return f"self.{field}.close().await"


def hand_impl(i):
    enter = []
    for field in ENTERED:
        if field != "sdk":
            enter.append(f"            if let Err(e) = self.{field}.enter().await {{\n"
                         f"                break 'enter Err(e);\n"
                         f"            }}\n")
        enter.append("            entered += 1;\n")
    # A field is rolled back when it was entered before the failure; the last one
    # never is (its own failure is the failure).
    rollback = "".join(
        f"        if entered > {index} {{\n"
        f"            let _ = {close_expr(field)};\n"
        f"        }}\n"
        for index, field in reversed(list(enumerate(ENTERED[:-1]))))
    return (
        f"impl AsyncResource for Provider{i} {{\n"
        f"    async fn enter(&mut self) -> Result<(), ResourceError> {{\n"
        f"        let mut entered = 0usize;\n"
        f"        let result: Result<(), ResourceError> = 'enter: {{\n"
        f"{''.join(enter)}"
        f"            Ok(())\n"
        f"        }};\n"
        f"        let Err(error) = result else {{\n"
        f"            return Ok(());\n"
        f"        }};\n"
        f"{rollback}"
        f"        Err(error)\n"
        f"    }}\n"
        f"\n"
        f"    async fn close(&mut self) -> Result<(), ResourceError> {{\n"
        f"        let mut result = Ok(());\n"
        f"        result = result.and({close_expr('task')});\n"
        f"        let (conn, socket) = tokio::join!(self.conn.close(), self.socket.close());\n"
        f"        result = result.and(conn).and(socket);\n"
        f"        result = result.and({close_expr('sdk')});\n"
        f"        result = result.and({close_expr('pool')});\n"
        f"        result = result.and({close_expr('spare')});\n"
        f"        result = result.and({close_expr('log')});\n"
        f"        result = result.and({close_expr('stop')});\n"
        f"        result\n"
        f"    }}\n"
        f"}}\n")


def drive(i):
    return (f"pub fn drive_{i}(p: &mut Provider{i}) -> Drive<'_> {{\n"
            f"    Box::pin(async move {{\n"
            f"        p.enter().await?;\n"
            f"        p.close().await\n"
            f"    }})\n"
            f"}}\n")


def source(kind):
    parts = [COMMON]
    for i in range(structs):
        if kind == "derived":
            parts.append(STRUCT_DERIVED.format(i=i))
        else:
            parts.append(STRUCT_PLAIN.format(i=i))
            parts.append(hand_impl(i))
        parts.append(drive(i))
    return "\n".join(parts)


def make_crate(kind, lib):
    path = os.path.join(work, kind)
    os.makedirs(os.path.join(path, "src"), exist_ok=True)
    runtime = os.path.join(root, "resource-runtime")
    # The same manifest for every crate, so they build against the same dependencies.
    with open(os.path.join(path, "Cargo.toml"), "w") as f:
        f.write(f"""[package]
name = "derive-cost-{kind}"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
resource-runtime = {{ path = {json.dumps(runtime)} }}
tokio = {{ version = "1", default-features = false, features = ["macros", "time", "fs", "io-util", "net", "rt"] }}
tokio-util = {{ version = "0.7", default-features = false }}

[workspace]
""")
    # The workspace's versions.
    shutil.copy(os.path.join(root, "Cargo.lock"), os.path.join(path, "Cargo.lock"))
    with open(os.path.join(path, "src", "lib.rs"), "w") as f:
        f.write(lib)
    return path


def cargo(path, *args, toolchain=None, capture=False, extra_env=None):
    cmd = ["cargo"] + ([f"+{toolchain}"] if toolchain else []) + list(args)
    run_env = dict(env, **(extra_env or {}))
    out = subprocess.run(cmd, cwd=path, env=run_env, text=True,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"derive-cost: `{' '.join(cmd)}` failed in {path}")
    warnings = [l for l in out.stderr.splitlines() if l.startswith("warning")]
    return out.stdout, warnings


crates = {
    "derived": make_crate("derived", source("derived")),
    "hand": make_crate("hand", source("hand")),
}

# ---------------------------------------------------------------- the expansion


def strip_pin(text):
    """`::core::pin::pin!(x)` prints as a block with `super let` and an unsafe call,
    which does not compile on stable: put the macro call back."""
    out, pos = [], 0
    start_re = re.compile(r"'p:\s*\{\s*super let mut pinned =")
    while True:
        m = start_re.search(text, pos)
        if not m:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:m.start()])
        # The value ends at the last `;` before `break 'p`; the block at its brace.
        brk = text.index("break 'p", m.end())
        value = text[m.end():text.rindex(";", m.end(), brk)]
        depth, j = 1, text.index("{", m.start()) + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append(f"::core::pin::pin!({value.strip()})")
        pos = j


def expand():
    have = subprocess.run(["rustup", "run", "nightly", "rustc", "--version"],
                          capture_output=True, text=True)
    if have.returncode != 0:
        log("no nightly toolchain: the pasted crate and the macro/generated split are left out")
        return None
    log("expanding the derived crate with nightly (a tool only; builds are stable)")
    nightly_env = {"CARGO_TARGET_DIR": os.path.join(work, "target-nightly")}
    text, _ = cargo(crates["derived"], "rustc", "-q", "--lib", "--", "-Zunpretty=expanded",
                    toolchain="nightly", capture=True, extra_env=nightly_env)
    drop = re.compile(r"^\s*(#!\[feature\(prelude_import\)\]|#\[prelude_import\]|"
                      r"use std::prelude::rust_2024::\*;|#\[macro_use\]|extern crate std;|"
                      # The derive's inert field attributes, with no derive left to read them.
                      r"#\[resource(\(.*\))?\])\s*$")
    text = "\n".join(l for l in text.splitlines() if not drop.match(l)) + "\n"
    return strip_pin(text)


expanded = expand()
if expanded is not None:
    crates["pasted"] = make_crate("pasted", expanded)


def formatted(lib):
    out = subprocess.run(["rustfmt", "--edition", "2024", "--emit", "stdout", "-q"],
                         input=lib, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit("derive-cost: rustfmt failed")
    return out.stdout


def impl_lines(lib, starts):
    """Lines of the top-level items that begin with one of `starts`, formatted."""
    count, inside = 0, False
    for line in formatted(lib).splitlines():
        if not inside and any(line.startswith(s) for s in starts):
            inside = True
        if inside:
            if line.strip():
                count += 1
            if line in ("}", "};"):
                inside = False
    return count


fields = structs * FIELDS
sizes = {"hand": impl_lines(source("hand"), ["impl AsyncResource for Provider"])}
if expanded is not None:
    sizes["derived"] = impl_lines(expanded, ["const _: () = {"])

# ---------------------------------------------------------------- the builds

for kind, path in crates.items():
    log(f"untimed build of {kind} (debug and release: its dependencies too)")
    for profile in ([], ["--release"]):
        _, warnings = cargo(path, "build", "-q", *profile)
        if warnings:
            raise SystemExit(f"derive-cost: the {kind} crate builds with warnings: {warnings}")


def timed(kind, release):
    profile = ["--release"] if release else []
    # Untimed: if resource-runtime's sources changed meanwhile, it is rebuilt here, not
    # in the timed build, which compiles the crate alone.
    cargo(crates[kind], "build", "-q", *profile)
    lib = os.path.join(crates[kind], "src", "lib.rs")
    os.utime(lib)
    start = time.perf_counter()
    cargo(crates[kind], "build", "-q", *profile)
    return time.perf_counter() - start


order = list(crates)
results = {}
for profile, rounds in (("debug", debug_rounds), ("release", release_rounds)):
    release = profile == "release"
    times = {kind: [] for kind in order}
    for r in range(rounds):
        this = order if r % 2 == 0 else order[::-1]
        for kind in this:
            times[kind].append(timed(kind, release))
        log(f"{profile} round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in order))
    results[profile] = times


def spread(values):
    return statistics.median(values), min(values), max(values)


rows = {}
command = "scripts/derive-cost.sh"
for profile, times in results.items():
    d, h = times["derived"], times["hand"]
    rounds = len(d)
    ratio = [a / b for a, b in zip(d, h)]
    med, lo, hi = spread(ratio)
    rows[f"build_{profile}_derived_vs_hand"] = {
        "ours": statistics.median(d), "peer": statistics.median(h),
        "peer_label": "hand-written impls",
        "ratio_median": med, "ratio_min": lo, "ratio_max": hi,
        "rounds": rounds, "unit": "s", "target": "≤ 1.3", "met": med <= 1.3,
        "command": command,
    }
    if "pasted" in times:
        p = times["pasted"]
        macro = [a - b for a, b in zip(d, p)]
        generated = [a - b for a, b in zip(p, h)]
        for name, diffs, peer_label in (
                ("macro", macro, "derived - pasted expansion"),
                ("generated_code", generated, "pasted expansion - hand-written")):
            med, lo, hi = spread(diffs)
            rows[f"build_{profile}_{name}_s"] = {
                "ours": med, "peer_label": peer_label,
                "ratio_median": med, "ratio_min": lo, "ratio_max": hi,
                "rounds": rounds, "unit": "s (difference per round)", "target": "report",
                "command": command,
            }
        rows[f"build_{profile}_pasted_vs_hand"] = {
            "ours": statistics.median(p), "peer": statistics.median(h),
            "peer_label": "hand-written impls",
            **dict(zip(("ratio_median", "ratio_min", "ratio_max"),
                       spread([a / b for a, b in zip(p, h)]))),
            "rounds": rounds, "unit": "s", "target": "report", "command": command,
        }
if "derived" in sizes:
    rows["expansion_lines_per_field"] = {
        "ours": sizes["derived"] / fields, "peer": sizes["hand"] / fields,
        "peer_label": "hand-written impls",
        "ratio_median": sizes["derived"] / sizes["hand"],
        "ratio_min": sizes["derived"] / sizes["hand"],
        "ratio_max": sizes["derived"] / sizes["hand"],
        "rounds": 1, "unit": "lines/field (rustfmt)", "target": "report", "command": command,
    }
else:
    rows["hand_impl_lines_per_field"] = {
        "ours": sizes["hand"] / fields, "unit": "lines/field (rustfmt)", "target": "report",
        "command": command,
    }

# ---------------------------------------------------------------- the report

print(f"derive-cost: {structs} structs x {FIELDS} fields; non-incremental `cargo build` "
      f"of the crate alone, interleaved rounds (order reversed each round)")
print(f"{'row':<36} {'ours':>14} {'hand':>10} {'median':>10} {'min–max':>19} {'rounds':>6}")
for name, row in rows.items():
    peer = row.get("peer")
    if name.endswith("_vs_hand") or name.startswith("expansion"):
        cells = (f"{row['ours']:.2f}", f"{peer:.2f}", f"{row['ratio_median']:.3f}x",
                 f"{row['ratio_min']:.3f}–{row['ratio_max']:.3f}")
    elif "ratio_median" in row:
        cells = ("", "", f"{row['ratio_median']:+.2f} s",
                 f"{row['ratio_min']:+.2f}–{row['ratio_max']:+.2f}")
    else:
        cells = (f"{row['ours']:.2f}", "", "", "")
    target = row.get("target", "")
    print(f"{name:<36} {cells[0]:>14} {cells[1]:>10} {cells[2]:>10} {cells[3]:>19} "
          f"{row.get('rounds', ''):>6}  {target}")
print("figures in seconds (builds) and lines/field (expansion); medians of the rounds")

out_dir = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target"),
                       "bench-results")
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "derive_cost.json"), "w") as f:
    json.dump(rows, f, indent=2, sort_keys=True, ensure_ascii=False)
    f.write("\n")
print(f"written: {os.path.join(out_dir, 'derive_cost.json')}")
PY
