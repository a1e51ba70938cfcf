"""detaudit: determinism and numerics auditing for TensorFlow transposed convolutions.

The parent process never imports TensorFlow: workers do (see :mod:`detaudit.worker`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import numerics
from .config import Config, load_config
from .errors import ConfigError, DetauditError, RunDirError, UsageError

__all__ = [
    "Config",
    "ConfigError",
    "DetauditError",
    "RunDirError",
    "UsageError",
    "__version__",
    "load_config",
    "numerics",
    "run",
]


def run(config, **kwargs):  # noqa: ANN001, ANN201 - documented in runner.run
    """Run a config and return the results table; see :func:`detaudit.runner.run`."""
    from .runner import run as _run

    return _run(config, **kwargs)
