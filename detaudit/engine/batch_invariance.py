"""The ``batch`` comparison, measured in the worker: the cell's samples run again at other batch sizes.

Imported only inside worker processes (it imports TensorFlow). The layer is
built again at each batch size through the same builder as the cell
(:func:`detaudit.engine.cases.build_case`: the same seeded weights, which do
not depend on the batch), and each pass is fed the cell's own samples and
upstream gradients, as :func:`detaudit.core.batch.pass_plan` lays them out.
The comparisons themselves are :mod:`detaudit.core.batch` (pure NumPy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from detaudit.core import batch
from detaudit.core.config import Cell
from detaudit.errors import one_line

__all__ = ["measure"]


def _passes(cell: Cell, case: Any, size: int, plan: np.ndarray, xla: bool) -> list[list[np.ndarray]]:
    """Each pass of ``plan`` at batch ``size``: its tensors (in the case's order) as host copies."""
    import tensorflow as tf

    from detaudit.engine.cases import build_case

    spec = dataclasses.replace(cell.layer, input_shape=(size, *cell.layer.input_shape[1:]))
    other = build_case(spec, cell.seed, xla=xla)
    if other.names != case.names:
        raise ValueError(f"at batch size {size} the layer has tensors {other.names}, at {cell.layer.input_shape[0]} "
                         f"{case.names}")
    x, upstream = np.asarray(case.x), np.asarray(case.upstream)
    return [[np.array(t) for t in other.concrete(tf.constant(x[samples]), tf.constant(upstream[samples]))]
            for samples in plan]


def measure(cell: Cell, case: Any, first: list[np.ndarray], truth: dict[str, np.ndarray] | None,
            xla: bool) -> dict[str, Any]:
    """The cell's ``batch`` comparison (see :func:`_measure`); a size the layer cannot run at is data, the message."""
    try:
        return _measure(cell, case, first, truth, xla)
    except Exception as exc:  # noqa: BLE001 - the cell's own measurement stands; only this comparison failed
        return {"error": one_line(exc)}


def _measure(cell: Cell, case: Any, first: list[np.ndarray], truth: dict[str, np.ndarray] | None,
             xla: bool) -> dict[str, Any]:
    """The cell's ``batch`` comparison: ``{"rows": [...]}``, or ``{"error": ...}`` when a size fails to run.

    Args:
        cell: the cell (its ``batch_sizes`` are the sizes compared; batch 1 is always run).
        case: the cell's built case (its input, upstream gradient and tensor names).
        first: the cell's first-repeat tensors, in the case's order.
        truth: the float64 reference of the cell's tensors, if the kind has one.
        xla: whether the cell's pass is compiled with XLA (the other sizes are compiled alike).

    Per-sample tensors get a row for each size other than the cell's own;
    summed tensors one for each size other than 1 (the cell's own size
    included: its gradient against the per-sample sum).
    """
    own_batch = int(cell.layer.input_shape[0])
    own = dict(zip(case.names, first))
    sizes = sorted(set(cell.batch_sizes) | {1})
    plans = {size: batch.pass_plan(own_batch, size) for size in sorted(set(sizes) | {own_batch})}
    computed = {size: _passes(cell, case, size, plan, xla) for size, plan in plans.items() if size != own_batch}
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
