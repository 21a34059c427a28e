"""``key=value`` log lines on stderr.  Messages are written as ``event=name k=v ...``."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["configure_logging"]


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} {record.getMessage()}"
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            exc = record.exc_info[1]
            line += f" exc_type={type(exc).__name__} exc={str(exc)!r}"
            # The traceback says where a handler failed; newlines escaped, so that a
            # record stays one line for log collectors.
            line += f" traceback={json.dumps(self.formatException(record.exc_info))}"
        return line


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
