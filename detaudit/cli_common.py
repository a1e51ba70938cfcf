"""What every command shares: the consoles, output paths checked before any work, streams safe for any reader.

Part of the command line (:mod:`detaudit.cli`): nothing here does a command's work.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from detaudit.core.vocabulary import ExitCode, RunStatus
from detaudit.errors import UsageError

__all__ = ["SafeStream", "err_console", "show_progress", "note", "out_console", "outside_runs", "print_json", "summary_code",
           "writable", "write"]


def out_console() -> Any:
    """The console of stdout."""
    from detaudit.render.terminal import console

    return console()


def err_console() -> Any:
    """The console of stderr."""
    from detaudit.render.terminal import console

    return console(stderr=True)


def show_progress(as_json: bool) -> bool:
    """Progress only on a terminal, and never with --json."""
    return not as_json and sys.stderr.isatty()


def outside_runs(path: str | Path, what: str) -> None:
    """Refuse an output path inside a run directory: a report written there would replace a run's records.

    Raises:
        UsageError: naming the argument and the run directory.
    """
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / "meta.json").is_file() or (folder / "cells.jsonl").is_file():
            raise UsageError(f"Invalid value for argument `{what}`. Expected a path outside every run directory. "
                             f"Received {str(path)!r}, inside the run directory {folder}.")


def writable(path: str | None, what: str) -> Path | None:
    """Check an output path before any work: not a directory, not inside a run directory, and its folder can be
    made and the file written (``/dev/full`` cannot).

    Raises:
        UsageError: naming the argument and why the path cannot be written.
    """
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"Invalid value for argument `{what}`. Expected a file path. Received {path!r}, a directory.")
    outside_runs(target, what)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            if existed and not target.is_file():  # a device: only a write shows whether it takes data
                handle.write("\n")
                handle.flush()
    except OSError as exc:
        raise UsageError(f"Invalid value for argument `{what}`. Cannot write {path!r}: "
                         f"{exc.strerror or exc.__class__.__name__}.") from None
    if not existed:
        target.unlink()
    return target


def write(path: Path, what: str, write: Any) -> None:
    """Write an output file after the work; a failure (the disk filled meanwhile) is one line, not a traceback."""
    try:
        write()
    except OSError as exc:
        raise UsageError(f"Invalid value for argument `{what}`. Cannot write {str(path)!r}: "
                         f"{exc.strerror or exc.__class__.__name__}.") from None


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def summary_code(summary: Any) -> int:
    return ExitCode.OK if summary.status == RunStatus.PASS else ExitCode.FAILED


def note(text: str) -> None:
    """A yellow line on stderr, as written (paths and names from run directories are not markup)."""
    err_console().print(text, style="yellow", highlight=False, markup=False, soft_wrap=True)



class SafeStream:
    """sys.stdout or sys.stderr made safe for any reader: a character the encoding lacks is written as an escape
    (``PYTHONIOENCODING=ascii``, ``LC_ALL=C``), and once the reader has gone (``detaudit run | head -1``) the rest
    is dropped, so the command finishes with its own exit code instead of failing on the pipe."""

    def __init__(self, stream: Any):
        self._stream, self.closed_by_reader = stream, False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                return self._guarded(lambda: self._stream.write(
                    text.encode(encoding, "backslashreplace").decode(encoding)), len(text))
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            self._guarded(self._stream.flush, None)

    def _guarded(self, action: Any, default: Any) -> Any:
        try:
            return action()
        except BrokenPipeError:
            self._reader_left()
            return default

    def _reader_left(self) -> None:
        self.closed_by_reader = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # the interpreter's last flush must not fail
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno: the stream's own
        return getattr(self._stream, name)
