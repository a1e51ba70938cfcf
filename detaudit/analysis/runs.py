"""Stored runs: open one (any kind, any readable format), tell whether it is complete, resolve
``latest``/``previous``, list history, merge shards.

Pure pandas; no TensorFlow. A broken run directory met while listing is
reported and skipped, never fatal; one named explicitly is a RunDirError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import Cell, Config, parse_config
from detaudit.core.planning import expected_cells, expected_jobs
from detaudit.engine.store import FORMAT_VERSION, RunKind, RunStore
from detaudit.engine.table import build_table, column_dtypes, latest_records, typed
from detaudit.errors import ConfigError, RunDirError
from detaudit.errors import a_or_an as _a

__all__ = ["ALIASES", "Completeness", "StoredRun", "list_runs", "load_run", "merge_runs", "resolve_run"]

ALIASES = ("latest", "previous")


@dataclasses.dataclass(frozen=True)
class Completeness:
    """Whether every cell a run should have recorded has a record; what is missing and how to finish it."""

    expected: int
    recorded: int
    missing: tuple[str, ...]  # cell ids (with "(replay)" for a missing replay)
    bad_lines: tuple[int, ...]  # cells.jsonl lines that hold no readable record
    interrupted: bool
    resume_command: str | None

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclasses.dataclass
class StoredRun:
    """A run directory opened for reading.

    ``config``, ``table``, ``cells`` and ``completeness`` are those of a matrix
    (or triage measurement) run; an audit or triage run has its own ``result``
    (the stored JSON of the audit or of the triage).
    """

    store: RunStore
    kind: RunKind
    meta: dict[str, Any]
    config: Config | None = None
    table: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    cells: list[Cell] = dataclasses.field(default_factory=list)
    completeness: Completeness | None = None
    result: dict[str, Any] | None = None
    upgraded_from: int | None = None  # the format this run was written in, when older than this detaudit's
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # cells.jsonl's latest record per cell
    table_note: str | None = None  # why results.parquet was not used (unreadable, missing, disagreeing), in one line
    table_source: Path | None = None  # the file the table was read from: results.parquet, or cells.jsonl

    @property
    def run_id(self) -> str:
        return self.store.run_id

    @property
    def path(self) -> Path:
        return self.store.path


def _config_of(store: RunStore) -> Config:
    try:
        return parse_config(store.read_config(), source=str(store.path / "config.yaml"), stored=True)
    except ConfigError as exc:
        raise RunDirError(f"{store.path}: its config.yaml does not validate: {str(exc).splitlines()[0]}") from None


def _completeness(store: RunStore, config: Config, cells: list[Cell], meta: dict[str, Any],
                  all_records: list[dict[str, Any]], bad: list[int]) -> Completeness:
    records, replays = latest_records(all_records)
    missing = []
    expected = expected_jobs(config, cells)
    for cell, replay in expected:
        if cell.cell_id not in (replays if replay else records):
            missing.append(cell.cell_id + (" (replay)" if replay else ""))
    resumable = store.kind is RunKind.MATRIX and not meta.get("explicit_cells")
    return Completeness(len(expected), len(expected) - len(missing), tuple(missing), tuple(bad),
                        bool(meta.get("interrupted")) or meta.get("finished") is None,
                        f"detaudit run --resume {store.path}" if missing and resumable else None)


def _disagreement(table: pd.DataFrame, run_id: str, records: list[dict[str, Any]]) -> str | None:
    """How a stored table disagrees with the run's records (another run's id, other or fewer cells, other
    statuses), or None when it is the table of exactly these records."""
    ids = {str(i) for i in table["run_id"].dropna().unique()} if "run_id" in table else set()
    if ids != {run_id}:
        return f"is the table of run {', '.join(sorted(ids)) or '(none)'}, not of {run_id}"
    own = {r["cell_id"]: r["status"] for r in records if not r.get("replay")}
    repeat = table[table["comparison"] == ComparisonKind.REPEAT.value] if "comparison" in table else table.iloc[0:0]
    statuses = dict(zip(repeat["cell_id"], repeat["status"])) if "cell_id" in repeat and "status" in repeat else {}
    if set(statuses) != set(own):
        return f"holds {len(set(statuses) & set(own))} of the {len(own)} recorded cells" + (
            f" and {len(set(statuses) - set(own))} cell(s) with no record" if set(statuses) - set(own) else "")
    changed = sorted(cell for cell, status in own.items() if statuses[cell] != status)
    if changed:
        return f"gives another status than cells.jsonl for {len(changed)} cell(s) ({changed[0]}, ...)"
    return None


def _column_disagreement(raw: pd.DataFrame) -> str | None:
    """How a stored table's columns differ from those this version writes (a missing column, or one of another
    type), or None. An axis added since the table was written is no difference: its cells ran at its default."""
    expected = column_dtypes()
    missing = [column for column in expected if column not in raw and column not in AXES]
    if missing:
        return f"lacks the column(s) {', '.join(missing)}"
    for column, dtype in expected.items():
        found = raw[column].dtype if column in raw else None
        textual = dtype in ("object", "string") and found is not None and (
            pd.api.types.is_string_dtype(found) or pd.api.types.is_object_dtype(found))
        if found is not None and not textual and str(found) != dtype:
            return f"holds the column {column} as {found}, not {dtype}"
    return None


def _table(store: RunStore, config: Config, cells: list[Cell], meta: dict[str, Any],
           records: list[dict[str, Any]]) -> tuple[pd.DataFrame, str | None]:
    """The table and, when results.parquet was not used although the run finished, why (one line).

    results.parquet is a cache of cells.jsonl: it is used only when it is the
    final table of a finished run of this format and agrees with the records;
    otherwise the table is rebuilt from cells.jsonl (the directory is not changed). A table without a column
    this version writes, or with one of another type, disagrees too.
    """
    if not (store.format_version == FORMAT_VERSION and meta.get("finished") and not meta.get("interrupted")):
        return build_table(store, config, cells, records), None  # a killed, resumed or older run: rebuilt as always
    rebuilt = "the table was rebuilt from cells.jsonl"
    if not store.results_path.is_file():
        return build_table(store, config, cells, records), f"results.parquet is missing: {rebuilt}."
    try:
        raw = pd.read_parquet(store.results_path)
        why = _column_disagreement(raw)  # a column lost or retyped (a hand-made copy): as unreliable as stale
        table = typed(raw) if why is None else raw
    except Exception as exc:  # noqa: BLE001 - an unreadable parquet is rebuilt like a missing one
        return build_table(store, config, cells, records), \
            f"results.parquet is unreadable ({exc.__class__.__name__}): {rebuilt}."
    if why is None:
        why = _disagreement(table, meta.get("run_id") or store.run_id, records)
    if why is not None:
        return build_table(store, config, cells, records), f"results.parquet {why}: {rebuilt}."
    table["run_id"] = store.run_id  # the run's id is its directory's name (a copied run is a run of its own)
    table.attrs["from_parquet"] = True
    return table, None


def load_run(path: str | Path) -> StoredRun:
    """Open a run directory of any kind and any readable format.

    A matrix run's table comes from results.parquet, or is rebuilt from
    cells.jsonl and tensors/ when the run was killed, is incomplete or was
    written by an older format (upgraded on the fly; the directory is not changed).

    Raises:
        RunDirError: missing, foreign, corrupted, or of a newer format.
    """
    store = RunStore.open(path)
    meta = store.read_meta()
    kind = store.kind
    upgraded = store.format_version if store.format_version < FORMAT_VERSION else None
    if kind is RunKind.AUDIT:
        return StoredRun(store, kind, meta, result=_audit_result(store, meta), upgraded_from=upgraded)
    if kind is RunKind.TRIAGE:
        result = store.read_json("triage.json")
        if not isinstance(result.get("cells", []), list):
            raise RunDirError(f"{store.path / 'triage.json'}: not a triage result.")
        return StoredRun(store, kind, meta, result=result, upgraded_from=upgraded)
    config = _config_of(store)
    try:
        cells = expected_cells(config, meta)
    except ConfigError as exc:
        raise RunDirError(f"{store.path}: meta.json lists a malformed cell ({str(exc)[:200]}).") from None
    bad: list[int] = []
    # Read once for all that follows, keeping only the latest record of each cell (a resumed or retried run
    # appends new ones): memory follows the number of distinct cells, not the file's size.
    own, replays = latest_records(store.iter_records(on_bad_line=lambda n, text: bad.append(n)))
    records = [*own.values(), *replays.values()]
    table, note = _table(store, config, cells, meta, records)
    source = store.results_path if table.attrs.pop("from_parquet", False) else store.cells_path
    table.attrs["run_dir"] = str(store.path)
    return StoredRun(store, kind, meta, config, table, cells, _completeness(store, config, cells, meta, records, bad),
                     upgraded_from=upgraded, records=records, table_note=note, table_source=source)


def _audit_result(store: RunStore, meta: dict[str, Any]) -> dict[str, Any]:
    """The stored audit; format 1 kept only the layer table and the verdict, so that is what it shows."""
    if (store.path / "audit.json").is_file():
        result = store.read_json("audit.json")
        if not isinstance(result.get("layers", []), list) or "verdict" not in result:
            raise RunDirError(f"{store.path / 'audit.json'}: not an audit result (no verdict or layers).")
        return {"model": "?", "layers": [], "losses": [], "checks": [], **result}
    try:
        layers = pd.read_parquet(store.results_path).to_dict("records")
        for row in layers:
            row["max_ulp"] = int(row.get("max_ulp") or 0)
            row["first_step"] = None if pd.isna(row.get("first_step")) else int(row["first_step"])
            row["layer"], row["class"], row["forward"], row["backward"]  # noqa: B018 - the columns must exist
    except Exception as exc:  # noqa: BLE001 - any unreadable or foreign parquet is the same problem for the user
        raise RunDirError(f"{store.results_path}: not the layer table of an audit ({exc.__class__.__name__}).") \
            from None
    model = layers[0].get("model", "?") if layers else meta.get("config_name", "?")
    return {"model": model, "verdict": meta.get("verdict", "?"), "culprit": meta.get("culprit"), "layers": layers,
            "losses": [], "checks": [], "restart": None, "tensorflow": meta.get("tensorflow"),
            "note": "written by detaudit format 1: losses, restart and checks were not stored"}


def list_runs(runs_dir: str | Path, on_skip: Callable[[Path, str], None] | None = None,
              kinds: Sequence[RunKind] | None = None) -> list[RunStore]:
    """The run directories under ``runs_dir`` (of ``kinds``, default all), newest first (start time, then name)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such runs directory.")
    found = []
    for child in root.iterdir():
        if not child.is_dir() or child.is_symlink():
            continue
        try:
            store = RunStore.open(child)
            started = str(store.read_meta().get("started") or "")
            kind = store.kind
        except RunDirError as exc:
            if on_skip and (child / "meta.json").exists():
                on_skip(child, str(exc))
            continue
        if kinds is None or kind in kinds:
            found.append((started, child.name, store))
    return [store for _, _, store in sorted(found, key=lambda item: (item[0], item[1]), reverse=True)]


