#!/usr/bin/env bash
# Warehouse sinks under full ingest (issue 8): `serve` at the full wrk rate with more and
# more sinks, the setups alternating inside each round so that the ratios hold on a noisy
# machine, then the ack-to-row lag per sink from the serve log.
#
#   bench/sinks.sh [-d SECONDS] [-c CONNECTIONS] [-r ROUNDS] [--setups a,b,c,d[,e]]
#                  [--params 'KIND:QUERY'] [--rev REV]
#
#   setups  a  default sink only (sqlite:// WORKDIR/warehouse.db, as in issue 7's benchmark;
#              given as --sink when --params sqlite:... is)
#           b  a + postgresql://root@127.0.0.1/postgres?schema=<new schema per run>
#           c  a + parquet:// WORKDIR/lake
#           d  sqlite + postgresql + parquet
#           e  d + bigquery://demo/<new dataset> on the emulator (tests/sinks/_bigquery_peer.py)
#   -d, -c   passed to ../shared/bench/run (here: 15 s, 50 connections)
#   -r       rounds (default 3); each round runs every setup once, in the order given
#   --params KIND:QUERY  extra URL parameters for one kind, e.g. 'parquet:interval=1'
#            (repeatable; joined to the URL with ? or &)
#   --rev    benchmark src/ as committed at REV (extracted, like bench/ingest.sh --rev)
#   BENCH_SCRATCH  the runner's scratch dir (default /tmp/cio-webhooks-bench)
#
# Each run is one `../shared/bench/run --only project` (wrk on loopback, signed v0
# events) with `serve --log-level debug`; the runner keeps the server's stderr in
# WORKDIR/server.log, which bench/sink_lag.py reads with WORKDIR/events.db.  At the end
# a table: req/s per run, the ratio to setup a of the same round, and per sink the lag
# p50/p99 and the backlog when the server stopped.  Results in $BENCH_SCRATCH/sinks.<stamp>/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
runner="$repo/../shared/bench/run"
[ -x "$runner" ] || { echo "no runner at $runner (../shared must reach /work/shared)" >&2; exit 2; }
dur=15 conns=50 rounds=3 setups="a,b,c,d" rev="" pg_params="" pq_params="" bq_params="" sq_params=""
while [ $# -gt 0 ]; do case $1 in
  -d) dur=$2; shift 2;; -c) conns=$2; shift 2;; -r) rounds=$2; shift 2;;
  --setups) setups=$2; shift 2;; --rev) rev=$2; shift 2;;
  --params) case $2 in
      postgresql:*) pg_params="${pg_params:+$pg_params&}${2#*:}";;
      parquet:*) pq_params="${pq_params:+$pq_params&}${2#*:}";;
      bigquery:*) bq_params="${bq_params:+$bq_params&}${2#*:}";;
      sqlite:*) sq_params="${sq_params:+$sq_params&}${2#*:}";;
      *) echo "--params KIND:QUERY, KIND one of sqlite postgresql parquet bigquery" >&2; exit 2;;
    esac; shift 2;;
  -h|--help) sed -n '2,27p' "$0"; exit 0;;
  *) echo "unknown arg $1" >&2; exit 2;;
esac; done
[ -x "$repo/.venv/bin/cio-webhooks" ] || make -C "$repo" install >/dev/null
export BENCH_SCRATCH=${BENCH_SCRATCH:-/tmp/cio-webhooks-bench}
mkdir -p "$BENCH_SCRATCH"
out="$BENCH_SCRATCH/sinks.$(date -u +%Y%m%dT%H%M%S)"; mkdir -p "$out"
stamp="$out/.start"
if [ -n "$rev" ]; then
  snap="$BENCH_SCRATCH/src-$(git -C "$repo" rev-parse --short "$rev")"
  rm -rf "$snap"; mkdir -p "$snap"
  git -C "$repo" archive "$rev" src | tar -x -C "$snap"
  pypath="$snap/src"
  echo "# cio-webhooks at $(git -C "$repo" rev-parse --short "$rev") (committed snapshot in $snap)"
