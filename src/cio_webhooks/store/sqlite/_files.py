"""SQLite files: reading one without creating or changing any file (the CLI's reports),
and probing that one can be made where it should be (the service's start)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ..._exceptions import StoreUnavailable

__all__ = ["connect_readonly", "probe_file", "readonly_uri"]


def probe_file(path: Path) -> None:
    """Raise ``StoreUnavailable`` with a sentence when ``path`` cannot be opened (or
    created) as a SQLite file.  A file the probe had to create is removed again, so a
    service that then stops on another error leaves no empty file to mistake for data."""
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA schema_version").fetchone()
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open {path}: {_reason(exc)}") from exc
    finally:
        if not existed:
            with contextlib.suppress(OSError):  # never made (a parent is a file, say)
                path.unlink()


def _reason(exc: Exception) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return "a parent is not a directory"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def readonly_uri(path: Path) -> str:
    """The URI of a connection that can only read ``path`` and creates or changes no
    file; use it for every connection of one reader (see ``connect_readonly``).

    ``mode=ro`` alone would leave a ``-wal`` and a ``-shm`` file behind next to a
    WAL database that had none; so when there is no ``-wal`` (no writer is open, and
    none crashed), it is ``mode=rw``, to be used under ``query_only``: SQLite removes
    the two side files when the last connection closes, with nothing to checkpoint.
    When there is a ``-wal``, ``mode=ro`` reads it without checkpointing it."""
    mode = "ro" if Path(f"{path}-wal").exists() else "rw"
    # as_uri() percent-encodes, so a path with ? # or % cannot leak into the query.
    return f"{path.resolve().as_uri()}?mode={mode}"


def connect_readonly(path: Path, uri: str | None = None) -> sqlite3.Connection:
    """A connection that can only read ``path`` (at ``uri``, default ``readonly_uri``).
    Raises ``sqlite3.Error`` when ``path`` does not exist."""
    uri = uri or readonly_uri(path)
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=1")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn
