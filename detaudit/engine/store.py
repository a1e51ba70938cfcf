"""The runs/<run-id>/ directory: reading and writing, append-only, one writer at a time.

Layout (format_version 2):

- ``meta.json``       format_version, kind (matrix, audit or triage), versions, environment
                      fingerprint, start/end time, per-group applied settings
- ``config.yaml``     the resolved config (matrix and triage runs)
- ``cells.jsonl``     one JSON line per finished cell, appended and fsynced as each
                      finishes, so an interrupted run loses nothing
- ``results.parquet`` the long results table (rebuilt from cells.jsonl and tensors/)
- ``logs/``           worker stderr, one file per worker process
- ``tensors/``        first-repeat tensors per cell (``keep_tensors``), ``tensors/replay/``
                      for the process replay
- ``cache/``          the float64 references shared by the cells of the run
- ``tmp/``            the workers' temporary files while the run is going (removed when it ends)
- ``.lock``           held by the process writing the run

Format 1 (before the ``kind`` key, the ``ref_scale`` column and this layout's
cache) is read and upgraded on the fly: its table is rebuilt from cells.jsonl.
Every path read or written is checked to stay inside the run directory, and
symbolic links are never followed.

Pure Python + NumPy; no TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import errno
import fcntl
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detaudit.core.cells import CELL_ID
from detaudit.core.numerics import FLOAT_DTYPES
from detaudit.engine.cell_record import CellRecord, InvalidRecord
from detaudit.errors import DiskFullError, RunDirError

__all__ = ["FORMAT_VERSION", "RunKind", "RunStore", "load_tensors", "new_run_id", "save_tensors"]

#: 2: meta.json names the run's kind; the table gained ref_scale; float64 references are cached.
FORMAT_VERSION = 2
OLDEST_READABLE = 1
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: What a run directory holds; none of it may be a symbolic link (a downloaded run could point them anywhere).
_MEMBERS = ("meta.json", "config.yaml", "cells.jsonl", "results.parquet", ".lock", "logs", "tensors", "cache",
            "tmp", "audit.json", "triage.json")


class RunKind(str, enum.Enum):
    """What a run directory holds."""

    MATRIX = "matrix"  # detaudit run: cells of a config
    AUDIT = "audit"  # detaudit audit: a user's model
    TRIAGE = "triage"  # detaudit triage: steps, measurements and reproducers for cells of another run


def new_run_id(name: str, now: _dt.datetime | None = None) -> str:
    """Timestamp plus config name, safe as a file name: ``20261124T232400Z-quick``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe}"


def disk_full(exc: OSError, path: Path) -> DiskFullError | None:
    """A :class:`DiskFullError` for a write that failed for lack of space, else None."""
    if exc.errno in _DISK_FULL:
        reason = "the file size limit was reached" if exc.errno == errno.EFBIG else "the disk is full"
        return DiskFullError(f"{path}: cannot write, {reason} ({os.strerror(exc.errno)})")
    return None


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share it
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_full(exc, path) or exc from None


