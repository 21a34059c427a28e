"""From errors to exit codes: the one table every ``cio-webhooks`` command follows.

====  ==================  ==========================================================
code  name                when
====  ==================  ==========================================================
0     OK                  the command did what it was asked
1     FAILED              the operation failed: Customer.io refused or could not be
                          reached, ``send`` got a non-2xx answer, the port is taken,
                          stdout was closed early (silently), or an unexpected error
2     USAGE               bad arguments or configuration (``ConfigError``, and
                          click's own usage errors): fix the command line or settings
3     STORE_UNAVAILABLE   the store (or another data file) could not be opened,
                          reached or written (``StoreUnavailable``): try again when
                          it is back
====  ==================  ==========================================================

``main`` applies the table to every command, in one place (``exit_codes``): the
error is one line on stderr, ``error: <message>``, never a traceback, and never a
password (any URL credentials in the message are masked, ``redact``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

from .._exceptions import CioWebhooksError, ConfigError, StoreUnavailable

__all__ = ["ExitCode", "err", "exit_code", "exit_codes", "fail", "redact"]

#: Errors and notes go to stderr, one line each (greppable), whatever the width, and
#: as written: they quote data, in which rich would turn ":ab:" into an emoji.
err = Console(stderr=True, soft_wrap=True, emoji=False)


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    STORE_UNAVAILABLE = 3


def exit_code(exc: BaseException) -> ExitCode:
    """The exit code of a command that stopped on ``exc`` (see the module's table)."""
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE
    if isinstance(exc, StoreUnavailable):
        return ExitCode.STORE_UNAVAILABLE
    return ExitCode.FAILED


# scheme://user:password@host -> scheme://user:***@host; password=... in a DSN or query.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<at>@)")
_KEY_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|[^\s&]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of any URL or ``password=`` setting in it masked:
    an error of a driver may quote the connection string it was given."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<at>", text)
    return _KEY_PASSWORD.sub(r"\g<head>***", text)


def fail(message: object, code: int = ExitCode.FAILED) -> NoReturn:
    """Print ``error: message`` on one stderr line and exit with ``code``.

    The message is escaped (it may quote data holding ``[``) and redacted."""
    line = " ".join(redact(str(message)).split()) or "failed"
    err.print(f"[red]error:[/] {escape(line)}", highlight=False)
    sys.exit(int(code))


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Turn an error escaping a command into its exit code and one line on stderr.

    click's own exits (usage errors, ``--help``, ``sys.exit``) pass through."""
    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except CioWebhooksError as exc:
        fail(exc, exit_code(exc))
    except BrokenPipeError:
        # Whoever read stdout stopped (`| head`): say nothing, and let no flush at exit
        # complain about it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitCode.FAILED)
    except Exception as exc:  # a bug, or an OS error no layer translated
        fail(f"unexpected {type(exc).__name__}: {exc}", ExitCode.FAILED)
