"""One line of cells.jsonl: what one cell (or its fresh-process replay) produced, or why it produced nothing.

The worker measures a cell and sends its record over the pipe; the parent
checks it here, adds where it came from (its log, group, replay flag and the
cell itself) and appends it. A worker that dies or hangs under a cell gets a
record too, built by :meth:`CellRecord.failure`: failures are data. Readers of
a run directory accept a line only if :meth:`CellRecord.checked` does; any
other line (torn by a crash, hand-edited, a field of the wrong type) is
reported and skipped. A record is refused for any value its table could not
hold: the typed columns below are both the table's dtypes and this check.

Pure Python; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

from detaudit.core.batch import PER_SAMPLE
from detaudit.core.cells import CELL_ID
from detaudit.core.vocabulary import Status
from detaudit.errors import encodable

__all__ = ["BOOL_COLUMNS", "FAILED_STATUSES", "FLOAT_COLUMNS", "INT_COLUMNS", "SMALL_INT_COLUMNS", "STATUSES",
           "CellRecord", "InvalidRecord", "encodable_tree"]

#: Every status a record may have: measured (ok), refused (skipped, unsupported, error), or lost with its worker.
STATUSES = tuple(status.value for status in Status)
#: The statuses of a cell whose worker died or hung under it: what ``run --resume --retry-failed`` runs again.
FAILED_STATUSES = tuple(status.value for status in Status if status.failed)
#: The keys the record itself holds; anything else the worker measured (applied, ops, reference, adjoint, ...)
#: travels in ``details``.
_OWN_KEYS = ("cell_id", "status", "message", "seconds", "tensors", "log", "replay", "group", "cell")

# The results table's measured columns by type (engine/table.py types its columns from these). A record's fields
# of these names, in its tensor, reference and batch rows and its adjoint, must be values of that type or null.
#: Counts and ULPs: nullable UInt64 (ULP counts are integers; a bool is not an integer here).
INT_COLUMNS = ("n_elements", "n_mismatch", "max_ulp", "p99_ulp", "p50_ulp", "n_nan_mismatch", "n_repeats_differ")
#: float64.
FLOAT_COLUMNS = ("max_abs", "max_rel", "max_ulp_scaled", "mean_ulp", "seconds", "adjoint_eps", "reconstruction",
                 "ref_scale", "ms_per_pass")
#: The batch comparison's sizes and sample indices: nullable Int64, not counts.
SMALL_INT_COLUMNS = ("batch_size", "n_samples_differ", "sample", "closer_batch")
#: Nullable boolean.
BOOL_COLUMNS = ("bitwise_equal",)


#: A JSON escape of a UTF-16 surrogate (``\\ud800`` to ``\\udfff``): only through one can a line of text read as
#: UTF-8 hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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
        data = CellRecord.checked(data)
        details = {k: v for k, v in data.items() if k not in _OWN_KEYS and k != "event"}  # event: the pipe's word
        message = data.get("message")
        return cls(data["cell_id"], data["status"], "" if message is None else str(message), data.get("seconds"),
                   tuple(data.get("tensors", [])), details, data.get("log"), bool(data.get("replay")),
                   data.get("group"), data.get("cell"))

    @staticmethod
    def checked(data: Any, text: str | None = None) -> dict[str, Any]:
        """``data`` as readers take it: checked, and every string in it (keys too) encodable as UTF-8.

        A lone surrogate (``os.fsdecode`` of a non-UTF-8 file name, carried by JSON as ``\\udce9``) would
        make the table unwritable; it becomes the visible escape ``\\udce9``.

        Args:
            data: a parsed cells.jsonl line or worker message.
            text: the JSON text ``data`` was parsed from, if known (a line of cells.jsonl, read as UTF-8): one
                without a surrogate's escape holds no surrogate, and its strings are not walked.

        Raises:
            InvalidRecord: ``data`` is not a well-formed record (the message says which field).
        """
        if text is None or _SURROGATE_ESCAPE.search(text):
            try:
                data = encodable_tree(data)
            except RecursionError:
                raise InvalidRecord("nested too deeply") from None
        _check(data)
        return data

    @staticmethod
    def is_valid(data: Any) -> bool:
        """Whether ``data`` is a well-formed record."""
        try:
            _check(data)
        except InvalidRecord:
            return False
        return True


def encodable_tree(value: Any) -> Any:
    """``value`` (parsed JSON) with every string in it, keys included, made encodable (:func:`encodable`)."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return {encodable_tree(k): encodable_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encodable_tree(v) for v in value]
    return value


_FLOAT_MAX = sys.float_info.max


def _number(value: Any) -> bool:
    """A JSON number a float64 holds (not a bool, not an integer beyond float64)."""
    kind = type(value)
    return kind is float or (kind is int and -_FLOAT_MAX <= value <= _FLOAT_MAX)


class _Column(NamedTuple):
    """What a typed column holds: a value of one of ``types`` (a bool is not an int here), integers from ``low``
    to ``high``."""

    types: tuple[type, ...]
    low: float
    high: float
    what: str


#: Per typed column, what a record's field of that name may hold (besides null).
_COLUMNS: dict[str, _Column] = {
    **{c: _Column((int,), 0, 2**64 - 1, "a non-negative integer") for c in INT_COLUMNS},
    **{c: _Column((int, float), -_FLOAT_MAX, _FLOAT_MAX, "a number") for c in FLOAT_COLUMNS},
    **{c: _Column((int,), -2**63, 2**63 - 1, "an integer") for c in SMALL_INT_COLUMNS},
    **{c: _Column((bool,), 0, 1, "true or false") for c in BOOL_COLUMNS},
}


