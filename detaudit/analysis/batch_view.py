"""What the ``batch`` comparison says: the summary's section, and the ``expect.batch_invariant`` check.

Per-sample tensors (the output, the input gradient) decide batch invariance,
bit for bit; a variable's gradient is a sum over the batch, so its gap to the
float64 sum of the per-sample gradients is reported (relative, in ULP, and
which batch size is closer to the float64 truth) but judged only by
thresholds (``expect.max_ulp: {batch: ...}``). Pure pandas.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from detaudit.analysis.findings import percent, relative_error
from detaudit.analysis.sections import Section, SectionLine
from detaudit.analysis.verdicts import known_bool, layer_label, rows_by_cell, settings_of
from detaudit.core.batch import PER_SAMPLE
from detaudit.core.comparisons import ComparisonKind

__all__ = ["batch_dependent", "batch_failures", "batch_section", "cell_sentence", "failures", "section"]

_BATCH = ComparisonKind.BATCH.value
_MAX_LINES = 24


def _rows(table: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    rows = table[table["comparison"] == _BATCH]
    return rows_by_cell(rows, list(rows.columns)) if len(rows) else {}


def _own_batch(row: dict[str, Any]) -> int:
    shape = row["input_shape"]
    return int((json.loads(shape) if isinstance(shape, str) else list(shape))[0])


def _differs(row: dict[str, Any]) -> bool:
    return row["tensor"] in PER_SAMPLE and known_bool(row["bitwise_equal"]) is False


def _per_sample_phrase(row: dict[str, Any], own: int) -> str:
    if not _differs(row):
        return f"{row['tensor']} identical"
    return (f"{row['tensor']} {int(row['n_samples_differ'])}/{own} samples differ, max {int(row['max_ulp']):,} ULP "
            f"(sample {int(row['sample'])})")


def _summed_phrase(row: dict[str, Any]) -> str:
    closer = row.get("closer_batch")
    truth = "" if closer is None or pd.isna(closer) else f" (batch {int(closer)} closer to float64)"
    return (f"{row['tensor']} at batch {int(row['batch_size'])} {percent(relative_error(row))} from the per-sample "
            f"float64 sum{truth}")


def cell_sentence(rows: list[dict[str, Any]]) -> str:
    """One cell's batch comparison in a sentence: ``batch 4 vs 1: output 3/4 samples differ, max 2 ULP (sample 1),
    grad_input identical; grad_kernel at batch 4 <0.001% from the per-sample float64 sum (...)``."""
    errors = [r for r in rows if r["status"] != "ok"]
    if errors:
        return f"not measured: {errors[0]['message']}"
    own = _own_batch(rows[0])
    sizes = sorted({int(r["batch_size"]) for r in rows if r["tensor"] in PER_SAMPLE})
    parts = [f"batch {own} vs {size}: " + ", ".join(
        _per_sample_phrase(r, own) for r in rows if r["tensor"] in PER_SAMPLE and int(r["batch_size"]) == size)
        for size in sizes]
    summed = [r for r in rows if r["tensor"] not in PER_SAMPLE]
    worst: dict[str, dict[str, Any]] = {}
    for r in summed:  # per tensor, the size farthest from the per-sample sum
        if r["tensor"] not in worst or (relative_error(r) or 0) > (relative_error(worst[r["tensor"]]) or 0):
            worst[r["tensor"]] = r
    if worst:
        parts.append(", ".join(_summed_phrase(r) for r in worst.values()))
    return "; ".join(parts)


def batch_section(table: pd.DataFrame) -> Section | None:
    """One line per layer and outcome (the cells that say the same thing share it), differing samples first."""
    by_cell = _rows(table)
    if not by_cell:
        return None
    same: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for rows in by_cell.values():
        same.setdefault((layer_label(rows[0]), cell_sentence(rows)), []).append(rows)
    lines = []
    for (layer, sentence), cells in same.items():
        labels = " | ".join(dict.fromkeys(f"{settings_of(r[0]).label()}, seed={r[0]['seed']}" for r in cells))
        lines.append(SectionLine(f"{layer} [{labels}]: {sentence}", any(_differs(r) for rows in cells for r in rows)))
    lines.sort(key=lambda line: not line.notable)
    if len(lines) > _MAX_LINES:
        more = len(lines) - _MAX_LINES
        lines = [*lines[:_MAX_LINES], SectionLine(f"… and {more} more cell(s) (detaudit show --json, or "
                                                  "results.parquet: comparison == 'batch')")]
    legend = ("each sample's output and input gradient at another batch size against its slice of the cell's "
              "own pass (bit for bit); variable gradients are sums over the batch: held to the float64 sum of the "
              "per-sample gradients, as a percentage of its largest value")
    return Section("batch", "Batch invariance", tuple(lines), legend)


def batch_failures(table: pd.DataFrame, config: Any) -> dict[str, list[str]]:
    """Per cell selected by ``expect.batch_invariant``, why it is not: the sample, the tensor, the batch sizes."""
    failures: dict[str, list[str]] = {}
    for cell_id, rows in _rows(table).items():
        if not config.expect.selects("batch_invariant", settings_of(rows[0])):
            continue
        own = _own_batch(rows[0])
        for r in rows:
            if r["status"] != "ok":
                failures.setdefault(cell_id, []).append(f"expected batch-invariant, not measured: {r['message']}")
            elif _differs(r):
                failures.setdefault(cell_id, []).append(
                    f"expected batch-invariant: {r['tensor']} of sample {int(r['sample'])} differs between batch "
                    f"{own} and batch {int(r['batch_size'])} ({int(r['n_samples_differ'])}/{own} samples, max "
                    f"{int(r['max_ulp']):,} ULP)")
    return failures


section, failures = batch_section, batch_failures  # the view protocol of ComparisonSpec.view


def batch_dependent(table: pd.DataFrame) -> dict[str, bool]:
    """Per cell with a measured batch comparison, whether some sample's bits depend on its batch."""
    return {cell_id: any(_differs(r) for r in rows) for cell_id, rows in _rows(table).items()
            if all(r["status"] == "ok" for r in rows)}
