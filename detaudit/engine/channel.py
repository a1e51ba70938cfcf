"""The worker's message pipe to its parent, for code running inside a worker (probes report progress here).

Set by :mod:`detaudit.engine.worker` at start-up; outside a worker every call is a no-op.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

__all__ = ["emit", "progress", "set_stream"]

_STREAM: TextIO | None = None


def set_stream(stream: TextIO) -> None:
    global _STREAM
    _STREAM = stream


def emit(event: dict[str, Any]) -> None:
    """Send one JSON event to the parent (no-op outside a worker)."""
    if _STREAM is not None:
        _STREAM.write(json.dumps(event, default=str) + "\n")
        _STREAM.flush()


def progress(stage: str, done: int = 0, total: int = 0) -> None:
    """Tell the parent what the worker is doing now: a stage, and how far into it."""
    emit({"event": "progress", "stage": stage, "done": done, "total": total})
