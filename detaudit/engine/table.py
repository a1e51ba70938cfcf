"""The results table: built from a run directory's records and kept tensors; verdicts, findings, expectations.

Pure pandas + NumPy. ``build_table`` is the only place rows are made, so a
table rebuilt from ``cells.jsonl`` (after Ctrl-C, say) equals the one written
at the end of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detaudit.core.config import AXES, Cell, Config, Settings
from detaudit.core.numerics import compare, narrower_dtype
from detaudit.engine.store import RunStore, load_tensors

__all__ = ["COLUMNS", "Finding", "TensorGap", "Verdict", "build_table", "cell_verdicts", "evaluate", "findings"]

#: Column order of the results table; the first 29 are a contract with users' scripts.
COLUMNS = [
    "run_id", "cell_id", "layer", "params", "device", "precision", "determinism", "xla", "onednn",
    "threads", "tf32", "seed", "repeats", "tensor", "comparison", "dtype", "n_elements", "n_mismatch",
    "bitwise_equal", "max_ulp", "p99_ulp", "max_abs", "max_rel", "max_ulp_scaled", "n_nan_mismatch",
    "digest", "status", "message", "seconds",
    "input_shape", "p50_ulp", "mean_ulp", "n_repeats_differ", "reference_cell", "adjoint_eps", "reconstruction",
]
#: Above this many epsilons the adjoint test fails: conv_transpose is then not the adjoint of conv (a TF bug).
ADJOINT_LIMIT_EPS = 64.0
_INT_COLUMNS = ["n_elements", "n_mismatch", "max_ulp", "p99_ulp", "p50_ulp", "n_nan_mismatch", "n_repeats_differ"]
_FLOAT_COLUMNS = ["max_abs", "max_rel", "max_ulp_scaled", "mean_ulp", "seconds", "adjoint_eps", "reconstruction"]
_STAT_FIELDS = ["n_elements", "n_mismatch", "bitwise_equal", "max_ulp", "p50_ulp", "p99_ulp", "mean_ulp",
                "max_abs", "max_rel", "max_ulp_scaled", "n_nan_mismatch"]


class Verdict(str, enum.Enum):
    """The verdict of one cell, worst first."""

    CRASH = "CRASH"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    NONDETERMINISTIC = "NONDETERMINISTIC"
    UNSUPPORTED = "UNSUPPORTED"
    SKIPPED = "SKIPPED"
    DETERMINISTIC = "DETERMINISTIC"

    @property
    def description(self) -> str:
        return {
            "CRASH": "the worker process died while running the cell",
            "TIMEOUT": "the worker exceeded timeout_s while running the cell",
            "ERROR": "the layer or TensorFlow raised an error",
            "NONDETERMINISTIC": "a repeat or a fresh-process replay gave different bits",
            "UNSUPPORTED": "TensorFlow refused: no deterministic implementation of an op",
            "SKIPPED": "the device is not visible on this machine",
            "DETERMINISTIC": "every repeat and replay gave identical bits",
        }[self.value]


_STATUS_VERDICT = {"crash": Verdict.CRASH, "timeout": Verdict.TIMEOUT, "error": Verdict.ERROR,
                   "unsupported": Verdict.UNSUPPORTED, "skipped": Verdict.SKIPPED}
_SEVERITY = {v: i for i, v in enumerate(Verdict)}
#: The dtype each precision computes in; a comparison across precisions rounds to the narrower one.
COMPUTE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                 "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def _base_row(run_id: str, cell: Cell) -> dict[str, Any]:
    return {
        "run_id": run_id, "cell_id": cell.cell_id, "layer": cell.layer.kind,
        "params": cell.layer.params_json, "input_shape": json.dumps(list(cell.layer.input_shape)),
        **cell.settings.as_dict(), "seed": cell.seed, "repeats": cell.repeats,
    }


def _record_rows(run_id: str, cell: Cell, record: dict[str, Any]) -> list[dict[str, Any]]:
    base = {**_base_row(run_id, cell), "comparison": "repeat", "status": record["status"],
            "message": record.get("message", ""), "seconds": record.get("seconds")}
    if record["status"] != "ok" or not record.get("tensors"):
        return [{**base, "tensor": None}]
    rows = []
    for t in record["tensors"]:
        rows.append({**base, "tensor": t["tensor"], "dtype": t["dtype"], "digest": t["digest"],
                     "n_repeats_differ": t.get("n_repeats_differ"),
                     **{k: t.get(k) for k in _STAT_FIELDS}})
    dtypes = {t["tensor"]: t["dtype"] for t in record["tensors"]}
    for t in record.get("reference", []):
        rows.append({**base, "comparison": "reference", "tensor": t["tensor"], "dtype": dtypes.get(t["tensor"]),
                     "seconds": None, **{k: t.get(k) for k in _STAT_FIELDS}})
    adjoint = record.get("adjoint")
    if adjoint:
        rows.append({**base, "comparison": "adjoint", "tensor": "output", "dtype": adjoint.get("dtype"),
                     "seconds": None, "adjoint_eps": adjoint.get("adjoint_eps"),
                     "reconstruction": adjoint.get("reconstruction"),
                     "status": "error" if adjoint.get("error") else "ok", "message": adjoint.get("error") or ""})
    return rows


@functools.lru_cache(maxsize=64)
def _cached_tensors(path: Path, mtime: float) -> dict[str, np.ndarray]:
    return load_tensors(path)


def _tensors(path: Path) -> dict[str, np.ndarray] | None:
    try:
        return _cached_tensors(path, path.stat().st_mtime)
    except (OSError, ValueError, KeyError):
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
    compute = [COMPUTE_DTYPE[cell.settings.precision], COMPUTE_DTYPE[reference.settings.precision]]
    base = {**_base_row(run_id, cell), "comparison": comparison, "reference_cell": reference_cell,
            "status": "ok", "message": "", "seconds": None}
    if other["status"] != "ok":
        what = "replay" if comparison == "process" else f"reference cell {reference_cell}"
        status = other["status"] if comparison == "process" else "skipped"
        return [{**base, "tensor": None, "status": status,
                 "message": f"{what} has status {other['status']}: {other.get('message', '')}"[:600]}]
    theirs_meta = {t["tensor"]: t for t in other["tensors"]}
    rows = []
    for t in record["tensors"]:
        name, ref = t["tensor"], theirs_meta.get(t["tensor"])
        if ref is None:
            continue
        row = {**base, "tensor": name, "digest": t["digest"]}
        if mine is not None and theirs is not None and name in mine and name in theirs:
            a, b = mine[name], theirs[name]
            common = functools.reduce(narrower_dtype, [a.dtype, b.dtype, *compute])
            result = compare(a.astype(common), b.astype(common), digest=False)
            row.update(dtype=common.name, **{k: getattr(result, k) for k in _STAT_FIELDS})
        elif t["dtype"] == ref["dtype"]:  # tensors not kept: bits only
            row.update(dtype=t["dtype"], n_elements=t["n_elements"], bitwise_equal=t["digest"] == ref["digest"])
        else:
            row.update(dtype=None, message="tensors not kept (keep_tensors: false) and dtypes differ")
        rows.append(row)
    return rows


def build_table(store: RunStore, config: Config) -> pd.DataFrame:
    """The long results table of a run: one row per cell x tensor x comparison.

    ``repeat`` rows come from the workers' records; ``process`` rows pair each
    cell with its fresh-process replay; ``baseline`` rows compare each cell with
    the baseline cell of the same layer and seed, in the lower precision of the two.
    """
    records: dict[str, dict[str, Any]] = {}
    replays: dict[str, dict[str, Any]] = {}
    for record in store.iter_records():
        (replays if record.get("replay") else records)[record["cell_id"]] = record
    run_id = store.run_id
    cells = {c.cell_id: c for c in config.cells()}
    rows: list[dict[str, Any]] = []
    for cell_id, record in records.items():
        cell = cells.get(cell_id) or Cell.from_dict(record["cell"])
        rows.extend(_record_rows(run_id, cell, record))
        if record["status"] != "ok":
            continue
        mine = _tensors(store.tensor_path(cell_id)) if config.keep_tensors else None
        replay = replays.get(cell_id)
        if replay is not None:
            theirs = _tensors(store.tensor_path(cell_id, replay=True)) if config.keep_tensors else None
            rows.extend(_pair_rows(run_id, cell, record, replay, "process", mine, theirs, cell))
        baseline = Cell(cell.layer, config.baseline, cell.seed, cell.repeats)
        reference = records.get(baseline.cell_id)
        if reference is not None and baseline.cell_id != cell_id:
            theirs = _tensors(store.tensor_path(baseline.cell_id)) if config.keep_tensors else None
            rows.extend(_pair_rows(run_id, cell, record, reference, "baseline", mine, theirs, baseline))
    # Config order, not finishing order: tables of the same config line up row for row.
    position = {cell_id: i for i, cell_id in enumerate(cells)}
    kinds = {"repeat": 0, "process": 1, "baseline": 2, "reference": 3, "adjoint": 4}
    rows.sort(key=lambda r: (position.get(r["cell_id"], len(position)), kinds[r["comparison"]]))
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    for column in _INT_COLUMNS:
        table[column] = table[column].astype("UInt64")
    for column in _FLOAT_COLUMNS:
        table[column] = table[column].astype("float64")
    table["bitwise_equal"] = table["bitwise_equal"].astype("boolean")
    table["threads"] = table["threads"].astype("int64")
    table["seed"] = table["seed"].astype("int64")
    table["repeats"] = table["repeats"].astype("int64")
    for column in ("tensor", "dtype", "digest", "message", "reference_cell"):
        table[column] = table[column].astype("string")
    return table


# ---------------------------------------------------------------------------
# Verdicts, expectations, findings
# ---------------------------------------------------------------------------

_CELL_KEYS = ["cell_id", "layer", "params", "input_shape", *AXES, "seed"]


def cell_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its verdict, message and worst repeat/process ULP per tensor."""
    out = []
    for key, rows in table.groupby(_CELL_KEYS, sort=False, dropna=False):
        own = rows[rows["comparison"].isin(["repeat", "process"])]
        statuses = [s for s in own["status"] if s != "ok"]
        verdicts = [_STATUS_VERDICT.get(s, Verdict.ERROR) for s in statuses]
        if (own["bitwise_equal"] == False).any():  # noqa: E712 - nullable boolean
            verdicts.append(Verdict.NONDETERMINISTIC)
        verdict = min(verdicts, key=_SEVERITY.__getitem__) if verdicts else Verdict.DETERMINISTIC
        messages = [m for m in own["message"].dropna() if m]
        worst = own[own["tensor"].notna()].groupby("tensor", sort=False)["max_ulp"].max()
        out.append({**dict(zip(_CELL_KEYS, key)), "verdict": verdict.value,
                    "message": messages[0] if messages else "",
                    "worst_ulp": {k: (None if pd.isna(v) else int(v)) for k, v in worst.items()}})
    return pd.DataFrame(out)


