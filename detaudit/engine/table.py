"""The results table, built from a run directory's records and kept tensors.

Pure pandas + NumPy. :func:`build_table` is the only place rows are made, so a
table rebuilt from ``cells.jsonl`` (after Ctrl-C, a crash or a format upgrade)
equals the one written at the end of an uninterrupted run. The ``repeat``,
``reference`` and ``adjoint`` rows come from the workers' records; the
``process`` and ``baseline`` rows are measured here from the kept tensors of
two cells, with :func:`detaudit.core.numerics.compare` like the others.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detaudit.core.axes import AXES, compute_dtype
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import Cell, Config
from detaudit.core.numerics import compare, max_finite_abs, narrower_dtype
from detaudit.core.vocabulary import Status
from detaudit.engine.cell_record import BOOL_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, SMALL_INT_COLUMNS
from detaudit.engine.ops import op_label
from detaudit.engine.store import RunStore, load_tensors
from detaudit.errors import ConfigError

__all__ = ["COLUMNS", "build_table", "column_dtypes", "latest_records", "typed"]

#: Column order of the results table; the first 29 are a contract with users' scripts.
COLUMNS = [
    "run_id", "cell_id", "layer", "params", *AXES, "seed", "repeats", "tensor", "comparison", "dtype", "n_elements",
    "n_mismatch", "bitwise_equal", "max_ulp", "p99_ulp", "max_abs", "max_rel", "max_ulp_scaled", "n_nan_mismatch",
    "digest", "status", "message", "seconds",
    "input_shape", "p50_ulp", "mean_ulp", "n_repeats_differ", "reference_cell", "adjoint_eps", "reconstruction",
    "ref_scale", "op", "ms_per_pass", "batch_size", "n_samples_differ", "sample", "closer_batch",
]
_STRING_COLUMNS = ["tensor", "dtype", "digest", "message", "reference_cell", "op"]
_STAT_FIELDS = ["n_elements", "n_mismatch", "bitwise_equal", "max_ulp", "p50_ulp", "p99_ulp", "mean_ulp",
                "max_abs", "max_rel", "max_ulp_scaled", "n_nan_mismatch"]


def _base_row(run_id: str, cell: Cell) -> dict[str, Any]:
    return {"run_id": run_id, "cell_id": cell.cell_id, "layer": cell.layer.kind, "params": cell.layer.params_json,
            "input_shape": json.dumps(list(cell.layer.input_shape)), **cell.settings.as_dict(), "seed": cell.seed,
            "repeats": cell.repeats}


def _record_rows(run_id: str, cell: Cell, record: dict[str, Any]) -> list[dict[str, Any]]:
    base = {**_base_row(run_id, cell), "comparison": ComparisonKind.REPEAT.value, "status": record["status"],
            "message": record.get("message", ""), "seconds": record.get("seconds")}
    if record["status"] != Status.OK.value or not record.get("tensors"):
        return [{**base, "tensor": None}]
    ops = record.get("ops") or {}
    rows = [{**base, "tensor": t["tensor"], "dtype": t["dtype"], "digest": t["digest"],
             "op": op_label(ops.get(t["tensor"])) or None, "ms_per_pass": record.get("ms_per_pass"),
             "n_repeats_differ": t.get("n_repeats_differ"), **{k: t.get(k) for k in _STAT_FIELDS}}
            for t in record["tensors"]]
    dtypes = {t["tensor"]: t["dtype"] for t in record["tensors"]}
    for t in record.get("reference", []):
        rows.append({**base, "comparison": ComparisonKind.REFERENCE.value, "tensor": t["tensor"],
                     "dtype": dtypes.get(t["tensor"]),
                     "op": op_label(ops.get(t["tensor"])) or None,
                     "seconds": None, "ref_scale": t.get("ref_scale"), **{k: t.get(k) for k in _STAT_FIELDS}})
    adjoint = record.get("adjoint")
    if adjoint:
        rows.append({**base, "comparison": ComparisonKind.ADJOINT.value, "tensor": "output",
                     "dtype": adjoint.get("dtype"),
                     "seconds": None, "adjoint_eps": adjoint.get("adjoint_eps"),
                     "reconstruction": adjoint.get("reconstruction"),
                     "status": Status.ERROR.value if adjoint.get("error") else Status.OK.value,
                     "message": adjoint.get("error") or ""})
    rows.extend(_batch_rows(base, record.get("batch"), dtypes))
    return rows


def _batch_rows(base: dict[str, Any], batch: dict[str, Any] | None, dtypes: dict[str, str]) -> list[dict[str, Any]]:
    """The ``batch`` comparison's rows: one per tensor and batch size, or one error row."""
    if not batch:
        return []
    base = {**base, "comparison": ComparisonKind.BATCH.value, "seconds": None}
    if batch.get("error"):
        return [{**base, "tensor": None, "status": Status.ERROR.value, "message": batch["error"]}]
    return [{**base, "tensor": t["tensor"], "dtype": dtypes.get(t["tensor"]), "ref_scale": t.get("ref_scale"),
             **{k: t.get(k) for k in (*_STAT_FIELDS, *SMALL_INT_COLUMNS)}} for t in batch.get("rows", [])]


