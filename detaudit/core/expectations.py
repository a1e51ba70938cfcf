"""A config's ``expect`` section: what must hold for exit code 0, validated (every error at once) into
:class:`Expectations`, and held against the cells the config makes.

No TensorFlow here. Selector expectations (``deterministic``, ``batch_invariant``: one per judged comparison, see
:meth:`~detaudit.core.comparisons.ComparisonKind.selector_expectations`) take ``all``, ``none`` or a mapping of
axis -> values; the thresholds (``max_ulp``, ``max_ulp_scaled``) map a comparison to a limit per precision. The
summary judges them: selectors in :mod:`detaudit.analysis.summary` and each comparison's view (``batch_invariant``:
:mod:`detaudit.analysis.batch_view`), thresholds through :mod:`detaudit.core.thresholds`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from detaudit.core.axes import AXES
from detaudit.core.cells import axis_value
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.validation import Context, as_list, mapping
from detaudit.errors import did_you_mean

__all__ = ["MEASURES", "SELECTOR_EXPECTED", "Expectations", "check_coverage", "parse_expectations", "parse_selector"]

#: What a selector expectation takes, in every message that refuses one.
SELECTOR_EXPECTED = "all, none, or a mapping of axis -> values"
#: The threshold tables of ``expect``.
MEASURES = ("max_ulp", "max_ulp_scaled")
_ANY_PRECISION = "*"

Selector = tuple[tuple[str, tuple[Any, ...]], ...]
Table = tuple[tuple[str, tuple[tuple[str, float], ...]], ...]


@dataclasses.dataclass(frozen=True)
class Expectations:
    """What must hold for exit code 0.

    ``deterministic`` selects the cells whose run-to-run comparisons must be
    bitwise equal: None means every cell, an empty tuple none, otherwise the
    cells whose settings match every listed axis. ``max_ulp`` /
    ``max_ulp_scaled`` map a comparison (``baseline``, ...) to a threshold per
    precision (key ``"*"`` for any precision).
    """

    deterministic: Selector | None = None
    max_ulp: Table = ()
    max_ulp_scaled: Table = ()
    batch_invariant: Selector | None = ()  # default: none

    def selects(self, name: str, settings: Any) -> bool:
        """Whether the selector expectation ``name`` (``deterministic``, ``batch_invariant``) covers ``settings``."""
        selector = getattr(self, name)
        if selector is None:
            return True
        if not selector:
            return False
        return all(getattr(settings, axis) in values for axis, values in selector)

    def must_be_deterministic(self, settings: Any) -> bool:
        return self.selects("deterministic", settings)

    def threshold(self, kind: str, comparison: str, precision: str) -> float | None:
        table = dict(dict(getattr(self, kind)).get(comparison, ()))
        return table.get(precision, table.get(_ANY_PRECISION))


def parse_selector(value: Any, ctx: Context) -> Selector | None:
    """``all`` or true (None: every cell), ``none`` or false (empty: no cell), or the cells matching every listed
    axis. Only real booleans count as true and false: ``1`` and ``0`` are refused, not read as all and none."""
    if value is True or (isinstance(value, str) and value == "all"):
        return None
    if value is False or (isinstance(value, str) and value == "none"):
        return ()
    if not isinstance(value, dict):
        hint = did_you_mean(value, ("all", "none")) if isinstance(value, str) else ""
        raise ctx.fail(SELECTOR_EXPECTED, value, hint)
    known = len(ctx.errors)
    selector = mapping(value, ctx, tuple(AXES))
    parsed = tuple((axis, tuple(axis_value(axis, v, ctx.at(axis).at(i)) for i, v in enumerate(as_list(vals))))
                   for axis, vals in selector.items())
    if not parsed and len(ctx.errors) == known:  # an unknown key was reported already
        raise ctx.fail(SELECTOR_EXPECTED, value)
    return parsed


def _limit(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < math.inf


def _table(raw: Any, ctx: Context) -> Table:
    """One threshold table: comparison -> a limit, or precision (or ``"*"``) -> limit; every bad limit recorded."""
    precisions = (*(AXES["precision"].choices or ()), _ANY_PRECISION)
    parsed = []
    for comparison, per_precision in mapping(raw, ctx, ComparisonKind.with_thresholds()).items():
        cctx = ctx.at(comparison)
        if not isinstance(per_precision, dict):
            if not _limit(per_precision):
                ctx.errors.append(cctx.fail("a finite number >= 0, or a mapping of precision (or \"*\") to such a "
                                            "number", per_precision))
                continue
            per_precision = {_ANY_PRECISION: per_precision}
        per = mapping(per_precision, cctx, precisions)
        bad = [p for p, limit in per.items() if not _limit(limit)]
        ctx.errors.extend(cctx.at(p).fail("a finite number >= 0", per[p]) for p in bad)
        if not bad:
            parsed.append((comparison, tuple(sorted(per.items()))))
    return tuple(parsed)


def parse_expectations(raw: Any, ctx: Context) -> Expectations:
    """The ``expect`` mapping (None: nothing expected beyond the defaults); its errors recorded at ``ctx``."""
    selectors = ComparisonKind.selector_expectations()
    data = mapping({} if raw is None else raw, ctx, (*selectors, *MEASURES))
    known = len(ctx.errors)  # an unknown key of `expect` is recorded, and the rest still holds
    chosen = {name: ctx.attempt(parse_selector, data[name], ctx.at(name)) for name in selectors if name in data}
    tables = {kind: ctx.attempt(_table, data.get(kind, {}), ctx.at(kind)) for kind in MEASURES}
    if len(ctx.errors) > known:
        ctx.raise_errors()  # each recorded already: the caller's attempt() takes this as INVALID
    return Expectations(**tables, **chosen)


def check_coverage(expect: Expectations, present: Mapping[str, tuple[Any, ...]], ctx: Context) -> None:
    """Record an error for each part of ``expect`` that no cell can meet: a selector axis none of whose values
    any cell has, a threshold for a precision no cell runs in. ``present``: per axis, the values the cells have
    (the matrix's and the baseline's). A list of values names alternatives (``determinism: [on, env]``), so it is
    refused only when no cell has any of them."""
    def have(axis: str) -> str:
        return f"{axis}: [{', '.join(map(str, present[axis]))}]"

    for name in ComparisonKind.selector_expectations():
        for axis, values in getattr(expect, name) or ():
            if not set(values) & set(present[axis]):
                shown = values[0] if len(values) == 1 else list(values)
                ctx.errors.append(ctx.at(name).at(axis).fail(
                    f"a value some cell has; no cell has {axis}={'|'.join(map(str, values))} (the matrix and the "
                    f"baseline give {have(axis)})", shown))
    for kind in MEASURES:
        for comparison, limits in getattr(expect, kind):
            for precision, limit in limits:
                if precision != _ANY_PRECISION and precision not in present["precision"]:
                    ctx.errors.append(ctx.at(kind).at(comparison).at(precision).fail(
                        f"a precision some cell runs in, or \"*\"; no cell has precision={precision} (the matrix "
                        f"and the baseline give {have('precision')})", limit))
