"""Two receivers and two workers as real subprocesses on one store, SIGKILLed under
signed load (``bench/crash_many.py``): nothing acked is lost, nothing is stored or
acted on twice outside the documented crash window, everything is handled.

Slow by nature: a killed worker's claims come back only when their lease runs out
(``Dispatcher.lease``, 120 s with the default rules), so the test lasts about that long.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from crash_many import Config, Report, run

STORES = [
    "sqlite",
    # "postgresql": add it here once the PostgreSQL store and `--store URL` are merged;
    # `store_args` below then gives every process `--store <pg_url>`.
]


@pytest.fixture(params=STORES)
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, ...]:
    """The CLI arguments naming the one store every receiver, worker and command uses.
    SQLite: a shared file (the embedded store supports several processes)."""
    if request.param == "sqlite":
        return ("--db", str(tmp_path / "inbox.db"))
    if request.param == "postgresql":
        return ("--store", request.getfixturevalue("pg_url"))
    raise AssertionError(f"unknown store {request.param}")


@pytest.fixture
async def report(store_args: tuple[str, ...], tmp_path: Path) -> Report:
    config = Config(receivers=2, workers=2, events=200, kills=4, store_args=store_args, seed=7)
    workdir = tmp_path / "run"
    workdir.mkdir()
    done = await run(config, workdir)
    print("\n".join(done.lines()))  # the counts, shown with -s or when a check fails
    return done


def test_every_acked_event_is_stored_exactly_once(report: Report) -> None:
    assert report.kills, "the run killed nothing"
    assert report.acked == report.sent  # receivers come back; a retry finds one
    assert report.acked_missing == 0
    assert report.stored_twice == 0
    assert report.stored == report.sent


def test_every_event_is_handled(report: Report) -> None:
    assert report.settled
    assert report.states == {"done": report.sent}
    assert report.dead == 0
    assert not report.unexpected_exits


def test_one_track_call_per_event_and_rule_outside_the_crash_window(report: Report) -> None:
    assert report.worker_kills > 0
    assert report.histogram.get(0, 0) == 0  # no event went without its call
    assert report.repeats_outside == 0
    # A worker killed with k calls in flight can repeat each of them once, no more.
    assert report.repeats == report.repeats_in_crash_window
    assert report.repeats <= report.calls_caught_by_worker_kills
    assert report.other_track_calls == 0
    assert report.events_without_one_ok_audit_row == 0
    assert not report.problems