def _shown(value: Any) -> str:
    return repr(value)[:40]


def _check_fields(row: Mapping[str, Any], where: str) -> None:
    """Every field of ``row`` named like a typed column holds a value of its type, or null."""
    for key, value in row.items():
        column = _COLUMNS.get(key)
        if column is None or value is None:
            continue
        kind = type(value)  # exact: `type(True) is int` is False
        if kind not in column.types or (kind is not float and not column.low <= value <= column.high):
            raise InvalidRecord(f"`{where}.{key}` is {_shown(value)}, not {column.what} or null")


def _check_rows(rows: Any, where: str) -> list[dict[str, Any]]:
    """``rows`` as a list of objects, each with a string ``tensor`` and typed fields of their types."""
    if not isinstance(rows, list):
        raise InvalidRecord(f"`{where}` is not a list")
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("tensor"), str):
            raise InvalidRecord(f"a `{where}` row without a `tensor` name")
        _check_fields(row, where)
    return rows


def _check_time(data: Mapping[str, Any], key: str, low: float, strict: bool) -> None:
    """``data[key]`` is null or a finite number above ``low`` (or at it, unless ``strict``)."""
    value = data.get(key)
    if value is None:
        return
    if not _number(value) or not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"{'above' if strict else 'at least'} {low:g}"
        raise InvalidRecord(f"`{key}` is {_shown(value)}, not a finite number {bound} or null")


def _check_text(data: Mapping[str, Any], keys: tuple[str, ...], where: str = "") -> None:
    for key in keys:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidRecord(f"`{where}{key}` is {_shown(data[key])}, not a string or null")


def _check(data: Any) -> None:
    """Raise :class:`InvalidRecord` unless ``data`` is a well-formed record (fields of the right types)."""
    if not isinstance(data, dict):
        raise InvalidRecord("not a JSON object")
    if not (isinstance(data.get("cell_id"), str) and CELL_ID.match(data["cell_id"])):
        raise InvalidRecord(f"no valid cell_id ({str(data.get('cell_id'))[:40]!r})")
    if data.get("status") not in STATUSES:
        raise InvalidRecord(f"unknown status {str(data.get('status'))[:20]!r}; expected one of {', '.join(STATUSES)}")
    _check_text(data, ("message", "log", "group"))
    if data.get("replay") is not None and not isinstance(data["replay"], bool):
        raise InvalidRecord(f"`replay` is {_shown(data['replay'])}, not true or false")
    _check_time(data, "seconds", 0.0, strict=False)
    _check_time(data, "ms_per_pass", 0.0, strict=True)
    for key in ("cell", "applied"):
        if not isinstance(data.get(key, {}), dict):
            raise InvalidRecord(f"`{key}` is not an object")
    tensors = _check_rows(data.get("tensors", []), "tensors")
    if any(not isinstance(row.get("digest"), str) or not isinstance(row.get("dtype"), str) for row in tensors):
        raise InvalidRecord("a tensor row without its `digest` or `dtype`")
    _check_rows(data.get("reference", []), "reference")
    _check_adjoint(data.get("adjoint"))
    _check_batch(data.get("batch"))
    _check_ops(data.get("ops"))


def _check_adjoint(adjoint: Any) -> None:
    if adjoint is None:
        return
    if not isinstance(adjoint, dict):
        raise InvalidRecord("`adjoint` is not an object")
    _check_fields(adjoint, "adjoint")
    _check_text(adjoint, ("error", "dtype"), "adjoint.")


def _check_batch(batch: Any) -> None:
    """``batch`` is null, ``{"error": text}`` or ``{"rows": [...]}``, each row at a batch size."""
    if batch is None:
        return
    if not isinstance(batch, dict):
        raise InvalidRecord("`batch` is not an object")
    if batch.get("error") is not None:
        _check_text(batch, ("error",), "batch.")
        return
    if "rows" not in batch:
        raise InvalidRecord("`batch` has neither `error` nor `rows`")
    for row in _check_rows(batch["rows"], "batch.rows"):
        if row.get("batch_size") is None or row["batch_size"] < 1:
            raise InvalidRecord(f"a `batch.rows` row at batch size {_shown(row.get('batch_size'))}, "
                                "not an integer >= 1")
        # A sample whose bits depend on its batch is named, with how many differ and by how much.
        lacking = [key for key in ("n_samples_differ", "sample", "max_ulp") if row.get(key) is None]
        if row["tensor"] in PER_SAMPLE and row.get("bitwise_equal") is False and lacking:
            raise InvalidRecord(f"a `batch.rows` row of {row['tensor']} that differs without its {', '.join(lacking)}")


def _check_ops(ops: Any) -> None:
    """``ops``: per tensor, the op that produced it (``op`` and, under XLA, an ``xla`` object), or an ``error``."""
    if ops is None:
        return
    if not isinstance(ops, dict):
        raise InvalidRecord("`ops` is not an object")
    for name, entry in ops.items():
        if name == "error" or entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("op"), str) \
                or not isinstance(entry.get("xla", {}), (dict, type(None))) \
                or ("instruction" in (entry.get("xla") or {}) and "opcode" not in entry["xla"]):
            raise InvalidRecord(f"`ops.{name}` is not an op (`op`, and `xla` with its `opcode`)")
