# shellcheck shell=bash
#
# scripts/lib/pg.sh — helpers to get PostgreSQL binaries and run a throwaway
# cluster for demos and local experiments.  Source it, don't execute it:
#
#     . "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"
#     pg_ensure_installed            # exports PG_BINDIR
#     pg_start_throwaway "$dir"      # exports PGHOST PGPORT PGUSER ...
#     "$PG_BINDIR/psql" -d postgres -c 'select 1'
#     pg_stop_throwaway              # also run automatically on exit
#
# Works as root (the server then runs as the unprivileged `postgres` system
# user, created if missing) and as an ordinary user (the server runs as that
# user).  No assumptions about the caller's working directory.
#
# Exported by pg_ensure_installed:
#   PG_BINDIR            directory holding initdb, pg_ctl, postgres, psql, pg_dump, ...
# Exported by pg_start_throwaway:
#   PGHOST=127.0.0.1  PGPORT=<free port>  PGUSER=postgres
#   PG_THROWAWAY_DIR     the cluster's directory (data in $PG_THROWAWAY_DIR/data)
#   PG_THROWAWAY_SOCKET  unix socket directory (= PG_THROWAWAY_DIR)
#   PG_THROWAWAY_LOG     server log file
#
# Cleanup: pg_start_throwaway installs EXIT/INT/TERM/HUP traps that stop the
# server and remove its directory.  Callers that need their own cleanup must
# not replace those traps; register it with `pg_on_exit 'command'` instead
# (hooks run after the server is stopped, last registered first).

# Guard against double sourcing.
if [[ -n "${_PG_SH_LOADED:-}" ]]; then
    return 0
fi
_PG_SH_LOADED=1

# Unprivileged user the server runs as when we are root.
: "${PG_RUN_USER:=postgres}"

_PG_CLEANUP_HOOKS=()
_PG_TRAPS_SET=

_pg_log() { printf '[pg] %s\n' "$*" >&2; }
_pg_die() { printf '[pg] error: %s\n' "$*" >&2; return 1; }

_pg_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Run a command as root: directly if we are root, else via non-interactive sudo.
_pg_as_root() {
    if _pg_is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        _pg_die "need root to run: $*"
    fi
}

# Run a command as the user that owns the cluster, with cwd = $1.
# (cwd matters: PostgreSQL tools complain if they cannot stat the cwd,
# which happens when root's cwd is e.g. /root.)
_pg_as_owner() {
    local dir=$1
    shift
    if _pg_is_root; then
        if command -v runuser >/dev/null 2>&1; then
            (cd "$dir" && runuser -u "$PG_RUN_USER" -- "$@")
        else
            (cd "$dir" && setpriv --reuid="$PG_RUN_USER" --regid="$PG_RUN_USER" --init-groups -- "$@")
        fi
    else
        (cd "$dir" && "$@")
    fi
}

# pg_ensure_user: when running as root, make sure the unprivileged system user
# the server runs as exists.  No-op for non-root callers.
pg_ensure_user() {
    _pg_is_root || return 0
    if ! getent passwd "$PG_RUN_USER" >/dev/null 2>&1; then
        _pg_log "creating system user $PG_RUN_USER"
        useradd --system --user-group --no-create-home \
            --home-dir /var/lib/postgresql --shell /usr/sbin/nologin \
            "$PG_RUN_USER" || _pg_die "useradd $PG_RUN_USER failed"
    fi
}