def threshold_breaches(table: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Rows whose max_ulp / max_ulp_scaled exceed the config's thresholds, with a ``breach`` sentence."""
    found = []
    for kind in ("max_ulp", "max_ulp_scaled"):
        for comparison, _ in getattr(config.expect, kind):
            rows = table[(table["comparison"] == comparison) & table[kind].notna()]
            for row in rows.to_dict("records"):
                limit = config.expect.threshold(kind, comparison, row["precision"])
                if limit is not None and row[kind] > limit:
                    found.append({**row, "breach": f"{row['tensor']} {comparison} {kind} {row[kind]:g} > {limit:g}"})
    return pd.DataFrame(found, columns=[*table.columns, "breach"])


def evaluate_cells(table: pd.DataFrame, config: Config) -> dict[str, list[str]]:
    """The failed expectations of each cell (cells with none are absent).

    Without ``expect`` every cell must be run-to-run deterministic. Crashes,
    time-outs and errors always fail; skipped cells never do.
    """
    failures: dict[str, list[str]] = {}
    verdicts = cell_verdicts(table) if len(table) else pd.DataFrame()
    for row in verdicts.to_dict("records"):
        settings = Settings(**{axis: row[axis] for axis in AXES})
        verdict = Verdict(row["verdict"])
        if verdict in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.ERROR):
            failures.setdefault(row["cell_id"], []).append(f"{verdict.value}: {row['message']}")
        elif verdict in (Verdict.NONDETERMINISTIC, Verdict.UNSUPPORTED) and \
                config.expect.must_be_deterministic(settings):
            failures.setdefault(row["cell_id"], []).append(f"expected deterministic, got {verdict.value}")
    for row in threshold_breaches(table, config).to_dict("records"):
        failures.setdefault(row["cell_id"], []).append(row["breach"])
    adjoint = table[(table["comparison"] == "adjoint") & (table["adjoint_eps"] > ADJOINT_LIMIT_EPS)]
    for row in adjoint.to_dict("records"):
        failures.setdefault(row["cell_id"], []).append(
            f"adjoint test {row['adjoint_eps']:.3g} eps > {ADJOINT_LIMIT_EPS:g}: TensorFlow's conv_transpose is not "
            "the adjoint of its convolution here (a TensorFlow bug)")
    return failures


