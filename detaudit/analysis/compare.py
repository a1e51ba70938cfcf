"""Cell-by-cell comparison of two stored runs, in the style of asv's compare.

Each change gets one mark; regressions (a newly nondeterministic cell, a new
failure, changed bits, a ULP threshold newly exceeded) make exit code 1. The
environment differences between the two runs' meta.json come first, because
they usually explain the drift.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import pandas as pd

from detaudit.analysis.batch_view import batch_dependent
from detaudit.analysis.runs import StoredRun
from detaudit.analysis.timing import ms_per_cell
from detaudit.analysis.verdicts import (
    Verdict,
    cell_label,
    cell_verdicts,
    threshold_breaches,
)
from detaudit.core.axes import AXES
from detaudit.errors import UsageError
from detaudit.errors import a_or_an as _a

__all__ = ["SLOWDOWN_RATIO", "Category", "Change", "RunComparison", "compare_runs", "environment_diff"]

#: A cell whose time per pass grew by more than this factor is marked SLOWER (never a failure: timing on a
#: shared machine is noisy). Measured: three runs of configs/batch.yaml on a 2-core VM shared with four other
#: jobs (load average 7-9) differed per cell by a median 1.27x, 90th percentile 1.96x, max 4.24x; 1.5x would
#: have flagged 9 of 48 cell pairs, 2x flags 5. See README, "Batch invariance and what each setting costs".
SLOWDOWN_RATIO = 2.0


class Category(enum.Enum):
    """What changed for one cell. ``mark`` is its one-character symbol."""

    NEWLY_NONDETERMINISTIC = ("!", True, "was deterministic, now is not")
    NEW_FAILURE = ("F", True, "newly crashes, times out, errors or refuses")
    NEWLY_SKIPPED = ("s", True, "was measured, now skipped (its device is gone)")
    DIGEST_CHANGED = ("~", True, "same settings, different bits")
    ULP_REGRESSION = ("x", True, "a ULP threshold of the config newly exceeded")
    NEWLY_BATCH_DEPENDENT = ("b", True, "was batch-invariant, now a sample's bits depend on its batch")
    SLOWER = ("t", False, f"time per pass grew more than {SLOWDOWN_RATIO:g}x (reported, not failing)")
    FIXED = ("+", False, "was nondeterministic or failing, now is deterministic")
    ADDED = ("a", False, "cell only in the new run")
    REMOVED = ("r", False, "cell only in the base run")

    def __init__(self, mark: str, regression: bool, description: str):
        self.mark, self.regression, self.description = mark, regression, description

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


@dataclasses.dataclass(frozen=True)
class Change:
    """One change of one cell between the two runs."""

    category: Category
    cell_id: str
    label: str
    detail: str


@dataclasses.dataclass(frozen=True)
class RunComparison:
    """The result of :func:`compare_runs`."""

    base_id: str
    new_id: str
    environment: list[tuple[str, Any, Any]]
    ignored_axes: dict[str, tuple[Any, Any]]
    matched: int
    changes: list[Change]

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.category.regression]

    def verdict(self) -> str:
        counts = {cat: sum(c.category is cat for c in self.changes) for cat in Category}
        parts = [f"{n} {cat.label}" for cat, n in counts.items() if n]
        head = "REGRESSED" if self.regressions else "OK"
        return f"{head}: {self.matched} cells matched" + (f"; {', '.join(parts)}" if parts else "; no changes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base_id, "new": self.new_id, "regressed": bool(self.regressions),
            "verdict": self.verdict(), "matched": self.matched,
            "ignored_axes": {k: list(v) for k, v in self.ignored_axes.items()},
            "environment": [{"key": k, "base": b, "new": n} for k, b, n in self.environment],
            "changes": [{"mark": c.category.mark, "category": c.category.name, "cell_id": c.cell_id,
                         "cell": c.label, "detail": c.detail} for c in self.changes],
        }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        return {prefix: json.dumps(data, sort_keys=True, default=str)}
    return {prefix: data}


_VOLATILE = ("run_id", "started", "finished", "interrupted", "config_source", "groups", "resumed", "shard",
             "merged_from", "shards_started")


def environment_diff(base_meta: dict[str, Any], new_meta: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, base value, new value) for each environment fact that differs (versions, GPUs, env vars...)."""
    base, new = _flatten(base_meta), _flatten(new_meta)
    keys = sorted(set(base) | set(new))
    return [(k, base.get(k), new.get(k)) for k in keys
            if base.get(k) != new.get(k) and not k.startswith(_VOLATILE)]


