"""A config's ULP thresholds as objects that test a results row and say why it failed. Pure Python (a batch row
loads :mod:`detaudit.core.batch` to tell per-sample tensors from summed ones).

In the way of pytest-benchmark's ``RegressionCheck``: a threshold knows its
measure (``max_ulp`` or ``max_ulp_scaled``), the comparison it watches and its
limit per precision, and produces its own failure sentence, so no caller loops
over measure names or digs in nested tuples.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

from detaudit.core.comparisons import ComparisonKind

__all__ = ["Measure", "UlpThreshold", "ulp_thresholds"]

#: The key of a limit that holds for any precision without one of its own.
ANY_PRECISION = "*"


class Measure(str, enum.Enum):
    """A results-table column a config may bound (``expect.max_ulp``, ``expect.max_ulp_scaled``)."""

    MAX_ULP = "max_ulp"
    MAX_ULP_SCALED = "max_ulp_scaled"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class UlpThreshold:
    """At most ``limits[precision]`` (or ``limits["*"]``) of ``measure`` in the rows of ``comparison``."""

    measure: Measure
    comparison: ComparisonKind
    limits: Mapping[str, float]

    def limit_for(self, precision: str) -> float | None:
        """The limit for cells of this precision; None when none is set for it."""
        return self.limits.get(precision, self.limits.get(ANY_PRECISION))

    def applies_to(self, row: Mapping[str, Any]) -> bool:
        """The row is one this threshold watches and has a value of its measure."""
        value = row.get(self.measure.value)
        return row.get("comparison") == self.comparison.value and value is not None and value == value  # not NaN

    def failure(self, row: Mapping[str, Any]) -> str | None:
        """Why the row breaks this threshold, in one sentence (``grad_bias baseline max_ulp 9 > 4``; a batch row
        names its sizes: ``output batch 4 vs 1: max_ulp 1 > 0``); None if not."""
        if not self.applies_to(row):
            return None
        limit, value = self.limit_for(str(row.get("precision"))), row[self.measure.value]
        if limit is None or not value > limit:
            return None
        if self.comparison is ComparisonKind.BATCH:
            return f"{row.get('tensor')} {_batch_pair(row)}: {self.measure.value} {value:g} > {limit:g}"
        return f"{row.get('tensor')} {self.comparison.value} {self.measure.value} {value:g} > {limit:g}"

    def fails(self, row: Mapping[str, Any]) -> bool:
        """The row breaks this threshold."""
        return self.failure(row) is not None


def _batch_pair(row: Mapping[str, Any]) -> str:
    """What a ``batch`` row compares: a per-sample tensor at the cell's own batch against the same samples at
    ``batch_size`` (``batch 4 vs 1``, as the batch section says it), a summed one (a variable's gradient) at
    ``batch_size`` against the per-sample sum."""
    from detaudit.core.batch import PER_SAMPLE  # NumPy: loaded only where a batch row is judged

    size = row.get("batch_size")
    if row.get("tensor") not in PER_SAMPLE:
        return f"batch {size} vs the per-sample sum"
    shape = row.get("input_shape")
    own = (json.loads(shape) if isinstance(shape, str) else list(shape or [None]))[0]
    return f"batch {own} vs {size}"


def ulp_thresholds(expect: Any) -> list[UlpThreshold]:
    """The thresholds of a config's :class:`~detaudit.core.expectations.Expectations`, ``max_ulp`` ones first.

    ``Expectations`` keeps them as ``((comparison, ((precision, limit), ...)), ...)`` per measure; this is the
    one place that reads that form.
    """
    return [UlpThreshold(measure, ComparisonKind(comparison), dict(limits))
            for measure in Measure for comparison, limits in getattr(expect, measure.value)]
