"""The ``detaudit`` command from a test: a real subprocess, or ``cli.main`` in-process for bad-input checks."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def detaudit(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """``python -m detaudit ARGS`` in a subprocess, as a user runs it (signals, exit status, start-up)."""
    return subprocess.run([sys.executable, "-m", "detaudit", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def detaudit_main(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """``cli.main(ARGS)`` in this process, its output captured: for checks that need no subprocess.

    An argparse refusal raises SystemExit inside main; its code is the exit status, as in a shell.
    """
    from detaudit.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["detaudit", *args], code, out.getvalue(), err.getvalue())


def one_clean_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of a refused command (exit 2, no traceback), checked for each fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
