"""One tidy table across stored runs, for analysis in pandas (``detaudit.load_runs``).

Each row of each matrix run's results table, with the run's facts joined as
columns, the axes and ``comparison``/``status`` as ordered categoricals, the
layer parameters as typed columns beside the JSON, and a ``role`` column that
tells run-to-run rows (determinism) from drift, accuracy (the float64
reference), identity (the adjoint test) and invariance (the batch comparison)
rows: one per :class:`~detaudit.core.comparisons.Role`. Pure pandas.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from detaudit.analysis.run_facts import RunFacts
from detaudit.analysis.runs import list_runs, load_run
from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind, Role
from detaudit.core.vocabulary import Status
from detaudit.engine.store import RunKind
from detaudit.errors import RunDirError
from detaudit.errors import a_or_an as _a

__all__ = ["RUN_COLUMNS", "load_runs"]

#: Run-level facts joined to every row.
RUN_COLUMNS = ["started", "config", "tensorflow", "keras", "detaudit_version", "device_name", "cpu", "onednn"]
_STATUSES = [status.value for status in Status]
_PARAMS = ["kind", "filters", "kernel_size", "strides", "padding", "dilation_rate", "output_padding"]


def _run_facts(meta: dict) -> dict:
    facts = RunFacts.from_meta(meta)
    # A start time that is not one (a hand-edited meta.json) is missing, not an error of the whole call.
    return {"started": pd.to_datetime(facts.started, errors="coerce", utc=True), "config": facts.config_name,
            "tensorflow": facts.tensorflow_version, "keras": facts.keras_version,
            "detaudit_version": facts.detaudit_version, "device_name": ", ".join(facts.gpus) if facts.gpus else "CPU",
            "cpu": facts.cpu_model, "onednn": facts.onednn.word or None}


def _with_run_facts(table: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """The run's facts as columns; ``onednn`` is the path each cell ran on: its axis value, or the host's default
    for ``default`` (the host's fact alone would make cells run with oneDNN on and off read as one path)."""
    asked = table["onednn"].astype(object)
    for key, value in _run_facts(meta).items():
        table[key] = value
    table["onednn"] = asked.where(asked.isin(["off", "on"]), table["onednn"])
    return table


def _param(params: str, name: str) -> object:
    value = json.loads(params).get(name)
    return tuple(value) if isinstance(value, list) else value


def _warn_skip(path: Path, why: str) -> None:
    warnings.warn(f"detaudit.load_runs skipped {path}: {why}", stacklevel=3)


def load_runs(runs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              on_skip: Callable[[Path, str], None] | None = None) -> pd.DataFrame:
    """The results of many matrix runs in one tidy DataFrame.

    Args:
        runs: a directory of run directories (every matrix run in it is read;
            a broken one or one of an unknown format is skipped and reported
            through ``on_skip``), or a list of run directories.
        on_skip: receives (run directory, why) for each run skipped; by default
            a warning. The ``run_id`` column is each run's directory name, as
            ``detaudit show`` names it (a copied run is a run of its own).

    Returns:
        One row per run x cell x tensor x comparison: the results table's
        columns plus :data:`RUN_COLUMNS`, ``role`` and the typed layer parameters.

    Raises:
        RunDirError: a listed directory is not a readable run.
    """
    skip = on_skip or _warn_skip
    listing = isinstance(runs, (str, os.PathLike)) and not (Path(runs) / "meta.json").exists()
    if listing:
        paths = [s.path for s in list_runs(runs, kinds=(RunKind.MATRIX,), on_skip=skip)]
    else:
        paths = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(p) for p in runs]
    frames = []
    for path in paths:
        try:
            stored = load_run(path)
        except RunDirError as exc:
            if not listing:  # a run named explicitly is the caller's error
                raise
            skip(path, str(exc))
            continue
        if stored.kind is not RunKind.MATRIX:
            raise RunDirError(f"{path}: {_a(stored.kind.value)} run; load_runs reads runs of `detaudit run`.")
        frames.append(_with_run_facts(stored.table.copy(), stored.meta))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    for name, axis in AXES.items():
        if axis.choices:
            table[name] = pd.Categorical(table[name], categories=list(axis.choices), ordered=True)
    table["comparison"] = pd.Categorical(table["comparison"], categories=[k.value for k in ComparisonKind],
                                         ordered=True)
    table["status"] = pd.Categorical(table["status"], categories=_STATUSES, ordered=True)
    table["role"] = pd.Categorical(table["comparison"].map(lambda c: ComparisonKind(c).spec.role.value).astype(str),
                                   categories=[role.value for role in Role])
    table["kind"] = table["layer"].astype("string")
    for name in _PARAMS[1:]:
        table[name] = [_param(p, name) for p in table["params"]]
    table["filters"] = table["filters"].astype("Int64")
    table["padding"] = table["padding"].astype("string")
    return table
