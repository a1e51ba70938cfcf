"""The worker side of ``detaudit audit``: a user's training executed as reruns, compared step by step.

Each execution builds the training afresh from its :class:`Target` after
resetting every seed (:mod:`detaudit.engine.training_target`), so repeats in
one process model reruns of the script. The audit runs ``repeats`` executions,
then a resumed one (state taken at step k of the first, restored into a fresh
instance, the data replayed to step k). The parent runs the first execution
again in a fresh process for the rerun answer.

What a worker returns is plain data: the fingerprints of every recorded tensor
at every step (``trace``) for the cross-process comparison, and, for the main
worker, the comparisons of its own executions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from detaudit.core.audit_outcome import Stage, compare_traces
from detaudit.core.axes import AXES, settings_spec
from detaudit.core.numerics import compare, digest
from detaudit.engine import channel, standalone
from detaudit.engine.pipeline_scan import scan_dataset
from detaudit.engine.training_target import Target
from detaudit.engine.training_trace import (
    Execution,
    find_optimizers,
    layer_paths,
    random_layers,
    run_execution,
)
from detaudit.errors import UsageError, one_line

__all__ = ["audit_probe", "environment_checks", "trace_of"]

_STAGE_ORDER = {stage: i for i, stage in enumerate(Stage)}


def trace_of(run: Execution) -> dict[str, Any]:
    """An execution as JSON data: its keys in stage order and one fingerprint per step each."""
    keys = sorted(run.keys, key=lambda key: _STAGE_ORDER[key[0]])  # sort is stable: call order within a stage
    return {"keys": [[stage.value, name] for stage, name in keys],
            "hashes": [[f"{h:016x}" for h in run.hashes[key]] for key in keys],
            "final": [digest(v) for v in run.final], "variables": run.variable_names,
            "losses": run.losses}


def _differs_at(a: Execution, b: Execution, key: tuple[Stage, str], key_b: tuple[Stage, str], step: int) -> int | None:
    """Max ULP between the two executions' arrays of a key at a step, where both were kept."""
    x, y = a.arrays.get(key, {}).get(step), b.arrays.get(key_b, {}).get(step)
    if x is not None and y is not None and x.shape == y.shape and x.dtype == y.dtype and x.dtype.kind in "fV":
        return int(compare(x, y, digest=False).max_ulp)
    return None


def _layer_rows(runs: list[Execution], classes: dict[str, str]) -> list[dict[str, Any]]:
    """Per leaf layer (forward) and per variable (gradient, final value): the first step any repeat differs."""
    base = runs[0]
    rows = []
    for index, key in enumerate(base.keys):
        stage, name = key
        if stage not in (Stage.FORWARD, Stage.LOSS, Stage.GRADIENTS):
            continue
        first_step, worst = None, 0
        for other in runs[1:]:
            if index >= len(other.keys):
                first_step = 1
                continue
            key_b = other.keys[index]
            for step, (ha, hb) in enumerate(zip(base.hashes[key], other.hashes[key_b])):
                if ha != hb:
                    first_step = step + 1 if first_step is None else min(first_step, step + 1)
                    worst = max(worst, _differs_at(base, other, key, key_b, step) or 0)
                    break
        layer = name.split("#")[0].split("[")[0]  # a second call (`d#2`) or a second output (`d[1]`) of layer d
        rows.append({"stage": stage.value, "name": name, "class": classes.get(layer, ""),
                     "first_step": first_step, "max_ulp": worst})
    return rows


def _final_rows(base: Execution, other: Execution) -> list[dict[str, Any]]:
    rows = []
    for name, a, b in zip(base.variable_names, base.final, other.final):
        same = a.shape == b.shape and a.tobytes() == b.tobytes()
        ulp = int(compare(a, b, digest=False).max_ulp) if not same and a.dtype.kind == "f" and a.shape == b.shape \
            else 0
        rows.append({"variable": name, "equal": same, "max_ulp": ulp})
    return rows


def environment_checks(settings: dict[str, Any]) -> list[dict[str, str]]:
    """The settings that decide reproducibility (one per axis), each with its state, risk, fix and where it applies."""
    from tensorflow.python.framework import (
        config as tf_config,  # is_op_determinism_enabled is internal
    )

    import keras
    from detaudit.engine.fingerprint import onednn_state

    checks = []
    for name, axis in AXES.items():
        scope = {"tf": tf, "keras": keras, "os": os, "value": settings.get(name, axis.default),
                 "onednn_state": onednn_state, "op_determinism": tf_config.is_op_determinism_enabled}
        state = str(eval(axis.check.state, scope))  # noqa: S307 - detaudit's own declarations, not user text
        checks.append({"check": axis.check.title, "state": state, "risk": axis.check.risk, "fix": axis.check.fix,
                       "applies": axis.check.applies})
    return checks


def _execute(target: Target, label: str, steps: int, xla: bool, **kwargs: Any) -> tuple[Execution, Any]:
    training = target.build()
    if training.model.built and not training.model.trainable_variables:
        raise UsageError(f"{target.spec}: the model has no trainable weights, so training cannot change it; audit a "
                         "model with weights.")
    try:
        return run_execution(training, steps=steps, xla=xla, label=label, **kwargs), training
    except UsageError:
        raise
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
        raise UsageError(f"the data does not fit the model, or the training step failed: {one_line(exc)}") from None


