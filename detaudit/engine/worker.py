"""The worker subprocess: apply process-wide settings, then start the Keras backend's framework and run cells.

Launched by the runner as ``python -P -m detaudit.engine.worker FD`` (no working directory on the path) with the
environment of its group already set (variables read when TensorFlow is
imported). The job arrives as one JSON line on stdin; stdin then stays open as
a lifeline: when the parent dies (even by kill -9) the worker reads end of
file and exits at once, so no worker outlives its run.

The worker writes one JSON line per event to the pipe FD (not stdout, so
prints from user layers or TensorFlow cannot corrupt the protocol):

- ``hello``     once the framework is up: its fingerprint and the applied settings
- ``refused``   a ``package.module:Class`` kind that is not a Keras Layer subclass
                (checked before any cell runs; the run stops as bad input)
- ``start``     before each cell, so the parent knows which cell was running if the process dies
- ``cell``      a finished cell's record
- ``disk_full`` a write failed for lack of space (the cell is not recorded; the run stops)
- ``probe``     the result of a probe job
- ``done``
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detaudit.core.axes import settings_spec
from detaudit.core.config import Cell, Settings
from detaudit.core.kinds import not_applicable
from detaudit.core.numerics import compare, digest
from detaudit.core.repeat import repeat_and_compare, repeat_on_device
from detaudit.core.vocabulary import Status
from detaudit.engine import backends, batch_invariance, channel, standalone
from detaudit.errors import DiskFullError, one_line

LIFELINE_EXIT = 70  # the parent is gone


def _watch_lifeline() -> None:
    """Exit as soon as stdin reaches end of file: the parent closed it, or died."""
    def watch() -> None:
        # os.read on the descriptor, not sys.stdin: a thread blocked in a buffered read makes the
        # interpreter abort at exit ("_enter_buffered_busy"), which would hide the worker's own error.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os._exit(LIFELINE_EXIT)
    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def apply_settings(settings: Any) -> dict[str, Any]:
    """Start the backend's framework and apply the process-wide settings before any op runs
    (:func:`standalone.start_process`).

    Returns what the framework reports back, as evidence that the settings took.
    """
    standalone.start_process(settings_spec(settings.as_dict()))
    if settings.backend == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one tf.function per cell is by design; no retracing warnings
    return backends.load(settings.backend).reported_settings()


def reported_settings() -> dict[str, Any]:
    """What the framework of this process' Keras backend reports as applied (the model audit's evidence)."""
    import keras

    return backends.load(keras.backend.backend()).reported_settings()


def _tensor_records(outcome: Any) -> list[dict[str, Any]]:
    """Each tensor's first value summarized, with how its later repeats differed."""
    return [{**(t.comparison.to_dict() if t.comparison else {}), "tensor": t.name, "dtype": t.first.dtype.name,
             "shape": list(t.first.shape), "digest": digest(t.first), "n_repeats_differ": t.n_repeats_differ}
            for t in outcome.tensors]


def _against_reference(truth: dict[str, Any], names: list[str], first: list[Any]) -> list[dict[str, Any]]:
    """Each tensor against the float64 truth rounded to its own dtype."""
    from detaudit.engine.cases import rounded_reference

    rows = []
    for name, tensor in zip(names, first):
        if name in truth:
            rounded, scale = rounded_reference(truth, name, tensor.dtype)
            rows.append({**compare(tensor, rounded, digest=False).to_dict(), "ref_scale": scale, "tensor": name})
    return rows


