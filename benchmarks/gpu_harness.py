"""detaudit's per-pass cost on a GPU, per Keras backend: its pass with the repeats compared on the device,
against a plain loop of the same passes (the same layer, one sync at the end).

    python benchmarks/gpu_harness.py            # torch and jax, where a GPU is visible
    python benchmarks/gpu_harness.py --backend jax --passes 200

Each side is timed per pass in steady state: the difference of a long and a short run divided by the
extra passes, so set-up (building, compiling, the float64 reference) cancels out. Each figure is the median
of five rounds, the sides interleaved. Prints one JSON line per backend; needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LAYER = {"kind": "Conv2DTranspose", "filters": 16, "kernel_size": 3, "strides": 2, "padding": "same",
         "input_shape": [8, 33, 33, 16]}  # the layer of TF-FACTS' H100 figures


def _child(backend: str, passes: int) -> dict:
    from detaudit.core.axes import settings_spec
    from detaudit.core.config import Cell, Settings, parse_config
    from detaudit.engine import standalone

    settings = Settings(backend=backend, device="gpu", xla="on" if backend == "jax" else "off")
    spec = settings_spec(settings.as_dict())
    standalone.start_process(spec)
    from detaudit.engine import backends
    from detaudit.engine.worker import run_cell

    module = backends.load(backend)
    layer = parse_config({"name": "h", "layers": [LAYER]}).layers[0]
    applied = standalone.apply_cell(spec)
    if applied.device is None:
        return {"backend": backend, "skipped": applied.unavailable}
    with applied.scope():
        case = module.build(layer, 0, applied)

    def sync(tensors: list) -> None:
        if backend == "jax":
            import jax

            jax.block_until_ready(tensors)
        else:
            import torch

            torch.cuda.synchronize()

    def harness(n: int) -> float:
        record = run_cell(Cell(layer, settings, 0, n), None)
        assert record["status"] == "ok" and record["compared_on"] == "device", record
        return record["seconds"]

    def plain(n: int) -> float:
        start = time.perf_counter()
        with applied.scope():
            for _ in range(n):
                tensors = case.step_tensors()
            sync(tensors)
        return time.perf_counter() - start

    harness(2), plain(2)  # compile and warm up both
    rows: dict[str, list[float]] = {"harness_s": [], "plain_s": []}
    for _ in range(5):
        rows["harness_s"].append((harness(passes + 2) - harness(2)) / passes)
        rows["plain_s"].append((plain(passes + 2) - plain(2)) / passes)
    out = {key: statistics.median(values) for key, values in rows.items()}
    return {"backend": backend, "layer": LAYER, "passes": passes, **out,
            "ratio": statistics.median(h / p for h, p in zip(rows["harness_s"], rows["plain_s"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["torch", "jax"], action="append")
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.backend[0], args.passes)))
        return
    for backend in args.backend or ["torch", "jax"]:  # each in a fresh process: KERAS_BACKEND is process-wide
        result = subprocess.run([sys.executable, __file__, "--child", "--backend", backend, "--passes",
                                 str(args.passes)], capture_output=True, text=True, env={**os.environ})
        line = result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout.strip() else \
            json.dumps({"backend": backend, "error": result.stderr.strip().splitlines()[-1:]})
        print(line, flush=True)


if __name__ == "__main__":
    main()
