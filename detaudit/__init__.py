"""detaudit: determinism and numerics auditing for TensorFlow transposed convolutions.

The parent process never imports TensorFlow: workers do (see :mod:`detaudit.engine.worker`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from detaudit._version import __version__
from detaudit.core import numerics
from detaudit.core.config import Config, load_config
from detaudit.errors import (
    ConfigError,
    DetauditError,
    DiskFullError,
    RunDirError,
    UsageError,
    WorkerError,
)
from detaudit.testing import assert_deterministic

if TYPE_CHECKING:
    from detaudit.analysis.tidy import load_runs
    from detaudit.engine.runner import run

#: Public functions that live in modules importing pandas: imported on first use, so ``import detaudit`` stays
#: light, and re-exported as they are (one signature, the module's own).
_LAZY = {"run": "detaudit.engine.runner", "load_runs": "detaudit.analysis.tidy"}

__all__ = [
    "Config",
    "ConfigError",
    "DetauditError",
    "DiskFullError",
    "RunDirError",
    "UsageError",
    "WorkerError",
    "__version__",
    "assert_deterministic",
    "audit_model",
    "load_config",
    "load_runs",
    "numerics",
    "run",
]


def audit_model(training: Any, *, steps: int = 3, repeats: int = 3, seed: int = 0, xla: bool = False,
                resume_step: int | None = None, loss: str = "mse", batch_size: int = 32,
                input_shape: list[int] | None = None) -> dict[str, Any]:
    """Audit a training in this process (TensorFlow imported): repeats and a resume, as ``detaudit audit`` runs them.

    Args:
        training: a function returning a Keras model or a ``(model, data)`` pair (called once per execution,
            after every seed is reset), a ``"module:function"`` string, or a ``.keras`` path.

    Returns:
        Plain data: ``training``, ``repeat_divergence`` (None when every repeat matched), ``layers``, ``resume``,
        ``pipeline``, ``trace``. The rerun answer needs a second process: use ``detaudit audit`` for it.

    Raises:
        UsageError: a factory that returns neither a model nor a pair, data that does not fit, a dataset
            that yields nothing.
    """
    from detaudit.engine.model_audit import audit_training
    from detaudit.engine.training_target import Target

    target = Target(training, input_shape=input_shape, loss=loss, batch_size=batch_size, seed=seed)
    return audit_training(target, steps=steps, repeats=repeats, xla=xla, resume_step=resume_step, finals_path=None)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detaudit' has no attribute {name!r}")
