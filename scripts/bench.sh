#!/usr/bin/env bash
#
# scripts/bench.sh — benchmark pg_groupdump side by side with `pg_dump -Fd -j N`, `pg_dump -Fc`
# and the per-table loop (`pg_dump -Fc -t` for each table, one after another), on the same data,
# in the same run, each contender run several times in turn; prints medians and ratios.
#
#   scripts/bench.sh                                  # the default run (S8 at scale 0.2, S1000, S10000 sampled)
#   scripts/bench.sh --workloads s8 --scale 1 --reps 5
#   scripts/bench.sh --workloads s1000 --contenders groupdump-tables,pg_dump-fd
#   scripts/bench.sh --workloads s8,s1000 --compression gzip,zstd   # each contender with each method
#   scripts/bench.sh --workloads big1 --big-gb 2 --reps 3   # one 2 GB table: lock window split ÷ one session
#   scripts/bench.sh --workloads big1 --jobs 8              # the table split across 8 sessions (pg_dump -j 8)
#   PG_BINDIR=/path/to/postgresql-18/bin scripts/bench.sh ...       # another PostgreSQL (server and pg_dump)
#   scripts/bench.sh --help                           # every option (of examples/bench)
#
# Builds the release binary and the benchmark (examples/bench), starts a throwaway PostgreSQL
# (scripts/lib/pg.sh: installed from Debian's packages if missing, run as the `postgres` user
# in a temporary directory, removed at the end), creates the workloads and runs
# `target/release/examples/bench` with the arguments given here (any of its options but --bin,
# --pg-bindir and --work-dir, which this script sets). Results and their discussion: BENCHMARKS.md.
#
# Environment:
#   BENCH_OUT=DIR   also write DIR/bench.md (the result tables) and DIR/bench.json (every run)
#   PG_BINDIR       PostgreSQL bin dir to use, for the server and pg_dump (default: highest
#                   /usr/lib/postgresql/*/bin); any build with initdb, pg_ctl, postgres, pg_isready
#                   and pg_dump, e.g. an unpacked binary distribution: run as root, it must be
#                   readable and executable by the `postgres` user (chmod -R a+rX)
#   TMPDIR          where the server's data and the dumps go (S8 at scale 1 needs ≈ 4 GB, big1
#                   about 3 × --big-gb: the table, its WAL, a dump)
#
# Run as root (the server then runs as `postgres`) or as any user (the server runs as that user):
# the benchmark reads the server's processes in /proc to measure the CPU its backends use.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"

for a in "$@"; do
    if [[ "$a" == -h || "$a" == --help ]]; then
        (cd "$ROOT" && cargo run --quiet --release --locked --example bench -- --help)
        exit 0
    fi
done

if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

echo "==> cargo build --release --locked --bin pg_groupdump --example bench" >&2
(cd "$ROOT" && cargo build --release --locked --bin pg_groupdump --example bench)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ "$TARGET" == /* ]] || TARGET=$ROOT/$TARGET

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pg_groupdump-bench.XXXXXX")
chmod 755 "$WORK"
pg_on_exit "rm -rf -- '$WORK'"
# Run copies: a `cargo build` elsewhere in this tree must not swap the binaries mid-run.
mkdir "$WORK/bin"
cp "$TARGET/release/pg_groupdump" "$TARGET/release/examples/bench" "$WORK/bin/"

pg_ensure_installed
for tool in initdb pg_ctl postgres pg_isready pg_dump; do
    [[ -x "$PG_BINDIR/$tool" ]] || { echo "bench.sh: no $tool in $PG_BINDIR" >&2; exit 1; }
done
# As root the server runs as `postgres` (pg.sh), which must be able to run these binaries and
# read their lib/ and share/ (an unpacked distribution can be closed to other users).
pg_ensure_user
if [[ "$(id -u)" -eq 0 ]] && ! _pg_as_owner / "$PG_BINDIR/postgres" --version >/dev/null 2>&1; then
    echo "bench.sh: user ${PG_RUN_USER:-postgres} cannot run $PG_BINDIR/postgres (chmod -R a+rX the installation)" >&2
    exit 1
fi
# One session must be able to lock 10 000 tables (pg_dump of S10000): the shared lock table
# holds max_locks_per_transaction × max_connections locks. No autovacuum: the workloads are
# vacuumed and analyzed once after loading, and nothing changes them afterwards.
pg_start_throwaway "$WORK/pg" max_locks_per_transaction=1024 autovacuum=off

extra=()
if [[ -n "${BENCH_OUT:-}" ]]; then
    mkdir -p "$BENCH_OUT"
    extra+=(--markdown "$BENCH_OUT/bench.md" --json "$BENCH_OUT/bench.json")
fi

"$WORK/bin/bench" --bin "$WORK/bin/pg_groupdump" --pg-bindir "$PG_BINDIR" \
    --work-dir "$WORK/work" "${extra[@]}" "$@"
