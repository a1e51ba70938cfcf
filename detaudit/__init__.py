"""detaudit: determinism and numerics auditing for TensorFlow transposed convolutions.

The parent process never imports TensorFlow: workers do (see :mod:`detaudit.engine.worker`).
"""

from __future__ import annotations

from detaudit._version import __version__
from detaudit.core import numerics
from detaudit.core.config import Config, load_config
from detaudit.errors import ConfigError, DetauditError, RunDirError, UsageError

__all__ = [
    "Config",
    "ConfigError",
    "DetauditError",
    "RunDirError",
    "UsageError",
    "__version__",
    "assert_deterministic",
    "audit_model",
    "load_config",
    "numerics",
    "run",
]


def run(config, **kwargs):  # noqa: ANN001, ANN201 - documented in runner.run
    """Run a config and return the results table; see :func:`detaudit.runner.run`."""
    from detaudit.engine.runner import run as _run

    return _run(config, **kwargs)


def assert_deterministic(fn, *args, repeats=3, **kwargs):  # noqa: ANN001, ANN201 - see model_audit
    """Assert ``fn(*args)`` gives bit-identical outputs ``repeats`` times; see :func:`detaudit.model_audit.assert_deterministic`."""
    from detaudit.engine.model_audit import assert_deterministic as _impl

    return _impl(fn, *args, repeats=repeats, **kwargs)


def audit_model(model, inputs=None, targets=None, **kwargs):  # noqa: ANN001, ANN201 - see model_audit
    """Audit a Keras model in this process; see :func:`detaudit.model_audit.audit_model`."""
    from detaudit.engine.model_audit import audit_model as _impl

    return _impl(model, inputs, targets, **kwargs)
