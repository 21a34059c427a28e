"""logfmt lines on stderr: ``ts=... level=... logger=... event=name key=value ...``.

Our messages are written as ``"event=name key=%s ..."``; the formatter quotes every
argument that is not a number the logfmt way (double quotes, backslash escapes, only when the value
needs them), so a message never carries Python reprs and one value can never spill
into the next key.  Messages of other libraries become one quoted ``msg=`` value.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_logging", "quote"]


def quote(value: object) -> str:
    """``value`` as one logfmt value: bare when it is safe, else double-quoted with
    ``\\``, ``"`` and control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(c <= " " or c in '="\\' or not c.isprintable() for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _quoted_args(args: Any) -> Any:
    if isinstance(args, tuple):
        # Numbers keep their %d/%.1f formatting; everything else is a value to quote.
        return tuple(a if isinstance(a, int | float) else quote(a) for a in args)
    return args


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        if record.name.startswith("cio_webhooks"):
            message = str(record.msg) % _quoted_args(record.args) if record.args else record.msg
        else:  # free text from a library: one value, never a half-parsable line
            message = f"msg={quote(record.getMessage())}"
        line = (
            f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} {message}"
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            exc = record.exc_info[1]
            line += f" exc_type={type(exc).__name__} exc={quote(str(exc))}"
            # The traceback says where a handler failed; newlines escaped, so that a
            # record stays one line for log collectors.
            line += f" traceback={quote(self.formatException(record.exc_info))}"
        return line


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
