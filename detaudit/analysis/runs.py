"""Stored runs as a collection: open one with its table, resolve ``latest``/``previous``, list history.

Pure pandas; no TensorFlow. A broken run directory met while listing is
reported and skipped, never fatal; one named explicitly is a RunDirError.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.config import Config, parse_config
from detaudit.errors import ConfigError, RunDirError
from detaudit.analysis.results import build_table, cell_verdicts
from detaudit.engine.store import RunStore

__all__ = ["StoredRun", "list_runs", "load_run", "merge_runs", "resolve_run"]

ALIASES = ("latest", "previous")


@dataclasses.dataclass
class StoredRun:
    """A run directory opened for reading: its config, meta and results table."""

    store: RunStore
    config: Config
    meta: dict[str, Any]
    table: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.store.run_id

    def verdict_counts(self) -> dict[str, int]:
        return dict(Counter(cell_verdicts(self.table)["verdict"])) if len(self.table) else {}


def load_run(path: str | Path) -> StoredRun:
    """Open a run directory: validate it, read its config and its table.

    The table comes from results.parquet, or is rebuilt from cells.jsonl and
    tensors/ when the run was killed before writing it.

    Raises:
        RunDirError: missing, foreign, corrupted, or of a newer format.
    """
    store = RunStore.open(path)
    try:
        config = parse_config(store.read_config(), source=str(store.path / "config.yaml"))
    except ConfigError as exc:
        raise RunDirError(f"{store.path}: its config.yaml does not validate: {exc}") from None
    if store.results_path.is_file():
        try:
            table = pd.read_parquet(store.results_path)
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet is the same problem for the user
            raise RunDirError(f"{store.results_path}: unreadable ({exc.__class__.__name__}).") from None
    else:
        table = build_table(store, config)
    table.attrs["run_dir"] = str(store.path)
    return StoredRun(store, config, store.read_meta(), table)


def list_runs(runs_dir: str | Path, on_skip: Callable[[Path, str], None] | None = None) -> list[RunStore]:
    """The run directories under ``runs_dir``, newest first (by start time, then name)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such runs directory.")
    found = []
    for child in root.iterdir():
        if not child.is_dir():
            continue
        try:
            store = RunStore.open(child)
            started = str(store.read_meta().get("started") or "")
        except RunDirError as exc:
            if on_skip and (child / "meta.json").exists():
                on_skip(child, str(exc))
            continue
        found.append((started, child.name, store))
    return [store for _, _, store in sorted(found, key=lambda item: (item[0], item[1]), reverse=True)]


def resolve_run(spec: str | Path, runs_dir: str | Path = "runs", exclude: Path | None = None) -> Path:
    """A run directory from a path, or from ``latest``/``previous`` in ``runs_dir``.

    ``exclude`` drops one run from the candidates (the run being compared).
    """
    if str(spec) not in ALIASES:
        return Path(spec)
    runs = [s.path for s in list_runs(runs_dir)
            if (exclude is None or s.path.resolve() != Path(exclude).resolve())
            and s.read_meta().get("kind") != "audit"]  # model audits are not matrix runs
    index = ALIASES.index(str(spec))
    if len(runs) <= index:
        raise RunDirError(f"{runs_dir}: no {spec} run (found {len(runs)} run(s)).")
    return runs[index]


def merge_runs(paths: list[str | Path], out: str | Path, run_id: str | None = None) -> StoredRun:
    """Join shard runs of one config into a new run directory under ``out``.

    Records and kept tensors are copied; the table is rebuilt, so the baseline
    comparisons that cross shards are computed here. Merging the n shards of a
    matrix gives the table of the whole run (the same cells and digests).

    Raises:
        RunDirError: a directory is not a run, or the runs have different configs.
    """
    if len(paths) < 2:
        raise RunDirError("merge needs at least two run directories.")
    runs = [RunStore.open(p) for p in paths]
    configs = [r.read_config() for r in runs]
    for store, config in zip(runs[1:], configs[1:]):
        if config != configs[0]:
            raise RunDirError(f"{store.path}: its config differs from {runs[0].path}'s; only shards of one config merge.")
    first = load_run(runs[0].path)
    merged = RunStore.create(out, configs[0], first.config.name, run_id)
    seen: set[tuple[str, bool]] = set()
    metas = [r.read_meta() for r in runs]
    for store in runs:
        for record in store.iter_records():
            key = (record["cell_id"], bool(record.get("replay")))
            if key in seen:
                continue
            seen.add(key)
            merged.append_record(record)
            source = store.tensor_path(record["cell_id"], key[1])
            if source.is_file():
                target = merged.tensor_path(record["cell_id"], key[1])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        for log in store.logs_dir.glob("*.log"):
            shutil.copyfile(log, merged.logs_dir / f"{store.run_id}-{log.name}")
    meta = {**metas[0], "run_id": merged.run_id, "shard": None, "merged_from": [r.run_id for r in runs],
            # The merged run is new: `latest` should find it, not the last shard.
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "shards_started": min(str(m.get("started") or "") for m in metas),
            "finished": max(str(m.get("finished") or "") for m in metas),
            "interrupted": any(m.get("interrupted") for m in metas)}
    meta["groups"] = {f"{r.run_id}:{g}": v for r, m in zip(runs, metas) for g, v in (m.get("groups") or {}).items()}
    merged.write_meta(meta)
    table = build_table(merged, first.config)
    table.to_parquet(merged.results_path, index=False)
    table.attrs["run_dir"] = str(merged.path)
    return StoredRun(merged, first.config, meta, table)
