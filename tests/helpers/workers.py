"""Finding detaudit's worker processes in /proc (Linux), to check that none outlives its parent."""

from __future__ import annotations

from pathlib import Path

# The runner starts each worker as `python -m detaudit.engine.worker FD` (engine/runner.py).
WORKER_ARGV = (b"-m", b"detaudit.engine.worker")


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
    argv = _argv(pid)
    return any(tuple(argv[i:i + 2]) == WORKER_ARGV for i in range(len(argv) - 1))


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