def compare_runs(base: StoredRun, new: StoredRun) -> RunComparison:
    """Compare two runs cell by cell, matched on layer, parameters, input shape, settings and seed.

    When one axis holds a single value in each run and the two differ (the
    same config rerun with ``threads: 1``, say), cells are matched ignoring it:
    that is the question "what did this change do to the bits?".

    Raises:
        UsageError: a run is not a matrix run, or the two runs share no cell.
    """
    for run in (base, new):
        if run.config is None:
            raise UsageError(f"{run.path}: {_a(run.kind.value)} run; compare takes runs of `detaudit run`.")
    base_axes, new_axes = base.config.axes, new.config.axes
    ignored = {axis: (base_axes[axis][0], new_axes[axis][0]) for axis in AXES
               if len(base_axes[axis]) == 1 and len(new_axes[axis]) == 1 and base_axes[axis] != new_axes[axis]}

    def keyed(run: StoredRun, skip: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]] | None:
        columns = ["layer", "params", "input_shape", "seed", *[a for a in AXES if a not in skip]]
        verdicts = cell_verdicts(run.table) if len(run.table) else pd.DataFrame(columns=["cell_id", *columns])
        cells = {tuple(row[k] for k in columns): row for row in verdicts.to_dict("records")}
        return cells if len(cells) == len(verdicts) else None  # None: ignoring made two cells collide

    base_cells, new_cells = keyed(base, ignored), keyed(new, ignored)
    if base_cells is None or new_cells is None:
        ignored = {}
        base_cells, new_cells = keyed(base, ignored), keyed(new, ignored)
    assert base_cells is not None and new_cells is not None
    digests = {name: _digests(run.table) for name, run in (("base", base), ("new", new))}
    breaches = {name: _breaches(run) for name, run in (("base", base), ("new", new))}
    timing = {name: ms_per_cell(run.table) for name, run in (("base", base), ("new", new))}
    batch = {name: batch_dependent(run.table) for name, run in (("base", base), ("new", new))}
    changes: list[Change] = []
    for key, row in new_cells.items():
        label = cell_label(row)
        old = base_cells.get(key)
        if old is None:
            changes.append(Change(Category.ADDED, row["cell_id"], label, row["verdict"]))
            continue
        changes.extend(_cell_changes(old, row, label, digests, breaches))
        changes.extend(_batch_and_time(old["cell_id"], row["cell_id"], label, batch, timing))
    for key, row in base_cells.items():
        if key not in new_cells:
            changes.append(Change(Category.REMOVED, row["cell_id"], cell_label(row), row["verdict"]))
    order = list(Category)
    changes.sort(key=lambda c: (order.index(c.category), c.label))
    matched = len(set(base_cells) & set(new_cells))
    if not matched and base_cells and new_cells:
        raise UsageError(f"{base.run_id} and {new.run_id} share no cell (different layers, seeds or settings); "
                         "compare runs of the same config, or of configs that differ in one axis.")
    return RunComparison(base.run_id, new.run_id, environment_diff(base.meta, new.meta), ignored, matched, changes)


_FAILED = {Verdict.CRASH.value, Verdict.TIMEOUT.value, Verdict.ERROR.value, Verdict.UNSUPPORTED.value}


def _digests(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    rows = table[(table["comparison"] == "repeat") & table["tensor"].notna()]
    out: dict[str, dict[str, str]] = {}
    for row in rows[["cell_id", "tensor", "digest"]].to_dict("records"):
        out.setdefault(row["cell_id"], {})[row["tensor"]] = row["digest"]
    return out


def _batch_and_time(old_id: str, new_id: str, label: str, batch: dict[str, dict[str, bool]],
                    timing: dict[str, dict[str, float]]) -> list[Change]:
    """A cell that became batch-dependent, and one whose time per pass grew past :data:`SLOWDOWN_RATIO`."""
    changes = []
    if batch["base"].get(old_id) is False and batch["new"].get(new_id) is True:
        changes.append(Change(Category.NEWLY_BATCH_DEPENDENT, new_id, label, "batch-invariant -> batch-dependent"))
    before, after = timing["base"].get(old_id), timing["new"].get(new_id)
    if before and after and after / before > SLOWDOWN_RATIO:
        changes.append(Change(Category.SLOWER, new_id, label,
                              f"{before:.3g} -> {after:.3g} ms per pass ({after / before:.2f}x)"))
    return changes


def _breaches(run: StoredRun) -> dict[str, dict[tuple[str, str, Any], str]]:
    """Per cell, the threshold breaches keyed by (tensor, comparison, batch size), so a changed value is not new
    and a breach at another batch size is."""
    out: dict[str, dict[tuple[str, str, Any], str]] = {}
    for row in threshold_breaches(run.table, run.config).to_dict("records"):
        size = row.get("batch_size")
        key = (row["tensor"], row["comparison"], None if size is None or pd.isna(size) else int(size))
        out.setdefault(row["cell_id"], {})[key] = row["breach"]
    return out


def _cell_changes(old: dict[str, Any], new: dict[str, Any], label: str,
                  digests: dict[str, dict[str, dict[str, str]]],
                  breaches: dict[str, dict[str, dict[tuple[str, str, Any], str]]]) -> list[Change]:
    was, now, cell_id = old["verdict"], new["verdict"], new["cell_id"]
    if now in _FAILED and now != was:
        return [Change(Category.NEW_FAILURE, cell_id, label, f"{was} -> {now}: {new['message']}"[:300])]
    if now == Verdict.SKIPPED.value and was != now:
        # A nightly whose GPU vanished still runs its CPU cells: the GPU cells must not pass by disappearing.
        return [Change(Category.NEWLY_SKIPPED, cell_id, label, f"{was} -> {now}: {new['message']}"[:300])]
    changes = []
    if was == Verdict.DETERMINISTIC.value and now == Verdict.NONDETERMINISTIC.value:
        changes.append(Change(Category.NEWLY_NONDETERMINISTIC, cell_id, label, f"{was} -> {now}"))
    elif was in (_FAILED | {Verdict.NONDETERMINISTIC.value}) and now == Verdict.DETERMINISTIC.value:
        changes.append(Change(Category.FIXED, cell_id, label, f"{was} -> {now}"))
    before, after = digests["base"].get(old["cell_id"], {}), digests["new"].get(cell_id, {})
    changed = [t for t in after if t in before and after[t] != before[t]]
    if changed:
        changes.append(Change(Category.DIGEST_CHANGED, cell_id, label, ", ".join(changed)))
    now_breached, was_breached = breaches["new"].get(cell_id, {}), breaches["base"].get(old["cell_id"], {})
    fresh = [sentence for key, sentence in now_breached.items() if key not in was_breached]
    if fresh:
        changes.append(Change(Category.ULP_REGRESSION, cell_id, label, "; ".join(sorted(fresh))))
    return changes
