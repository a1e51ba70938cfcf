"""What each setting costs: time per pass against the baseline's, beside what the setting changes in the bits.

``ms_per_pass`` is the median warm forward+backward pass of a cell (see
:func:`detaudit.core.repeat.repeat_and_compare`). A setting's ratio is the
median, over seeds, of its cell's time over the baseline cell's (same layer,
same seed): measured in the same run, so a machine's overall speed cancels.
Pure Python.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from detaudit.analysis.sections import Section, SectionLine

__all__ = ["ms_per_cell", "time_ratios", "time_section"]


def ms_per_cell(table: Any) -> dict[str, float]:
    """Each timed cell's ``ms_per_pass`` from a results table (a cell's rows all carry the same; untimed: absent)."""
    if "ms_per_pass" not in table or not len(table):
        return {}
    return {k: float(v) for k, v in table.groupby("cell_id")["ms_per_pass"].max().dropna().items()}


def _baseline_ms(cells: Sequence[Any]) -> dict[tuple[str, int], float]:
    return {(c.layer, c.seed): c.ms_per_pass for c in cells if c.is_baseline and c.ms_per_pass}


def time_ratios(cells: Sequence[Any]) -> dict[str, float]:
    """Per cell id, its time per pass over its baseline cell's (absent where either was not timed)."""
    base = _baseline_ms(cells)
    return {c.cell_id: c.ms_per_pass / base[(c.layer, c.seed)] for c in cells
            if c.ms_per_pass is not None and (c.layer, c.seed) in base}


def _bits(cells: Sequence[Any]) -> str:
    gaps = [c.baseline for c in cells if c.baseline is not None]
    if not gaps:
        return "bits not compared"
    if all(g.identical for g in gaps):
        return "same bits"
    scaled = [g.max_ulp_scaled for g in gaps if g.max_ulp_scaled is not None]
    return f"bits differ, max {max(scaled):g} scaled ULP" if scaled else "bits differ"


def time_section(cells: Sequence[Any]) -> Section | None:
    """Per layer: the baseline's time per pass, then a line per setting: its ratio to it and what it does to the bits."""
    base = _baseline_ms(cells)
    layers: dict[str, dict[str, list[Any]]] = {}
    for c in cells:
        if c.time_ratio is not None and not c.is_baseline:
            layers.setdefault(c.layer, {}).setdefault(c.settings_label, []).append(c)
    lines = []
    for layer, settings in layers.items():
        base_ms = statistics.median(ms for (name, _), ms in base.items() if name == layer)
        lines.append(SectionLine(f"{layer}: baseline {base_ms:.3g} ms per pass"))
        lines.extend(SectionLine(f"  {label}: {statistics.median(c.time_ratio for c in group):.2f}x ({_bits(group)})")
                     for label, group in settings.items())
    if not lines:
        return None
    legend = ("time per forward+backward pass (median of the warm repeats) over the baseline cell's, same layer and "
              "seed, median over seeds; bits: the gap to the baseline cell")
    return Section("time", "Time per pass vs baseline", tuple(lines), legend)
