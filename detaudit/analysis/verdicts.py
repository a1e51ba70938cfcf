"""Cell verdicts and the expectations a run must meet. Pure pandas; no TensorFlow.

A cell's verdict comes from its own run-to-run comparisons (those whose role
is determinism: ``repeat`` and ``process``) and its status. The expectations
of a config (``expect``), the fixed adjoint limit and the known upstream bugs
(:mod:`detaudit.core.knowledge`) decide which cells fail the run.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import Config, Settings
from detaudit.core.thresholds import ulp_thresholds
from detaudit.core.vocabulary import Status, Verdict

__all__ = ["ADJOINT_LIMIT_EPS", "CELL_KEYS", "Verdict", "cell_label", "cell_verdicts", "known_bool", "largest",
           "layer_label", "rows_by_cell", "settings_of", "threshold_breaches"]

#: Above this many epsilons the adjoint test fails: conv_transpose is then not the adjoint of conv (a TF bug).
ADJOINT_LIMIT_EPS = 64.0
CELL_KEYS = ["cell_id", "layer", "params", "input_shape", *AXES, "seed"]


def settings_of(row: dict[str, Any]) -> Any:
    """The :class:`~detaudit.core.config.Settings` of a table row (or of a cell_verdicts row)."""
    return Settings(**{axis: row[axis] for axis in AXES})


def known_bool(value: Any) -> bool | None:
    """A nullable boolean cell as True, False or None (NA, NaN or missing)."""
    return None if value is None or pd.isna(value) else bool(value)


def largest(values: list[Any]) -> Any:
    """The largest non-missing value, or None."""
    present = [v for v in values if v is not None and not pd.isna(v)]
    return max(present) if present else None


def rows_by_cell(table: pd.DataFrame, columns: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The table's ``columns`` as plain records grouped by cell id, cells in first-seen order.

    One conversion of the whole table, then plain Python: a pandas groupby with
    per-group indexing costs milliseconds per cell, which is minutes for a
    nightly's thousands of cells.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in table[columns].to_dict("records"):
        groups.setdefault(record["cell_id"], []).append(record)
    return groups


def cell_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its verdict, message and worst run-to-run ULP per tensor."""
    if not len(table):
        return pd.DataFrame(columns=[*CELL_KEYS, "verdict", "message", "worst_ulp"])
    deciding = set(ComparisonKind.deciding_determinism())
    out = []
    columns = list(dict.fromkeys([*CELL_KEYS, "comparison", "status", "bitwise_equal", "message", "tensor",
                                  "max_ulp"]))
    for rows in rows_by_cell(table, columns).values():
        own = [r for r in rows if r["comparison"] in deciding]
        verdicts = [Verdict.of_status(r["status"]) for r in own if r["status"] != Status.OK]
        if any(known_bool(r["bitwise_equal"]) is False for r in own):
            verdicts.append(Verdict.NONDETERMINISTIC)
        verdict = min(verdicts, key=lambda v: v.severity) if verdicts else Verdict.DETERMINISTIC
        messages = [r["message"] for r in own if isinstance(r["message"], str) and r["message"]]
        ulps: dict[str, list[Any]] = {}
        for r in own:
            if isinstance(r["tensor"], str):
                ulps.setdefault(r["tensor"], []).append(r["max_ulp"])
        worst = {tensor: largest(values) for tensor, values in ulps.items()}
        out.append({**{k: rows[0][k] for k in CELL_KEYS}, "verdict": verdict.value,
                    "message": messages[0] if messages else "",
                    "worst_ulp": {k: (None if v is None else int(v)) for k, v in worst.items()}})
    return pd.DataFrame(out)


def threshold_breaches(table: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Rows that break one of the config's ULP thresholds, each with its ``breach`` sentence."""
    found = []
    for threshold in ulp_thresholds(config.expect):
        rows = table[(table["comparison"] == threshold.comparison.value) & table[threshold.measure.value].notna()]
        for row in rows.to_dict("records"):
            if (breach := threshold.failure(row)) is not None:
                found.append({**row, "breach": breach})
    return pd.DataFrame(found, columns=[*table.columns, "breach"])


def _axes(values: Any) -> str:
    values = values if isinstance(values, list) else [values]
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def layer_label(row: dict[str, Any]) -> str:
    """``Conv2DTranspose k3 s2 same [4, 16, 16, 8]``: the kind (class name for a user layer), the kernel,
    stride (or upsampling) and padding that tell layers of one kind apart, and the input shape."""
    shape = row["input_shape"]
    shape = json.loads(shape) if isinstance(shape, str) else list(shape)
    params = row.get("params") or "{}"
    params = json.loads(params) if isinstance(params, str) else params
    bits = [f"k{_axes(params['kernel_size'])}"] if isinstance(params.get("kernel_size"), (list, int)) else []
    if isinstance(params.get("strides"), list):
        bits.append(f"s{_axes(params['strides'])}")
    if isinstance(params.get("size"), list):
        bits.append(f"up{_axes(params['size'])}")
    if isinstance(params.get("padding"), str):
        bits.append(params["padding"])
    return " ".join([str(row["layer"]).rpartition(":")[2], *bits, str(shape)])


def cell_label(row: dict[str, Any]) -> str:
    """``Layer k3 s2 same [shape] [settings, seed=N]`` for a row of the table or of cell_verdicts."""
    return f"{layer_label(row)} [{settings_of(row).label()}, seed={row['seed']}]"
