"""The run loop: worker jobs in parallel threads, each record appended in one thread as it arrives.

Never imports TensorFlow. Worker threads (:func:`~detaudit.engine.supervision.run_worker_job`)
only put messages on a queue; the loop's own thread is the run directory's one
writer: it checks each record (:class:`~detaudit.engine.cell_record.CellRecord`),
appends it, updates meta.json with each group's applied settings and reports
progress. Ctrl-C, a full disk or a refused user kind stops every worker; what
finished is kept, and the table is written from it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import enum
import os
import queue
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.config import Cell, Config
from detaudit.core.kinds import USER_LAYER
from detaudit.core.planning import WorkerJob
from detaudit.engine.cell_record import CellRecord, InvalidRecord
from detaudit.engine.store import RunStore
from detaudit.engine.supervision import Processes, WorkerRefused, run_worker_job
from detaudit.engine.table import build_table
from detaudit.errors import ConfigError, DetauditError, DiskFullError

__all__ = ["Event", "EventKind", "RunInterrupted", "RunLoop", "now"]


class EventKind(str, enum.Enum):
    """What a progress :class:`Event` reports."""

    PLANNED = "planned"  # the jobs are known: ``total`` cell runs, ``message`` says how many groups
    CELL_FINISHED = "cell_finished"  # a record was appended: ``cell_id`` and ``record``
    FINISHED = "finished"  # every job is done and the table is written


@dataclasses.dataclass(frozen=True)
class Event:
    """A progress event, for the caller's ``on_event`` callback (the engine itself never prints)."""

    kind: EventKind
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


