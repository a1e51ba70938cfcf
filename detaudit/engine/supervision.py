"""Worker processes: start one on a safe path, feed it a job, watch it, kill it, and say why it stopped.

Never imports TensorFlow. A worker gets its job as one JSON line on stdin
(which stays open as its lifeline: the worker exits when the parent does) and
answers with JSON messages on a pipe of its own (``hello``, ``start``,
``progress``, ``cell``, ``refused``, ``disk_full``, ``probe``, ``done``). A
watchdog kills a worker that stays silent past its time-out; a worker that
dies or hangs costs only the cell it was running (:func:`run_worker_job`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from detaudit.core.axes import environment_changes
from detaudit.core.cells import Cell
from detaudit.core.vocabulary import Status
from detaudit.engine.cell_record import CellRecord
from detaudit.engine.store import disk_full
from detaudit.errors import DiskFullError

__all__ = ["START_RETRIES", "STARTUP_S", "Processes", "WorkerOutcome", "WorkerRefused", "describe_death",
           "run_worker_job", "spawn_worker", "user_path_for", "worker_command", "worker_environ"]

_STDERR_TAIL = 1500
#: A worker that dies before finishing a cell is replaced this many times in a row before the
#: remaining cells of its group are recorded as crashes (a broken TensorFlow install, say).
START_RETRIES = 2
#: Seconds a worker may take to start TensorFlow (a loaded 2-core machine can take tens of seconds).
STARTUP_S = 120.0
#: Messages that show the worker is alive and moving: each one restarts its time-out.
_SIGNS_OF_LIFE = ("hello", "start", "progress")
#: Python 3.10 has no -P: the worker starts from -c with the working directory ('' for -c) taken off sys.path
#: before anything is imported.
_SAFE_PATH_START = ("import runpy, sys; del sys.path[0]; "
                    "runpy.run_module('detaudit.engine.worker', run_name='__main__', alter_sys=True)")


def worker_environ(settings: Any, base: dict[str, str] | None = None, tmp: Path | None = None) -> dict[str, str]:
    """The environment a worker of this group starts with: the axes' environment changes applied.

    ``determinism: off`` removes an inherited TF_DETERMINISTIC_OPS, so off
    means off; ``onednn: default`` leaves TF_ENABLE_ONEDNN_OPTS as this
    environment has it. meta.json records what each group got.
    """
    env = dict(os.environ if base is None else base)
    for name, value in environment_changes(settings.as_dict()).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if tmp is not None:  # TensorFlow's own temporary files (autograph) stay in the run, removed when it finishes
        env["TMPDIR"] = str(tmp)
    # The working directory is not on the worker's path (see worker_command); an empty entry in PYTHONPATH
    # would put it back ("" means the current directory), so only the user's explicit entries are kept.
    if "PYTHONPATH" in env:
        env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def worker_command(fd: int) -> list[str]:
    """The worker's command line: Python on a safe import path, never the directory detaudit was started in.

    ``python -m`` puts the working directory first on ``sys.path``, so a
    ``numpy.py`` there would run in the worker. With ``-P`` (or its 3.10
    equivalent) only PYTHONPATH and the installation are searched; the worker
    adds the working directory itself, after its own dependencies are
    imported, when the job names user code (see :func:`user_path_for`).
    """
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "detaudit.engine.worker", str(fd)]
    return [sys.executable, "-c", _SAFE_PATH_START, str(fd)]


def user_path_for(user_modules: Sequence[str]) -> str | None:
    """The directory user modules are imported from (the working directory, as documented), or None: no user
    module named, nothing imported from there."""
    return os.getcwd() if user_modules else None


@dataclasses.dataclass
class WorkerOutcome:
    """What one worker process did: the cells it finished, the one it was in when it stopped, and how it ended."""

    finished: set[str] = dataclasses.field(default_factory=set)
    in_flight: str | None = None
    returncode: int | None = None
    timed_out: bool = False
    stderr_tail: str = ""
    hello: dict[str, Any] | None = None
    refused: list[dict[str, str]] | None = None
    disk_full: str | None = None

    def observe(self, message: dict[str, Any]) -> None:
        """Update from one of the worker's messages."""
        event = message.get("event")
        if event == "hello":
            self.hello = message
        elif event == "start":
            self.in_flight = message["cell_id"]
        elif event == "cell":
            self.finished.add(message["cell_id"])
            self.in_flight = None
        elif event == "refused":
            self.refused = message["refused"]
        elif event == "disk_full":
            self.disk_full = message["message"]


