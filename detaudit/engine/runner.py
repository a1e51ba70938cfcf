"""Plan environment groups, spawn workers, enforce time-outs, capture crashes, report progress.

Never imports TensorFlow. One worker process runs all cells of one environment
group (one TensorFlow import per group); groups run in parallel up to
``workers``. A worker that dies or hangs costs only the cell it was running:
that cell becomes a ``crash`` or ``timeout`` record with the tail of the
worker's stderr, and a fresh worker takes the cells that remain.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.config import Cell, Config, Settings, iter_groups, load_config, parse_config
from detaudit.errors import UsageError
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.analysis.results import build_table
from detaudit.engine.store import RunStore

__all__ = ["Event", "RunInterrupted", "parse_shard", "require_tensorflow", "run", "run_cells", "run_probe",
           "run_worker_job",
           "shard_cells", "spawn_env_probe", "worker_environ"]

_STDERR_TAIL = 1500


@dataclasses.dataclass(frozen=True)
class Event:
    """A progress event: ``kind`` is one of planned, cell_started, cell_finished, finished."""

    kind: str
    cell_id: str | None = None
    record: dict[str, Any] | None = None
    total: int = 0
    message: str = ""


class RunInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once workers are stopped and partial results are saved."""

    def __init__(self, run_dir: Path, table: pd.DataFrame):
        super().__init__(str(run_dir))
        self.run_dir, self.table = run_dir, table


