"""A point of the matrix (:class:`Settings`, one field per axis) and one measurement (:class:`Cell`), with the
stable cell id that names its records and files.

One way to describe a cell: the worker's job, cells.jsonl, meta.json and the table all use :meth:`Cell.to_dict`
and :meth:`Cell.from_dict`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from detaudit.core.axes import AXES, id_values, process_axes
from detaudit.core.layer_spec import LayerSpec, parse_layer
from detaudit.core.validation import INVALID, Context, integer, mapping
from detaudit.errors import ConfigError, did_you_mean

__all__ = ["CELL_ID", "MAX_BATCH_SIZE", "MAX_REPEATS", "MAX_SEED", "Cell", "Settings", "axis_value",
           "parse_batch_sizes", "parse_settings"]

#: Characters a name (a config's, a cell id's slug) may not hold.
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: Every cell id: a slug of the kind, a dash, 12 hex digits. Ids name files, so nothing else is accepted.
CELL_ID = re.compile(r"^[a-z0-9._-]{1,24}-[0-9a-f]{12}$")
MAX_SEED = (1 << 32) - 1
MAX_REPEATS = 100_000
MAX_BATCH_SIZE = 1024


def _settings_methods() -> dict[str, Any]:
    def process_key(self: Any) -> tuple[Any, ...]:
        """The process-wide part: cells with equal keys can share one worker."""
        return tuple(getattr(self, axis) for axis in process_axes())

    def as_dict(self: Any) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self: Any) -> str:
        """A short human label listing the settings that differ from the defaults."""
        parts = [f"{name}={getattr(self, name)}" for name, axis in AXES.items() if getattr(self, name) != axis.default]
        return ", ".join(parts) or "defaults"

    return {"process_key": process_key, "as_dict": as_dict, "label": label,
            "__doc__": "One point of the matrix: the settings a cell runs under (one field per axis)."}


#: One point of the matrix. Its fields and defaults are the axes of detaudit.core.axes, in their order.
Settings = dataclasses.make_dataclass(
    "Settings", [(name, Any, dataclasses.field(default=axis.default)) for name, axis in AXES.items()],
    frozen=True, namespace=_settings_methods())
Settings.__module__ = __name__


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measurement: a layer spec under one point of the matrix with one seed."""

    layer: LayerSpec
    settings: Any  # Settings
    seed: int
    repeats: int
    batch_sizes: tuple[int, ...] = ()  # the `batch` comparison's sizes; not part of the id (like repeats)

    @functools.cached_property
    def cell_id(self) -> str:
        """Stable across runs and machines: a hash of layer, params, input shape, settings and seed."""
        key = json.dumps(
            [self.layer.kind, self.layer.params_json, list(self.layer.input_shape),
             id_values(self.settings.as_dict()), self.seed],
            sort_keys=True,
        )
        slug = SAFE_NAME.sub("", self.layer.short_kind).lower()[:24] or "layer"
        return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the worker's job and cells.jsonl."""
        return {
            "cell_id": self.cell_id,
            "kind": self.layer.kind,
            "params": self.layer.params,
            "input_shape": list(self.layer.input_shape),
            "settings": self.settings.as_dict(),
            "seed": self.seed,
            "repeats": self.repeats,
            **({"batch_sizes": list(self.batch_sizes)} if self.batch_sizes else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """Inverse of :meth:`to_dict`, validated: a stored record cannot smuggle in a value a config could not hold.

        Raises:
            ConfigError: a malformed cell (e.g. a hand-edited cells.jsonl line).
        """
        ctx = Context("cell record")
        try:
            settings = parse_settings(data["settings"], ctx.at("settings"))
            layer = parse_layer({"kind": data["kind"], **data["params"], "input_shape": data["input_shape"]}, ctx)
            seed = integer(data["seed"], ctx.at("seed"), 0, MAX_SEED)
            repeats = integer(data["repeats"], ctx.at("repeats"), 1, MAX_REPEATS)
            batch_sizes = parse_batch_sizes(data, ctx)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cell record: missing or malformed field ({exc}).") from None
        ctx.raise_errors()
        return cls(layer, settings, seed, repeats, batch_sizes)


def parse_batch_sizes(data: Mapping[str, Any], ctx: Context) -> tuple[int, ...]:
    """The ``batch_sizes`` key of a config or cell record: sorted, unique, each from 1 to MAX_BATCH_SIZE."""
    raw = data.get("batch_sizes")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ctx.at("batch_sizes").fail(f"a non-empty list of batch sizes from 1 to {MAX_BATCH_SIZE:,}", raw)
    sizes = [ctx.attempt(integer, b, ctx.at("batch_sizes").at(i), 1, MAX_BATCH_SIZE) for i, b in enumerate(raw)]
    return tuple(sorted({size for size in sizes if size is not INVALID}))


def axis_value(axis: str, value: Any, ctx: Context) -> Any:
    """``value`` for ``axis``, normalised by the axis' validator, or an error at ``ctx`` with the nearest choice."""
    try:
        return AXES[axis].validate(value)
    except ValueError as exc:
        raise ctx.fail(str(exc), value, did_you_mean(value, AXES[axis].suggestions)) from None


def parse_settings(data: Any, ctx: Context, defaults: Mapping[str, Any] | None = None) -> Any:
    """A :class:`Settings` from a mapping of axis -> one value (missing axes: ``defaults``, else each axis' default)."""
    raw = mapping(data or {}, ctx, tuple(AXES))
    values = {}
    for name, axis in AXES.items():
        default = axis.default if defaults is None else defaults[name]
        values[name] = ctx.attempt(axis_value, name, raw.get(name, default), ctx.at(name))
    if any(v is INVALID for v in values.values()):
        ctx.raise_errors()
    return Settings(**values)
