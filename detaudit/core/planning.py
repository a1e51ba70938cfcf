"""Planning a run: the matrix expanded into cells, cells grouped by process-wide settings, shards, and the
(cell, replay) jobs a complete run records.

Pure and framework-free, like the rest of :mod:`detaudit.core`: the runner executes the plan, the analysis reads
a stored run's plan back (from its config and meta.json) to know what is missing.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from detaudit.core.axes import AXES
from detaudit.core.cells import Cell, Settings
from detaudit.errors import UsageError

if TYPE_CHECKING:
    from detaudit.core.config import Config

__all__ = ["MAX_SHARDS", "WorkerJob", "expand_matrix", "expected_cells", "expected_jobs", "iter_groups",
           "parse_shard", "plan_jobs", "shard_cells", "shard_type"]

MAX_SHARDS = 10_000


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


def _shard_problem(text: str) -> tuple[tuple[int, int] | None, str]:
    """(``(i, n)``, "") for a valid ``"i/n"``, else (None, what was expected)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        return None, "i/n such as 1/4"
    if not 1 <= index <= count <= MAX_SHARDS:
        return None, f"1 <= i <= n <= {MAX_SHARDS}"
    return (index, count), ""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with 1 <= i <= n <= 10000.

    Raises:
        UsageError: naming ``--shard``, what is expected and what was received.
    """
    shard, expected = _shard_problem(text)
    if shard is None:
        raise UsageError(f"Invalid value for argument `--shard`. Expected {expected}. Received {text!r}.")
    return shard


def shard_type(text: str) -> tuple[int, int]:
    """:func:`parse_shard` as an argparse ``type=``: argparse reports the error on the option's behalf."""
    shard, expected = _shard_problem(text)
    if shard is None:
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return shard


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


class WorkerJob(NamedTuple):
    """Cells of one environment group for one worker process (and its replacements), or their replays."""

    group: str  # g00, g01, ...: the group's place among all the run's groups (log names keep it on resume)
    cells: list[Cell]
    replay: bool


def plan_jobs(config: Config, cells: Sequence[Cell], recorded: Collection[tuple[str, bool]] = ()) -> list[WorkerJob]:
    """The worker jobs of a run: its expected (cell, replay) jobs minus the ``recorded`` ones (cell id, replay),
    grouped by environment group, a group's cells before their replays."""
    group_of = {c.cell_id: i for i, (_, group) in enumerate(iter_groups(cells)) for c in group}
    buckets: dict[tuple[int, bool], list[Cell]] = {}
    for cell, replay in expected_jobs(config, cells):
        if (cell.cell_id, replay) not in recorded:
            buckets.setdefault((group_of[cell.cell_id], replay), []).append(cell)
    return [WorkerJob(f"g{group:02d}", todo, replay) for (group, replay), todo in sorted(buckets.items())]
