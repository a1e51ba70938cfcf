"""Fabricated training audits: the result a worker stores in audit.json, written by hand (no TensorFlow).

The shape is that of a real ``detaudit audit`` result (TensorFlow 2.21, a Sequential model on the CPU);
:func:`audit_result` makes one whose repeats differ at the gradient of a bias (the ``racy_backward`` training
of tests/training_models.py), :func:`data_audit_result` one whose data pipeline hands out other batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detaudit.engine.store import RunKind, RunStore

_CHECKS = [
    {"applies": "any", "check": "device", "state": "cpu",
     "risk": "CPU and GPU kernels sum in different orders (tensorflow#38197)",
     "fix": "compare within one device type; use max_ulp_scaled thresholds across devices"},
    {"applies": "gpu", "check": "op determinism", "state": "off",
     "risk": "GPU kernels may sum in a different order on each run",
     "fix": "tf.config.experimental.enable_op_determinism() before building the model"},
    {"applies": "cpu", "check": "oneDNN", "state": "off (TF_ENABLE_ONEDNN_OPTS=0)",
     "risk": "CPU results differ between machines with oneDNN on and off",
     "fix": "set TF_ENABLE_ONEDNN_OPTS to one value on every machine"},
    {"applies": "gpu", "check": "TF32", "state": "on",
     "risk": "float32 convolutions round their inputs to a 10-bit mantissa",
     "fix": "tf.config.experimental.enable_tensor_float_32_execution(False)"},
]


def _answers(rerun: bool, repeats: bool, resume: bool | None, repeats_detail: str) -> list[dict[str, Any]]:
    return [
        {"question": "rerun", "holds": rerun,
         "detail": "a fresh process with the same seed ends with the same weights after 2 step(s)"},
        {"question": "repeats", "holds": repeats, "detail": repeats_detail},
        {"question": "resume", "holds": resume,
         "detail": "resumed at step 1 of 2 from a checkpoint of the model's and optimizers' variables: the same "
                   "weights" if resume else "not asked"},
    ]


def _base(model: str) -> dict[str, Any]:
    return {
        "model": model, "seed": 0, "steps": 2, "repeats": 2, "gpus_visible": 0, "checks": _CHECKS,
        "settings": {"determinism": "off", "device": "cpu", "onednn": "off", "precision": "float32", "xla": "off"},
        "applied": {"dtype_policy": "float32", "intra_op_threads": 0, "onednn": "off (TF_ENABLE_ONEDNN_OPTS=0)",
                    "op_determinism": False},
        "tensorflow": {"tensorflow_version": "2.21.0", "keras_version": "3.15.1", "gpus": []},
        "losses": [{"loss": 1.0451917}, {"loss": 1.0443354}],
        "final_digests": [["sequential/up1/kernel", "65aec88c"], ["sequential/racy/racy_bias", "7b5a58bf"]],
        "final_vs_repeats": [], "rerun_divergence": None,
        "resume": {"differing": [], "equal": True, "of": 2, "random_ops": [], "step": 1},
    }


def audit_result() -> dict[str, Any]:
    """Repeats differ at the gradient of ``racy/racy_bias`` from step 1; an unseeded Dropout; no pipeline."""
    rows = [("forward", "up1", "Conv2DTranspose", None, 0), ("forward", "dropout", "Dropout", None, 0),
            ("forward", "racy", "RacyConv2DTranspose", None, 0), ("loss", "loss", "", 2, 3),
            ("gradients", "sequential/up1/kernel", "", 2, 17), ("gradients", "sequential/racy/racy_bias", "", 1, 4096),
            ("update", "sequential/racy/racy_bias", "", 1, 1_234_567)]
    return {
        **_base("tests.training_models:racy_backward"), "verdict": "NONDETERMINISTIC",
        "answers": _answers(True, False, True, "2 executions from the same weights differ from step 1"),
        "layers": [{"stage": s, "name": n, "class": c, "first_step": f, "max_ulp": u} for s, n, c, f, u in rows],
        "repeat_divergence": {"step": 1, "stage": "gradients", "name": "sequential/racy/racy_bias", "execution": 2},
        "pipeline": [],
        "training": {"model": "Sequential", "train_step": "keras", "optimizers": ["optimizer: Adam"], "loss": "mse",
                     "steps": 2, "dtype_policies": ["float32"], "compiled": True, "synthetic": None,
                     "random_layers": [{"path": "dropout", "class": "Dropout", "seeded": False}]},
    }


def data_audit_result() -> dict[str, Any]:
    """The batches differ between repeats: an unordered parallel map is the source; what follows differs too."""
    rows = [("data", "batch[0]", "", 1, 88), ("forward", "up", "Conv2DTranspose", 1, 301),
            ("gradients", "functional/up/kernel", "", 1, 9001)]
    return {
        **_base("tests.training_models:unordered_pipeline"), "verdict": "NONDETERMINISTIC",
        "answers": _answers(True, False, None, "2 executions from the same weights differ from step 1"),
        "layers": [{"stage": s, "name": n, "class": c, "first_step": f, "max_ulp": u} for s, n, c, f, u in rows],
        "repeat_divergence": {"step": 1, "stage": "data", "name": "batch[0]", "execution": 2},
        "pipeline": [{"node": "ParallelMapDatasetV2", "source": "yes",
                      "problem": "a parallel map with deterministic=False hands out elements as they finish",
                      "fix": "pass deterministic=True (or leave it unset)"},
                     {"node": "ShuffleDataset", "source": "no: seeded",
                      "problem": "a shuffle with seed=1", "fix": ""}],
        "training": {"model": "Functional", "train_step": "custom", "optimizers": ["optimizer: SGD"], "loss": None,
                     "steps": 2, "dtype_policies": ["float32"], "compiled": True,
                     "synthetic": "inputs: 2 batches of random data (the model was not given a dataset)",
                     "random_layers": []},
    }


def make_audit_run(root: Path, run_id: str, result: dict[str, Any]) -> RunStore:
    """A stored audit run holding ``result`` (what ``detaudit show`` and ``report`` read)."""
    store = RunStore.create(root, None, "audit-model", run_id=run_id, kind=RunKind.AUDIT)
    store.write_meta({"run_id": run_id, "kind": "audit", "config_name": "audit-model",
                      "started": "2026-01-03T00:00:00+00:00", "finished": "2026-01-03T00:00:10+00:00",
                      "verdict": result["verdict"], "tensorflow": result["tensorflow"]})
    store.write_json("audit.json", result)
    return store