class Processes:
    """Live worker processes, so Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.add(proc)
            if self.stopping:
                kill(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._live:
                kill(proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker and everything it started (its own process group)."""
    if proc.poll() is not None:
        return  # reaped: its process group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Watchdog:
    """Kills a worker that stays silent past its deadline; :meth:`extend` moves the deadline on."""

    def __init__(self, proc: subprocess.Popen[bytes], first_s: float):
        self.fired = False
        self._proc, self._deadline, self._done = proc, time.monotonic() + first_s, threading.Event()
        threading.Thread(target=self._watch, name="worker-timeout", daemon=True).start()

    def extend(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            if time.monotonic() > self._deadline:
                self.fired = True
                kill(self._proc)
                return


def _messages(stream: IO[str]) -> Iterator[dict[str, Any]]:
    """The worker's JSON messages; a line that is not one (a stray print) is skipped."""
    for line in stream:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict):
            yield message


def _tail(log: Any) -> str:
    try:
        log.flush()
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 8 * _STDERR_TAIL))
        text = log.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines)[-_STDERR_TAIL:]


def spawn_worker(job: dict[str, Any], env: dict[str, str], log: Any, timeout_s: float,
                 on_message: Callable[[dict[str, Any]], None], processes: Processes | None) -> WorkerOutcome:
    """Run one worker process to completion, death or time-out, forwarding its messages.

    ``timeout_s`` bounds each cell (and the start-up, given at least
    :data:`STARTUP_S`). The job goes in on stdin, which stays open as the
    worker's lifeline.
    """
    read_fd, write_fd = os.pipe()
    outcome = WorkerOutcome()
    proc = None
    try:
        proc = subprocess.Popen(
            worker_command(write_fd),
            stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(write_fd,), env=env,
            start_new_session=True,  # Ctrl-C reaches the parent only
        )
        os.close(write_fd)
        write_fd = -1
        if processes:
            processes.add(proc)
        # The watchdog first: writing a large job blocks until the worker reads it.
        watchdog = _Watchdog(proc, max(timeout_s, STARTUP_S))
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write((json.dumps(job) + "\n").encode())
                proc.stdin.flush()
            with os.fdopen(read_fd, encoding="utf-8", errors="replace") as stream:
                read_fd = -1
                for message in _messages(stream):
                    if message.get("event") in _SIGNS_OF_LIFE:
                        watchdog.extend(timeout_s)
                    outcome.observe(message)
                    on_message(message)
            outcome.returncode = proc.wait()
        finally:
            watchdog.stop()
            outcome.timed_out = watchdog.fired
            if processes:
                processes.discard(proc)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    outcome.stderr_tail = _tail(log)
    return outcome


def describe_death(outcome: WorkerOutcome, timeout_s: float) -> tuple[str, str]:
    """(status, message): why the worker stopped, with the last lines of its stderr."""
    tail = outcome.stderr_tail.splitlines()[-3:] if outcome.stderr_tail else []
    detail = ": " + " | ".join(line.strip() for line in tail) if tail else ""
    if outcome.timed_out:
        return Status.TIMEOUT, f"worker exceeded timeout_s={timeout_s:g}{detail}"
    rc = outcome.returncode
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        why = f"worker exited with code {rc}"
    return Status.CRASH, why + detail


class WorkerRefused(Exception):  # noqa: N818 - a worker's report, turned into the config's error by the run
    """A worker refused user kinds that are not Keras Layer subclasses; ``refused`` lists them with why."""

    def __init__(self, refused: list[dict[str, str]]):
        super().__init__(refused)
        self.refused = refused


