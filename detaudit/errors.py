"""The errors detaudit raises on purpose, one hierarchy, each with its exit code.

Every error a user can cause by what they typed or pointed detaudit at derives
from :class:`DetauditError`; the CLI turns each into one line per problem on
stderr and its ``exit_code`` (an :class:`~detaudit.core.vocabulary.ExitCode`):
BAD_INPUT for bad input, FAILED for a run that could not finish (a full disk),
WORKER_FAILED for a TensorFlow worker that failed on its own (detaudit's or
TensorFlow's fault, not the user's). Anything else is a bug in detaudit and
keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from detaudit.core.vocabulary import ExitCode

__all__ = ["ConfigError", "DetauditError", "DiskFullError", "RunDirError", "UsageError", "WorkerError", "a_or_an",
           "did_you_mean", "encodable", "install_hint", "one_line"]


class DetauditError(Exception):
    """Base class of errors caused by the user's input; the CLI exits with ``ExitCode.BAD_INPUT``."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class ConfigError(DetauditError):
    """Raised when a config file or config mapping is invalid.

    The message names the file, the YAML key path, the value received and what
    is allowed, in the voice of Keras' argument errors.
    """


class UsageError(DetauditError):
    """Raised for a bad command-line argument or API argument."""


class RunDirError(DetauditError):
    """Raised when a run directory is missing, corrupted, foreign, locked or of an unknown format."""


class DiskFullError(DetauditError):
    """Raised when a run cannot be written for lack of space; the run is incomplete and can be resumed."""

    exit_code = ExitCode.FAILED


class WorkerError(DetauditError):
    """Raised when a TensorFlow worker fails on its own (it could not start, or died outside any cell).

    Not the user's mistake: the message carries the worker's last stderr lines.
    """

    exit_code = ExitCode.WORKER_FAILED


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


def encodable(text: str) -> str:
    """``text`` encodable as UTF-8: a lone surrogate (``os.fsdecode`` of a file name that is not UTF-8) becomes
    its visible escape, ``caf\\udce9.npy``, instead of failing every writer of the text later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _message(exc: BaseException) -> str:
    """What ``exc`` says. An OSError says its errno, text and file name; Keras re-raises one made from its first
    argument alone (``FileNotFoundError: 2``), so the error it replaced (its context) says it instead."""
    if isinstance(exc, OSError) and exc.strerror is None:
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, OSError) and inner.strerror is not None:
            return str(inner)
    if isinstance(exc, OSError):
        return str(exc)
    return str(getattr(exc, "message", None) or exc)


def one_line(exc: BaseException, limit: int = 600) -> str:
    """``Type: message`` on one line, without the wrappers Keras and TensorFlow add, encodable as UTF-8."""
    text = _NOISE.sub(" ", _message(exc))
    return encodable(f"{type(exc).__name__}: {' '.join(text.split())}")[:limit]


def a_or_an(word: str) -> str:
    """``an audit``, ``a matrix``: the word with its indefinite article."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def install_hint(extra: str) -> str:
    """The install command for an extra, as this detaudit was installed: from a clone (a local
    directory, often editable) ``pip install ".[extra]"``, else ``pip install 'detaudit[extra]'``."""
    import importlib.metadata
    import json

    try:
        direct = importlib.metadata.distribution("detaudit").read_text("direct_url.json")
        local = bool(direct) and json.loads(direct).get("url", "").startswith("file:")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        local = True  # running from a source tree without an install
    return f'pip install ".[{extra}]" (in your detaudit clone)' if local else f"pip install 'detaudit[{extra}]'"
