"""Finding detaudit's worker processes in /proc (Linux), to check that none outlives its parent."""

from __future__ import annotations

from pathlib import Path

# The runner starts each worker as `python -P -m detaudit.engine.worker FD`, or on Python 3.10 (no -P) as
# `python -c "...runpy.run_module('detaudit.engine.worker'...)" FD` (engine/runner.py, worker_command).
WORKER_MODULE = b"detaudit.engine.worker"


def _argv(pid: int) -> list[bytes]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def is_worker(pid: int) -> bool:
    """Whether ``pid`` runs a detaudit worker (either form of its command line)."""
    argv = _argv(pid)
    for flag, value in zip(argv, argv[1:]):
        if (flag == b"-m" and value == WORKER_MODULE) or (flag == b"-c" and b"'" + WORKER_MODULE + b"'" in value):
            return True
    return False


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == pid]


def worker_pids(parent: int | None = None) -> set[int]:
    """Live detaudit workers: all of them, or only the descendants of ``parent``."""
    pids = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and is_worker(int(p.name))}
    if parent is None:
        return pids
    mine = set()
    for pid in pids:
        ancestor = _parent(pid)
        while ancestor not in (None, 0, 1) and ancestor != parent:
            ancestor = _parent(ancestor)
        if ancestor == parent:
            mine.add(pid)
    return mine


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are still workers (a reused pid running something else is not)."""
    return {pid for pid in pids if is_worker(pid)}
