#!/usr/bin/env bash
# Durable-ack ingest benchmark, side by side with the reference receivers.
#
#   bench/ingest.sh [-d SECONDS] [-c CONNECTIONS] [--only NAMES] [--no-dispatch] [--handlers M:A]
#
# Runs ../shared/bench/run (wrk on loopback, the same signed events for every
# receiver) with our server as the project, then reads the project's inbox and
# warehouse to report how many acked events reached the warehouse before the
# runner stopped the server, and the lag from ack to warehouse row (p50/p99/max).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
runner="$repo/../shared/bench/run"
args=() extra=""
while [ $# -gt 0 ]; do case $1 in
  --no-dispatch) extra="$extra --no-dispatch"; shift;;
  --handlers) extra="$extra --handlers $2"; shift 2;;
  -d|-c|--only) args+=("$1" "$2"); shift 2;;
  *) echo "unknown arg $1" >&2; exit 2;;
esac; done
[ -x "$repo/.venv/bin/cio-webhooks" ] || make -C "$repo" install >/dev/null
export BENCH_SCRATCH=${BENCH_SCRATCH:-/tmp/cio-webhooks-bench}
mkdir -p "$BENCH_SCRATCH"
before=$(ls -d "$BENCH_SCRATCH"/wd.* 2>/dev/null | sort || true)
"$runner" "${args[@]}" --project "PYTHONPATH='$repo' exec '$repo/.venv/bin/cio-webhooks' serve --port \$PORT --db \$WORKDIR/events.db --signing-key \$SECRET --log-level warning $extra" 2>&1 | grep -v '^WARNING: Location'
after=$(ls -d "$BENCH_SCRATCH"/wd.* 2>/dev/null | sort || true)
for wd in $(comm -13 <(echo "$before") <(echo "$after")); do
  [ -f "$wd/events.db" ] && "$repo/.venv/bin/python" "$here/lag.py" "$wd"
done
