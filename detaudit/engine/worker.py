"""The worker subprocess: apply process-wide settings, then import TensorFlow and run cells.

Launched by the runner as ``python -m detaudit.engine.worker JOB.json`` with the
environment variables of its group already set (TF_ENABLE_ONEDNN_OPTS and
TF_DETERMINISTIC_OPS are read when TensorFlow is imported, so the parent sets
them). The job file names the cells and the file descriptor of a pipe; the
worker writes one JSON line per event to that pipe:

- ``{"event": "hello", "env": {...}, "applied": {...}}`` once TensorFlow is up
- ``{"event": "start", "cell_id": ...}`` before each cell, so the parent knows
  which cell was running if the process dies
- ``{"event": "cell", ...}`` a finished cell's record
- ``{"event": "done"}``

Output goes to a dedicated pipe, not stdout, so prints from user layers or
TensorFlow cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from detaudit.core.config import Cell, Settings
from detaudit.errors import one_line
from detaudit.core.numerics import Comparison, compare, digest, worst
from detaudit.engine.store import save_tensors

# TF-FACTS: the two shapes of "no deterministic kernel" messages.
_DETERMINISM_REFUSAL = re.compile(r"Determinism is not yet supported|deterministic GPU implementation", re.I)


def apply_settings(settings: Settings) -> dict[str, Any]:
    """Import TensorFlow and apply the process-wide settings before any op runs.

    Returns what TensorFlow reports back, as evidence that the settings took.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import (
        config as tf_config,  # is_op_determinism_enabled is internal
    )

    from detaudit.engine.fingerprint import onednn_state

    for gpu in tf.config.list_physical_devices("GPU"):
        # Several workers share a GPU; without growth the first one takes all its memory.
        tf.config.experimental.set_memory_growth(gpu, True)
    if settings.threads:
        tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
    if settings.determinism == "on":
        tf.config.experimental.enable_op_determinism()
    if settings.tf32 == "off":
        tf.config.experimental.enable_tensor_float_32_execution(False)
    keras.config.set_dtype_policy(settings.precision)
    tf.get_logger().setLevel("ERROR")  # one tf.function per cell is by design; no retracing warnings
    return {
        "op_determinism": bool(tf_config.is_op_determinism_enabled()),
        "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "dtype_policy": keras.config.dtype_policy().name,
        "onednn": onednn_state(),
        "tf_deterministic_ops_env": os.environ.get("TF_DETERMINISTIC_OPS"),
    }


def _device_scope(device: str) -> tuple[str | None, str | None]:
    """The TensorFlow device name for ``device``, or None and the reason it is not visible."""
    import tensorflow as tf

    if device == "cpu":
        return "/CPU:0", None
    index = int(device.partition(":")[2] or 0)
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        return None, "no GPU visible to TensorFlow on this machine (tf.config.list_logical_devices('GPU') is empty)"
    if index >= len(gpus):
        return None, f"GPU {index} is not visible: TensorFlow sees {len(gpus)} GPU(s)"
    return f"/GPU:{index}", None


def _tensor_rows(names: list[str], first: list[Any], results: list[Comparison | None],
                 differing: list[int]) -> list[dict[str, Any]]:
    rows = []
    for name, tensor, comparison, n_differ in zip(names, first, results, differing):
        assert comparison is not None
        row = comparison.to_dict()
        row.update(tensor=name, dtype=tensor.dtype.name, shape=list(tensor.shape),
                   digest=digest(tensor), n_repeats_differ=n_differ)
        rows.append(row)
    return rows


def run_cell(cell: Cell, tensor_path: Path | None) -> dict[str, Any]:
    """Run one cell: ``repeats`` forward+backward passes, each compared against the first, streaming.

    Memory holds the first repeat and the current one, whatever ``repeats`` is.
    A refusal or error becomes the record's status; only a dying process escapes.
    """
    import tensorflow as tf

    from detaudit.engine.cases import build_case

    started = time.perf_counter()
    record: dict[str, Any] = {"event": "cell", "cell_id": cell.cell_id, "status": "ok",
                              "message": "", "tensors": []}
    device, reason = _device_scope(cell.settings.device)
    if device is None:
        record.update(status="skipped", message=reason)
        return record
    try:
        with tf.device(device):
            case = build_case(cell.layer, cell.seed, xla=cell.settings.xla == "on")
            first = case.step()
            results: list[Comparison | None] = [None] * len(first)
            differing = [0] * len(first)
            for _ in range(cell.repeats - 1):
                for i, (reference, tensor) in enumerate(zip(first, case.step())):
                    result = compare(tensor, reference, digest=False)
                    results[i] = result if results[i] is None else worst(results[i], result)
                    differing[i] += not result.bitwise_equal
        record["tensors"] = _tensor_rows(case.names, first, results, differing)
        if case.reference is not None:
            # Against the float64 truth rounded to each tensor's own dtype.
            record["reference"] = [
                {**compare(tensor, case.reference[name].astype(tensor.dtype), digest=False).to_dict(), "tensor": name}
                for name, tensor in zip(case.names, first) if name in case.reference]
        if case.adjoint is not None:
            try:
                record["adjoint"] = case.adjoint()
            except Exception as exc:  # noqa: BLE001 - e.g. CPU kernels refusing a dilated transpose
                record["adjoint"] = {"error": one_line(exc)}
        if tensor_path is not None:
            save_tensors(tensor_path, dict(zip(case.names, first)))
    except tf.errors.UnimplementedError as exc:
        # A refusal to be deterministic is a finding (unsupported); other gaps, such as
        # NCHW convolutions on the CPU, are errors of the configuration.
        status = "unsupported" if _DETERMINISM_REFUSAL.search(str(exc)) else "error"
        record.update(status=status, message=one_line(exc))
    except Exception as exc:  # noqa: BLE001 - any failure of the cell is data, not a crash
        record.update(status="error", message=one_line(exc))
    record["seconds"] = round(time.perf_counter() - started, 6)
    return record


def _emit(stream: TextIO, event: dict[str, Any]) -> None:
    stream.write(json.dumps(event, default=str) + "\n")
    stream.flush()


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    stream = os.fdopen(job["fd"], "w", encoding="utf-8")
    settings = Settings(**job["settings"])
    applied = apply_settings(settings)
    from detaudit.engine.fingerprint import tensorflow_fingerprint

    _emit(stream, {"event": "hello", "env": tensorflow_fingerprint(), "applied": applied, "pid": os.getpid()})
    if job.get("probe"):
        from detaudit.engine.probes import PROBES

        _emit(stream, {"event": "probe", "result": PROBES[job["probe"]](job.get("items", []))})
        _emit(stream, {"event": "done"})
        return 0
    tensor_dir = Path(job["tensor_dir"]) if job.get("tensor_dir") else None
    for data in job.get("cells", []):
        cell = Cell.from_dict(data)
        _emit(stream, {"event": "start", "cell_id": cell.cell_id})
        path = tensor_dir / f"{cell.cell_id}.npz" if tensor_dir else None
        _emit(stream, run_cell(cell, path))
    _emit(stream, {"event": "done"})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:  # the parent handles Ctrl-C; die quietly
        sys.exit(130)
