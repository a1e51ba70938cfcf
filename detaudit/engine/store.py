"""The runs/<run-id>/ directory: reading and writing, append-only.

Layout (format_version 1):

- ``config.yaml``     the resolved config
- ``meta.json``       format_version, versions, environment fingerprint, start/end time
- ``cells.jsonl``     one JSON line per finished cell, appended and flushed as each
                      finishes, so an interrupted run loses nothing
- ``results.parquet`` the long results table (rebuilt from cells.jsonl and tensors/)
- ``logs/``           worker stderr, one file per worker process
- ``tensors/``        first-repeat tensors per cell (``keep_tensors``), ``tensors/replay/``
                      for the process replay

Pure Python + NumPy + pandas; no TensorFlow.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detaudit.errors import RunDirError
from detaudit.core.numerics import FLOAT_DTYPES

__all__ = ["FORMAT_VERSION", "RunStore", "load_tensors", "new_run_id", "save_tensors"]

FORMAT_VERSION = 1
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id(name: str, now: _dt.datetime | None = None) -> str:
    """Timestamp plus config name, safe as a file name: ``20261124T232400Z-quick``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunStore:
    """One run directory. Create with :meth:`create`, open an existing one with :meth:`open`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def tensors_dir(self) -> Path:
        return self.path / "tensors"

    @property
    def cells_path(self) -> Path:
        return self.path / "cells.jsonl"

    @property
    def results_path(self) -> Path:
        return self.path / "results.parquet"

    @classmethod
    def create(cls, out_dir: str | Path, config_dict: Mapping[str, Any], name: str,
               run_id: str | None = None) -> RunStore:
        """Make ``out_dir/<run-id>/`` with its config.yaml; never reuses an existing directory."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out}: --out must be a directory, and this is a file.")
        base = run_id or new_run_id(name)
        if not _SAFE_RUN_ID.match(base):
            raise RunDirError(f"Invalid run id {base!r}. Expected letters, digits, '.', '_' or '-'.")
        candidate, n = base, 1
        while True:
            try:
                (out / candidate).mkdir(parents=True)
                break
            except FileExistsError:
                n += 1
                candidate = f"{base}-{n}"
            except OSError as exc:
                raise RunDirError(f"{out}: cannot create the run directory ({exc.strerror}).") from None
        store = cls(out / candidate)
        store.logs_dir.mkdir()
        store.tensors_dir.mkdir()
        (store.path / "config.yaml").write_text(yaml.safe_dump(dict(config_dict), sort_keys=False))
        store.cells_path.touch()
        return store

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        """Open an existing run directory, checking that it is one and of a format we read.

        Raises:
            RunDirError: missing, not a run directory, corrupted meta.json, or another format.
        """
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: no such run directory.")
        store = cls(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise RunDirError(f"{path}: not a detaudit run directory (no meta.json).")
        meta = store.read_meta()
        version = meta.get("format_version")
        if not isinstance(version, int):
            raise RunDirError(f"{meta_path}: no integer format_version; not a detaudit run directory.")
        if version > FORMAT_VERSION:
            raise RunDirError(
                f"{path}: run format {version} is newer than this detaudit reads ({FORMAT_VERSION}). "
                "Upgrade detaudit to read it."
            )
        if version < FORMAT_VERSION:  # no older format has shipped; a future one adds its upgrade here
            raise RunDirError(
                f"{path}: run format {version} is older than this detaudit reads ({FORMAT_VERSION}) and has "
                "no upgrade. Re-run its config.yaml with this detaudit."
            )
        return store

    def read_meta(self) -> dict[str, Any]:
        meta_path = self.path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{meta_path}: unreadable ({exc.__class__.__name__}).") from None
        if not isinstance(meta, dict):
            raise RunDirError(f"{meta_path}: expected a JSON object.")
        return meta

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        _atomic_write(self.path / "meta.json", json.dumps({"format_version": FORMAT_VERSION, **meta},
                                                          indent=2, sort_keys=True, default=str))

    def read_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise RunDirError(f"{self.path / 'config.yaml'}: unreadable ({exc.__class__.__name__}).") from None
        return data if isinstance(data, dict) else {}

    def append_record(self, record: Mapping[str, Any]) -> None:
        """Append one finished cell; flushed at once so a crash or Ctrl-C loses nothing."""
        line = json.dumps(record, sort_keys=True, default=str, allow_nan=True)
        with self.cells_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def iter_records(self, on_bad_line: Callable[[int, str], None] | None = None) -> Iterator[dict[str, Any]]:
        """The records of cells.jsonl. A broken line (a write cut by a crash) is reported and skipped."""
        if not self.cells_path.is_file():
            return
        with self.cells_path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if on_bad_line:
                        on_bad_line(number, line[:80])
                    continue
                if isinstance(record, dict):
                    yield record

    def tensor_path(self, cell_id: str, replay: bool = False) -> Path:
        return self.tensors_dir / ("replay" if replay else "") / f"{cell_id}.npz"


def save_tensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Save named tensors as raw bits plus dtype names (npz cannot hold bfloat16 or float8 natively)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    dtypes = {}
    for name, array in tensors.items():
        arrays[name] = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
        dtypes[name] = array.dtype.name
    arrays["__dtypes__"] = np.frombuffer(json.dumps(dtypes).encode(), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """Inverse of :func:`save_tensors`."""
    with np.load(path) as data:
        dtypes = json.loads(bytes(data["__dtypes__"]).decode())
        return {name: data[name].view(FLOAT_DTYPES[dtype]) for name, dtype in dtypes.items()}
