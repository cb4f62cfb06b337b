#!/usr/bin/env bash
#
# scripts/demo.sh — build pg_groupdump, start a throwaway PostgreSQL, load demo
# data, write a config, then `plan` and `run` against it and show the result.
#
# Environment:
#   DEMO_SCALE  multiplier for the row counts of public.t1..t8 (2, 1.5, 1, 3, 4,
#               1, 1, 5 million rows at scale 1); default 0.01 (a few seconds)
#   KEEP=1      keep the temp dir (config, backups, report) instead of removing it
#   PG_BINDIR   PostgreSQL bin dir to use (default: highest /usr/lib/postgresql/*/bin)
#
# Exit status: that of `pg_groupdump run` (or non-zero if the setup failed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=lib/pg.sh
. "$ROOT/scripts/lib/pg.sh"

DEMO_SCALE=${DEMO_SCALE:-0.01}
if ! [[ "$DEMO_SCALE" =~ ^[0-9]+(\.[0-9]+)?$|^\.[0-9]+$ ]]; then
    echo "demo: DEMO_SCALE must be a non-negative number, got '$DEMO_SCALE'" >&2
    exit 2
fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo build --release --locked"
(cd "$ROOT" && cargo build --release --locked)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pg_groupdump
[[ "$BIN" == /* ]] || BIN=$ROOT/$BIN
[[ -x "$BIN" ]] || { echo "demo: $BIN not found after build" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pg_groupdump-demo.XXXXXX")
# The server runs as an unprivileged user (when we are root): it must be able
# to reach $WORK/pg.
chmod 755 "$WORK"
if [[ "${KEEP:-0}" == 1 ]]; then
    pg_on_exit "echo 'demo: kept $WORK (config, backups, report)' >&2"
else
    pg_on_exit "rm -rf -- '$WORK'"
fi

step "starting a throwaway PostgreSQL in $WORK/pg"
pg_ensure_installed
pg_start_throwaway "$WORK/pg"
PSQL=("$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1)

step "loading demo data (DEMO_SCALE=$DEMO_SCALE)"
"${PSQL[@]}" -d postgres -c 'CREATE DATABASE demo'
"${PSQL[@]}" -d demo -v scale="$DEMO_SCALE" <<'SQL'
\set ECHO none
-- Eight "seed" tables; row counts in millions at scale 1: 2, 1.5, 1, 3, 4, 1, 1, 5.
SELECT greatest(1, round(2.0 * 1000000 * :scale)::int) AS n1,
       greatest(1, round(1.5 * 1000000 * :scale)::int) AS n2,
       greatest(1, round(1.0 * 1000000 * :scale)::int) AS n3,
       greatest(1, round(3.0 * 1000000 * :scale)::int) AS n4,
       greatest(1, round(4.0 * 1000000 * :scale)::int) AS n5,
       greatest(1, round(1.0 * 1000000 * :scale)::int) AS n6,
       greatest(1, round(1.0 * 1000000 * :scale)::int) AS n7,
       greatest(1, round(5.0 * 1000000 * :scale)::int) AS n8
\gset
CREATE TABLE public.t1 (id int, info text, crt_time timestamp);
CREATE TABLE public.t2 (id int, info text, crt_time timestamp);
CREATE TABLE public.t3 (id int, info text, crt_time timestamp);
CREATE TABLE public.t4 (id int, info text, crt_time timestamp);
CREATE TABLE public.t5 (id int, info text, crt_time timestamp);
CREATE TABLE public.t6 (id int, info text, crt_time timestamp);
CREATE TABLE public.t7 (id int, info text, crt_time timestamp);
CREATE TABLE public.t8 (id int, info text, crt_time timestamp);
INSERT INTO public.t1 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n1) AS id;
INSERT INTO public.t2 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n2) AS id;
INSERT INTO public.t3 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n3) AS id;
INSERT INTO public.t4 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n4) AS id;
INSERT INTO public.t5 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n5) AS id;
INSERT INTO public.t6 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n6) AS id;
INSERT INTO public.t7 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n7) AS id;
INSERT INTO public.t8 SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, :n8) AS id;

-- 1000 small tables in schema "many", 10 rows each.
CREATE SCHEMA many;
DO $$
DECLARE
    i int;
    t text;
BEGIN
    FOR i IN 1..1000 LOOP
        t := 't' || lpad(i::text, 4, '0');
        EXECUTE format('CREATE TABLE many.%I (id int PRIMARY KEY, info text)', t);
        EXECUTE format('INSERT INTO many.%I SELECT g, md5(g::text) FROM generate_series(1, 10) AS g', t);
    END LOOP;
END
$$;

-- A related pair that must be dumped together (foreign key).
CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.order_items (
    order_id bigint NOT NULL REFERENCES public.orders (id),
    line int NOT NULL,
    sku text NOT NULL,
    qty int NOT NULL,
    PRIMARY KEY (order_id, line)
);
INSERT INTO public.orders (id, customer)
SELECT g, 'customer-' || (g % 97) FROM generate_series(1, greatest(10, round(100000 * :scale)::int)) AS g;
INSERT INTO public.order_items
SELECT o.id, l, 'sku-' || ((o.id * 7 + l) % 1000), 1 + (o.id + l) % 5
FROM public.orders o, generate_series(1, 3) AS l;
ANALYZE;
SQL
"$PG_BINDIR/psql" -X -d demo -c "
SELECT n.nspname AS schema, count(*) AS tables,
       sum(c.reltuples)::bigint AS rows,
       pg_size_pretty(sum(pg_total_relation_size(c.oid))) AS size
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname IN ('public', 'many')
GROUP BY 1 ORDER BY 1"

BACKUP_DIR=$WORK/backups
CFG=$WORK/groups.toml
cat >"$CFG" <<EOF
# Written by scripts/demo.sh (see groups.toml.example for every key).
[connection]
host = "$PGHOST"
port = $PGPORT
user = "$PGUSER"

[backup]
dir = "$BACKUP_DIR"
jobs = 2
lock_wait_timeout = "6s"
pg_dump = "$PG_BINDIR/pg_dump"

[[group]]
name = "orders"
database = "demo"
tables = ["public.orders", "public.order_items"]
engine = "pg_dump"             # a pg_dump of its own; every other group is written natively (see README, "Engines")

[[group]]
name = "big"
database = "demo"
tables = ["public.t1", "public.t8"]

[[group]]
name = "many"
database = "demo"
schemas = ["many"]

[ungrouped]
mode = "table"
EOF
step "config $CFG"
cat "$CFG"

step "pg_groupdump -c $CFG plan"
plan_rc=0
"$BIN" -c "$CFG" plan >"$WORK/plan.txt" || plan_rc=$?
# Long runs of equally indented lines (the 1000 tables of "many") are cut short.
awk '
    function flush() { if (extra > 0) printf "%s... and %d more\n", ind, extra; extra = 0 }
    {
        match($0, /^ */); cur = substr($0, 1, RLENGTH)
        if (RLENGTH >= 4 && cur == ind) { if (++run > 5) { extra++; next } }
        else { flush(); ind = cur; run = 1 }
        print
    }
    END { flush() }
