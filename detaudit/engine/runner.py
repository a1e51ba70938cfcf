"""Run a config's cells in worker processes and return the results table: the engine's entry points.

Never imports TensorFlow. One worker process runs all cells of one environment
group (cells that differ only in per-cell axes share it: one TensorFlow start);
groups run in parallel up to ``workers``. A worker that dies or hangs costs
only the cell it was running: that cell becomes a ``crash`` or ``timeout``
record with the tail of the worker's stderr, and a fresh worker takes the cells
that remain (also when a worker dies before its first cell). Records are
appended to the run directory as each cell finishes, by this process alone.

The parts: :mod:`~detaudit.core.planning` (which jobs), :mod:`~detaudit.engine.supervision`
(worker processes), :mod:`~detaudit.engine.run_loop` (jobs in parallel, records appended),
:mod:`~detaudit.engine.cell_record` (what one cell produced).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.config import Cell, Config, Settings, load_config, parse_config
from detaudit.core.kinds import module_exists
from detaudit.core.planning import expected_cells, plan_jobs, shard_cells
from detaudit.engine.cell_record import FAILED_STATUSES
from detaudit.engine.backends import require_backends
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.run_loop import Event, EventKind, RunInterrupted, RunLoop, now
from detaudit.engine.store import RunKind, RunStore
from detaudit.engine.supervision import (
    WorkerOutcome,
    describe_death,
    spawn_worker,
    user_path_for,
    worker_environ,
)
from detaudit.engine.table import latest_records
from detaudit.errors import ConfigError, RunDirError, UsageError, WorkerError
from detaudit.errors import a_or_an as _a

__all__ = ["Event", "EventKind", "RunInterrupted", "check_user_modules", "require_tensorflow", "run",
           "run_cells", "run_probe", "spawn_env_probe"]


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
               on_progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[Any], WorkerOutcome]:
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
        outcome = spawn_worker(job, worker_environ(settings), log, timeout_s, on_message, None)
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
        _, message = describe_death(outcome, timeout_s)
        raise WorkerError(f"the TensorFlow worker for `{name}` failed ({message}).")
    return result[0]


def spawn_env_probe(timeout_s: float = 120) -> dict[str, Any]:
    """Start one worker with no cells and return its TensorFlow fingerprint (for ``detaudit env``)."""
    require_tensorflow()
    _, outcome = _probe_job("", [], Settings(), timeout_s)
    if outcome.hello is None:
        _, message = describe_death(outcome, timeout_s)
        raise WorkerError(f"could not start a TensorFlow worker ({message}).")
    return {**outcome.hello.get("env", {}), "applied_defaults": outcome.hello.get("applied", {})}


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
        shard: ``(i, n)``: run only shard i of n (see :func:`~detaudit.core.planning.shard_cells`); ``merge``
            joins them.
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
    if resume is None and config is not None:
        require_backends([c.settings.backend for c in config.cells()])
    if resume is not None:
        if config is not None:
            raise UsageError("Give either a config or --resume RUN_DIR, not both: a resumed run keeps its own config.")
        return _resume(RunStore.open(resume), workers, on_event, retry_failed)
    if config is None:
        raise UsageError("No config given.")
    check_user_modules(config)
    store = RunStore.create(out, config.to_dict(), config.name, run_id, exact=True)
    meta = _new_meta(store, config, shard=list(shard) if shard else None)
    with store.lock():
        return _run_in(store, config, meta, shard_cells(config.cells(), shard), set(), workers, on_event, fresh=True)


def _resume(store: RunStore, workers: int, on_event: Callable[[Event], None] | None,
            retry_failed: bool) -> pd.DataFrame:
    """Finish a stored run: its expected jobs minus those it recorded (minus its failed ones, to retry them)."""
    if store.kind is not RunKind.MATRIX:
        raise UsageError(f"{store.path}: {_a(store.kind.value)} run cannot be resumed; only `detaudit run` runs can.")
    config = parse_config(store.read_config(), source=str(store.path / "config.yaml"), stored=True)
    require_backends([c.settings.backend for c in config.cells()])
    check_user_modules(config)
    with store.lock():
        meta = store.read_meta()
        original = dict(meta)
        meta.setdefault("resumed", []).append(now())
        meta["finished"], meta["interrupted"] = None, None  # until this resume finishes, the run is not final
        with contextlib.suppress(FileNotFoundError):
            store.results_path.unlink()  # a stale table must not be read as the final one
        own, replays = latest_records(store.iter_records())  # a retried crash: its later record counts
        recorded = {(cell_id, replay) for replay, latest in ((False, own), (True, replays))
                    for cell_id, record in latest.items()
                    if not (retry_failed and record["status"] in FAILED_STATUSES)}
        try:
            cells = expected_cells(config, meta)
        except ConfigError as exc:
            raise RunDirError(f"{store.path}: meta.json lists a malformed cell ({exc}).") from None
        try:
            return _run_in(store, config, meta, cells, recorded, workers, on_event, fresh=False)
        except ConfigError:
            store.write_meta(original)  # refused before anything ran: the run is as it was
            raise


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
    require_backends([c.settings.backend for c in cells])
    check_user_modules(config)
    cells = list({c.cell_id: c for c in cells}.values())
    store = RunStore.create(out, config.to_dict(), config.name, run_id)
    meta = _new_meta(store, config, explicit_cells=[c.to_dict() for c in cells])
    with store.lock():
        return _run_in(store, config, meta, cells, set(), _workers(workers), on_event, fresh=True)


def _run_in(store: RunStore, config: Config, meta: dict[str, Any], cells: list[Cell],
            recorded: set[tuple[str, bool]], workers: int, on_event: Callable[[Event], None] | None,
            fresh: bool) -> pd.DataFrame:
    store.write_meta(meta)
    loop = RunLoop(store, config, meta, cells, on_event or (lambda event: None))
    try:
        return loop.execute(plan_jobs(config, cells, recorded), workers)
    except ConfigError:
        if fresh and not any(True for _ in store.iter_records()):
            shutil.rmtree(store.path, ignore_errors=True)  # nothing ran: leave no half-made run behind
            with contextlib.suppress(OSError):
                store.path.parent.rmdir()  # and no empty --out this run created
        raise


def _new_meta(store: RunStore, config: Config, **extra: Any) -> dict[str, Any]:
    """meta.json of a new run; TensorFlow facts and per-group settings arrive with the workers."""
    return {"run_id": store.run_id, "kind": RunKind.MATRIX.value, "config_name": config.name,
            "config_source": config.source, "started": now(), "finished": None, "host": host_fingerprint(),
            "tensorflow": None, "groups": {}, **extra}