def worker_environ(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a worker of this group starts with.

    Settings read at TensorFlow import are applied here. ``determinism: off``
    removes an inherited TF_DETERMINISTIC_OPS/TF_CUDNN_DETERMINISTIC, so off
    means off; ``onednn: default`` leaves TF_ENABLE_ONEDNN_OPTS as this
    environment has it (a nightly run then shows what an exported value
    changes), ``off``/``on`` set it. meta.json records what each group got.
    """
    env = dict(os.environ if base is None else base)
    for name in ("TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC"):
        env.pop(name, None)
    if settings.determinism == "env":
        env["TF_DETERMINISTIC_OPS"] = "1"
    if settings.onednn in ("off", "on"):
        env["TF_ENABLE_ONEDNN_OPTS"] = "0" if settings.onednn == "off" else "1"
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # User layers are imported by path relative to where detaudit was started, as `python -m` would.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
    return env


@dataclasses.dataclass
class _WorkerOutcome:
    finished: set[str]
    in_flight: str | None
    returncode: int | None
    timed_out: bool
    stderr_tail: str
    hello: dict[str, Any] | None


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
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8 * _STDERR_TAIL))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines)[-_STDERR_TAIL:]


def _spawn_worker(job: dict[str, Any], settings: Settings, log_path: Path, timeout_s: float,
                  on_message: Callable[[dict[str, Any]], None], processes: _Processes | None) -> _WorkerOutcome:
    """Run one worker process to completion, death or time-out, forwarding its messages."""
    read_fd, write_fd = os.pipe()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump({**job, "fd": write_fd}, f)
        job_path = f.name
    outcome = _WorkerOutcome(set(), None, None, False, "", None)
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "detaudit.engine.worker", job_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,),
                env=worker_environ(settings), start_new_session=True,  # Ctrl-C reaches the parent only
            )
        os.close(write_fd)
        write_fd = -1
        if processes:
            processes.add(proc)

        def expire() -> None:
            outcome.timed_out = True
            _kill(proc)

        timer = threading.Timer(timeout_s, expire)
        timer.start()
        try:
            with os.fdopen(read_fd, encoding="utf-8", errors="replace") as stream:
                read_fd = -1
                for line in stream:
                    try:
                        message = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    event = message.get("event")
                    if event == "hello":
                        outcome.hello = message
                    elif event == "start":
                        outcome.in_flight = message["cell_id"]
                    elif event == "cell":
                        outcome.finished.add(message["cell_id"])
                        outcome.in_flight = None
                    on_message(message)
            outcome.returncode = proc.wait()
        finally:
            timer.cancel()
            if processes:
                processes.discard(proc)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        os.unlink(job_path)
    outcome.stderr_tail = _tail(log_path)
    return outcome


def _failure_record(cell_id: str, status: str, message: str, log_path: Path) -> dict[str, Any]:
    return {"event": "cell", "cell_id": cell_id, "status": status, "message": message,
            "tensors": [], "seconds": None, "log": log_path.name}


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


def run_worker_job(cells: Sequence[Cell], settings: Settings, *, timeout_s: float, log_stem: Path,
                   tensor_dir: Path | None, on_record: Callable[[dict[str, Any]], None],
                   on_event: Callable[[Event], None] | None = None,
                   on_hello: Callable[[dict[str, Any]], None] | None = None,
                   processes: _Processes | None = None) -> None:
    """Run ``cells`` (one environment group) in worker processes until each has a record.

    A worker that crashes or times out turns its in-flight cell into a
    ``crash``/``timeout`` record and a fresh worker continues with the rest, so
    each failure costs exactly one cell. A worker that dies before its first
    cell (a broken TensorFlow install, say) fails the remaining cells at once.
    """
    remaining = list(cells)
    attempt = 0
    while remaining:
        attempt += 1
        log_path = log_stem.with_name(f"{log_stem.name}{'' if attempt == 1 else f'.{attempt}'}.log")
        job = {"settings": settings.as_dict(), "cells": [c.to_dict() for c in remaining],
               "tensor_dir": str(tensor_dir) if tensor_dir else None}

        def forward(message: dict[str, Any], log_path: Path = log_path) -> None:
            if message["event"] == "cell":
                message = {**message, "log": log_path.name}
                on_record(message)
            elif message["event"] == "start" and on_event:
                on_event(Event("cell_started", cell_id=message["cell_id"]))
            elif message["event"] == "hello" and on_hello:
                on_hello(message)

        outcome = _spawn_worker(job, settings, log_path, timeout_s, forward, processes)
        if processes and processes.stopping:
            return
        remaining = [c for c in remaining if c.cell_id not in outcome.finished]
        if not remaining:
            return
        status, message = _describe_death(outcome, timeout_s)
        if outcome.in_flight is None:
            # Died outside any cell: nothing to blame, so nothing to retry.
            for cell in remaining:
                on_record(_failure_record(cell.cell_id, status, message, log_path))
            return
        on_record(_failure_record(outcome.in_flight, status, message, log_path))
        remaining = [c for c in remaining if c.cell_id != outcome.in_flight]


def require_tensorflow() -> None:
    """Fail early, with the fix, when workers could not import TensorFlow (checked without importing it)."""
    if importlib.util.find_spec("tensorflow") is None:
        raise UsageError(f"TensorFlow is not installed for {sys.executable}. "
                         "Install it with: pip install 'detaudit[cpu]' (or [gpu], or your own TensorFlow >= 2.16)")


def run_probe(name: str, items: Any, timeout_s: float = 300, settings: Settings | None = None) -> Any:
    """Run one of :data:`detaudit.probes.PROBES` on plain JSON data in a fresh worker; return its result.

    ``settings`` are applied in the worker before TensorFlow starts, as for cells.
    """
    require_tensorflow()
    settings = settings or Settings()
    result: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        outcome = _spawn_worker({"settings": settings.as_dict(), "probe": name, "items": items}, settings,
                                Path(tmp) / "probe.log", timeout_s,
                                lambda m: result.append(m["result"]) if m.get("event") == "probe" else None, None)
    if not result:
        _, message = _describe_death(outcome, timeout_s)
        raise UsageError(f"the TensorFlow worker for `{name}` failed ({message}).")
    return result[0]


def spawn_env_probe(timeout_s: float = 120) -> dict[str, Any]:
    """Start one worker with no cells and return its TensorFlow fingerprint (for ``detaudit env``)."""
    require_tensorflow()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = _spawn_worker({"settings": Settings().as_dict(), "cells": []}, Settings(),
                                Path(tmp) / "probe.log", timeout_s, lambda m: None, None)
    if outcome.hello is None:
        _, message = _describe_death(outcome, timeout_s)
        raise UsageError(f"could not start a TensorFlow worker ({message}).")
    return {**outcome.hello.get("env", {}), "applied_defaults": outcome.hello.get("applied", {})}


def shard_cells(cells: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of shard ``i`` of ``n`` (1-based): every n-th cell in cell-id order, so stable and balanced."""
    if shard is None:
        return list(cells)
    index, count = shard
    keep = {cell_id for cell_id in sorted(c.cell_id for c in cells)[index - 1::count]}
    return [c for c in cells if c.cell_id in keep]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with 1 <= i <= n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"Invalid value for argument `--shard`. Expected i/n such as 1/4. Received {text!r}.") from None
    if not 1 <= index <= count:
        raise UsageError(f"Invalid value for argument `--shard`. Expected 1 <= i <= n. Received {text!r}.")
    return index, count


