"""Ack-to-row lag per sink of one benchmark run: ``python bench/sink_lag.py WORKDIR [--json]``.

Reads WORKDIR/events.db (the SQLite inbox: ``seq``, ``received_at``) and
WORKDIR/server.log (``serve --log-level debug``, the runner's capture of its stderr)
after the server has stopped.  The loader logs one line per batch once the batch is
written and its cursor advanced::

    ts=2026-12-07T01:02:03.456Z ... event=sink_loaded sink=NAME rows=N from_seq=A to_seq=B

For each sink named in those lines it prints:

- rows loaded (the ``rows=`` sum) and the events covered (``seq`` up to the last
  ``to_seq``), and the backlog: acked events with a higher ``seq`` when the server
  stopped.  Their lag is not measurable and is *not* in the percentiles;
- p50/p99/max of the ack-to-row lag: the ``ts`` of the first ``sink_loaded`` line whose
  ``to_seq`` >= the event's ``seq``, minus its ``received_at``;
- rows/s while the load ran: events covered / (last batch's ``ts`` - the first acked
  event's ``received_at``).

``received_at`` is stamped when the request body has been read, before the commit
that stores the event and the 200 that follows it, so the lag includes the ack itself.
Both clocks are the same host's wall clock; ``ts`` has millisecond precision.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import math
import re
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

LINE = re.compile(
    r"^ts=(?P<ts>\S+) .*\bevent=sink_loaded sink=(?P<sink>\S+) rows=(?P<rows>\d+)"
    r" from_seq=(?P<first>\d+) to_seq=(?P<last>\d+)"
)


def seconds(stamp: str) -> float:
    """Seconds since the epoch of an ISO-8601 UTC stamp such as 2026-11-25T00:01:02.345Z."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class SinkLoads:
    """The ``sink_loaded`` lines of one sink, in log order."""

    name: str
    times: list[float] = field(default_factory=list)  # ts of each batch
    to_seqs: list[int] = field(default_factory=list)  # running max of to_seq
    rows: int = 0


def read_log(path: Path) -> dict[str, SinkLoads]:
    """Every sink's batches from a serve log; to_seq kept as a running maximum so that
    the first line covering a seq is found by bisection (a replay could rewind)."""
    sinks: dict[str, SinkLoads] = {}
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if "event=sink_loaded" not in line:
                continue
            match = LINE.match(line)
            if match is None:
                continue
            loads = sinks.setdefault(match["sink"], SinkLoads(match["sink"]))
            last = int(match["last"])
            loads.times.append(seconds(match["ts"]))
            loads.to_seqs.append(max(last, loads.to_seqs[-1]) if loads.to_seqs else last)
            loads.rows += int(match["rows"])
    return sinks


def measure(workdir: Path) -> dict[str, object]:
    """The figures of one run, as a JSON-ready dict (see the module docstring)."""
    inbox_path = workdir / "events.db"
    with closing(sqlite3.connect(f"file:{inbox_path}?mode=ro", uri=True)) as inbox:
        acked = inbox.execute("SELECT seq, received_at FROM events ORDER BY seq").fetchall()
    result: dict[str, object] = {"workdir": str(workdir), "acked": len(acked), "sinks": {}}
    sinks: dict[str, object] = {}
    first_received = acked[0][1] if acked else 0.0
    for name, loads in sorted(read_log(workdir / "server.log").items()):
        lags: list[float] = []
        backlog = 0
        for seq, received_at in acked:
            at = bisect.bisect_left(loads.to_seqs, seq)
            if at == len(loads.to_seqs):
                backlog += 1
            else:
                lags.append((loads.times[at] - received_at) * 1000)
        lags.sort()
        covered = len(lags)
        window = loads.times[-1] - first_received if loads.times else 0.0
        sinks[name] = {
            "batches": len(loads.times),
            "rows": loads.rows,
            "covered": covered,
            "backlog": backlog,
            "rows_per_s": covered / window if window > 0 else 0.0,
            "p50_ms": percentile(lags, 0.50) if lags else None,
            "p99_ms": percentile(lags, 0.99) if lags else None,
            "max_ms": lags[-1] if lags else None,
            "batch_rows_mean": loads.rows / len(loads.times) if loads.times else 0.0,
        }
    result["sinks"] = sinks
    return result