@functools.lru_cache(maxsize=64)
def _cached_tensors(path: Path, mtime: float) -> dict[str, np.ndarray]:
    return load_tensors(path)


def _tensors(path: Path) -> dict[str, np.ndarray] | None:
    try:
        return _cached_tensors(path, path.stat().st_mtime)
    except Exception:  # noqa: BLE001 - missing, torn (EOFError, BadZipFile) or foreign: measured as not kept
        return None


def _pair_rows(run_id: str, cell: Cell, record: dict[str, Any], other: dict[str, Any], comparison: str,
               mine: dict[str, np.ndarray] | None, theirs: dict[str, np.ndarray] | None,
               reference: Cell) -> list[dict[str, Any]]:
    """Rows comparing each tensor of ``record`` with the same tensor of ``other``.

    Both sides are rounded to the narrowest of their dtypes and the two cells'
    compute dtypes first: a mixed_bfloat16 gradient is float32 but carries
    bfloat16 accuracy, so its gap to float32 is counted in bfloat16 ULPs.
    """
    reference_cell = reference.cell_id
    compute = [compute_dtype(cell.settings.precision), compute_dtype(reference.settings.precision)]
    base = {**_base_row(run_id, cell), "comparison": comparison, "reference_cell": reference_cell,
            "status": Status.OK.value, "message": "", "seconds": None}
    if other["status"] != Status.OK.value:
        what = "replay" if comparison == ComparisonKind.PROCESS else f"baseline cell {reference_cell}"
        status = other["status"] if comparison == ComparisonKind.PROCESS else Status.SKIPPED.value
        return [{**base, "tensor": None, "status": status,
                 "message": f"{what} has status {other['status']}: {other.get('message', '')}"[:600]}]
    theirs_meta = {t["tensor"]: t for t in other.get("tensors", [])}
    rows = []
    for t in record["tensors"]:
        name, ref = t["tensor"], theirs_meta.get(t["tensor"])
        if ref is None:
            continue
        row = {**base, "tensor": name, "digest": t["digest"],
               "op": op_label((record.get("ops") or {}).get(name)) or None}
        if mine is not None and theirs is not None and name in mine and name in theirs \
                and mine[name].shape == theirs[name].shape:
            a, b = mine[name], theirs[name]
            common = functools.reduce(narrower_dtype, [a.dtype, b.dtype, *compute])
            result = compare(a.astype(common), b.astype(common), digest=False)
            row.update(dtype=common.name, ref_scale=max_finite_abs(b),
                       **{k: getattr(result, k) for k in _STAT_FIELDS})
        elif t["dtype"] == ref["dtype"]:  # tensors not kept: bits only
            row.update(dtype=t["dtype"], n_elements=t.get("n_elements"), bitwise_equal=t["digest"] == ref["digest"])
        else:
            row.update(dtype=None, message="tensors not kept (keep_tensors: false) and dtypes differ")
        rows.append(row)
    return rows


