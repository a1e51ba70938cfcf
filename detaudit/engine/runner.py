"""Plan environment groups, spawn workers, enforce time-outs, capture crashes, report progress.

Never imports TensorFlow. One worker process runs all cells of one environment
group (cells that differ only in per-cell axes share it: one TensorFlow start);
groups run in parallel up to ``workers``. A worker that dies or hangs costs
only the cell it was running: that cell becomes a ``crash`` or ``timeout``
record with the tail of the worker's stderr, and a fresh worker takes the cells
that remain (also when a worker dies before its first cell). Records are
appended to the run directory as each cell finishes, by this process alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.axes import environment_changes
from detaudit.core.config import Cell, Config, Settings, load_config, parse_config
from detaudit.core.planning import expected_cells, iter_groups, shard_cells
from detaudit.core.kinds import USER_LAYER, module_exists
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.store import RunKind, RunStore
from detaudit.errors import (
    ConfigError,
    DetauditError,
    DiskFullError,
    RunDirError,
    UsageError,
    WorkerError,
)
from detaudit.errors import a_or_an as _a

__all__ = ["Event", "RunInterrupted", "check_user_modules", "parse_shard", "require_tensorflow", "run",
           "run_cells", "run_probe", "run_worker_job", "spawn_env_probe", "user_path_for", "worker_command",
           "worker_environ"]

_STDERR_TAIL = 1500
#: A worker that dies before finishing a cell is replaced this many times in a row before the
#: remaining cells of its group are recorded as crashes (a broken TensorFlow install, say).
START_RETRIES = 2
FAILED_STATUSES = ("crash", "timeout")
#: Seconds a worker may take to start TensorFlow (a loaded 2-core machine can take tens of seconds).
STARTUP_S = 120.0


@dataclasses.dataclass(frozen=True)
class Event:
    """A progress event: ``kind`` is one of planned, cell_started, cell_finished, finished."""

    kind: str
    cell_id: str | None = None
    record: dict[str, Any] | None = None
    total: int = 0
    message: str = ""


class RunInterrupted(Exception):  # noqa: N818 - the name says what happened
    """Raised after Ctrl-C (or a full disk) once workers are stopped and what finished is saved.

    ``reason`` is None for Ctrl-C, else the error that stopped the run.
    """

    def __init__(self, run_dir: Path, table: pd.DataFrame, reason: DetauditError | None = None):
        super().__init__(str(run_dir))
        self.run_dir, self.table, self.reason = run_dir, table, reason


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


#: Python 3.10 has no -P: the worker starts from -c with the working directory ('' for -c) taken off sys.path
#: before anything is imported.
_SAFE_PATH_START = ("import runpy, sys; del sys.path[0]; "
                    "runpy.run_module('detaudit.engine.worker', run_name='__main__', alter_sys=True)")


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
class _WorkerOutcome:
    finished: set[str]
    in_flight: str | None
    returncode: int | None
    timed_out: bool
    stderr_tail: str
    hello: dict[str, Any] | None
    refused: list[dict[str, str]] | None = None
    disk_full: str | None = None


class _Processes:
    """Live worker processes, so Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.add(proc)
            if self.stopping:
                _kill(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._live:
                _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return  # reaped: its process group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


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


def _spawn_worker(job: dict[str, Any], env: dict[str, str], log: Any, timeout_s: float,
                  on_message: Callable[[dict[str, Any]], None], processes: _Processes | None) -> _WorkerOutcome:
    """Run one worker process to completion, death or time-out, forwarding its messages.

    ``timeout_s`` bounds each cell (and the start-up, given at least
    :data:`STARTUP_S`). The job goes in on stdin, which stays open as the
    worker's lifeline.
    """
    read_fd, write_fd = os.pipe()
    outcome = _WorkerOutcome(set(), None, None, False, "", None)
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
        # TensorFlow's start-up gets at least STARTUP_S, whatever a cell's timeout_s is.
        deadline = [time.monotonic() + max(timeout_s, STARTUP_S)]
        finished = threading.Event()

        def watchdog() -> None:
            while not finished.wait(0.5):
                if time.monotonic() > deadline[0]:
                    outcome.timed_out = True
                    _kill(proc)
                    return

        # The watchdog first: writing a large job blocks until the worker reads it.
        threading.Thread(target=watchdog, name="worker-timeout", daemon=True).start()
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
        try:
            with os.fdopen(read_fd, encoding="utf-8", errors="replace") as stream:
                read_fd = -1
                for line in stream:
                    try:
                        message = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    event = message.get("event")
                    if event in ("hello", "start", "progress"):
                        deadline[0] = time.monotonic() + timeout_s
                    if event == "hello":
                        outcome.hello = message
                    elif event == "start":
                        outcome.in_flight = message["cell_id"]
                    elif event == "cell":
                        outcome.finished.add(message["cell_id"])
                        outcome.in_flight = None
                    elif event == "refused":
                        outcome.refused = message["refused"]
                    elif event == "disk_full":
                        outcome.disk_full = message["message"]
                    on_message(message)
            outcome.returncode = proc.wait()
        finally:
            finished.set()
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


def _failure_record(cell_id: str, status: str, message: str, log_name: str) -> dict[str, Any]:
    return {"event": "cell", "cell_id": cell_id, "status": status, "message": message,
            "tensors": [], "seconds": None, "log": log_name}


def _describe_death(outcome: _WorkerOutcome, timeout_s: float) -> tuple[str, str]:
    """(status, message): why the worker stopped, with the last lines of its stderr."""
    tail = outcome.stderr_tail.splitlines()[-3:] if outcome.stderr_tail else []
    detail = ": " + " | ".join(line.strip() for line in tail) if tail else ""
    if outcome.timed_out:
        return "timeout", f"worker exceeded timeout_s={timeout_s:g}{detail}"
    rc = outcome.returncode
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        why = f"worker exited with code {rc}"
    return "crash", why + detail


class _Refused(Exception):  # noqa: N818 - a worker's report, turned into the config's error by the run
    def __init__(self, refused: list[dict[str, str]]):
        super().__init__(refused)
        self.refused = refused


def _refusal_error(refused: list[dict[str, str]], config: Config) -> ConfigError:
    """The config's error for kinds a worker refused: the file, the layer's key path, what was found."""
    lines = []
    for r in refused:
        for i, spec in enumerate(config.layers):
            if spec.kind == r["kind"]:
                lines.append(f"{config.source}: invalid value for `layers[{i}].kind`. Expected a Keras Layer "
                             f"subclass ('package.module:Class'). Received kind={r['kind']!r}: {r['message']}")
    return ConfigError("\n".join(dict.fromkeys(lines)))


def run_worker_job(cells: Sequence[Cell], settings: Any, *, timeout_s: float, log_stem: Path,
                   tensor_dir: Path | None, on_record: Callable[[dict[str, Any]], None],
                   on_event: Callable[[Event], None] | None = None,
                   on_hello: Callable[[dict[str, Any]], None] | None = None,
                   processes: _Processes | None = None, cache_dir: Path | None = None,
                   user_kinds: Sequence[str] = (), tmp_dir: Path | None = None) -> None:
    """Run ``cells`` (one environment group) in worker processes until each has a record.

    A worker that crashes or times out in a cell turns that cell into a
    ``crash``/``timeout`` record; a fresh worker continues with the rest. A
    worker that dies outside any cell (while TensorFlow starts, say) costs no
    cell: a fresh one is started, up to :data:`START_RETRIES` times in a row,
    before the remaining cells are recorded as crashes.

    Raises:
        ConfigError: a user kind is not a Keras Layer subclass (nothing ran).
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
               "user_path": user_path_for(user_kinds)}

        def forward(message: dict[str, Any], log_name: str = log_path.name) -> None:
            if message["event"] == "cell":
                on_record({**message, "log": log_name})
            elif message["event"] == "start" and on_event:
                on_event(Event("cell_started", cell_id=message["cell_id"]))
            elif message["event"] == "hello" and on_hello:
                on_hello(message)

        try:  # never through a link (a resumed run directory may come from elsewhere)
            log = os.fdopen(os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "ab+")
        except OSError as exc:
            from detaudit.engine.store import disk_full

            raise disk_full(exc, log_path) or exc from None
        with log:
            outcome = _spawn_worker(job, worker_environ(settings, tmp=tmp_dir), log, timeout_s, forward, processes)
        if outcome.refused:
            raise _Refused(outcome.refused)
        if outcome.disk_full:
            raise DiskFullError(outcome.disk_full)
        if processes and processes.stopping:
            return
        remaining = [c for c in remaining if c.cell_id not in outcome.finished]
        if not remaining:
            return
        if outcome.returncode in (-signal.SIGTERM, -signal.SIGINT) and not outcome.timed_out:
            # Stopped from outside (Slurm's scancel or a cancelled CI job signal the whole process tree): not
            # the cell's fault, so no crash is recorded; its cells stay missing, for --resume to run.
            return
        status, message = _describe_death(outcome, timeout_s)
        if outcome.in_flight is not None:
            on_record(_failure_record(outcome.in_flight, status, message, log_path.name))
            remaining = [c for c in remaining if c.cell_id != outcome.in_flight]
            starts_failed = 0
            continue
        # Died outside any cell: nothing to blame, so the cells go to a fresh worker.
        starts_failed = 0 if outcome.finished else starts_failed + 1
        if starts_failed > START_RETRIES:
            for cell in remaining:
                on_record(_failure_record(cell.cell_id, status, f"worker could not start ({START_RETRIES + 1} "
                                          f"attempts): {message}", log_path.name))
            return


def require_tensorflow() -> None:
    """Fail early, with the fix, when workers could not import TensorFlow (checked without importing it)."""
    if importlib.util.find_spec("tensorflow") is None:
        from detaudit.errors import install_hint

        raise UsageError(f"TensorFlow is not installed for {sys.executable}. Install it with: "
                         f"{install_hint('cpu')} (or gpu, or your own TensorFlow >= 2.16)")


def check_user_modules(config: Config) -> None:
    """Refuse, before any worker starts, a ``package.module:Class`` kind whose module cannot be found.

    Found without importing anything; whether the attribute is a Keras Layer
    subclass is checked in the worker before anything of it is called.

    Raises:
        ConfigError: naming the layer's key path and the missing module.
    """
    problems = [f"{config.source}: invalid value for `layers[{i}].kind`. Expected 'package.module:Class' naming a "
                f"module importable from {os.getcwd()} or sys.path. Received kind={config.layers[i].kind!r}: "
                f"no module named {module!r}."
                for i, module in config.user_modules() if not module_exists(module)]
    if problems:
        raise ConfigError("\n".join(problems))


def _probe_job(name: str, items: Any, settings: Any, timeout_s: float,
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[Any], _WorkerOutcome]:
    result: list[Any] = []

    def on_message(message: dict[str, Any]) -> None:
        if message.get("event") == "probe":
            result.append(message["result"])
        elif message.get("event") == "progress" and on_progress:
            on_progress(message)

    # The audit's model may be a `module:function` factory (a file is passed as an absolute path): user code.
    model = items.get("model") if name == "audit" and isinstance(items, dict) else None
    factory = [model] if isinstance(model, str) and ":" in model and not Path(model).is_absolute() else []
    job = {"settings": settings.as_dict(), "probe": name, "items": items, "user_path": user_path_for(factory)}
    with tempfile.TemporaryFile() as log:  # unnamed: nothing is left behind, even after kill -9
        outcome = _spawn_worker(job,
                                worker_environ(settings), log, timeout_s, on_message, None)
    return result, outcome


def run_probe(name: str, items: Any, timeout_s: float = 600, settings: Any = None,
              on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Run one of :data:`detaudit.engine.probes.PROBES` on plain JSON data in a fresh worker; return its result.

    ``settings`` are applied in the worker before TensorFlow starts, as for
    cells; ``on_progress`` receives the probe's progress events
    (``{"stage", "done", "total"}``).

    Raises:
        WorkerError: the worker failed (its last stderr lines are in the message).
    """
    require_tensorflow()
    settings = settings or Settings()
    result, outcome = _probe_job(name, items, settings, timeout_s, on_progress)
    if not result:
        _, message = _describe_death(outcome, timeout_s)
        raise WorkerError(f"the TensorFlow worker for `{name}` failed ({message}).")
    return result[0]


def spawn_env_probe(timeout_s: float = 120) -> dict[str, Any]:
    """Start one worker with no cells and return its TensorFlow fingerprint (for ``detaudit env``)."""
    require_tensorflow()
    _, outcome = _probe_job("", [], Settings(), timeout_s)
    if outcome.hello is None:
        _, message = _describe_death(outcome, timeout_s)
        raise WorkerError(f"could not start a TensorFlow worker ({message}).")
    return {**outcome.hello.get("env", {}), "applied_defaults": outcome.hello.get("applied", {})}


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with 1 <= i <= n <= 10000."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"Invalid value for argument `--shard`. Expected i/n such as 1/4. Received {text!r}.") from None
    if not 1 <= index <= count <= 10_000:
        raise UsageError(f"Invalid value for argument `--shard`. Expected 1 <= i <= n <= 10000. Received {text!r}.")
    return index, count


def run(config: Config | str | os.PathLike[str] | None = None, *, out: str | os.PathLike[str] = "runs",
        workers: int | None = None, on_event: Callable[[Event], None] | None = None,
        run_id: str | None = None, shard: tuple[int, int] | None = None,
        resume: str | os.PathLike[str] | None = None, retry_failed: bool = False) -> pd.DataFrame:
    """Run every cell of ``config`` and return the long results table.

    Args:
        config: a :class:`~detaudit.core.config.Config` or the path of a YAML
            config (not with ``resume``, which reads the run's own config).
        out: directory under which ``<run-id>/`` is created.
        workers: environment groups run in parallel (default: number of cores).
        on_event: progress callback; the engine itself never prints.
        run_id: a safe name for the run directory (default: timestamp plus config name); one that exists is refused.
        shard: ``(i, n)``: run only shard i of n (see :func:`shard_cells`); ``merge`` joins them.
        resume: an interrupted run directory to finish: cells already in its
            cells.jsonl are not run again.
        retry_failed: with ``resume``, also run again the cells recorded as crash or timeout.

    Returns:
        The results table (see README for the columns); ``table.attrs["run_dir"]``
        is the run directory.

    Raises:
        ConfigError, UsageError, RunDirError: bad input (nothing ran).
        RunInterrupted: on Ctrl-C or a full disk, after stopping workers and saving what finished.
    """
    workers = _workers(workers)
    if config is not None and not isinstance(config, Config):
        config = load_config(config)
    if retry_failed and resume is None:
        raise UsageError("--retry-failed goes with --resume RUN_DIR: it runs a stored run's crashed and "
                         "timed-out cells again.")
    require_tensorflow()
    if resume is not None:
        if config is not None:
            raise UsageError("Give either a config or --resume RUN_DIR, not both: a resumed run keeps its own config.")
        store = RunStore.open(resume)
        if store.kind is not RunKind.MATRIX:
            raise UsageError(f"{store.path}: {_a(store.kind.value)} run cannot be resumed; only `detaudit run` runs can.")
        config = parse_config(store.read_config(), source=str(store.path / "config.yaml"))
        check_user_modules(config)
        with store.lock():
            meta = store.read_meta()
            original = dict(meta)
            meta.setdefault("resumed", []).append(_now())
            meta["finished"], meta["interrupted"] = None, None  # until this resume finishes, the run is not final
            with contextlib.suppress(FileNotFoundError):
                store.results_path.unlink()  # a stale table must not be read as the final one
            latest = {}
            for record in store.iter_records():
                latest[(record["cell_id"], bool(record.get("replay")))] = record["status"]
            done = {key for key, status in latest.items() if not (retry_failed and status in FAILED_STATUSES)}
            try:
                cells = expected_cells(config, meta)
            except ConfigError as exc:
                raise RunDirError(f"{store.path}: meta.json lists a malformed cell ({exc}).") from None
            try:
                return _run_in(store, config, meta, cells, done, workers, on_event, fresh=False)
            except ConfigError:
                store.write_meta(original)  # refused before anything ran: the run is as it was
                raise
    if config is None:
        raise UsageError("No config given.")
    check_user_modules(config)
    store = RunStore.create(out, config.to_dict(), config.name, run_id, exact=True)
    meta = _new_meta(store, config, shard=list(shard) if shard else None)
    with store.lock():
        return _run_in(store, config, meta, shard_cells(config.cells(), shard), set(), workers, on_event, fresh=True)


def _workers(workers: int | None) -> int:
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"Invalid value for argument `workers`. Expected an integer >= 1. Received workers={workers!r}.")
    return workers


