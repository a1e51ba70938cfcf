"""User-facing errors.

Every error a user can cause by what they typed or pointed detaudit at derives
from :class:`DetauditError`. The CLI turns these into one line on stderr and
exit code 2; anything else is a bug in detaudit and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class DetauditError(Exception):
    """Base class of errors caused by the user's input; the CLI exits with 2."""

    exit_code = 2


class ConfigError(DetauditError):
    """Raised when a config file or config mapping is invalid.

    The message names the file, the YAML key path, the value received and what
    is allowed, in the voice of Keras' argument errors.
    """


class UsageError(DetauditError):
    """Raised for a bad command-line argument or API argument."""


class RunDirError(DetauditError):
    """Raised when a run directory is missing, corrupted, foreign or of an unknown format."""


def did_you_mean(received: object, allowed: Iterable[object]) -> str:
    """Return " Did you mean `x`?" for the closest allowed value, or ""."""
    choices = [str(a) for a in allowed]
    close = difflib.get_close_matches(str(received), choices, n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


_NOISE = re.compile(
    r"\x1b\[[0-9;]*m"                                   # ANSI colour from Keras
    r"|\{\{function_node [^}]*\}\}"                       # TensorFlow's graph function tags
    r"|Exception encountered when calling [\w.]+\(\)\.?"  # Keras' wrapper sentence
    r"|Arguments received by [^\n]*"
    r"|\s•\s[^\n]*"                                     # Keras' "• inputs=..." argument listing
)


def one_line(exc: BaseException, limit: int = 600) -> str:
    """``Type: message`` on one line, without the wrappers Keras and TensorFlow add."""
    text = _NOISE.sub(" ", str(getattr(exc, "message", None) or exc))
    return f"{type(exc).__name__}: {' '.join(text.split())}"[:limit]