def latest_records(records: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(records, replays) by cell id; a later record of a cell (a retried crash) replaces an earlier one."""
    own: dict[str, dict[str, Any]] = {}
    replays: dict[str, dict[str, Any]] = {}
    for record in records:
        (replays if record.get("replay") else own)[record["cell_id"]] = record
    return own, replays


def _cell_of(record: dict[str, Any], known: dict[str, Cell]) -> Cell | None:
    cell = known.get(record["cell_id"])
    if cell is not None:
        return cell
    try:
        cell = Cell.from_dict(record["cell"])
    except (ConfigError, KeyError, TypeError):
        return None
    return cell if cell.cell_id == record["cell_id"] else None  # a record whose cell does not hash to its id


def build_table(store: RunStore, config: Config, cells: list[Cell] | None = None,
                records: Iterable[dict[str, Any]] | None = None) -> pd.DataFrame:
    """The long results table of a run: one row per cell x tensor x comparison.

    ``repeat`` rows come from the workers' records; ``process`` rows pair each
    cell with its fresh-process replay; ``baseline`` rows compare each cell with
    the baseline cell of the same layer and seed, in the lower precision of the two.
    A record whose embedded cell does not hash to its cell id is skipped.
    """
    records, replays = latest_records(store.iter_records() if records is None else records)
    run_id = store.run_id
    order = {c.cell_id: c for c in (cells if cells is not None else config.cells())}
    rows: list[dict[str, Any]] = []
    for cell_id, record in records.items():
        cell = _cell_of(record, order)
        if cell is None:
            continue
        rows.extend(_record_rows(run_id, cell, record))
        if record["status"] != Status.OK.value:
            continue
        mine = _tensors(store.tensor_path(cell_id)) if config.keep_tensors else None
        replay = replays.get(cell_id)
        if replay is not None:
            theirs = _tensors(store.tensor_path(cell_id, replay=True)) if config.keep_tensors else None
            rows.extend(_pair_rows(run_id, cell, record, replay, ComparisonKind.PROCESS.value, mine, theirs, cell))
        baseline = Cell(cell.layer, config.baseline, cell.seed, cell.repeats)
        reference = records.get(baseline.cell_id)
        if reference is not None and baseline.cell_id != cell_id:
            theirs = _tensors(store.tensor_path(baseline.cell_id)) if config.keep_tensors else None
            rows.extend(_pair_rows(run_id, cell, record, reference, ComparisonKind.BASELINE.value, mine, theirs,
                                   baseline))
    # Config order, not finishing order: tables of the same config line up row for row.
    position = {cell_id: i for i, cell_id in enumerate(order)}
    rows.sort(key=lambda r: (position.get(r["cell_id"], len(position)), ComparisonKind(r["comparison"]).order))
    return typed(pd.DataFrame(rows, columns=COLUMNS))


def typed(table: pd.DataFrame) -> pd.DataFrame:
    """The table's column dtypes: integer counts as UInt64 (ULPs are integers), axes as their registry says."""
    for column in COLUMNS:
        if column not in table:  # a table stored before an axis existed ran at its default (backend: tensorflow)
            table[column] = AXES[column].default if column in AXES else None
    # The measured columns' types are cell_record's: a record is refused for a value its column cannot hold.
    for columns, dtype in ((INT_COLUMNS, "UInt64"), (FLOAT_COLUMNS, "float64"), (SMALL_INT_COLUMNS, "Int64"),
                           (BOOL_COLUMNS, "boolean")):
        for column in columns:
            table[column] = table[column].astype(dtype)
    for name, axis in AXES.items():
        table[name] = table[name].astype(axis.column_dtype if axis.column_dtype != "string" else "object")
    table["seed"] = table["seed"].astype("int64")
    table["repeats"] = table["repeats"].astype("int64")
    for column in _STRING_COLUMNS:
        table[column] = table[column].astype("string")
    return table[COLUMNS]


@functools.lru_cache(maxsize=1)
def column_dtypes() -> dict[str, str]:
    """Each column's dtype name as :func:`typed` gives it: what a results.parquet this version writes holds."""
    return {column: str(dtype) for column, dtype in typed(pd.DataFrame(columns=COLUMNS)).dtypes.items()}
