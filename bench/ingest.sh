#!/usr/bin/env bash
# Durable-ack ingest benchmark, side by side with the reference receivers, plus the
# end-to-end lag from ack to warehouse row.
#
#   bench/ingest.sh [-d SECONDS] [-c CONNECTIONS] [--only NAMES] [--no-dispatch] [--handlers M:A]
#                   [--rev REV]
#
#   -d, -c, --only   passed to ../shared/bench/run (defaults there: 10 s, 50 connections,
#                    every reference receiver and the project)
#   --no-dispatch    run `serve --no-dispatch` (receiver only: no dispatcher, no warehouse)
#   --handlers M:A   load a user Router into the server (e.g. examples.handlers:router)
#   --rev REV        benchmark src/ (and examples/) as committed at REV, extracted into the
#                    scratch dir, instead of the working tree (which others may be editing);
#                    the dependencies are still the ones installed in .venv
#   BENCH_SCRATCH    scratch dir for the runner (default /tmp/cio-webhooks-bench): signed
#                    requests, reference venv/node_modules, one wd.* dir per receiver.
#
# It runs ../shared/bench/run (wrk on loopback, the same signed events for every receiver)
# with `cio-webhooks serve --signing-key $SECRET --db $WORKDIR/events.db` as the project,
# prints the runner's table, then runs bench/lag.py on the project's WORKDIR (the wd.* dir
# this call created that holds events.db): events acked/stored in the inbox, warehouse rows
# when the runner stopped the server, the backlog not yet loaded at that moment, and
# p50/p99/max of loaded_at - received_at.  The runner stops the server as soon as wrk ends,
# so the backlog's lag cannot be measured: it is reported as a count, not in the percentiles.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
runner="$repo/../shared/bench/run"
args=() extra="" rev=""
while [ $# -gt 0 ]; do case $1 in
  --no-dispatch) extra="$extra --no-dispatch"; shift;;
  --handlers) extra="$extra --handlers $2"; shift 2;;
  --rev) rev=$2; shift 2;;
  -d|-c|--only) args+=("$1" "$2"); shift 2;;
  -h|--help) sed -n '2,24p' "$0"; exit 0;;
  *) echo "unknown arg $1" >&2; exit 2;;
esac; done
[ -x "$repo/.venv/bin/cio-webhooks" ] || make -C "$repo" install >/dev/null
export BENCH_SCRATCH=${BENCH_SCRATCH:-/tmp/cio-webhooks-bench}
mkdir -p "$BENCH_SCRATCH"
stamp="$BENCH_SCRATCH/.ingest-start.$$"; touch "$stamp"
trap 'rm -f "$stamp"' EXIT
if [ -n "$rev" ]; then
  snap="$BENCH_SCRATCH/src-$(git -C "$repo" rev-parse --short "$rev")"
  rm -rf "$snap"; mkdir -p "$snap"
  git -C "$repo" archive "$rev" src examples | tar -x -C "$snap"
  pypath="$snap/src:$snap"
  echo "# cio-webhooks at $(git -C "$repo" rev-parse --short "$rev") (committed snapshot in $snap)"
else
  pypath="$repo"  # the package itself comes from the editable install in .venv
  dirty=$(git -C "$repo" status --porcelain -- src | wc -l)
  echo "# cio-webhooks working tree at $(git -C "$repo" rev-parse --short HEAD)$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s) in src")"
fi
# PYTHONPATH: so that --handlers examples.handlers:router imports (and --rev's snapshot wins).
"$runner" "${args[@]}" --project "PYTHONPATH='$pypath' exec '$repo/.venv/bin/cio-webhooks' serve --port \$PORT --db \$WORKDIR/events.db --signing-key \$SECRET --log-level warning $extra" \
  2>&1 | { grep -v '^WARNING: Location' || true; }
# The project's WORKDIR: the newest wd.* made by this call that holds an inbox.
wd=$(find "$BENCH_SCRATCH" -maxdepth 2 -path "$BENCH_SCRATCH/wd.*/events.db" -newer "$stamp" \
  -printf '%T@ %h\n' | sort -n | tail -1 | cut -d' ' -f2-)
if [ -z "$wd" ]; then
  echo "no project WORKDIR with events.db under $BENCH_SCRATCH (was the project run?)" >&2
  exit 0
fi
"$repo/.venv/bin/python" "$here/lag.py" "$wd"
