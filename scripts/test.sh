#!/usr/bin/env bash
#
# scripts/test.sh — install what the tests need, then run
#   cargo fmt --check
#   cargo clippy --all-targets --locked -- -D warnings
#   cargo test --locked [ARGS...]
# All three run even if an earlier one fails; the exit status is non-zero if
# any failed.  Extra arguments are passed to `cargo test`
# (e.g. `scripts/test.sh -- --nocapture`, `scripts/test.sh --test cli`).
#
# Prerequisites ensured here:
#   - PostgreSQL server binaries (apt-get install if none under
#     /usr/lib/postgresql/*/bin); PG_BINDIR is exported for the test harness,
#     which starts its own throwaway server (this script starts none).
#   - as root: the unprivileged `postgres` system user the harness runs the
#     server as.
#   - python3's aiosmtpd module (for the e-mail tests), best effort.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"
cd "$ROOT"

warn() { printf 'test.sh: warning: %s\n' "$*" >&2; }

# cargo may live in ~/.cargo/bin without being on PATH (non-login shells).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    export PATH
fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
pg_ensure_installed
pg_ensure_user
export PG_BINDIR

ensure_aiosmtpd() {
    command -v python3 >/dev/null 2>&1 || return 0
    if python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        return 0
    fi
    local py log
    py=$(command -v python3)
    log=$(mktemp "${TMPDIR:-/tmp}/pg_groupdump-pip.XXXXXX") || return 0
    echo "test.sh: installing python package aiosmtpd for $py" >&2
    if PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check aiosmtpd \
        </dev/null >"$log" 2>&1 && python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        rm -f "$log"
        return 0
    fi
    # Debian's own python3 refuses pip installs (PEP 668) or may lack pip:
    # fall back to the distribution package.
    if [[ "$(readlink -f "$py")" == /usr/bin/python3* && "$(id -u)" -eq 0 ]] &&
        command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: pip install failed; trying apt-get install python3-aiosmtpd" >&2
        if { apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 python3-aiosmtpd; } \
            </dev/null >>"$log" 2>&1 &&
            python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
            rm -f "$log"
            return 0
        fi
    fi
    tail -n 15 "$log" >&2
    rm -f "$log"
    warn "could not install aiosmtpd; tests that need an SMTP server may fail or be skipped"
    return 0
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

run cargo fmt --check
run cargo clippy --all-targets --locked -- -D warnings
run cargo test --locked "$@"

echo
if ((${#failed[@]} > 0)); then
    printf 'test.sh: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "test.sh: all checks passed"
