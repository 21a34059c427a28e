"""What an operator did from the command line (``dlq retry|discard``, ``quarantine
reingest``), kept in the store beside the dashboard's actions, so that the
dead-letters page lists everything done by hand, whichever tool did it."""

from __future__ import annotations

import getpass
import time

from .._operator import record_action
from ..store import OperatorAction, Watch
from ._errors import err, redact

__all__ = ["CLI_USER", "cli_user", "record"]

#: Who the CLI's actions are recorded as: ``cli:<login name>``, or this alone when
#: the login name cannot be told.
CLI_USER = "cli"


def cli_user() -> str:
    """``cli:<login name>`` of whoever runs the command (``getpass.getuser``: the
    LOGNAME, USER, LNAME or USERNAME variable, else the account of the process's
    uid), or ``cli`` when there is none (a container's uid without an account)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError, ImportError):  # KeyError before 3.13, OSError since
        return CLI_USER
    return f"{CLI_USER}:{name}" if name else CLI_USER


async def record(store: Watch, action: str, count: int, detail: str) -> None:
    """Keep ``action`` (done just now by ``cli_user()``) in the store.  The command
    has done its work: a store that cannot keep the record only gets a note on
    stderr, and the command still succeeds."""
    done = OperatorAction(time.time(), cli_user(), action, count, detail)
    if (error := await record_action(store, done)) is not None:
        err.print(
            f"note: done, but not recorded for the dashboard: {redact(str(error))}",
            highlight=False,
            markup=False,
        )