def run_cell(cell: Cell, tensor_path: Path | None, cache_dir: Path | None = None,
             passes_only: bool = False) -> dict[str, Any]:
    """Run one cell: ``repeats`` forward+backward passes, each compared with the first (streaming).

    Then, unless ``passes_only`` (a replay, whose bits alone are compared), the float64 reference, the
    adjoint test and the batch passes.

    The pass comes from the worker's backend (:mod:`detaudit.engine.backends`); everything after it is the
    same for every backend. A refusal or error becomes the record's status; only a dying process (or a full
    disk, which must not leave a recorded cell without its tensors) escapes.
    """
    from detaudit.engine.cases import adjoint_of, reference_of

    backend = backends.load(cell.settings.backend)
    started = time.perf_counter()
    record: dict[str, Any] = {"event": "cell", "cell_id": cell.cell_id, "status": Status.OK, "message": "", "tensors": []}
    try:
        applied = standalone.apply_cell(settings_spec(cell.settings.as_dict()))
        unsupported = not_applicable(cell.settings.as_dict(), cell.layer.kind)
        if unsupported or applied.device is None:
            record.update(status=Status.UNSUPPORTED if unsupported else Status.SKIPPED, message=unsupported or
                          applied.unavailable, seconds=0.0)
            return record
        record["applied"] = backend.applied_per_cell()
        with applied.scope():
            case = backend.build(cell.layer, cell.seed, applied)
            if applied.compare_on_device:
                outcome = repeat_on_device(case.device_pass(), cell.repeats, names=case.names)
            else:
                outcome = repeat_and_compare(case.step, cell.repeats, names=case.names)
            record["compared_on"] = "device" if applied.compare_on_device else "host"
            record["ms_per_pass"] = outcome.ms_per_pass
            first = [t.first for t in outcome.tensors]
            record["tensors"] = _tensor_records(outcome)
            if passes_only:  # (its ops too: an XLA cell's HLO is lowered again for them, 40% of its time)
                return _with_tensors(record, tensor_path, case.names, first, started)
            producers = backend.producers(case, applied.device, cell.settings.xla == "on")
            if producers is not None:
                record["ops"] = producers
            truth = reference_of(cell.layer, case, cell.seed, cache_dir)
            if truth is not None:
                record["reference"] = _against_reference(truth, case.names, first)
            try:
                adjoint = adjoint_of(cell.layer, case, cell.seed, applied.device, backend)
                if adjoint is not None:
                    record["adjoint"] = adjoint
            except Exception as exc:  # noqa: BLE001 - e.g. CPU kernels refusing a dilated transpose: data
                record["adjoint"] = {"error": one_line(exc)}
            if cell.batch_sizes:
                bound = batch_invariance.Backend(lambda spec: backend.build(spec, cell.seed, applied), backend.step_on)
                record["batch"] = batch_invariance.measure(cell, case, first, truth, bound)
        return _with_tensors(record, tensor_path, case.names, first, started)
    except DiskFullError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the cell is data, not a crash
        record.update(status=backend.status_of(exc), message=one_line(exc))
    record["seconds"] = round(time.perf_counter() - started, 6)
    return record


def _with_tensors(record: dict[str, Any], tensor_path: Path | None, names: Sequence[str], first: list[Any],
                  started: float) -> dict[str, Any]:
    """The finished record, its first pass's tensors saved (when kept) before it is sent."""
    if tensor_path is not None:
        from detaudit.engine.store import save_tensors

        save_tensors(tensor_path, dict(zip(names, first)))
    record["seconds"] = round(time.perf_counter() - started, 6)
    return record


def _refusals(kinds: list[str]) -> list[dict[str, str]]:
    """Each user kind that does not resolve to a Keras Layer subclass, checked before anything is called."""
    refused = []
    for kind in kinds:
        try:
            standalone.resolve_user_layer(kind)
        except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, NotALayer, or the module's own error
            refused.append({"kind": kind, "message": one_line(exc)})
    return refused


def _read_job() -> dict[str, Any]:
    """The job's one JSON line from stdin, read from the descriptor (stdin then stays open as the lifeline)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def main(argv: list[str]) -> int:
    job = _read_job()
    _watch_lifeline()
    stream = os.fdopen(int(argv[1]), "w", encoding="utf-8")
    channel.set_stream(stream)
    settings = Settings(**job["settings"])
    applied = apply_settings(settings)
    if job.get("user_path"):  # only now: numpy, yaml, TensorFlow and Keras come from the installation, not from here
        import numpy  # noqa: F401
        import yaml  # noqa: F401

        sys.path.insert(0, job["user_path"])
    from detaudit.engine.fingerprint import backend_fingerprint

    channel.emit({"event": "hello", "env": backend_fingerprint(settings.backend), "applied": applied,
                  "pid": os.getpid()})
    refused = _refusals(job.get("user_kinds", []))
    if refused:
        channel.emit({"event": "refused", "refused": refused})
        return 0
    if job.get("probe"):
        from detaudit.engine.probes import PROBES

        channel.emit({"event": "probe", "result": PROBES[job["probe"]](job.get("items", []))})
        channel.emit({"event": "done"})
        return 0
    tensor_dir = Path(job["tensor_dir"]) if job.get("tensor_dir") else None
    cache_dir = Path(job["cache_dir"]) if job.get("cache_dir") else None
    for data in job.get("cells", []):
        cell = Cell.from_dict(data)
        channel.emit({"event": "start", "cell_id": cell.cell_id})
        path = tensor_dir / f"{cell.cell_id}.npz" if tensor_dir else None
        try:
            record = run_cell(cell, path, cache_dir, passes_only=bool(job.get("passes_only")))
        except DiskFullError as exc:
            channel.emit({"event": "disk_full", "cell_id": cell.cell_id, "message": str(exc)})
            return 0
        channel.emit(record)
    channel.emit({"event": "done"})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:  # the parent handles Ctrl-C; die quietly
        sys.exit(130)
