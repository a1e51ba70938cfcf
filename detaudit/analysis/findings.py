"""Findings: what differs, where, by how much, in plain words and units. Pure pandas; no TensorFlow.

A finding is one line of a summary: run-to-run nondeterminism under some
settings, or a gap between the baseline and other settings. Each tensor's gap
is told in raw ULP (counted at each element, which explodes near zero), in
scaled ULP (the largest difference in units of the spacing at the tensor's
largest magnitude) and, where the float64 truth exists, as the relative error
of each side against it in percent, with the side that is closer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from detaudit.analysis.verdicts import layer_label, settings_of
from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind, Role
from detaudit.core.numerics import float_info

__all__ = ["Finding", "TensorGap", "findings", "layer_label", "percent", "relative_error", "ulp_unit"]

#: The comparisons a finding is made of (run to run, and drift from the baseline), in table order.
_GAP_KINDS = [kind.value for kind in ComparisonKind if kind.spec.role in (Role.DETERMINISM, Role.DRIFT)]


def ulp_unit(dtype: str) -> str:
    """What one ULP is at 1.0 in ``dtype``: ``2^-23 (1.2e-07)`` for float32."""
    info = float_info(dtype)
    return f"2^-{int(info.nmant)} ({float(info.eps):.2g})"


def relative_error(row: dict[str, Any]) -> float | None:
    """Largest absolute difference over the reference's largest magnitude (None where not measured)."""
    scale, gap = row.get("ref_scale"), row.get("max_abs")
    if scale is None or gap is None or pd.isna(scale) or pd.isna(gap):
        return None
    if scale == 0:
        return 0.0 if gap == 0 else math.inf
    return float(gap) / float(scale)


def percent(fraction: float | None) -> str:
    """A relative error as a readable percentage: ``0%``, ``<0.001%``, ``0.23%``, ``21%`` (``-``: not measured)."""
    if fraction is None:
        return "-"
    pct = 100 * fraction
    if pct == 0 or math.isinf(pct):
        return "0%" if pct == 0 else "inf%"
    if pct < 0.001:
        return "<0.001%"
    return f"{pct:.2g}%" if pct < 10 else f"{pct:.0f}%"


