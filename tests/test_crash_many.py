"""Two receivers and two workers as real subprocesses on one store, SIGKILLed under
signed load (``bench/crash_many.py``): nothing acked is lost, nothing is stored or
acted on twice outside the documented crash window, everything is handled.

Slow by nature: a killed worker's claims come back only when their lease runs out
(``Dispatcher.lease``, ``DEFAULT_LEASE``: 30 s), so the test lasts that long and a
little more.  Its counts are printed (``pytest -s``, or on a failure).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from crash_many import Config, run

STORES = ["sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, ...]:
    """The CLI arguments naming the one store every receiver, worker and command uses.
    SQLite: one shared file (the embedded store supports several processes)."""
    if request.param == "sqlite":
        return ("--db", str(tmp_path / "inbox.db"))
    if request.param == "postgresql":
        return ("--store", request.getfixturevalue("pg_url"))
    raise AssertionError(f"unknown store {request.param}")


async def test_sigkilled_receivers_and_workers_lose_nothing_and_act_once(
    store_args: tuple[str, ...], tmp_path: Path
) -> None:
    config = Config(
        receivers=2, workers=2, events=200, kills=4, rate=40.0, store_args=store_args, seed=7
    )
    report = await run(config, tmp_path)
    print("\n".join(report.lines()))

    # the run did what it says: both kinds killed, workers with Track calls in flight
    assert len(report.kills) == 4
    assert report.worker_kills == 2
    assert report.calls_caught_by_worker_kills > 0
    # every acked event stored exactly once (the receivers come back: all get acked)
    assert report.acked == report.sent == config.events
    assert report.acked_missing == 0
    assert report.stored_twice == 0
    assert report.stored == report.sent
    # every event handled
    assert report.settled
    assert report.states == {"done": report.sent}
    assert report.dead == 0
    assert not report.unexpected_exits
    # one Track call per (event, rule); a repeat only of a call a killed worker had in
    # flight (the crash window), at most once per kill that caught it
    assert report.histogram.get(0, 0) == 0
    assert report.repeats_outside == 0
    assert report.repeats == report.repeats_in_crash_window
    assert report.repeats <= report.calls_caught_by_worker_kills
    assert report.other_track_calls == 0
    assert report.track_non_2xx == 0
    # the audit: one ok row per (event, rule), whatever the calls
    assert report.events_without_one_ok_audit_row == 0
    assert report.audit_rows == {"ok": report.spam_events}
    assert not report.problems
