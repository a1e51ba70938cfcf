"""Parent side of ``detaudit audit``: the model audit in two fresh workers (the second is the restart check).

Never imports TensorFlow: the work runs in :mod:`detaudit.engine.model_audit`
inside workers started by the runner, with the settings applied before
TensorFlow starts. The audit is stored as a run of kind ``audit``: meta.json,
audit.json (everything ``show`` and ``report`` render) and results.parquet
(the layer table).
"""

from __future__ import annotations

import datetime as _dt
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.runner import run_probe
from detaudit.engine.store import RunKind, RunStore
from detaudit.errors import UsageError

__all__ = ["run_audit"]


def _model_spec(model: str) -> str:
    """An absolute path for a file (workers start elsewhere), or the ``module:function`` as given."""
    path = Path(model)
    if ":" in model and not path.exists():
        return model
    if not path.exists():
        raise UsageError(f"{model}: no such model file or directory.")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UsageError(f"{model}: not a .keras model archive (a .keras file is a zip archive; this file is not). "
                         "Save the model with model.save('model.keras'), or pass a module:function factory.")
    return str(path.resolve())


def run_audit(model: str, settings: Any, *, out: str | Path = "runs", input_shape: list[int] | None = None,
              inputs: str | None = None, targets: str | None = None, loss: str = "mse", steps: int = 3,
              repeats: int = 3, seed: int = 0, unsafe: bool = False,
              on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Audit ``model`` run to run and across a restart; store it as an audit run under ``out``.

    ``on_progress`` receives one line per stage ("execution 2/3, step 1/3").

    Returns:
        The audit as plain data: verdict (REPRODUCIBLE, NONDETERMINISTIC or NOT
        RESTART-REPRODUCIBLE), layers, losses, culprit, checks, restart, run_dir.

    Raises:
        UsageError: a missing or unloadable model, inputs that do not fit it, an invisible device.
        WorkerError: a worker failed on its own.
    """
    for name, value in (("inputs", inputs), ("targets", targets)):
        if value and not Path(value).is_file():
            raise UsageError(f"--{name} {value}: no such file.")
    payload = {"model": _model_spec(model), "unsafe": unsafe, "input_shape": input_shape,
               "inputs": str(Path(inputs).resolve()) if inputs else None,
               "targets": str(Path(targets).resolve()) if targets else None,
               "loss": loss, "steps": steps, "repeats": repeats, "seed": seed, "xla": settings.xla,
               "device": settings.device, "settings": settings.as_dict()}

    def relay(prefix: str) -> Callable[[dict[str, Any]], None]:
        def forward(message: dict[str, Any]) -> None:
            if on_progress:
                step = f", step {message['done']}/{message['total']}" if message.get("total") else ""
                on_progress(f"{prefix}{message['stage']}{step}")
        return forward

    if on_progress:
        on_progress("starting TensorFlow")
    first = run_probe("audit", payload, settings=settings, on_progress=relay(""))
    if "bad_input" in first:
        raise UsageError(first["bad_input"])
    if on_progress:
        on_progress("restart check: starting a fresh process")
    again = run_probe("audit", {**payload, "repeats": 2}, settings=settings, on_progress=relay("restart check: "))
    restart = {key: first["digests"][key] == again.get("digests", {}).get(key) for key in first["digests"]}
    verdict = first["verdict"]
    if verdict == "REPRODUCIBLE" and not all(restart.values()):
        verdict = "NOT RESTART-REPRODUCIBLE"
    result = {**first, "verdict": verdict, "restart": restart, "model": model, "settings": settings.as_dict(),
              "steps": steps, "repeats": repeats, "seed": seed}
    name = "audit-" + Path(model.split(":")[-1]).stem
    store = RunStore.create(out, None, name, kind=RunKind.AUDIT)
    with store.lock():
        store.write_meta({"run_id": store.run_id, "kind": RunKind.AUDIT.value, "config_name": name,
                          "host": host_fingerprint(), "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                          "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                          "tensorflow": first.get("tensorflow"), "verdict": verdict, "culprit": result.get("culprit"),
                          "audit": {k: v for k, v in payload.items() if k != "unsafe"}})
        store.write_json("audit.json", result)
        pd.DataFrame([{"run_id": store.run_id, "model": model, **row, "verdict": verdict}
                      for row in result["layers"]]).to_parquet(store.results_path, index=False)
    return {**result, "run_dir": str(store.path), "results_path": str(store.results_path)}
