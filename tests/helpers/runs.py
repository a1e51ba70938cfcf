"""Fabricated runs: records made the way the worker makes them, from NumPy tensors (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from detaudit.core.config import Cell, Config, Settings, parse_config
from detaudit.core.numerics import compare, digest
from detaudit.engine.store import RunStore, save_tensors

CONFIG = parse_config({
    "name": "fab",
    "seeds": [0],
    "layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
                "input_shape": [1, 2, 2, 2]}],
    "matrix": {"determinism": ["off", "on"], "xla": ["off", "on"]},
    "replay_process": True,
})
BASE_META = {"tensorflow": {"tensorflow_version": "2.20.0", "gpus": []},
             "host": {"env": {"TF_ENABLE_ONEDNN_OPTS": "1"}, "cpu_model": "X"}}


def tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"output": rng.standard_normal((1, 4, 4, 2)).astype(np.float32),
            "grad_bias": rng.standard_normal(2).astype(np.float32)}


def nudge(x: np.ndarray, ulps: int, count: int = 1) -> np.ndarray:
    """``x`` with its first ``count`` float32 elements moved up by ``ulps`` ULP."""
    bits = x.reshape(-1).view(np.uint32).copy()
    bits[:count] += ulps
    return bits.view(np.float32).reshape(x.shape)


def record(cell: Cell, first: dict[str, np.ndarray], later: dict[str, np.ndarray] | None = None) -> dict:
    """The worker's record of a cell whose first repeat gave ``first`` and whose later repeats gave ``later``."""
    rows = []
    for name, a in first.items():
        b = (later or first)[name]
        result = compare(b, a, digest=False).to_dict()
        rows.append({**result, "tensor": name, "dtype": a.dtype.name, "shape": list(a.shape),
                     "digest": digest(a), "n_repeats_differ": 0 if result["bitwise_equal"] else cell.repeats - 1})
    return {"event": "cell", "cell_id": cell.cell_id, "status": "ok", "message": "", "seconds": 0.5,
            "tensors": rows, "cell": cell.to_dict()}


def failed_record(cell: Cell, status: str, message: str | None = None) -> dict:
    return {"event": "cell", "cell_id": cell.cell_id, "status": status, "tensors": [],
            "message": f"worker {status}" if message is None else message, "seconds": None, "cell": cell.to_dict()}


def cell(config: Config = CONFIG, seed: int | None = None, **settings: Any) -> Cell:
    """The cell of ``config`` with these settings (the rest at their defaults), and this seed if given."""
    return next(c for c in config.cells() if c.settings == Settings(**settings) and seed in (None, c.seed))


def make_run(root: Path, run_id: str, started: str, cells: Iterable[tuple], meta: dict | None = None,
             config: Config = CONFIG, extend: Callable[[dict, dict], dict] | None = None) -> RunStore:
    """A stored run. cells: (cell, first tensors, later tensors or None, status[, message]). ``extend(record,
    first)`` returns the record of a cell that ran, with what the test adds (reference rows, say)."""
    store = RunStore.create(root, config.to_dict(), config.name, run_id=run_id)
    store.write_meta({"run_id": run_id, "started": started, "finished": started, "interrupted": False,
                      **(meta or BASE_META)})
    for c, first, later, status, *message in cells:
        if status == "ok":
            made = record(c, first, later)
            store.append_record(extend(made, first) if extend else made)
            save_tensors(store.tensor_path(c.cell_id), first)
        else:
            store.append_record(failed_record(c, status, *message))
    return store


def digest_table(run_dir: Path):
    """What two runs of one config must share, row for row: each cell's tensors, digests and verdict inputs."""
    from detaudit.analysis.runs import load_run

    table = load_run(run_dir).table
    keep = ["cell_id", "tensor", "comparison", "digest", "bitwise_equal", "max_ulp", "status"]
    return table[keep].sort_values(["cell_id", "comparison", "tensor"]).reset_index(drop=True)


def make_pair(root: Path) -> tuple[RunStore, RunStore]:
    """Two runs of CONFIG a day apart, TensorFlow 2.20 then 2.21: one cell unchanged, one newly nondeterministic,
    one fixed with different bits, one newly crashed."""
    base_t = tensors(0)
    on, off, xla = cell(determinism="on"), cell(determinism="off"), cell(xla="on")
    both = cell(xla="on", determinism="on")
    shaky = {**base_t, "grad_bias": nudge(base_t["grad_bias"], 3)}
    drift = {**base_t, "output": nudge(base_t["output"], 1)}
    base = make_run(root, "base", "2026-01-01T00:00:00", [
        (on, base_t, None, "ok"), (off, base_t, None, "ok"), (xla, base_t, shaky, "ok"), (both, base_t, None, "ok")])
    new_meta = {**BASE_META, "tensorflow": {"tensorflow_version": "2.21.0", "gpus": []}}
    new = make_run(root, "new", "2026-01-02T00:00:00", [
        (on, base_t, None, "ok"),             # unchanged
        (off, base_t, shaky, "ok"),           # newly nondeterministic
        (xla, drift, None, "ok"),             # fixed, and different bits
        (both, base_t, None, "crash"),        # new failure
    ], meta=new_meta)
    return base, new