def _open_log(path: Path) -> IO[bytes]:
    """A worker's log, appended to; never through a link (a resumed run directory may come from elsewhere)."""
    try:
        return os.fdopen(os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "ab+")
    except OSError as exc:
        raise disk_full(exc, path) or exc from None


def run_worker_job(cells: Sequence[Cell], settings: Any, *, timeout_s: float, log_stem: Path,
                   tensor_dir: Path | None, on_record: Callable[[dict[str, Any]], None],
                   on_hello: Callable[[dict[str, Any]], None] | None = None,
                   processes: Processes | None = None, cache_dir: Path | None = None,
                   user_kinds: Sequence[str] = (), tmp_dir: Path | None = None, passes_only: bool = False) -> None:
    """Run ``cells`` (one environment group) in worker processes until each has a record.

    ``passes_only`` (a replay in a fresh process) runs the repeated passes alone: only their bits are
    compared with the first process's, so the float64 reference, the adjoint test, the batch passes and the
    ops behind each tensor (an XLA cell's HLO lowered again) would be measured for nothing.

    ``on_record`` receives each record's JSON form. A worker that crashes or
    times out in a cell turns that cell into a ``crash``/``timeout`` record; a
    fresh worker continues with the rest. A worker that dies outside any cell
    (while TensorFlow starts, say) costs no cell: a fresh one is started, up to
    :data:`START_RETRIES` times in a row, before the remaining cells are
    recorded as crashes.

    Raises:
        WorkerRefused: a user kind is not a Keras Layer subclass (nothing ran).
        DiskFullError: a worker could not write for lack of space.
    """
    remaining = list(cells)
    attempt, starts_failed = 0, 0
    while remaining:
        attempt += 1
        log_path = log_stem.with_name(f"{log_stem.name}{'' if attempt == 1 else f'.{attempt}'}.log")
        job = {"settings": settings.as_dict(), "cells": [c.to_dict() for c in remaining],
               "tensor_dir": str(tensor_dir) if tensor_dir else None,
               "cache_dir": str(cache_dir) if cache_dir else None, "user_kinds": list(user_kinds),
               "user_path": user_path_for(user_kinds), "passes_only": passes_only}

        def forward(message: dict[str, Any], log_name: str = log_path.name) -> None:
            if message["event"] == "cell":
                on_record({**message, "log": log_name})
            elif message["event"] == "hello" and on_hello:
                on_hello(message)

        with _open_log(log_path) as log:
            outcome = spawn_worker(job, worker_environ(settings, tmp=tmp_dir), log, timeout_s, forward, processes)
        if outcome.refused:
            raise WorkerRefused(outcome.refused)
        if outcome.disk_full:
            raise DiskFullError(outcome.disk_full)
        remaining = [c for c in remaining if c.cell_id not in outcome.finished]
        if not remaining or (processes and processes.stopping) or _stopped_from_outside(outcome):
            return
        status, message = describe_death(outcome, timeout_s)
        if outcome.in_flight is not None:  # the cell it died in is the one to blame
            on_record(CellRecord.failure(outcome.in_flight, status, message, log_path.name).to_json())
            remaining = [c for c in remaining if c.cell_id != outcome.in_flight]
            starts_failed = 0
            continue
        # Died outside any cell: nothing to blame, so the cells go to a fresh worker.
        starts_failed = 0 if outcome.finished else starts_failed + 1
        if starts_failed > START_RETRIES:
            why = f"worker could not start ({START_RETRIES + 1} attempts): {message}"
            for cell in remaining:
                on_record(CellRecord.failure(cell.cell_id, status, why, log_path.name).to_json())
            return


def _stopped_from_outside(outcome: WorkerOutcome) -> bool:
    """Stopped by SIGTERM or SIGINT (Slurm's scancel or a cancelled CI job signal the whole process tree): not the
    cell's fault, so no crash is recorded; its cells stay missing, for --resume to run."""
    return outcome.returncode in (-signal.SIGTERM, -signal.SIGINT) and not outcome.timed_out