@dataclasses.dataclass(frozen=True)
class TensorGap:
    """How one tensor differs within a finding (worst over the seeds pooled).

    ``truth`` is (error of the baseline side, error of this side) against the
    float64 reference, as fractions of its largest magnitude, where measured.
    """

    tensor: str
    dtype: str | None
    n_mismatch: int
    n_elements: int
    max_ulp: int
    max_ulp_scaled: float
    n_repeats_differ: int | None = None
    n_repeats_compared: int | None = None
    truth: tuple[float | None, float | None] | None = None
    known: str | None = None  # a known upstream bug this gap shows (its link or "not yet reported")
    op: str | None = None  # the TensorFlow op that produced the tensor ("BiasAddGrad (CPU:0, bfloat16)")

    def phrase(self, sides: tuple[str, str] | None = None) -> str:
        repeats = ""
        if self.n_repeats_differ is not None and self.n_repeats_compared:
            repeats = f" in {self.n_repeats_differ}/{self.n_repeats_compared} repeats"
        scaled = "" if math.isnan(self.max_ulp_scaled) else f", {self.max_ulp_scaled:,.3g} scaled"
        unit = f" {self.dtype}" if self.dtype else ""
        op = f" [{self.op}]" if self.op else ""
        text = (f"{self.tensor}{op}{repeats}: {self.n_mismatch:,}/{self.n_elements:,} elements differ, "
                f"max {self.max_ulp:,}{unit} ULP raw{scaled}")
        if self.truth and sides and any(v is not None for v in self.truth):
            left, right = self.truth
            text += f"; vs float64 {percent(left)} -> {percent(right)}"
            if left is not None and right is not None and left != right:
                text += f" ({sides[0] if left < right else sides[1]} is closer)"
        if self.known:
            text += f" [KNOWN: {self.known}]"
        return text


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of a summary: what differs, where, and by how much.

    ``comparison`` is ``repeat`` or ``process`` (run-to-run nondeterminism under
    the settings in ``between``) or ``baseline`` (a gap between two settings:
    ``between`` is ``(before, after)``).
    """

    layer: str
    comparison: str
    between: tuple[str, str] | str
    n_axes: int
    gaps: tuple[TensorGap, ...]
    cell_id: str | None = None  # the cell showing the largest gap: what `detaudit triage --cell` takes

    @property
    def where(self) -> str:
        return f"{self.layer} (cell {self.cell_id})" if self.cell_id else self.layer

    @property
    def worst_scaled(self) -> float:
        values = [g.max_ulp_scaled for g in self.gaps if not math.isnan(g.max_ulp_scaled)]
        return max(values, default=0.0)

    @property
    def run_to_run(self) -> bool:
        return ComparisonKind(self.comparison).decides_determinism

    def sentence(self) -> str:
        if self.run_to_run:
            what = ("nondeterministic run to run" if self.comparison == ComparisonKind.REPEAT.value
                    else "differs in a fresh process")
            return f"{self.where}: {what} under {self.between}: " + "; ".join(g.phrase() for g in self.gaps)
        before, after = self.between
        return f"{self.where}: {before} -> {after}: " + "; ".join(g.phrase((before, after)) for g in self.gaps)


def _axes_changed(row: dict[str, Any], baseline: Any) -> list[str]:
    return [axis for axis in AXES if row[axis] != getattr(baseline, axis)]


def _sides(row: dict[str, Any], baseline: Any) -> tuple[str, str]:
    diff = _axes_changed(row, baseline)
    return (", ".join(f"{a}={getattr(baseline, a)}" for a in diff), ", ".join(f"{a}={row[a]}" for a in diff))


def _text(value: Any) -> str | None:
    return None if value is None or pd.isna(value) or not str(value) else str(value)


def _int(value: Any) -> int:
    return 0 if value is None or pd.isna(value) else int(value)


def findings(table: pd.DataFrame, baseline: Any, known: dict[tuple[str, str], str] | None = None) -> list[Finding]:
    """Differing tensors grouped by layer and by what differs, seeds pooled.

    A baseline gap is reported once, under the fewest changed settings that
    produce it: a cell whose tensor is bit-identical to that of a cell with
    fewer changes (determinism=off vs on on a CPU, say) adds nothing.
    ``known`` maps (cell id, tensor) to a known upstream bug's reference, to mark it.
    """
    known = known or {}
    differing = table[(table["bitwise_equal"] == False) & table["tensor"].notna()  # noqa: E712
                      & table["comparison"].isin(_GAP_KINDS)].to_dict("records")
    truth = {(r["cell_id"], r["tensor"]): relative_error(r)
             for r in table[table["comparison"] == ComparisonKind.REFERENCE.value].to_dict("records")}

    def same_bits(row: dict[str, Any]) -> tuple[Any, ...]:  # cells whose tensor has these exact bits
        return row["layer"], row["params"], row["input_shape"], row["seed"], row["tensor"], row["digest"]

    simplest: dict[tuple[Any, ...], int] = {}
    for row in differing:
        if row["comparison"] == ComparisonKind.BASELINE.value:
            key = same_bits(row)
            simplest[key] = min(simplest.get(key, 99), len(_axes_changed(row, baseline)))
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for row in differing:
        n_axes = len(_axes_changed(row, baseline))
        if row["comparison"] == ComparisonKind.BASELINE.value:
            if n_axes > simplest[same_bits(row)]:
                continue
            between: tuple[str, str] | str = _sides(row, baseline)
        else:
            between = settings_of(row).label()
        key = (layer_label(row), row["comparison"], between, n_axes)
        groups.setdefault(key, {}).setdefault(row["tensor"], []).append(row)
    out = []
    for (layer, comparison, between, n_axes), per_tensor in groups.items():
        gaps, worst_cell = [], (-1.0, None)
        for tensor, rows in per_tensor.items():
            worst = max(rows, key=lambda r: (_int(r["max_ulp"]), _int(r["n_mismatch"])))
            scaled = [r["max_ulp_scaled"] for r in rows if not pd.isna(r["max_ulp_scaled"])]
            repeats = [_int(r["n_repeats_differ"]) for r in rows if not pd.isna(r["n_repeats_differ"])]
            sides = None
            if comparison == ComparisonKind.BASELINE.value:
                sides = (truth.get((worst["reference_cell"], tensor)), truth.get((worst["cell_id"], tensor)))
            gaps.append(TensorGap(
                tensor, None if pd.isna(worst["dtype"]) else str(worst["dtype"]), _int(worst["n_mismatch"]),
                _int(worst["n_elements"]), _int(worst["max_ulp"]), max(scaled) if scaled else math.nan,
                max(repeats) if repeats else None,
                int(worst["repeats"]) - 1 if comparison == ComparisonKind.REPEAT.value else None,
                sides, known.get((worst["cell_id"], tensor)), _text(worst.get("op"))))
            size = max(scaled) if scaled else float(_int(worst["max_ulp"]))
            if size > worst_cell[0]:
                worst_cell = (size, worst["cell_id"])
        out.append(Finding(layer, comparison, between, n_axes, tuple(gaps), worst_cell[1]))
    return sorted(out, key=lambda f: (ComparisonKind(f.comparison).order, f.n_axes, -f.worst_scaled, f.layer))