def render(figures: dict[str, object]) -> list[str]:
    lines = [f"workdir: {figures['workdir']}", f"inbox: {figures['acked']} events acked/stored"]
    sinks = figures["sinks"]
    assert isinstance(sinks, dict)
    if not sinks:
        lines.append("no sink_loaded lines in server.log (was serve run with --log-level debug?)")
    for name, s in sinks.items():
        lag = (
            f"lag p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, max {s['max_ms']:.0f} ms"
            if s["p50_ms"] is not None
            else "no event loaded"
        )
        lines.append(
            f"sink {name}: {s['covered']} events loaded in {s['batches']} batches"
            f" (mean {s['batch_rows_mean']:.0f} rows), backlog at stop {s['backlog']}"
            f" (not in the lag), {s['rows_per_s']:,.0f} rows/s; {lag}"
        )
    return lines


def _rate(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def table(results: Path) -> list[str]:
    """A Markdown table of a bench/sinks.sh results file (one tab-separated line per run:
    round, setup, req/s, p50, p99, non-2xx, load average, WORKDIR): req/s and its ratio
    to setup ``a`` of the same round, then per sink lag p50/p99 in ms and the backlog at
    stop; and below it the median ratio per setup over the rounds."""
    runs = [line.split("\t") for line in results.read_text().splitlines() if line.strip()]
    figures: list[dict[str, object]] = [
        measure(Path(run[7])) if run[7] != "?" else {"sinks": {}} for run in runs
    ]
    names: list[str] = []
    for fig in figures:
        sinks = fig["sinks"]
        assert isinstance(sinks, dict)
        names += [name for name in sinks if name not in names]
    base = {run[0]: _rate(run[2]) for run in runs if run[1] == "a"}
    head = "| round | setup | req/s | / a | p50 | p99 | non-2xx | load avg |"
    head += "".join(f" {name}: p50 / p99 ms, backlog |" for name in names)
    lines = [head, "|" + "---|" * (8 + len(names))]
    ratios: dict[str, list[float]] = {}
    for run, fig in zip(runs, figures, strict=True):
        rps, a = _rate(run[2]), base.get(run[0])
        ratio = rps / a if rps is not None and a else None
        if ratio is not None:
            ratios.setdefault(run[1], []).append(ratio)
        shown = f"{rps:,.0f}" if rps is not None else run[2]
        row = f"| {run[0]} | {run[1]} | {shown} | {ratio or 0:.2f}x |"
        row += f" {run[3]} | {run[4]} | {run[5]} | {run[6].split()[0]} |"
        sinks = fig["sinks"]
        assert isinstance(sinks, dict)
        for name in names:
            s = sinks.get(name)
            if s is None:
                row += " |"
            elif s["p50_ms"] is None:
                row += f" none loaded, {s['backlog']:,} |"
            else:
                row += f" {s['p50_ms']:,.0f} / {s['p99_ms']:,.0f}, {s['backlog']:,} |"
        lines.append(row)
    lines.append("")
    for setup, values in ratios.items():
        values.sort()
        lines.append(
            f"setup {setup}: req/s / a = {', '.join(f'{v:.2f}' for v in values)}"
            f" (median {values[len(values) // 2]:.2f})"
        )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, nargs="?", help="holds events.db and server.log")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument("--table", type=Path, help="a bench/sinks.sh results.tsv: Markdown")
    args = parser.parse_args(argv[1:])
    if args.table is not None:
        print("\n".join(table(args.table)))
        return 0
    if args.workdir is None:
        parser.error("WORKDIR or --table RESULTS is required")
    figures = measure(args.workdir)
    print(json.dumps(figures) if args.json else "\n".join(render(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
