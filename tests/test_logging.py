"""Log lines are logfmt: every value that needs it is double-quoted and escaped."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from cio_webhooks._logging import KeyValueFormatter, quote

SRC = Path(__file__).resolve().parent.parent / "src" / "cio_webhooks"


def _line(logger: str, msg: str, *args: object) -> str:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)
    return KeyValueFormatter().format(record).split(" ", 3)[3]


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("disk I/O error", '"disk I/O error"'),
        ('it\'s "bad"', '"it\'s \\"bad\\""'),
        ("a=b", '"a=b"'),
        ("two\nlines", '"two\\nlines"'),
        ("C:\\path", '"C:\\\\path"'),
        ("", '""'),
        ("plain-value_1.2", "plain-value_1.2"),
        ("naïve", "naïve"),
    ],
)
def test_values_are_quoted_the_logfmt_way(value: str, quoted: str) -> None:
    assert quote(value) == quoted


def test_string_arguments_of_our_messages_are_quoted_numbers_are_formatted() -> None:
    line = _line(
        "cio_webhooks.dispatcher",
        "event=handler_retry event_id=%s attempts=%d delay_s=%.1f error=%s",
        "ev 1",
        3,
        2.25,
        "ValueError('x=1')",
    )
    assert (
        line
        == 'event=handler_retry event_id="ev 1" attempts=3 delay_s=2.2 error="ValueError(\'x=1\')"'
    )


def test_free_text_of_other_libraries_is_one_msg_value() -> None:
    assert _line("uvicorn.error", "Exceeded %s limit.", "concurrency") == (
        'msg="Exceeded concurrency limit."'
    )


def test_no_message_of_ours_logs_a_python_repr() -> None:
    reprs = [
        f"{path.relative_to(SRC)}: {line.strip()}"
        for path in SRC.rglob("*.py")
        for line in path.read_text().splitlines()
        if re.search(r"\"event=[^\"]*%r", line)
    ]
    assert not reprs