def resolve_run(spec: str | Path, runs_dir: str | Path = "runs", relative_to: Path | None = None,
                kinds: Sequence[RunKind] | None = (RunKind.MATRIX,), config_name: str | None = None) -> Path:
    """A run directory from a path, or from ``latest``/``previous`` among the runs of ``kinds`` in ``runs_dir``.

    ``latest`` is the newest run other than ``relative_to``; ``previous`` is the
    run just before ``relative_to`` when it is one of them, else the second newest.
    Only runs of ``config_name`` count, which defaults to ``relative_to``'s
    config: "the run before this one" means one of the same config, not the
    newest run of another config stored beside it.

    Raises:
        RunDirError: no such run.
    """
    if str(spec) not in ALIASES:
        return Path(spec)
    if config_name is None and relative_to is not None and (Path(relative_to) / "meta.json").is_file():
        with contextlib.suppress(RunDirError):
            config_name = RunStore.open(Path(relative_to)).read_meta().get("config_name")
    noun = ("/".join(k.value for k in kinds) + " run" if kinds else "run") + \
        (f" of config {config_name!r}" if config_name is not None else "")
    if not Path(runs_dir).is_dir():
        raise RunDirError(f"{runs_dir}: no {noun} to take as {spec} (no such runs directory).")
    runs = [s.path for s in list_runs(runs_dir, kinds=kinds)
            if config_name is None or s.read_meta().get("config_name") in (config_name, None)]  # None: not recorded
    resolved = [p.resolve() for p in runs]
    if str(spec) == "latest":
        candidates = [p for p, r in zip(runs, resolved) if relative_to is None or r != Path(relative_to).resolve()]
        if not candidates:
            raise RunDirError(f"{runs_dir}: no {noun} to take as latest (found {len(runs)}).")
        return candidates[0]
    if relative_to is not None and Path(relative_to).resolve() in resolved:
        index = resolved.index(Path(relative_to).resolve()) + 1
    else:
        index = 1
    if index >= len(runs):
        raise RunDirError(f"{runs_dir}: no previous {noun} (found {len(runs)}).")
    return runs[index]


