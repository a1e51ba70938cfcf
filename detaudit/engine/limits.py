"""Bounds on inputs that unpack: a ``.keras`` archive is checked by its declared sizes before Keras opens it.

A few hundred kilobytes of zip can declare a config.json of gigabytes, which
Keras would read whole and parse. The zip's central directory declares each
member's uncompressed size, and Python's ``zipfile`` (which Keras uses) never
inflates a member past its declared size, so checking the declared sizes bounds
what loading can unpack. Standard library only: the check runs in the parent,
before any worker starts.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from detaudit.core.layer_spec import machine_memory_bytes
from detaudit.errors import UsageError

__all__ = ["MAX_JSON_BYTES", "MAX_MEMBERS", "check_keras_archive"]

#: config.json and metadata.json are parsed whole in memory: a real model's config is kilobytes to megabytes.
MAX_JSON_BYTES = 64 << 20
#: Members of one archive (a .keras file holds three; assets add a few).
MAX_MEMBERS = 10_000


def _size(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):,.1f} MiB"


def check_keras_archive(path: str | Path, memory_bytes: int | None = None) -> None:
    """Refuse a ``.keras`` archive whose declared contents could not be loaded safely, before loading it.

    Args:
        path: the archive.
        memory_bytes: the memory to fit (default: this machine's). The
            unpacked archive may take at most half of it: the weights are
            read into memory and TensorFlow needs the rest.

    Raises:
        UsageError: naming the file and the limit: not a zip archive, too many
            members, a JSON member over :data:`MAX_JSON_BYTES`, or contents
            larger than half the memory.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .keras model archive ({exc.__class__.__name__}).") from None
    if len(members) > MAX_MEMBERS:
        raise UsageError(f"{path}: {len(members):,} files in the archive; a .keras model holds at most "
                         f"{MAX_MEMBERS:,}.")
    for member in members:
        if member.filename.endswith(".json") and member.file_size > MAX_JSON_BYTES:
            raise UsageError(f"{path}: its {member.filename[:80]} unpacks to {member.file_size:,} bytes; a model's "
                             f"JSON is at most {MAX_JSON_BYTES:,} (a compressed archive that unpacks this large is "
                             "refused before loading).")
    total = sum(member.file_size for member in members)
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    if memory is not None and total > memory // 2:
        raise UsageError(f"{path}: unpacks to {_size(total)}; a model loaded here is at most half of this machine's "
                         f"memory ({_size(memory // 2)} of {_size(memory)}).")