else
  pypath="$repo/src"
  echo "# cio-webhooks working tree at $(git -C "$repo" rev-parse --short HEAD)"
fi
emulator_pid=""
cleanup() { rm -f "$stamp"; [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null || true; }
trap cleanup EXIT
bq_endpoint=""
if [[ ,$setups, == *,e,* ]]; then
  # The tests' emulator launcher, kept alive by this shell until the end; it prints its port.
  fifo="$out/emulator.port"; mkfifo "$fifo"
  PYTHONPATH="$repo" "$repo/.venv/bin/python" -c '
import sys, signal, time
from pathlib import Path
from tests.sinks._bigquery_peer import Emulator
emu = Emulator(Path(sys.argv[1]))
emu.start()
signal.signal(signal.SIGTERM, lambda *_: (emu.stop(), sys.exit(0)))
Path(sys.argv[2]).write_text(str(emu.rest_port) + "\n")
while True:
    time.sleep(3600)
' "$out" "$fifo" >"$out/emulator.out" 2>&1 &
  emulator_pid=$!
  bq_endpoint="http://127.0.0.1:$(head -1 "$fifo")"
  echo "# BigQuery emulator at $bq_endpoint"
fi
q() { [ -n "$2" ] && echo "$1$2" || true; }  # "?params" or nothing
results="$out/results.tsv"
echo "# ${dur}s per run, $conns connections, $rounds rounds of $setups; $(nproc) cores; results in $out"
for round in $(seq "$rounds"); do
  for setup in ${setups//,/ }; do
    tag="bench8_$(date +%s)_${round}${setup}"
    sqlite="--sink \"sqlite://\$WORKDIR/warehouse.db$(q '?' "$sq_params")\""
    pg="--sink \"postgresql://root@127.0.0.1/postgres?schema=$tag$(q '&' "$pg_params")\""
    pq="--sink \"parquet://\$WORKDIR/lake$(q '?' "$pq_params")\""
    bq="--sink \"bigquery://demo/$tag?api_endpoint=$bq_endpoint$(q '&' "$bq_params")\""
    case $setup in
      a) sinks=""; [ -n "$sq_params" ] && sinks="$sqlite";; b) sinks="$sqlite $pg";; c) sinks="$sqlite $pq";;
      d) sinks="$sqlite $pg $pq";; e) sinks="$sqlite $pg $pq $bq";;
      *) echo "unknown setup $setup" >&2; exit 2;;
    esac
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    touch "$stamp"
    line=$(NO_GCE_CHECK=true GCE_METADATA_HOST=127.0.0.1:1 "$runner" -d "$dur" -c "$conns" --only project \
      --project "PYTHONPATH='$pypath' exec '$repo/.venv/bin/cio-webhooks' serve --port \$PORT --db \$WORKDIR/events.db --signing-key \$SECRET --log-level debug $sinks" \
      2>&1 | grep '^project' || true)
    wd=$(find "$BENCH_SCRATCH" -maxdepth 2 -path "$BENCH_SCRATCH/wd.*/events.db" -newer "$stamp" \
      -printf '%T@ %h\n' | sort -n | tail -1 | cut -d' ' -f2-)
    rps=$(awk '{print $2}' <<<"$line"); p50=$(awk '{print $5}' <<<"$line"); p99=$(awk '{print $7}' <<<"$line")
    errs=$(awk '{print $9}' <<<"$line")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$setup" "${rps:-?}" "${p50:-?}" "${p99:-?}" \
      "${errs:-?}" "$load" "${wd:-?}" >>"$results"
    echo "round $round setup $setup: ${line:-no project line} (load before: $load)"
    [ -n "$wd" ] && "$repo/.venv/bin/python" "$here/sink_lag.py" "$wd" | sed 's/^/  /'
    # The schema is only needed for the run's figures, which come from the serve log.
    [[ $setup == [bde] ]] && psql -q -h 127.0.0.1 -U root postgres -c "DROP SCHEMA IF EXISTS $tag CASCADE" >/dev/null 2>&1 || true
  done
done
echo
"$repo/.venv/bin/python" "$here/sink_lag.py" --table "$results"