def now() -> str:
    """The current time in UTC, as meta.json stores it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def refusal_error(refused: list[dict[str, str]], config: Config) -> ConfigError:
    """The config's error for kinds a worker refused: the file, the layer's key path, what was found."""
    lines = []
    for r in refused:
        for i, spec in enumerate(config.layers):
            if spec.kind == r["kind"]:
                lines.append(f"{config.source}: invalid value for `layers[{i}].kind`. Expected a Keras Layer "
                             f"subclass ('package.module:Class'). Received kind={r['kind']!r}: {r['message']}")
    return ConfigError("\n".join(dict.fromkeys(lines)))


class RunLoop:
    """One execution of a run's worker jobs (a fresh run, or a resume of one) into its run directory."""

    def __init__(self, store: RunStore, config: Config, meta: dict[str, Any], cells: list[Cell],
                 emit: Callable[[Event], None]):
        self.store, self.config, self.meta, self.cells, self.emit = store, config, meta, cells, emit
        self._by_id = {c.cell_id: c for c in cells}
        self._messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._processes = Processes()
        self._user_kinds = sorted({spec.kind for spec in config.layers if spec.declaration is USER_LAYER})
        self._attempt = f"-r{len(meta.get('resumed', []))}" if meta.get("resumed") else ""  # a resume's own logs
        self._stop: DetauditError | None = None
        self._total = 0

    def execute(self, jobs: list[WorkerJob], workers: int) -> pd.DataFrame:
        """Run ``jobs``, ``workers`` at a time, and return the run's table.

        Raises:
            RunInterrupted: Ctrl-C or a full disk, after stopping the workers and saving what finished.
            ConfigError: a worker refused a user kind.
        """
        self._announce(jobs)
        self.store.cache_dir.mkdir(exist_ok=True)
        shutil.rmtree(self._tmp_dir, ignore_errors=True)  # a killed run's leftovers
        self._tmp_dir.mkdir()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        try:
            self._pump({pool.submit(self._run_job, job) for job in jobs})
        except KeyboardInterrupt:
            self._stop_all(pool)
            raise RunInterrupted(self.store.path, self._finish(interrupted=True)) from None
        except BaseException:
            self._stop_all(pool)  # a bug or a failure of the machine: no worker outlives it, what finished is kept
            raise
        if self._stop is not None:
            self._stop_all(pool)
            if isinstance(self._stop, ConfigError):
                raise self._stop
            raise RunInterrupted(self.store.path, self._finish(interrupted=True), reason=self._stop)
        pool.shutdown(wait=True)
        table = self._finish(interrupted=False)
        self.emit(Event(EventKind.FINISHED, total=self._total))
        return table

    @property
    def _tmp_dir(self) -> Path:
        return self.store.path / "tmp"

    def _announce(self, jobs: list[WorkerJob]) -> None:
        self._total = sum(len(job.cells) for job in jobs)
        groups = len({job.group for job in jobs})
        replays = sum(len(job.cells) for job in jobs if job.replay)
        what = (f"{self._total} cell runs ({replays} of them replays in a fresh process)" if replays
                else f"{self._total} cells to run")
        self.emit(Event(EventKind.PLANNED, total=self._total, message=f"{what} in {groups} environment groups"))

    def _run_job(self, job: WorkerJob) -> None:
        """One job, in a pool thread: everything it produces goes on the queue."""
        tensor_dir = None
        if self.config.keep_tensors:
            tensor_dir = self.store.tensors_dir / "replay" if job.replay else self.store.tensors_dir
        suffix = ("-replay" if job.replay else "") + self._attempt
        put = self._messages.put
        run_worker_job(
            job.cells, job.cells[0].settings, timeout_s=self.config.timeout_s,
            log_stem=self.store.logs_dir / f"{job.group}{suffix}", tensor_dir=tensor_dir,
            cache_dir=self.store.cache_dir, on_record=lambda r: put(("record", (job, r))),
            on_hello=lambda h: put(("hello", (job.group + suffix, h))),
            processes=self._processes, user_kinds=self._user_kinds, tmp_dir=self._tmp_dir, passes_only=job.replay,
        )

    def _pump(self, pending: set[concurrent.futures.Future[None]]) -> None:
        """Handle messages until every job is done and its messages handled, or something stops the run."""
        while (pending or not self._messages.empty()) and self._stop is None:
            try:
                kind, payload = self._messages.get(timeout=0.2)
            except queue.Empty:
                self._reap(pending)
                continue
            try:
                self._handle(kind, payload)
            except DiskFullError as exc:
                self._stop = exc

    def _reap(self, pending: set[concurrent.futures.Future[None]]) -> None:
        for future in [f for f in pending if f.done()]:
            pending.discard(future)
            try:
                future.result()
            except WorkerRefused as exc:
                self._stop = refusal_error(exc.refused, self.config)
            except DiskFullError as exc:
                self._stop = exc

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "record":
            job, data = payload
            if data.get("cell_id") not in self._by_id:
                return  # not one of this run's cells: nothing to attribute it to
            record = self._checked(data).stored(replay=job.replay, group=job.group,
                                                cell=self._by_id[data["cell_id"]].to_dict())
            stored = record.to_json()
            self.store.append_record(stored)
            self.emit(Event(EventKind.CELL_FINISHED, cell_id=record.cell_id, record=stored, total=self._total))
        elif kind == "hello":
            group, hello = payload
            env = hello.get("env") or {}
            if not (self.meta.get("tensorflow") or {}).get("tensorflow_version"):
                self.meta["tensorflow"] = env  # TensorFlow's facts win (they are what the renderers show)
            self.meta.setdefault("backends", {}).update(env.get("backends") or {})  # each backend the run used
            self.meta.setdefault("groups", {})[group] = hello.get("applied")
            self.store.write_meta(self.meta)

    @staticmethod
    def _checked(data: dict[str, Any]) -> CellRecord:
        """The worker's record, or an error record saying what was wrong with it (its cell id is the job's)."""
        try:
            return CellRecord.from_json(data)
        except InvalidRecord as exc:
            return CellRecord(data["cell_id"], "error", f"the worker sent a malformed record: {exc}",
                              log=data.get("log"))

    def _drain(self) -> None:
        """Keep the records that arrived while the run was stopping: every finished cell is kept."""
        while True:
            try:
                kind, payload = self._messages.get_nowait()
            except queue.Empty:
                return
            if kind == "record":
                with contextlib.suppress(DiskFullError):
                    self._handle(kind, payload)

    def _stop_all(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self._processes.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        self._drain()

    def _finish(self, interrupted: bool) -> pd.DataFrame:
        """Write the end time and the table; on a full disk keep going with the table in memory."""
        store = self.store
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
        self.meta["finished"] = now()
        self.meta["interrupted"] = interrupted
        with contextlib.suppress(DiskFullError):
            store.write_meta(self.meta)
        table = build_table(store, self.config, self.cells)
        tmp = store.results_path.with_name(f".results.{os.getpid()}.parquet")
        try:
            table.to_parquet(tmp, index=False)
            os.replace(tmp, store.results_path)  # whole or absent: a torn table is never read
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        table.attrs["run_dir"] = str(store.path)
        return table