def _describe_training(training: Any, steps: int) -> dict[str, Any]:
    model = training.model
    # A train_step defined outside Keras (a GAN's) is the user's own.
    custom_step = any("train_step" in vars(c) for c in type(model).__mro__ if not c.__module__.startswith("keras"))
    return {"model": type(model).__name__, "compiled": training.compiled_by_user, "synthetic": training.synthetic,
            "train_step": "custom" if custom_step else "keras",
            "optimizers": [f"{name}: {type(opt).__name__}" for name, opt in find_optimizers(model) if opt.built],
            "loss": _loss_name(getattr(model, "loss", None)) if not custom_step else "",
            "dtype_policies": sorted({layer.dtype_policy.name for _, layer in layer_paths(model)
                                      if getattr(layer, "dtype_policy", None) is not None}),
            "steps": steps, "random_layers": random_layers(model)}


def _loss_name(loss: Any) -> str:
    if loss is None or isinstance(loss, str):
        return loss or ""
    return getattr(loss, "__name__", None) or getattr(loss, "name", None) or type(loss).__name__


def audit_training(target: Target, *, steps: int, repeats: int, xla: bool, resume_step: int | None,
                   finals_path: Path | None) -> dict[str, Any]:
    """The main worker's audit: repeats, a resume, and the first execution's trace for the rerun check."""
    k = resume_step if resume_step is not None else max(1, steps // 2)
    if steps >= 2 and not 1 <= k < steps:
        raise UsageError(f"Invalid value for argument `--resume-step`. Expected 1 to {steps - 1} (a step before the "
                         f"last of --steps {steps}). Received {k}.")
    runs: list[Execution] = []
    first_training = None
    for r in range(repeats):
        run, training = _execute(target, f"execution {r + 1}/{repeats}", steps, xla,
                                 checkpoint_step=k if (r == 0 and steps >= 2) else None)
        runs.append(run)
        if r == 0:
            first_training = training
    assert first_training is not None
    described = _describe_training(first_training, steps)
    classes = {path: type(layer).__name__ for path, layer in layer_paths(first_training.model)}
    pipeline = scan_dataset(first_training.dataset) if first_training.synthetic is None else []
    repeat_divergence = None
    base_trace = trace_of(runs[0])
    for r, other in enumerate(runs[1:], start=2):
        found = compare_traces(base_trace, trace_of(other))
        if found:
            repeat_divergence = {**found, "execution": r}
            break
    resume = None
    if steps >= 2 and runs[0].checkpoint is not None:
        resumed, _ = _execute(target, "resumed execution", steps, xla,
                                             restore=(runs[0].checkpoint, k))
        rows = _final_rows(runs[0], resumed)
        resume = {"step": k, "of": steps, "equal": all(row["equal"] for row in rows),
                  "differing": [row for row in rows if not row["equal"]], "random_ops": runs[0].random_ops}
    if finals_path is not None:
        np.savez(finals_path, **{f"v{i}": v for i, v in enumerate(runs[0].final)})
    return {"training": described, "trace": base_trace, "repeats": repeats,
            "repeat_divergence": repeat_divergence, "layers": _layer_rows(runs, classes),
            "final_vs_repeats": [row for other in runs[1:] for row in _final_rows(runs[0], other) if not row["equal"]],
            "resume": resume, "pipeline": pipeline}


def audit_probe(payload: dict[str, Any]) -> dict[str, Any]:
    """The worker side of ``detaudit audit``: apply the settings, audit, return plain data (or the bad input)."""
    from detaudit.engine.fingerprint import tensorflow_fingerprint
    from detaudit.engine.worker import reported_settings

    settings = payload["settings"]
    applied = standalone.apply_cell(settings_spec(settings))
    if applied.device is None:
        return {"bad_input": f"Invalid value for argument `--device`. Received {settings['device']!r}: "
                             f"{applied.unavailable}."}
    try:
        with applied.scope():
            channel.progress("loading the model")
            target = Target(payload["model"], unsafe=payload.get("unsafe", False), inputs=payload.get("inputs"),
                            targets=payload.get("targets"), input_shape=payload.get("input_shape"),
                            loss=payload.get("loss", "mse"), batch_size=payload.get("batch_size", 32),
                            seed=payload.get("seed", 0))
            finals = Path(payload["finals"]) if payload.get("finals") else None
            if payload.get("trace_only"):
                run, training = _execute(target, "execution 1/1", payload["steps"], applied.xla)
                if finals is not None:
                    np.savez(finals, **{f"v{i}": v for i, v in enumerate(run.final)})
                result: dict[str, Any] = {"trace": trace_of(run)}
            else:
                result = audit_training(target, steps=payload["steps"], repeats=payload["repeats"], xla=applied.xla,
                                        resume_step=payload.get("resume_step"), finals_path=finals)
    except UsageError as exc:
        return {"bad_input": str(exc)}
    except (OSError, MemoryError) as exc:
        return {"bad_input": one_line(exc)}
    return {**result, "checks": environment_checks(settings), "applied": reported_settings(),
            "tensorflow": tensorflow_fingerprint(), "gpus_visible": len(tf.config.list_logical_devices("GPU"))}
