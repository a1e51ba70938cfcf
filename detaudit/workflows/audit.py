"""Parent side of ``detaudit audit``: the user's training audited in two fresh workers, three answers first.

Never imports TensorFlow: the work runs in :mod:`detaudit.engine.model_audit`
inside workers started by the runner, with the settings applied before
TensorFlow starts. The first worker runs the executions (each a rerun of the
training) and the resume; the second, a fresh process with the same seed, runs
one execution, and its fingerprints answer "does a rerun reproduce?". The audit
is stored as a run of kind ``audit``: meta.json, audit.json (everything ``show``,
``report`` and ``compare`` render), results.parquet (one row per recorded tensor)
and final_weights.npz (the first execution's final variables, for comparing
audits across machines).
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.audit_outcome import Answer, Question, compare_traces, verdict_of
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.limits import check_keras_archive
from detaudit.engine.runner import run_probe
from detaudit.engine.store import RunKind, RunStore
from detaudit.errors import UsageError

__all__ = ["FINAL_WEIGHTS", "run_audit"]

FINAL_WEIGHTS = "final_weights.npz"


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
    if path.is_file():
        check_keras_archive(path)  # a small archive can unpack to gigabytes: refused before a worker starts
    return str(path.resolve())


def _answers(first: dict[str, Any], again: dict[str, Any]) -> tuple[list[Answer], dict[str, Any] | None]:
    steps = first["training"]["steps"]
    rerun = compare_traces(first["trace"], again["trace"])
    answers = [Answer(Question.RERUN, rerun is None,
                      f"a fresh process with the same seed ends with the same weights after {steps} step(s)"
                      if rerun is None else f"a fresh process departs at step {rerun['step']}, {rerun['stage']}: "
                      f"{rerun['name']}")]
    found = first.get("repeat_divergence")
    answers.append(Answer(Question.REPEATS, found is None,
                          f"{first['repeats']} executions, each restored to a rerun's state, identical at every step"
                          if found is None else f"execution {found['execution']} departs at step {found['step']}, "
                          f"{found['stage']}: {found['name']}"))
    resume = first.get("resume")
    if resume is None:
        answers.append(Answer(Question.RESUME, None, "not asked: one step cannot be resumed (--steps 2 or more)"))
    elif resume["equal"]:
        answers.append(Answer(Question.RESUME, True, f"resumed at step {resume['step']} of {resume['of']} from a "
                              "checkpoint of the model's and optimizers' variables: the same weights"))
    else:
        worst = max((row["max_ulp"] for row in resume["differing"]), default=0)
        why = ""
        if resume.get("random_ops"):
            why = (f"; the step draws from stateful random ops ({', '.join(resume['random_ops'])}), whose state no "
                   "checkpoint holds: draw from a keras.random.SeedGenerator kept on the model "
                   "(keras.random.normal(shape, seed=self.seed_generator)), whose state is a variable")
        answers.append(Answer(Question.RESUME, False, f"resumed at step {resume['step']} of {resume['of']}, "
                              f"{len(resume['differing'])} variable(s) end elsewhere (max {worst:,} ULP){why}"))
    return answers, rerun


def run_audit(model: str, settings: Any, *, out: str | Path = "runs", input_shape: list[int] | None = None,
              inputs: str | None = None, targets: str | None = None, loss: str = "mse", steps: int = 3,
              repeats: int = 3, seed: int = 0, unsafe: bool = False, batch_size: int = 32,
              resume_step: int | None = None, on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Audit the training ``model`` builds (a factory or a .keras file); store it as an audit run under ``out``.

    ``on_progress`` receives one line per stage ("execution 2/3, step 1/3").

    Returns:
        The audit as plain data: verdict (an :class:`~detaudit.core.audit_outcome.AuditVerdict` value), answers,
        training, layers, repeat and rerun divergences, resume, pipeline, checks, applied, run_dir.

    Raises:
        UsageError: a missing or unloadable model, data that does not fit it, an invisible device.
        WorkerError: a worker failed on its own.
    """
    if settings.backend != "tensorflow":  # the training trace reads TensorFlow's graphs and tf.data pipelines
        raise UsageError(f"Invalid value for argument `--backend`. The model audit runs on TensorFlow only. Received "
                         f"backend={settings.backend!r}; compare layers across backends with a config's `backend` axis.")
    for name, value in (("inputs", inputs), ("targets", targets)):
        if value and not Path(value).is_file():
            raise UsageError(f"--{name} {value}: no such file.")
    scratch = Path(tempfile.mkdtemp(prefix="detaudit-audit-"))
    try:
        payload = {"model": _model_spec(model), "unsafe": unsafe, "input_shape": input_shape,
                   "inputs": str(Path(inputs).resolve()) if inputs else None,
                   "targets": str(Path(targets).resolve()) if targets else None, "batch_size": batch_size,
                   "loss": loss, "steps": steps, "repeats": repeats, "seed": seed, "resume_step": resume_step,
                   "settings": settings.as_dict(), "finals": str(scratch / FINAL_WEIGHTS)}

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
            on_progress("rerun check: starting a fresh process")
        again = run_probe("audit", {**payload, "trace_only": True, "finals": None}, settings=settings,
                          on_progress=relay("rerun check: "))
        if "bad_input" in again:
            raise UsageError(again["bad_input"])
        return _store(model, settings, out, payload, first, again, scratch / FINAL_WEIGHTS)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _store(model: str, settings: Any, out: str | Path, payload: dict[str, Any], first: dict[str, Any],
           again: dict[str, Any], finals: Path) -> dict[str, Any]:
    answers, rerun = _answers(first, again)
    verdict = verdict_of(answers)
    result = {**first, "verdict": verdict.value, "answers": [a.to_dict() for a in answers],
              "rerun_divergence": rerun, "model": model, "settings": settings.as_dict(),
              "steps": payload["steps"], "repeats": payload["repeats"], "seed": payload["seed"]}
    result.pop("trace", None)
    # A list, not a mapping: the order is the order of final_weights.npz (stored JSON sorts mapping keys).
    result["final_digests"] = [[name, d] for name, d in zip(first["trace"]["variables"], first["trace"]["final"])]
    result["losses"] = first["trace"]["losses"]
    name = "audit-" + Path(model.split(":")[-1]).stem
    store = RunStore.create(out, None, name, kind=RunKind.AUDIT)
    with store.lock():
        now = _dt.datetime.now(_dt.timezone.utc).isoformat()
        store.write_meta({"run_id": store.run_id, "kind": RunKind.AUDIT.value, "config_name": name,
                          "host": host_fingerprint(), "started": now, "finished": now,
                          "tensorflow": first.get("tensorflow"), "verdict": verdict.value,
                          "audit": {k: v for k, v in payload.items() if k not in ("unsafe", "finals")}})
        store.write_json("audit.json", result)
        if finals.is_file():
            shutil.copyfile(finals, store.inside(FINAL_WEIGHTS))
        pd.DataFrame([{"run_id": store.run_id, "model": model, **row, "verdict": verdict.value}
                      for row in result["layers"]]).to_parquet(store.results_path, index=False)
    return {**result, "run_dir": str(store.path), "results_path": str(store.results_path)}