def run_cells(cells: Sequence[Cell], config: Config, *, out: str | os.PathLike[str], run_id: str | None = None,
              workers: int | None = None, on_event: Callable[[Event], None] | None = None) -> pd.DataFrame:
    """Run an explicit list of cells (no matrix expansion, no added baseline) as a run of ``config``.

    Triage uses this for its toggles and shrink candidates: the same workers,
    records, store and table as :func:`run`. The cells are listed in meta.json,
    so the run knows when it is complete.
    """
    require_tensorflow()
    check_user_modules(config)
    cells = list({c.cell_id: c for c in cells}.values())
    store = RunStore.create(out, config.to_dict(), config.name, run_id)
    meta = _new_meta(store, config, explicit_cells=[c.to_dict() for c in cells])
    with store.lock():
        return _run_in(store, config, meta, cells, set(), _workers(workers), on_event, fresh=True)


def _run_in(store: RunStore, config: Config, meta: dict[str, Any], cells: list[Cell], done: set[tuple[str, bool]],
            workers: int, on_event: Callable[[Event], None] | None, fresh: bool) -> pd.DataFrame:
    store.write_meta(meta)
    user_kinds = sorted({spec.kind for spec in config.layers if spec.declaration is USER_LAYER})
    jobs = []
    for i, (_, group_cells) in enumerate(iter_groups(cells)):
        for replay in ((False, True) if config.replay_process else (False,)):
            todo = [c for c in group_cells if (c.cell_id, replay) not in done]
            if todo:
                jobs.append((f"g{i:02d}", todo, replay))
    try:
        return _execute(store, config, meta, cells, jobs, workers, on_event or (lambda event: None), user_kinds)
    except ConfigError:
        if fresh and not any(True for _ in store.iter_records()):
            shutil.rmtree(store.path, ignore_errors=True)  # nothing ran: leave no half-made run behind
            with contextlib.suppress(OSError):
                store.path.parent.rmdir()  # and no empty --out this run created
        raise


