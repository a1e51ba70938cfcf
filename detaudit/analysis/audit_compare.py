"""Two audits of one training compared: "will the cluster reproduce my workstation?" (NumPy, no framework).

Environment differences come first (as for runs), then whether the losses and
the final weights match, and where they do not, how far apart each variable is
(ULP, and relative to the larger magnitude).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from detaudit.analysis.compare import environment_diff
from detaudit.analysis.runs import StoredRun
from detaudit.core.numerics import compare
from detaudit.engine.store import RunKind
from detaudit.errors import UsageError

__all__ = ["AuditComparison", "compare_audits"]

FINAL_WEIGHTS = "final_weights.npz"  # written by detaudit.workflows.audit


@dataclasses.dataclass
class AuditComparison:
    """The view model of ``detaudit compare`` of two audits."""

    base: str
    new: str
    environment: list[tuple[str, Any, Any]]
    same_training: bool
    losses_equal: bool
    first_loss_difference: int | None  # the first step whose losses differ
    weights_equal: bool
    variables: list[dict[str, Any]]  # per differing variable: name, max_ulp, max_relative

    @property
    def reproduced(self) -> bool:
        return self.losses_equal and self.weights_equal

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["environment"] = [{"field": f, "base": a, "new": b} for f, a, b in self.environment]
        data["reproduced"] = self.reproduced
        return data


def _finals(run: StoredRun) -> dict[str, np.ndarray] | None:
    path = Path(run.path) / FINAL_WEIGHTS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def compare_audits(base: StoredRun, new: StoredRun) -> AuditComparison:
    """Compare two stored audits. Raises UsageError for runs that are not audits of the same training."""
    for run in (base, new):
        if run.kind is not RunKind.AUDIT:
            raise UsageError(f"{run.path}: not an audit; compare takes two audits, or two runs of `detaudit run`.")
    a, b = base.result or {}, new.result or {}
    same = a.get("model") == b.get("model") and a.get("seed") == b.get("seed") and a.get("steps") == b.get("steps")
    losses_a, losses_b = a.get("losses") or [], b.get("losses") or []
    first_loss = next((i + 1 for i, (x, y) in enumerate(zip(losses_a, losses_b)) if x != y), None)
    if first_loss is None and len(losses_a) != len(losses_b):
        first_loss = min(len(losses_a), len(losses_b)) + 1
    names = [name for name, _ in a.get("final_digests") or []]
    digests_a = [d for _, d in a.get("final_digests") or []]
    digests_b = [d for _, d in b.get("final_digests") or []]
    weights_equal = digests_a == digests_b
    variables = []
    finals_a, finals_b = _finals(base), _finals(new)
    if not weights_equal and finals_a is not None and finals_b is not None:
        for i, name in enumerate(names):
            x, y = finals_a.get(f"v{i}"), finals_b.get(f"v{i}")
            if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
                variables.append({"variable": name, "max_ulp": None, "max_relative": None, "note": "not comparable"})
                continue
            if x.tobytes() == y.tobytes():
                continue
            result = compare(x, y, digest=False)
            scale = float(np.max(np.abs(x.astype(np.float64)))) or 1.0
            relative = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) / scale
            variables.append({"variable": name, "max_ulp": int(result.max_ulp), "max_relative": relative,
                              "n_differ": int(result.n_mismatch), "size": int(x.size)})
    elif not weights_equal:
        variables = [{"variable": n, "max_ulp": None, "max_relative": None, "note": "final weights not stored"}
                     for n, x, y in zip(names, digests_a, digests_b) if x != y]
    return AuditComparison(base.run_id, new.run_id, environment_diff(base.meta, new.meta), same, first_loss is None,
                           first_loss, weights_equal, variables)
