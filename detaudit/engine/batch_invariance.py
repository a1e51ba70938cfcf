"""The ``batch`` comparison, measured in the worker: the cell's samples run again at other batch sizes.

Imported only inside worker processes. The layer is built again at each batch
size through the worker's backend, as the cell was (the same seeded weights,
which do not depend on the batch), and each pass is fed the cell's own samples and
upstream gradients, as :func:`detaudit.core.batch.pass_plan` lays them out.
The comparisons themselves are :mod:`detaudit.core.batch` (pure NumPy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from detaudit.core import batch
from detaudit.core.config import Cell
from detaudit.errors import one_line

__all__ = ["Backend", "measure"]


@dataclasses.dataclass(frozen=True)
class Backend:
    """What the comparison needs of the worker's backend: build the cell's layer at another batch size (same
    seed, settings and device), and run a built pass on given host inputs."""

    build: Callable[[Any], Any]  # LayerSpec -> the backend's pass
    step_on: Callable[[Any, np.ndarray, np.ndarray], list[np.ndarray]]  # (pass, x, upstream) -> host tensors


def _passes(cell: Cell, case: Any, size: int, plan: np.ndarray, backend: Backend) -> list[list[np.ndarray]]:
    """Each pass of ``plan`` at batch ``size``: its tensors (in the case's order) as host copies."""
    from detaudit.engine.backends.keras_case import host_copy

    spec = dataclasses.replace(cell.layer, input_shape=(size, *cell.layer.input_shape[1:]))
    other = backend.build(spec)
    if other.names != case.names:
        raise ValueError(f"at batch size {size} the layer has tensors {other.names}, at {cell.layer.input_shape[0]} "
                         f"{case.names}")
    x, upstream = host_copy(case.x), host_copy(case.upstream)
    return [backend.step_on(other, x[samples], upstream[samples]) for samples in plan]


def measure(cell: Cell, case: Any, first: list[np.ndarray], truth: dict[str, np.ndarray] | None,
            backend: Backend) -> dict[str, Any]:
    """The cell's ``batch`` comparison (see :func:`_measure`); a size the layer cannot run at is data, the message."""
    try:
        return _measure(cell, case, first, truth, backend)
    except Exception as exc:  # noqa: BLE001 - the cell's own measurement stands; only this comparison failed
        return {"error": one_line(exc)}


def _measure(cell: Cell, case: Any, first: list[np.ndarray], truth: dict[str, np.ndarray] | None,
             backend: Backend) -> dict[str, Any]:
    """The cell's ``batch`` comparison: ``{"rows": [...]}``, or ``{"error": ...}`` when a size fails to run.

    Args:
        cell: the cell (its ``batch_sizes`` are the sizes compared; batch 1 is always run).
        case: the cell's built case (its input, upstream gradient and tensor names).
        first: the cell's first-repeat tensors, in the case's order.
        truth: the float64 reference of the cell's tensors, if the kind has one.
        backend: the worker's backend, bound to the cell's seed and settings (the other sizes are built alike).

    Per-sample tensors get a row for each size other than the cell's own;
    summed tensors one for each size other than 1 (the cell's own size
    included: its gradient against the per-sample sum).
    """
    own_batch = int(cell.layer.input_shape[0])
    own = dict(zip(case.names, first))
    sizes = sorted(set(cell.batch_sizes) | {1})
    plans = {size: batch.pass_plan(own_batch, size) for size in sorted(set(sizes) | {own_batch})}
    computed = {size: _passes(cell, case, size, plan, backend) for size, plan in plans.items() if size != own_batch}
    computed[own_batch] = [first]
    # One gradient per sample, each computed alone: the base of every summed comparison.
    alone = {name: [pass_[i] for pass_ in computed[1]] for i, name in enumerate(case.names)}
    rows = []
    for size, plan in plans.items():
        for i, name in enumerate(case.names):
            if name in batch.PER_SAMPLE:
                if size == own_batch:
                    continue
                other = np.concatenate([pass_[i] for pass_ in computed[size]])
                rows.append(batch.row(name, size, batch.compare_samples(other, plan.ravel(), own[name])))
            elif size != 1:
                summed = batch.compare_summed([pass_[i] for pass_ in computed[size]], alone[name], plan,
                                              None if truth is None else truth.get(name))
                rows.append(batch.row(name, size, summed))
    return {"rows": rows}