# Highest-version /usr/lib/postgresql/*/bin directory containing initdb, or "".
_pg_find_bindir() {
    local d best=
    while IFS= read -r d; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && best=$d
    done < <(
        for d in /usr/lib/postgresql/*/bin; do
            [[ -d "$d" ]] && printf '%s\n' "$d"
        done | sort -V
    )
    printf '%s' "$best"
}

# pg_ensure_installed: make sure a PostgreSQL server is installed; export
# PG_BINDIR.  An already exported PG_BINDIR that holds initdb is respected.
pg_ensure_installed() {
    if [[ -n "${PG_BINDIR:-}" && -x "${PG_BINDIR}/initdb" && -x "${PG_BINDIR}/pg_ctl" ]]; then
        export PG_BINDIR
        return 0
    fi
    local bindir
    bindir=$(_pg_find_bindir)
    if [[ -z "$bindir" ]]; then
        _pg_log "no PostgreSQL server found under /usr/lib/postgresql; installing it with apt-get"
        command -v apt-get >/dev/null 2>&1 ||
            _pg_die "apt-get not available; install PostgreSQL server binaries and set PG_BINDIR" || return 1
        # Do not let the package create (and maybe start) a default cluster on 5432.
        _pg_as_root mkdir -p /etc/postgresql-common/createcluster.d || return 1
        printf 'create_main_cluster = false\n' |
            _pg_as_root tee /etc/postgresql-common/createcluster.d/50-pg_groupdump.conf >/dev/null || return 1
        local aptlog
        aptlog=$(mktemp "${TMPDIR:-/tmp}/pg_groupdump-apt.XXXXXX") || return 1
        if ! { _pg_as_root apt-get update -qq &&
            _pg_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                -o Dpkg::Use-Pty=0 postgresql postgresql-client; } </dev/null >"$aptlog" 2>&1; then
            tail -n 40 "$aptlog" >&2
            rm -f "$aptlog"
            _pg_die "apt-get install postgresql postgresql-client failed"
            return 1
        fi
        rm -f "$aptlog"
        bindir=$(_pg_find_bindir)
        [[ -n "$bindir" ]] || _pg_die "PostgreSQL installed but no initdb under /usr/lib/postgresql/*/bin" || return 1
    fi
    PG_BINDIR=$bindir
    export PG_BINDIR
    _pg_log "using PostgreSQL binaries in $PG_BINDIR ($("$PG_BINDIR/postgres" --version 2>/dev/null || echo '?'))"
}

# Is TCP port $1 in LISTEN state on this host (IPv4 or IPv6)?
_pg_port_listening() {
    local hex f
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r "$f" ]] || continue
        # local_address is field 2 ("ADDR:PORT"), st is field 4 ("0A" = LISTEN)
        if awk -v p="$hex" 'NR > 1 { split($2, a, ":"); if (a[2] == p && $4 == "0A") found = 1 } END { exit !found }' "$f"; then
            return 0
        fi
    done
    return 1
}

# Print a free TCP port on 127.0.0.1 (never 5432).
_pg_free_port() {
    local port i
    if command -v python3 >/dev/null 2>&1; then
        for i in 1 2 3 4 5; do
            port=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) || port=
            if [[ -n "$port" && "$port" != 5432 ]] && ! _pg_port_listening "$port"; then
                printf '%s' "$port"
                return 0
            fi
        done
    fi
    for i in $(seq 1 200); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if ! _pg_port_listening "$port"; then
            printf '%s' "$port"
            return 0
        fi
    done
    _pg_die "could not find a free TCP port"
}

