"""``detaudit shapes``: output lengths, the Conv round trip, run-time rejections and checkerboards.

Parent side (no TensorFlow). Predictions are per execution path: TensorFlow
turns oneDNN on by default on CPUs with AVX512_VNNI/BF16 or AMX, and the two
paths disagree on some shapes (TF-FACTS). Without TensorFlow (``measure=False``)
the rows predict this machine's default path; with it, the path the worker
actually took, which is also the path measured.
"""

from __future__ import annotations

import os

from collections.abc import Callable
from typing import Any

from detaudit.core.config import Config
from detaudit.core.shapes import checkerboard_score, shape_row
from detaudit.engine.fingerprint import onednn_state
from detaudit.engine.runner import run_probe
from detaudit.errors import UsageError

__all__ = ["MAX_INPUT", "config_items", "run_shapes"]

MAX_INPUT = 1 << 20


def config_items(config: Config) -> list[dict[str, Any]]:
    """One item per spatial axis of each layer of ``config`` that has a shape audit (duplicates dropped)."""
    items = []
    for layer in config.layers:
        if not layer.declaration.shape_audit:
            continue
        p = layer.params
        spatial = layer.input_shape[2:] if p["data_format"] == "channels_first" else layer.input_shape[1:-1]
        for axis, n in enumerate(spatial):
            items.append({"rank": layer.rank, "n": n, "kernel": p["kernel_size"][axis], "stride": p["strides"][axis],
                          "padding": p["padding"], "dilation": p["dilation_rate"][axis],
                          "output_padding": (p.get("output_padding") or [None] * (layer.rank or 1))[axis]})
    if not items:
        raise UsageError(f"{config.source}: no Keras or raw transposed convolution to audit.")
    return list({tuple(sorted(i.items(), key=str)): i for i in items}.values())


def run_shapes(items: list[dict[str, Any]], measure: bool = True,
               on_progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Rows per item (predicted on the path measured, with the other path's prediction) and checkerboards."""
    measured = None
    boards = [{"kernel": k, "stride": s, "dilation": d, "score": checkerboard_score(k, s, d, rank=2)}
              for k, s, d in dict.fromkeys((i["kernel"], i["stride"], i["dilation"]) for i in items)]
    plain = [b for b in boards if b["dilation"] == 1]
    if measure:
        measured = run_probe("shapes", {"lengths": items, "checkerboard": plain}, on_progress=on_progress)
        state = measured["onednn"]
    else:
        # The prediction for this environment (a copy of it: TensorFlow imported in this process, by the Python
        # API or a test, must not override what a fresh worker would do).
        state = onednn_state(dict(os.environ))
    onednn = state.startswith("on")
    rows = [shape_row(i["n"], i["kernel"], i["stride"], i["padding"], i["dilation"], i["output_padding"],
                      onednn=onednn).to_dict() for i in items]
    if measured is not None:
        for row, length in zip(rows, measured["lengths"]):
            row["measured"] = length
        for board, taps in zip(plain, measured["checkerboard"]):
            board["measured"] = taps
    path = f"oneDNN {state}" if measure else f"oneDNN {state} (predicted; not measured: --no-tf)"
    return {"path": path, "onednn": onednn, "shapes": rows, "checkerboard": boards}