def cell_label(row: dict[str, Any]) -> str:
    """``Layer [settings, seed=N]`` for a row of the table or of cell_verdicts."""
    settings = Settings(**{axis: row[axis] for axis in AXES})
    return f"{row['layer']} [{settings.label()}, seed={row['seed']}]"


def evaluate(table: pd.DataFrame, config: Config) -> list[str]:
    """The expectations that failed, one sentence each; empty means exit code 0."""
    labels = {row["cell_id"]: cell_label(row) for row in table.drop_duplicates("cell_id").to_dict("records")}
    return [f"{labels[cell_id]}: {failure}"
            for cell_id, cell_failures in evaluate_cells(table, config).items() for failure in cell_failures]


@dataclasses.dataclass(frozen=True)
class TensorGap:
    """How one tensor differs within a finding (worst over the seeds pooled)."""

    tensor: str
    n_mismatch: int
    n_elements: int
    max_ulp: int
    max_ulp_scaled: float
    n_repeats_differ: int | None = None
    n_repeats_compared: int | None = None

    def phrase(self) -> str:
        scaled = "" if math.isnan(self.max_ulp_scaled) else f", {self.max_ulp_scaled:.3g} scaled"
        repeats = ""
        if self.n_repeats_differ is not None and self.n_repeats_compared:
            repeats = f" in {self.n_repeats_differ}/{self.n_repeats_compared} repeats"
        return (f"{self.tensor}{repeats}: {self.n_mismatch:,}/{self.n_elements:,} elements, "
                f"max {self.max_ulp:,} ULP{scaled}")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of the summary: what differs, where, and by how much.

    ``comparison`` is ``repeat`` or ``process`` (run-to-run nondeterminism under
    the settings in ``between``) or ``baseline`` (a gap between two settings).
    """

    layer: str
    comparison: str
    between: str
    n_axes: int
    gaps: tuple[TensorGap, ...]

    @property
    def worst_scaled(self) -> float:
        values = [g.max_ulp_scaled for g in self.gaps if not math.isnan(g.max_ulp_scaled)]
        return max(values, default=0.0)

    def sentence(self) -> str:
        detail = "; ".join(g.phrase() for g in self.gaps)
        if self.comparison == "baseline":
            return f"{self.layer}: differs between {self.between}: {detail}"
        what = "nondeterministic run to run" if self.comparison == "repeat" else "differs in a fresh process"
        return f"{self.layer}: {what} under {self.between}: {detail}"


def _axes_changed(row: dict[str, Any], baseline: Settings) -> list[str]:
    return [axis for axis in AXES if row[axis] != getattr(baseline, axis)]


def _difference(row: dict[str, Any], baseline: Settings) -> str:
    diff = _axes_changed(row, baseline)
    if len(diff) == 1:
        axis = diff[0]
        return f"{axis}={getattr(baseline, axis)} and {axis}={row[axis]}"
    left = ", ".join(f"{a}={getattr(baseline, a)}" for a in diff)
    right = ", ".join(f"{a}={row[a]}" for a in diff)
    return f"({left}) and ({right})"


def findings(table: pd.DataFrame, baseline: Settings) -> list[Finding]:
    """Differing tensors grouped by layer and by what differs, seeds pooled.

    A baseline gap is reported once, under the fewest changed settings that
    produce it: a cell whose tensor is bit-identical to that of a cell with
    fewer changes (determinism=off vs on on a CPU, say) adds nothing.
    """
    differing = table[(table["bitwise_equal"] == False) & table["tensor"].notna()  # noqa: E712
                      & table["comparison"].isin(["repeat", "process", "baseline"])].to_dict("records")
    def same_bits(row: dict[str, Any]) -> tuple[Any, ...]:  # cells whose tensor has these exact bits
        return row["layer"], row["params"], row["input_shape"], row["seed"], row["tensor"], row["digest"]

    simplest: dict[tuple[Any, ...], int] = {}
    for row in differing:
        if row["comparison"] == "baseline":
            key = same_bits(row)
            simplest[key] = min(simplest.get(key, 99), len(_axes_changed(row, baseline)))
    groups: dict[tuple[str, str, str, int], dict[str, list[dict[str, Any]]]] = {}
    for row in differing:
        n_axes = len(_axes_changed(row, baseline))
        if row["comparison"] == "baseline":
            if n_axes > simplest[same_bits(row)]:
                continue
            between = _difference(row, baseline)
        else:
            between = Settings(**{a: row[a] for a in AXES}).label()
        layer = f"{row['layer'].rpartition(':')[2]} {json.loads(row['input_shape'])}"
        groups.setdefault((layer, row["comparison"], between, n_axes), {}).setdefault(row["tensor"], []).append(row)
    out = []
    for (layer, comparison, between, n_axes), per_tensor in groups.items():
        gaps = []
        for tensor, rows in per_tensor.items():
            worst = max(rows, key=lambda r: (_int(r["max_ulp"]), _int(r["n_mismatch"])))
            scaled = [r["max_ulp_scaled"] for r in rows if not pd.isna(r["max_ulp_scaled"])]
            repeats = [_int(r["n_repeats_differ"]) for r in rows if not pd.isna(r["n_repeats_differ"])]
            gaps.append(TensorGap(tensor, _int(worst["n_mismatch"]), _int(worst["n_elements"]),
                                  _int(worst["max_ulp"]), max(scaled) if scaled else math.nan,
                                  max(repeats) if repeats else None, int(worst["repeats"]) - 1))
        out.append(Finding(layer, comparison, between, n_axes, tuple(gaps)))
    order = {"repeat": 0, "process": 1, "baseline": 2}
    return sorted(out, key=lambda f: (order.get(f.comparison, 3), f.n_axes, -f.worst_scaled, f.layer))


def _int(value: Any) -> int:
    return 0 if value is None or pd.isna(value) else int(value)

