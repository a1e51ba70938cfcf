"""Parent side of ``detaudit audit``: the model audit in two fresh workers (the second is the restart check).

Never imports TensorFlow: the work runs in :mod:`detaudit.model_audit` inside
workers started by the runner, with the settings applied before TensorFlow starts.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.config import Settings
from detaudit.errors import UsageError
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.runner import run_probe
from detaudit.engine.store import RunStore

__all__ = ["run_audit"]


def _model_spec(model: str) -> str:
    """An absolute path for a file (workers start elsewhere), or the ``module:function`` as given."""
    path = Path(model)
    if ":" in model and not path.exists():
        return model
    if not path.exists():
        raise UsageError(f"{model}: no such model file or directory.")
    return str(path.resolve())


def run_audit(model: str, settings: Settings, *, out: str | Path = "runs", input_shape: list[int] | None = None,
              inputs: str | None = None, targets: str | None = None, loss: str = "mse", steps: int = 3,
              repeats: int = 3, seed: int = 0, unsafe: bool = False) -> dict[str, Any]:
    """Audit ``model`` run to run and across a restart; store the layer table under ``out``.

    Returns:
        The audit as plain data: verdict (REPRODUCIBLE, NONDETERMINISTIC or NOT
        RESTART-REPRODUCIBLE), layers, losses, culprit, checks, restart, results_path.

    Raises:
        UsageError: a missing or unloadable model, inputs that do not fit it, an invisible device.
    """
    for name, value in (("inputs", inputs), ("targets", targets)):
        if value and not Path(value).is_file():
            raise UsageError(f"--{name} {value}: no such file.")
    payload = {"model": _model_spec(model), "unsafe": unsafe, "input_shape": input_shape,
               "inputs": str(Path(inputs).resolve()) if inputs else None,
               "targets": str(Path(targets).resolve()) if targets else None,
               "loss": loss, "steps": steps, "repeats": repeats, "seed": seed, "xla": settings.xla,
               "device": settings.device}
    first = run_probe("audit", payload, settings=settings)
    if "bad_input" in first:
        raise UsageError(first["bad_input"])
    again = run_probe("audit", payload, settings=settings)  # restart: a fresh process, the same seed
    restart = {key: first["digests"][key] == again.get("digests", {}).get(key) for key in first["digests"]}
    verdict = first["verdict"]
    if verdict == "REPRODUCIBLE" and not all(restart.values()):
        verdict = "NOT RESTART-REPRODUCIBLE"
    result = {**first, "verdict": verdict, "restart": restart, "model": model, "settings": settings.as_dict()}
    name = "audit-" + Path(model.split(":")[-1]).stem
    store = RunStore.create(out, {"audit": payload, "settings": settings.as_dict()}, name)
    store.write_meta({"run_id": store.run_id, "kind": "audit", "config_name": name, "host": host_fingerprint(),
                      "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                      "tensorflow": first.get("tensorflow"), "verdict": verdict, "culprit": result.get("culprit")})
    table = pd.DataFrame([{"run_id": store.run_id, "model": model, **row, "verdict": verdict}
                          for row in result["layers"]])
    table.to_parquet(store.results_path, index=False)
    return {**result, "results_path": str(store.results_path)}
