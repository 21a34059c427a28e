#!/usr/bin/env bash
# PostgreSQL ingest benchmark, side by side with the reference receivers.
#
#   bench/scale_pg.sh [-d SECONDS] [-c CONNECTIONS] [--pg URL] [--setup one|fleet|sqlite]
#
#   one    one receiver on PostgreSQL (`serve --no-dispatch`), nothing else
#   fleet  two receivers sharing the port (`--reuse-port`) and one worker with the example
#          handlers, all on one PostgreSQL schema; then bench/pg_lag.py prints how many acked
#          events were handled when wrk stopped, and the ack -> handled lag
#   sqlite full `serve` on SQLite (the same command as bench/ingest.sh), for the ratio
#
# Each call runs ../shared/bench/run with hello-asgi, durable-floor and the setup as the
# project, in one run, on a fresh schema of the database named by --pg (default: a database
# `cio_bench` on 127.0.0.1, created when missing). The schema is dropped afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
runner="$repo/../shared/bench/run"
pg=postgresql://root@127.0.0.1:5432/cio_bench setup=one args=()
while [ $# -gt 0 ]; do case $1 in
  --pg) pg=$2; shift 2;;
  --setup) setup=$2; shift 2;;
  -d|-c) args+=("$1" "$2"); shift 2;;
  -h|--help) sed -n '2,16p' "$0"; exit 0;;
  *) echo "unknown arg $1" >&2; exit 2;;
esac; done
[ -x "$repo/.venv/bin/cio-webhooks" ] || make -C "$repo" install >/dev/null
bin="$repo/.venv/bin/cio-webhooks"
db=${pg##*/}; db=${db%%\?*}
psql "${pg%/*}/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
  || psql "${pg%/*}/postgres" -qc "CREATE DATABASE $db"
schema="bench_$(date +%s)_$$"
url="$pg?schema=$schema"
"$bin" migrate --store "$url" >/dev/null
trap 'psql "$pg" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true' EXIT
common="--signing-key \$SECRET --log-level warning"
case $setup in
  one) project="exec '$bin' serve --no-dispatch --port \$PORT --store '$url' --data-dir \$WORKDIR $common";;
  fleet) project="'$bin' worker --store '$url' --data-dir \$WORKDIR/w --handlers examples.handlers:router --log-level warning &
    '$bin' serve --no-dispatch --reuse-port --port \$PORT --store '$url' --data-dir \$WORKDIR/a $common &
    exec '$bin' serve --no-dispatch --reuse-port --port \$PORT --store '$url' --data-dir \$WORKDIR/b $common";;
  sqlite) project="exec '$bin' serve --port \$PORT --db \$WORKDIR/events.db $common";;
  *) echo "unknown setup $setup" >&2; exit 2;;
esac
echo "# setup: $setup ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
(cd "$repo" && PYTHONPATH="$repo" "$runner" "${args[@]}" --only hello-asgi,durable-floor,project --project "$project") \
  2>&1 | { grep -v '^WARNING: Location' || true; }
if [ "$setup" != sqlite ]; then
  "$repo/.venv/bin/python" "$here/pg_lag.py" "$url"
fi