def _new_meta(store: RunStore, config: Config, **extra: Any) -> dict[str, Any]:
    """meta.json of a new run; TensorFlow facts and per-group settings arrive with the workers."""
    return {"run_id": store.run_id, "kind": RunKind.MATRIX.value, "config_name": config.name,
            "config_source": config.source, "started": _now(), "finished": None, "host": host_fingerprint(),
            "tensorflow": None, "groups": {}, **extra}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _execute(store: RunStore, config: Config, meta: dict[str, Any], cells: list[Cell],
             jobs: list[tuple[str, list[Cell], bool]], workers: int, emit: Callable[[Event], None],
             user_kinds: list[str]) -> pd.DataFrame:
    """Run the jobs (group, cells, replay) in parallel worker threads; append each record as it arrives."""
    total = sum(len(c) for _, c, _ in jobs)
    n_groups = len({group for group, _, _ in jobs})
    replays = sum(len(c) for _, c, replay in jobs if replay)
    what = f"{total} cell runs ({replays} of them replays in a fresh process)" if replays else f"{total} cells to run"
    emit(Event("planned", total=total, message=f"{what} in {n_groups} environment groups"))
    messages: queue.Queue[tuple[str, Any]] = queue.Queue()
    processes = _Processes()
    attempt = f"-r{len(meta.get('resumed', []))}" if meta.get("resumed") else ""
    cache_dir = store.cache_dir
    cache_dir.mkdir(exist_ok=True)
    tmp_dir = store.path / "tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # a killed run's leftovers
    tmp_dir.mkdir()

    def run_job(group: str, group_cells: list[Cell], replay: bool) -> None:
        tensor_dir = None
        if config.keep_tensors:
            tensor_dir = store.tensors_dir / "replay" if replay else store.tensors_dir
        suffix = ("-replay" if replay else "") + attempt
        run_worker_job(
            group_cells, group_cells[0].settings, timeout_s=config.timeout_s,
            log_stem=store.logs_dir / f"{group}{suffix}", tensor_dir=tensor_dir, cache_dir=cache_dir,
            on_record=lambda r: messages.put(("record", {**r, "replay": replay, "group": group})),
            on_event=lambda e: messages.put(("event", e)),
            on_hello=lambda h: messages.put(("hello", (group + suffix, h))),
            processes=processes, user_kinds=user_kinds, tmp_dir=tmp_dir,
        )

    by_id = {c.cell_id: c for c in cells}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    stop: DetauditError | None = None

    def handle(kind: str, payload: Any) -> None:
        if kind == "record":
            record = {**payload, "cell": by_id[payload["cell_id"]].to_dict()}
            store.append_record(record)
            emit(Event("cell_finished", cell_id=payload["cell_id"], record=record, total=total))
        elif kind == "hello":
            group, hello = payload
            meta["tensorflow"] = meta.get("tensorflow") or hello.get("env")
            meta.setdefault("groups", {})[group] = hello.get("applied")
            store.write_meta(meta)
        else:
            emit(payload)

    def drain() -> None:
        """Keep the records that arrived while the run was stopping: every finished cell is kept."""
        while True:
            try:
                kind, payload = messages.get_nowait()
            except queue.Empty:
                return
            if kind == "record":
                with contextlib.suppress(DiskFullError):
                    handle(kind, payload)

    def stop_all() -> None:
        processes.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        drain()

    try:
        futures = [pool.submit(run_job, *job) for job in jobs]
        pending = set(futures)
        while (pending or not messages.empty()) and stop is None:
            try:
                kind, payload = messages.get(timeout=0.2)
            except queue.Empty:
                for finished in [f for f in pending if f.done()]:
                    pending.discard(finished)
                    try:
                        finished.result()
                    except _Refused as exc:
                        stop = _refusal_error(exc.refused, config)
                    except DiskFullError as exc:
                        stop = exc
                continue
            try:
                handle(kind, payload)
            except DiskFullError as exc:
                stop = exc
    except KeyboardInterrupt:
        stop_all()
        raise RunInterrupted(store.path, _finish(store, config, meta, interrupted=True, cells=cells)) from None
    except BaseException:
        stop_all()  # a bug or a failure of the machine: no worker outlives it, what finished is kept
        raise
    if stop is not None:
        stop_all()
        if isinstance(stop, ConfigError):
            raise stop
        raise RunInterrupted(store.path, _finish(store, config, meta, interrupted=True, cells=cells), reason=stop)
    pool.shutdown(wait=True)
    table = _finish(store, config, meta, interrupted=False, cells=cells)
    emit(Event("finished", total=total))
    return table


def _finish(store: RunStore, config: Config, meta: dict[str, Any], interrupted: bool,
            cells: list[Cell] | None = None) -> pd.DataFrame:
    """Write the end time and the table; on a full disk keep going with the table in memory."""
    from detaudit.engine.table import build_table

    shutil.rmtree(store.path / "tmp", ignore_errors=True)
    meta["finished"] = _now()
    meta["interrupted"] = interrupted
    with contextlib.suppress(DiskFullError):
        store.write_meta(meta)
    table = build_table(store, config, cells)
    tmp = store.results_path.with_name(f".results.{os.getpid()}.parquet")
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, store.results_path)  # whole or absent: a torn table is never read
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    table.attrs["run_dir"] = str(store.path)
    return table