class RunStore:
    """One run directory. Create with :meth:`create`, open an existing one with :meth:`open`."""

    def __init__(self, path: Path, format_version: int = FORMAT_VERSION):
        self.path = Path(path)
        self.format_version = format_version
        self._tail_checked = False
        self._lock_file: Any = None

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
    def cache_dir(self) -> Path:
        return self.path / "cache"

    @property
    def cells_path(self) -> Path:
        return self.path / "cells.jsonl"

    @property
    def results_path(self) -> Path:
        return self.path / "results.parquet"

    @classmethod
    def create(cls, out_dir: str | Path, config_dict: Mapping[str, Any] | None, name: str,
               run_id: str | None = None, kind: RunKind = RunKind.MATRIX, exact: bool = False) -> RunStore:
        """Make ``out_dir/<run-id>/`` with its config.yaml; never reuses an existing directory.

        A taken id gets a ``-2``, ``-3``... suffix, unless ``exact``: a run id the
        user chose is where they (or their CI script) will read the run back, so
        another directory there is an error, not a silent ``-2``.

        Raises:
            RunDirError: ``out_dir`` is a file or cannot be created, the run id is unsafe, or (``exact``) taken.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out}: --out must be a directory, and this is a file.")
        base = run_id or new_run_id(name)
        if not _SAFE_RUN_ID.match(base):
            raise RunDirError(f"Invalid run id {base!r}. Expected up to 128 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit.")
        candidate, n = base, 1
        while True:
            try:
                (out / candidate).mkdir(parents=True)
                break
            except FileExistsError:
                if exact and run_id:
                    raise RunDirError(f"Invalid value for argument `--run-id`. {out / candidate} already exists: give "
                                      f"another id, or finish that run with: detaudit run --resume {out / candidate}"
                                      ) from None
                n += 1
                candidate = f"{base}-{n}"
            except OSError as exc:
                raise disk_full(exc, out) or RunDirError(
                    f"{out}: cannot create the run directory ({exc.strerror}).") from None
        store = cls(out / candidate)
        try:
            store.logs_dir.mkdir()
            store.tensors_dir.mkdir()
            if config_dict is not None:
                _write_text(store.path / "config.yaml", yaml.safe_dump(dict(config_dict), sort_keys=False))
            store.cells_path.touch()
        except (OSError, DiskFullError) as exc:
            shutil.rmtree(store.path, ignore_errors=True)  # no half-made run directory is left behind
            if isinstance(exc, DiskFullError):
                raise
            raise disk_full(exc, store.path) or exc from None
        store._kind = kind  # written with the first meta.json
        return store

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        """Open an existing run directory, checking that it is one and of a format we read.

        Raises:
            RunDirError: missing, not a run directory, corrupted meta.json, or a newer format.
        """
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: no such run directory.")
        meta_path = path / "meta.json"
        if not meta_path.is_file() or meta_path.is_symlink():
            raise RunDirError(f"{path}: not a detaudit run directory (no meta.json).")
        store = cls(path)
        for name in _MEMBERS:
            if (path / name).is_symlink():
                raise RunDirError(f"{path}: refusing a run directory whose {name} is a symbolic link.")
        meta = store.read_meta()
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise RunDirError(f"{meta_path}: no integer format_version; not a detaudit run directory.")
        if version > FORMAT_VERSION:
            raise RunDirError(f"{path}: run format {version} is newer than this detaudit reads ({FORMAT_VERSION}). "
                              "Upgrade detaudit to read it.")
        if version < OLDEST_READABLE:
            raise RunDirError(f"{path}: run format {version} is older than this detaudit reads "
                              f"({OLDEST_READABLE}-{FORMAT_VERSION}). Re-run its config.yaml with this detaudit.")
        store.format_version = version
        return store

    @property
    def kind(self) -> RunKind:
        """The run's kind; format 1 said only ``"kind": "audit"`` for model audits."""
        value = self.read_meta().get("kind") or RunKind.MATRIX.value
        try:
            return RunKind(value)
        except ValueError:
            raise RunDirError(f"{self.path / 'meta.json'}: unknown run kind {value!r}.") from None

    # -- meta and config -------------------------------------------------------------------------

    def read_meta(self) -> dict[str, Any]:
        meta_path = self.path / "meta.json"
        return _checked_meta(_read_mapping(meta_path, json.loads, "a JSON object"), meta_path)

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Write meta.json at this detaudit's format (a run being written is always of the current format)."""
        kind = getattr(self, "_kind", None)
        data = {**meta, "format_version": FORMAT_VERSION}
        if kind is not None:
            data.setdefault("kind", kind.value)
        _write_text(self.path / "meta.json", json.dumps(data, indent=2, sort_keys=True, default=str))
        self.format_version = FORMAT_VERSION

    def read_config(self) -> dict[str, Any]:
        return _read_mapping(self.inside("config.yaml"), yaml.safe_load, "a mapping")

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON object stored in the run (audit.json, triage.json).

        Raises:
            RunDirError: missing, unreadable or not an object.
        """
        return _read_mapping(self.inside(name), json.loads, "a JSON object")

    def write_json(self, name: str, data: Any) -> Path:
        path = self.inside(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.inside(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_text(path, text)
        return path

    # -- paths -----------------------------------------------------------------------------------

    def inside(self, relative: str | Path) -> Path:
        """``relative`` under the run directory, refused if it would leave it or pass through a symlink.

        Raises:
            RunDirError: the path escapes the run directory.
        """
        root = self.path.resolve()
        candidate = self.path / relative
        resolved = candidate.resolve()
        if resolved != root and root not in resolved.parents:
            raise RunDirError(f"{self.path}: refusing the path {str(relative)!r}, which leaves the run directory.")
        step = self.path
        for part in Path(os.path.normpath(relative)).parts:  # links above the run directory are the user's own
            step = step / part
            if step.is_symlink():
                raise RunDirError(f"{self.path}: refusing {str(relative)!r}, a symbolic link.")
        return candidate

    def tensor_path(self, cell_id: str, replay: bool = False) -> Path:
        """Where a cell's first-repeat tensors are kept; the id must be a cell id (a safe file name)."""
        if not CELL_ID.match(cell_id):
            raise RunDirError(f"{self.path}: invalid cell id {cell_id!r}.")
        return self.tensors_dir / ("replay" if replay else "") / f"{cell_id}.npz"

    # -- records ---------------------------------------------------------------------------------

    def _repair_tail(self) -> None:
        """End a torn last line (a write cut by a crash or a full disk) so the next record starts on a fresh line.

        The torn text stays, as one unreadable line that readers report and skip.
        """
        self._tail_checked = True
        try:
            with self.cells_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return
                f.seek(-1, os.SEEK_END)
                if f.read(1) == b"\n":
                    return
            with self.cells_path.open("ab") as f:
                f.write(b"\n")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise disk_full(exc, self.cells_path) or exc from None

    def append_record(self, record: Mapping[str, Any]) -> None:
        """Append one finished cell; fsynced at once so a crash or Ctrl-C loses nothing.

        Raises:
            DiskFullError: no space left (the partial line is repaired by the next append).
        """
        if not self._tail_checked:
            self._repair_tail()
        line = (json.dumps(record, sort_keys=True, default=str, allow_nan=True) + "\n").encode("utf-8")
        try:
            fd = os.open(self.cells_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self._tail_checked = False  # a partial line may be left: repair before the next append
            raise disk_full(exc, self.cells_path) or exc from None

    def iter_records(self, on_bad_line: Callable[[int, str], None] | None = None) -> Iterator[dict[str, Any]]:
        """The records of cells.jsonl, as :meth:`CellRecord.checked` gives them (every string encodable).

        A line that is not a cell record (a write cut by a crash, a hand edit, a field of the wrong type) is
        reported through ``on_bad_line(number, text)`` and skipped."""
        if not self.cells_path.is_file():
            return
        with self.cells_path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = CellRecord.checked(json.loads(line), line)
                except (json.JSONDecodeError, RecursionError, InvalidRecord):  # RecursionError: nested too deep
                    if on_bad_line:
                        on_bad_line(number, line[:80].rstrip())
                    continue
                yield record

    # -- one writer at a time --------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for writing; a second writer is refused at once.

        Raises:
            RunDirError: another process holds the run (its pid is named).
        """
        path = self.path / ".lock"
        try:  # never through a link: a hostile run directory could point .lock at a file of yours
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise RunDirError(f"{path}: cannot lock the run ({exc.strerror}).") from None
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunDirError(f"{self.path}: the run is in use by another detaudit process (pid {holder}); "
                              "wait for it to finish.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            handle.close()


def _read_mapping(path: Path, parse: Callable[[str], Any], expected: str) -> dict[str, Any]:
    """One of the run's JSON or YAML files, which must hold a mapping (RunDirError otherwise, naming the file)."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc.__class__.__name__}).") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected {expected}.")
    return data


def _checked_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """meta.json with its structured fields of the right types (a hand-edited or foreign file is refused)."""
    for key in ("tensorflow", "host", "groups", "audit"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise RunDirError(f"{path}: `{key}` must be a JSON object, not {type(meta[key]).__name__}.")
    shard = meta.get("shard")
    if shard is not None and not (isinstance(shard, list) and len(shard) == 2
                                  and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
                                  and 1 <= shard[0] <= shard[1]):
        raise RunDirError(f"{path}: `shard` must be [i, n] with 1 <= i <= n, not {shard!r}.")
    if meta.get("explicit_cells") is not None and not isinstance(meta["explicit_cells"], list):
        raise RunDirError(f"{path}: `explicit_cells` must be a list of cells.")
    for key in ("started", "finished", "config_name", "run_id"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise RunDirError(f"{path}: `{key}` must be a string, not {type(meta[key]).__name__}.")
    return meta


def save_tensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Save named tensors as raw bits plus dtype names (npz cannot hold bfloat16 or float8 natively).

    Raises:
        DiskFullError: no space left.
    """
    arrays = {}
    dtypes = {}
    for name, array in tensors.items():
        arrays[name] = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
        dtypes[name] = array.dtype.name
    arrays["__dtypes__"] = np.frombuffer(json.dumps(dtypes).encode(), dtype=np.uint8)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # on disk before the cell's record is: a power cut cannot leave a torn file
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_full(exc, path) or exc from None


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """Inverse of :func:`save_tensors`. A symbolic link is not followed (it raises OSError).

    Raises:
        OSError, ValueError: a missing, torn or foreign file.
    """
    if path.is_symlink():
        raise OSError(f"{path} is a symbolic link")
    try:
        with np.load(path) as data:
            dtypes = json.loads(bytes(data["__dtypes__"]).decode())
            return {name: data[name].view(FLOAT_DTYPES[dtype]) for name, dtype in dtypes.items()}
    except (EOFError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a tensors file ({exc.__class__.__name__})") from None
