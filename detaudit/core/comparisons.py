"""The comparisons a run makes, as a type: what each compares, where it is measured and what it decides.

Every ``comparison`` value of the results table is a :class:`ComparisonKind`;
its :class:`ComparisonSpec` is the one place that says where it is measured,
whether it decides a cell's verdict, whether a config may set ULP thresholds on
it, and how it is labelled (colours: :mod:`detaudit.render.theme`). Renderers, the table builder and the
config validator read these; none of them spells the names on its own.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["ComparisonKind", "ComparisonSpec", "Role"]


class Role(enum.Enum):
    """What a comparison's differences mean."""

    DETERMINISM = "determinism"  # any difference makes the cell NONDETERMINISTIC
    DRIFT = "drift"  # a gap between two settings: measured, judged only by thresholds
    ACCURACY = "accuracy"  # a gap to the float64 truth: measured, judged only by thresholds
    IDENTITY = "identity"  # a mathematical identity: fails above a fixed limit (a TensorFlow bug)
    INVARIANCE = "invariance"  # the same sample in another batch: judged by `expect.batch_invariant`


@dataclasses.dataclass(frozen=True)
class ComparisonSpec:
    """How one comparison kind behaves."""

    label: str  # column or section title
    description: str
    measured_in: str  # "worker" (in the cell's process) or "parent" (from two cells' stored tensors)
    role: Role
    thresholds: bool  # whether `expect.max_ulp` / `max_ulp_scaled` may name it
    #: The selector expectation (`expect.<name>: all|none|{axis: values}`) that judges this comparison's
    #: differences, or None when only thresholds (or a fixed limit) judge it.
    expectation: str | None = None
    #: The module (loaded by the summary, never by core) whose ``section(table)`` and ``failures(table, config)``
    #: say what this comparison found beyond the cell table, and which cells break its expectation; None for the
    #: comparisons the cell table and the thresholds already show.
    view: str | None = None


class ComparisonKind(str, enum.Enum):
    """The ``comparison`` column of the results table, in table order."""

    REPEAT = "repeat"
    PROCESS = "process"
    BASELINE = "baseline"
    REFERENCE = "reference"
    ADJOINT = "adjoint"
    BATCH = "batch"

    @property
    def spec(self) -> ComparisonSpec:
        return _SPECS[self]

    @property
    def order(self) -> int:
        return list(ComparisonKind).index(self)

    @property
    def decides_determinism(self) -> bool:
        return self.spec.role is Role.DETERMINISM

    @classmethod
    def selector_expectations(cls) -> tuple[str, ...]:
        """The `expect` keys that take a selector (all, none, or axis -> values), one per judged comparison."""
        return tuple(dict.fromkeys(kind.spec.expectation for kind in cls if kind.spec.expectation))

    @classmethod
    def with_thresholds(cls) -> tuple[str, ...]:
        return tuple(kind.value for kind in cls if kind.spec.thresholds)

    @classmethod
    def deciding_determinism(cls) -> tuple[str, ...]:
        return tuple(kind.value for kind in cls if kind.decides_determinism)

    def __str__(self) -> str:
        return self.value


_SPECS = {
    ComparisonKind.REPEAT: ComparisonSpec(
        "run to run", "each repeat against the first, same process", "worker", Role.DETERMINISM, True,
        "deterministic"),
    ComparisonKind.PROCESS: ComparisonSpec(
        "fresh process", "the cell replayed in a second fresh worker (replay_process: true)", "parent",
        Role.DETERMINISM, True, "deterministic"),
    ComparisonKind.BASELINE: ComparisonSpec(
        "vs baseline", "the cell against the baseline cell (same layer and seed), in the narrower compute dtype",
        "parent", Role.DRIFT, True),
    ComparisonKind.REFERENCE: ComparisonSpec(
        "vs float64", "the cell against an independent NumPy float64 computation from the same values, rounded to "
        "each tensor's dtype", "worker", Role.ACCURACY, True),
    ComparisonKind.ADJOINT: ComparisonSpec(
        "adjoint", "the dot-product test <conv(z), x> = <z, conv_transpose(x)> in epsilons, and the reconstruction "
        "error of conv_transpose(conv(z))", "worker", Role.IDENTITY, False),
    ComparisonKind.BATCH: ComparisonSpec(
        "batch", "each sample's output and input gradient computed at another batch size (`batch_sizes`) against "
        "its slice of the cell's pass; variable gradients (sums over the batch) against the float64 sum of the "
        "per-sample gradients", "worker", Role.INVARIANCE, True, "batch_invariant",
        "detaudit.analysis.batch_view"),
}