def run(config: Config | str | os.PathLike[str] | None = None, *, out: str | os.PathLike[str] = "runs",
        workers: int | None = None, on_event: Callable[[Event], None] | None = None,
        run_id: str | None = None, shard: tuple[int, int] | None = None,
        resume: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Run every cell of ``config`` and return the long results table.

    Args:
        config: a :class:`~detaudit.config.Config` or the path of a YAML config
            (not with ``resume``, which reads the run's own config).
        out: directory under which ``<run-id>/`` is created.
        workers: environment groups run in parallel (default: number of cores).
        on_event: progress callback; the engine itself never prints.
        run_id: a safe name for the run directory (default: timestamp plus config name).
        shard: ``(i, n)``: run only shard i of n (see :func:`shard_cells`); ``merge`` joins them.
        resume: an interrupted run directory to finish: cells already in its
            cells.jsonl are not run again.

    Returns:
        The results table (see README for the columns); ``table.attrs["run_dir"]``
        is the run directory.

    Raises:
        ConfigError, UsageError, RunDirError: bad input.
        RunInterrupted: on Ctrl-C, after stopping workers and saving what finished.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"Invalid value for argument `workers`. Expected an integer >= 1. Received workers={workers!r}.")
    if config is not None and not isinstance(config, Config):
        config = load_config(config)
    require_tensorflow()
    if resume is not None:
        if config is not None:
            raise UsageError("Give either a config or --resume RUN_DIR, not both: a resumed run keeps its own config.")
        store = RunStore.open(resume)
        config = parse_config(store.read_config(), source=str(store.path / "config.yaml"))
        meta = store.read_meta()
        shard = tuple(meta["shard"]) if meta.get("shard") else None  # type: ignore[assignment]
        meta.setdefault("resumed", []).append(_now())
        done = {(r["cell_id"], bool(r.get("replay"))) for r in store.iter_records()}
    else:
        if config is None:
            raise UsageError("No config given.")
        store = RunStore.create(out, config.to_dict(), config.name, run_id)
        meta = _new_meta(store, config, shard=list(shard) if shard else None)
        done = set()
    store.write_meta(meta)
    cells = shard_cells(config.cells(), shard)
    jobs = []
    for i, (_, group_cells) in enumerate(iter_groups(cells)):
        for replay in ((False, True) if config.replay_process else (False,)):
            todo = [c for c in group_cells if (c.cell_id, replay) not in done]
            if todo:
                jobs.append((f"g{i:02d}", todo, replay))
    return _execute(store, config, meta, cells, jobs, workers, on_event or (lambda event: None))


def run_cells(cells: Sequence[Cell], config: Config, *, out: str | os.PathLike[str], run_id: str | None = None,
              workers: int | None = None, on_event: Callable[[Event], None] | None = None) -> pd.DataFrame:
    """Run an explicit list of cells (no matrix expansion, no added baseline) as a run of ``config``.

    Triage uses this for its toggles and shrink candidates: the same workers,
    records, store and table as :func:`run`.
    """
    require_tensorflow()
    store = RunStore.create(out, config.to_dict(), config.name, run_id)
    meta = _new_meta(store, config, explicit_cells=True)
    store.write_meta(meta)
    jobs = [(f"g{i:02d}", group_cells, replay)
            for i, (_, group_cells) in enumerate(iter_groups(list(cells)))
            for replay in ((False, True) if config.replay_process else (False,))]
    return _execute(store, config, meta, list(cells), jobs, workers or (os.cpu_count() or 1),
                    on_event or (lambda event: None))


def _new_meta(store: RunStore, config: Config, **extra: Any) -> dict[str, Any]:
    """meta.json of a new run; TensorFlow facts and per-group settings arrive with the workers."""
    return {"run_id": store.run_id, "config_name": config.name, "config_source": config.source,
            "started": _now(), "finished": None, "host": host_fingerprint(), "tensorflow": None, "groups": {},
            **extra}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _execute(store: RunStore, config: Config, meta: dict[str, Any], cells: list[Cell],
             jobs: list[tuple[str, list[Cell], bool]], workers: int, emit: Callable[[Event], None]) -> pd.DataFrame:
    """Run the jobs (group, cells, replay) in parallel worker threads; append each record as it arrives."""
    total = sum(len(c) for _, c, _ in jobs)
    n_groups = len({group for group, _, _ in jobs})
    emit(Event("planned", total=total, message=f"{total} cells to run in {n_groups} environment groups"))
    messages: queue.Queue[tuple[str, Any]] = queue.Queue()
    processes = _Processes()
    attempt = f"-r{len(meta.get('resumed', []))}" if meta.get("resumed") else ""

    def run_job(group: str, group_cells: list[Cell], replay: bool) -> None:
        tensor_dir = None
        if config.keep_tensors:
            tensor_dir = store.tensors_dir / "replay" if replay else store.tensors_dir
        suffix = ("-replay" if replay else "") + attempt
        run_worker_job(
            group_cells, group_cells[0].settings, timeout_s=config.timeout_s,
            log_stem=store.logs_dir / f"{group}{suffix}", tensor_dir=tensor_dir,
            on_record=lambda r: messages.put(("record", {**r, "replay": replay, "group": group})),
            on_event=lambda e: messages.put(("event", e)),
            on_hello=lambda h: messages.put(("hello", (group + suffix, h))),
            processes=processes,
        )

    by_id = {c.cell_id: c for c in cells}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(run_job, *job) for job in jobs]
        pending = set(futures)
        while pending or not messages.empty():
            try:
                kind, payload = messages.get(timeout=0.2)
            except queue.Empty:
                for done in [f for f in pending if f.done()]:
                    pending.discard(done)
                    done.result()  # re-raise a bug in the runner itself
                continue
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
    except KeyboardInterrupt:
        processes.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        table = _finish(store, config, meta, interrupted=True)
        raise RunInterrupted(store.path, table) from None
    pool.shutdown(wait=True)
    table = _finish(store, config, meta, interrupted=False)
    emit(Event("finished", total=total))
    return table


def _finish(store: RunStore, config: Config, meta: dict[str, Any], interrupted: bool) -> pd.DataFrame:
    meta["finished"] = _now()
    meta["interrupted"] = interrupted
    store.write_meta(meta)
    table = build_table(store, config)
    table.to_parquet(store.results_path, index=False)
    table.attrs["run_dir"] = str(store.path)
    return table