' "$WORK/plan.txt"
if ((plan_rc != 0)); then
    echo "demo: plan exited with $plan_rc" >&2
fi

step "pg_groupdump -c $CFG run"
run_rc=0
"$BIN" -c "$CFG" run || run_rc=$?
echo "demo: run exited with $run_rc"

step "files in $BACKUP_DIR (first 40)"
if [[ -d "$BACKUP_DIR" ]]; then
    { find "$BACKUP_DIR" -type f | sort | head -n 40; } || true
    echo "$(find "$BACKUP_DIR" -type f | wc -l) files"
else
    echo "(no backup directory)"
fi

step "report"
report=$(find "$BACKUP_DIR/reports" -maxdepth 1 -type f -name '*.json' 2>/dev/null | sort | tail -n 1)
if [[ -n "$report" ]]; then
    echo "$report:"
    if command -v python3 >/dev/null 2>&1; then
        python3 -m json.tool "$report" | head -n 60 || true
        echo "..."
        echo "per dump: status, engine, database/group"
        python3 - "$report" <<'PY' || true
import json, sys
for g in json.load(open(sys.argv[1]))["groups"]:
    print(f'  {g["status"]:6} {g.get("engine") or "-":8} {g.get("database") or "(cluster)"}/{g["group"]}')
PY
    else
        head -c 4000 "$report" || true
        echo
    fi
else
    echo "(no report written)"
fi

step "stopping PostgreSQL"
pg_stop_throwaway
exit "$run_rc"