# Run all exit hooks: stop the server, then user hooks (last first).
_pg_run_exit_hooks() {
    local i
    pg_stop_throwaway || true
    for ((i = ${#_PG_CLEANUP_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${_PG_CLEANUP_HOOKS[i]}" || true
    done
    _PG_CLEANUP_HOOKS=()
}

_pg_on_exit_trap() {
    local rc=$?
    _pg_run_exit_hooks
    exit "$rc"
}

_pg_on_signal_trap() {
    local rc=$1
    trap - EXIT
    _pg_run_exit_hooks
    exit "$rc"
}

_pg_install_traps() {
    [[ -n "$_PG_TRAPS_SET" ]] && return 0
    trap _pg_on_exit_trap EXIT
    trap '_pg_on_signal_trap 130' INT
    trap '_pg_on_signal_trap 143' TERM
    trap '_pg_on_signal_trap 129' HUP
    _PG_TRAPS_SET=1
}

# pg_on_exit 'COMMAND': run COMMAND (eval'd) at exit, after the server is stopped.
pg_on_exit() {
    _PG_CLEANUP_HOOKS+=("$1")
    _pg_install_traps
}

# pg_start_throwaway DIR [NAME=VALUE ...]: initdb a fresh cluster in DIR
# (created if missing, must be empty or new) and start it on
# 127.0.0.1:<free port>, unix socket in DIR.  Extra NAME=VALUE arguments are
# passed to the server as `-c NAME=VALUE` (no spaces or quotes in them).
pg_start_throwaway() {
    local dir=${1:?usage: pg_start_throwaway DIR [NAME=VALUE ...]}
    shift
    local extra='' setting
    for setting in "$@"; do
        if [[ "$setting" != *=* || "$setting" == *[\'\"\ ]* ]]; then
            _pg_die "bad server setting (want NAME=VALUE without spaces/quotes): $setting"
            return 1
        fi
        extra+=" -c $setting"
    done
    if [[ -n "${PG_THROWAWAY_DIR:-}" ]]; then
        _pg_die "a throwaway cluster is already running in $PG_THROWAWAY_DIR"
        return 1
    fi
    pg_ensure_installed || return 1
    pg_ensure_user || return 1

    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd -P) || return 1
    if [[ "$dir" == / ]]; then
        _pg_die "refusing to use / as cluster directory"
        return 1
    fi
    # A unix socket path is limited to ~107 bytes.
    if ((${#dir} + 20 > 107)); then
        _pg_die "cluster directory path too long for a unix socket: $dir"
        return 1
    fi
    if [[ "$dir" == *[\'\"\ ]* ]]; then
        _pg_die "cluster directory path must not contain quotes or spaces: $dir"
        return 1
    fi
    if [[ -n "$(ls -A "$dir")" ]]; then
        _pg_die "cluster directory is not empty: $dir"
        return 1
    fi

    # From here on the directory is ours: make sure it's removed at exit.
    PG_THROWAWAY_DIR=$dir
    export PG_THROWAWAY_DIR
    _pg_install_traps

    if _pg_is_root; then
        chown "$PG_RUN_USER:" "$dir" || return 1
    fi
    chmod 700 "$dir" || return 1
    if ! _pg_as_owner / test -w "$dir"; then
        _pg_die "user $PG_RUN_USER cannot write $dir (is a parent directory closed to it?)"
        return 1
    fi

    local data=$dir/data log=$dir/server.log
    if ! _pg_as_owner "$dir" "$PG_BINDIR/initdb" -D "$data" -A trust -U postgres -E UTF8 \
        --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        _pg_die "initdb failed"
        return 1
    fi

    local port attempt started=
    for attempt in 1 2 3 4 5; do
        port=$(_pg_free_port) || return 1
        if _pg_as_owner "$dir" "$PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -c 'unix_socket_directories=$dir' -c port=$port -c fsync=off -c synchronous_commit=off -c full_page_writes=off$extra" \
            start >/dev/null 2>&1; then
            started=1
            break
        fi
        _pg_log "server did not start on port $port (attempt $attempt), retrying"
    done
    if [[ -z "$started" ]]; then
        [[ -r "$log" ]] && tail -n 30 "$log" >&2
        _pg_die "could not start PostgreSQL (log: $log)"
        return 1
    fi

    # pg_ctl -w already waited; double-check over TCP as clients will connect.
    local i
    for ((i = 0; i < 120; i++)); do
        if "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
            break
        fi
        sleep 0.5
    done
    if ((i == 120)); then
        tail -n 30 "$log" >&2
        _pg_die "PostgreSQL on 127.0.0.1:$port not ready (log: $log)"
        return 1
    fi

    PGHOST=127.0.0.1
    PGPORT=$port
    PGUSER=postgres
    PG_THROWAWAY_SOCKET=$dir
    PG_THROWAWAY_LOG=$log
    export PGHOST PGPORT PGUSER PG_THROWAWAY_SOCKET PG_THROWAWAY_LOG
    # Trust auth: a stray password from the environment must not get in the way.
    unset PGPASSWORD PGSERVICE
    _pg_log "PostgreSQL running: host=127.0.0.1 port=$port user=postgres socket=$dir"
}

# pg_stop_throwaway: stop the throwaway cluster (fast, then immediate) and
# remove its directory.  Safe to call more than once.
pg_stop_throwaway() {
    local dir=${PG_THROWAWAY_DIR:-}
    [[ -n "$dir" ]] || return 0
    unset PG_THROWAWAY_DIR PG_THROWAWAY_SOCKET PG_THROWAWAY_LOG
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        if ! _pg_as_owner / "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
            _pg_as_owner / "$PG_BINDIR/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        fi
    fi
    if [[ "$dir" != / && -d "$dir" ]]; then
        rm -rf -- "$dir"
    fi
    return 0
}
