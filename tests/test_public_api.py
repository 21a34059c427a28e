"""The public API is what ``cio_webhooks.__all__`` lists: this guards it.

A name added to or removed from ``__all__`` is a change of the public API: change
``PUBLIC`` here in the same commit, on purpose."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import cio_webhooks

PUBLIC = {
    # exceptions
    "CioWebhooksError",
    "ConfigError",
    "InvalidEvent",
    "MissingSignature",
    "SignatureError",
    "SignatureMismatch",
    "StaleTimestamp",
    "StoreUnavailable",
    "SinkError",
    # signatures
    "sign",
    "signed_headers",
    "verify",
    # events and routing
    "Event",
    "EventData",
    "Identifiers",
    "normalise",
    "parse_event",
    "Router",
    "load_router",
    # the store contract, by URL
    "open_store",
    "parse_store_url",
    "StoreURL",
    "Store",
    "Ingest",
    "Queue",
    "Operations",
    "Metrics",
    "Ledger",
    "EventFilter",
    "HandlerRun",
    "Job",
    "JobState",
    "Outcome",
    "PutResult",
    "Quarantined",
    "StoreStats",
    "StoredEvent",
    # warehouse sinks, by URL
    "open_sink",
    "parse_sink_url",
    "SinkURL",
    "Sink",
    "Batch",
    "Loader",
    # the service
    "Dispatcher",
    "RetryPolicy",
    "create_app",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(cio_webhooks.__all__) == PUBLIC
    assert len(cio_webhooks.__all__) == len(PUBLIC)  # no name twice


def test_every_public_name_imports() -> None:
    for name in cio_webhooks.__all__:
        assert getattr(cio_webhooks, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from cio_webhooks import *", namespace)  # noqa: S102
    assert set(namespace) >= PUBLIC


def test_no_concrete_backend_is_public() -> None:
    for name in cio_webhooks.__all__:
        assert not name.startswith(("SQLite", "Postgres")), name
    # A user names a store by URL; the class behind it is not theirs to know.
    store = cio_webhooks.open_store("sqlite:///unused/inbox.db")
    assert type(store).__name__ not in cio_webhooks.__all__


def test_the_package_is_typed() -> None:
    root = Path(importlib.import_module("cio_webhooks").__file__ or "").parent
    assert (root / "py.typed").is_file()


def test_the_command_runs_as_a_module_and_as_the_cli_package() -> None:
    for module in ("cio_webhooks", "cio_webhooks.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "store" in done.stdout
        assert "migrate" in done.stdout
