"""Prometheus' text exposition format: what every ``/metrics`` series writer shares."""

from __future__ import annotations

__all__ = ["label_value"]


def label_value(text: str) -> str:
    """``text`` escaped as a label value (backslash, double quote, newline)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
