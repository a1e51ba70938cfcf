"""One line of cells.jsonl: what one cell (or its fresh-process replay) produced, or why it produced nothing.

The worker measures a cell and sends its record over the pipe; the parent
checks it here, adds where it came from (its log, group, replay flag and the
cell itself) and appends it. A worker that dies or hangs under a cell gets a
record too, built by :meth:`CellRecord.failure`: failures are data. Readers of
a run directory accept a line only if :meth:`CellRecord.from_json` does; any
other line (torn by a crash, hand-edited) is reported and skipped.

Pure Python; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from detaudit.core.cells import CELL_ID
from detaudit.core.vocabulary import Status

__all__ = ["FAILED_STATUSES", "STATUSES", "CellRecord", "InvalidRecord"]

#: Every status a record may have: measured (ok), refused (skipped, unsupported, error), or lost with its worker.
STATUSES = tuple(status.value for status in Status)
#: The statuses of a cell whose worker died or hung under it: what ``run --resume --retry-failed`` runs again.
FAILED_STATUSES = tuple(status.value for status in Status if status.failed)
#: The keys the record itself holds; anything else the worker measured (applied, ops, reference, adjoint, ...)
#: travels in ``details``.
_OWN_KEYS = ("cell_id", "status", "message", "seconds", "tensors", "log", "replay", "group", "cell")


class InvalidRecord(ValueError):
    """A mapping that is not a cell record; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class CellRecord:
    """One cell's outcome, as stored.

    ``tensors`` has one row per tensor (name, dtype, digest and the run-to-run
    comparison); ``details`` holds the rest of what the worker measured, passed
    through unchanged. ``log``, ``replay``, ``group`` and ``cell`` are added by
    the parent (:meth:`stored`).
    """

    cell_id: str
    status: str
    message: str = ""
    seconds: float | None = None
    tensors: tuple[Mapping[str, Any], ...] = ()
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    log: str | None = None
    replay: bool = False
    group: str | None = None
    cell: Mapping[str, Any] | None = None

    @classmethod
    def failure(cls, cell_id: str, status: str, message: str, log: str) -> CellRecord:
        """The record of a cell whose worker crashed, hung or could not start: a status and why, no tensors."""
        return cls(cell_id, status, message, log=log)

    def stored(self, *, log: str | None = None, replay: bool = False, group: str | None = None,
               cell: Mapping[str, Any] | None = None) -> CellRecord:
        """This record with where it came from, as the parent appends it (an unset field keeps its value)."""
        return dataclasses.replace(self, log=log or self.log, replay=replay, group=group or self.group,
                                   cell=cell if cell is not None else self.cell)

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (one line of cells.jsonl)."""
        data: dict[str, Any] = {"cell_id": self.cell_id, "status": self.status, "message": self.message,
                                "seconds": self.seconds, "tensors": [dict(t) for t in self.tensors],
                                **self.details, "replay": self.replay}
        for key, value in (("log", self.log), ("group", self.group), ("cell", self.cell)):
            if value is not None:
                data[key] = dict(value) if isinstance(value, Mapping) else value
        return data

    @classmethod
    def from_json(cls, data: Any) -> CellRecord:
        """The record held by ``data`` (a parsed cells.jsonl line or a worker's message).

        Raises:
            InvalidRecord: ``data`` is not a well-formed record (the message says which field).
        """
        _check(data)
        details = {k: v for k, v in data.items() if k not in _OWN_KEYS and k != "event"}  # event: the pipe's word
        message = data.get("message")
        return cls(data["cell_id"], data["status"], "" if message is None else str(message), data.get("seconds"),
                   tuple(data.get("tensors", [])), details, data.get("log"), bool(data.get("replay")),
                   data.get("group"), data.get("cell"))

    @staticmethod
    def is_valid(data: Any) -> bool:
        """Whether ``data`` is a well-formed record."""
        try:
            _check(data)
        except InvalidRecord:
            return False
        return True


def _check(data: Any) -> None:
    """Raise :class:`InvalidRecord` unless ``data`` is a well-formed record (fields of the right types)."""
    if not isinstance(data, dict):
        raise InvalidRecord("not a JSON object")
    if not (isinstance(data.get("cell_id"), str) and CELL_ID.match(data["cell_id"])):
        raise InvalidRecord(f"no valid cell_id ({str(data.get('cell_id'))[:40]!r})")
    if data.get("status") not in STATUSES:
        raise InvalidRecord(f"unknown status {str(data.get('status'))[:20]!r}; expected one of {', '.join(STATUSES)}")
    seconds = data.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
        raise InvalidRecord("`seconds` is not a number")
    for key in ("cell", "applied"):
        if not isinstance(data.get(key, {}), dict):
            raise InvalidRecord(f"`{key}` is not an object")
    tensors, reference = data.get("tensors", []), data.get("reference", [])
    if not isinstance(tensors, list) or not isinstance(reference, list):
        raise InvalidRecord("`tensors` or `reference` is not a list")
    if not all(isinstance(row, dict) and isinstance(row.get("tensor"), str) for row in [*tensors, *reference]):
        raise InvalidRecord("a tensor row without a `tensor` name")
    if any(not isinstance(row.get("digest"), str) or not isinstance(row.get("dtype"), str) for row in tensors):
        raise InvalidRecord("a tensor row without its `digest` or `dtype`")
    if data.get("adjoint") is not None and not isinstance(data["adjoint"], dict):
        raise InvalidRecord("`adjoint` is not an object")