def merge_runs(paths: Sequence[str | Path], out: str | Path, run_id: str | None = None) -> StoredRun:
    """Join shard runs of one config into a new run directory under ``out``.

    Records and kept tensors are copied (regular files only: a symbolic link
    is never followed, and every path stays inside its run directory); the
    table is rebuilt, so baseline comparisons that cross shards are computed
    here. Merging the n shards of a matrix gives the table of the whole run.

    Raises:
        RunDirError: a directory is not a matrix run, or the runs have different configs.
    """
    if len(paths) < 2:
        raise RunDirError("merge needs at least two run directories.")
    resolved = [Path(p).resolve() for p in paths]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise RunDirError(f"{paths[i]}: given twice; merge joins different shards of one config.")
    runs = [RunStore.open(p) for p in paths]
    for store in runs:
        if store.kind is not RunKind.MATRIX:
            raise RunDirError(f"{store.path}: {_a(store.kind.value)} run; only runs of `detaudit run` merge.")
    configs = [r.read_config() for r in runs]
    for store, config in zip(runs[1:], configs[1:]):
        if config != configs[0]:
            raise RunDirError(f"{store.path}: its config differs from {runs[0].path}'s; only shards of one config merge.")
    config = _config_of(runs[0])
    records = _disjoint_records(runs)
    merged = RunStore.create(out, configs[0], config.name, run_id)
    metas = [r.read_meta() for r in runs]
    with merged.lock():
        for store, own in zip(runs, records):
            for record in own:
                cell_id, replay = record["cell_id"], bool(record.get("replay"))
                merged.append_record(record)
                _copy_regular(store.tensor_path(cell_id, replay), merged.tensor_path(cell_id, replay))
            for log in store.logs_dir.glob("*.log"):
                _copy_regular(log, merged.logs_dir / f"{store.run_id}-{log.name}")
        meta = {**metas[0], "run_id": merged.run_id, "kind": RunKind.MATRIX.value, "shard": None,
                "merged_from": [r.run_id for r in runs],
                # The merged run is new: `latest` should find it, not the last shard.
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "shards_started": min(str(m.get("started") or "") for m in metas),
                "finished": max(str(m.get("finished") or "") for m in metas),
                "interrupted": any(m.get("interrupted") for m in metas)}
        meta["groups"] = {f"{r.run_id}:{g}": v for r, m in zip(runs, metas) for g, v in (m.get("groups") or {}).items()}
        merged.write_meta(meta)
        table = build_table(merged, config)
        table.to_parquet(merged.results_path, index=False)
    return load_run(merged.path)


def _disjoint_records(runs: Sequence[RunStore]) -> list[list[dict[str, Any]]]:
    """Per run, its latest record of each cell (a retried crash: its later record counts).

    Raises:
        RunDirError: a cell was measured in two of the runs. Keeping either copy silently would hide a
            difference between them (another host, another process); merge joins disjoint shards.
    """
    where: dict[tuple[str, bool], Path] = {}
    out = []
    for store in runs:
        own, replays = latest_records(store.iter_records())
        records = [*own.values(), *replays.values()]
        for record in records:
            key = (record["cell_id"], bool(record.get("replay")))
            if key in where:
                raise RunDirError(f"{store.path}: cell {record['cell_id']} was also measured in {where[key]}; merge "
                                  "joins disjoint shards (--shard K/N of one config), so give each cell's run once.")
            where[key] = store.path
        out.append(records)
    return out


def _copy_regular(source: Path, target: Path) -> None:
    """Copy ``source`` if it is a regular file (not a symbolic link) to ``target``."""
    if source.is_symlink() or not source.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target, follow_symlinks=False)
