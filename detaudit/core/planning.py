"""Planning a run: the matrix expanded into cells, cells grouped by process-wide settings, shards, and the
(cell, replay) jobs a complete run records.

Pure and framework-free, like the rest of :mod:`detaudit.core`: the runner executes the plan, the analysis reads
a stored run's plan back (from its config and meta.json) to know what is missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from detaudit.core.axes import AXES
from detaudit.core.cells import Cell, Settings

if TYPE_CHECKING:
    from detaudit.core.config import Config

__all__ = ["expand_matrix", "expected_cells", "expected_jobs", "iter_groups", "shard_cells"]


def expand_matrix(config: Config) -> list[Cell]:
    """Expand layers x matrix x seeds into cells, in a stable order, plus the baseline cells.

    The baseline point is added for every layer and seed even when the matrix
    lacks it, because the ``baseline`` comparison needs it.
    """
    axes = config.axes
    points = [Settings(**dict(zip(AXES, combo))) for combo in itertools.product(*(axes[a] for a in AXES))]
    if config.baseline not in points:
        points.append(config.baseline)
    return [Cell(layer, settings, seed, config.repeats, config.batch_sizes)
            for layer in config.layers for settings in points for seed in config.seeds]


def iter_groups(cells: Sequence[Cell]) -> Iterator[tuple[tuple[Any, ...], list[Cell]]]:
    """Cells grouped by their process-wide settings, in first-seen order."""
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.settings.process_key(), []).append(cell)
    yield from groups.items()


def shard_cells(cells: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of shard ``i`` of ``n`` (1-based): every n-th cell in cell-id order, so stable and balanced."""
    if shard is None:
        return list(cells)
    index, count = shard
    keep = set(sorted(c.cell_id for c in cells)[index - 1::count])
    return [c for c in cells if c.cell_id in keep]


def expected_jobs(config: Config, cells: Sequence[Cell]) -> list[tuple[Cell, bool]]:
    """Every (cell, replay) pair a complete run of these cells records."""
    return [(c, replay) for c in cells for replay in ((False, True) if config.replay_process else (False,))]


def expected_cells(config: Config, meta: Mapping[str, Any]) -> list[Cell]:
    """The cells a run of ``config`` with this meta.json is made of: its explicit list (a triage measurement),
    else its shard of the matrix.

    Raises:
        ConfigError: meta.json lists a malformed cell.
    """
    if meta.get("explicit_cells"):
        return [Cell.from_dict(data) for data in meta["explicit_cells"]]
    shard = meta.get("shard")
    return shard_cells(config.cells(), (int(shard[0]), int(shard[1])) if shard else None)
