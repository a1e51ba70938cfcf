"""YAML config -> validated, frozen config objects, and matrix expansion into cells.

No TensorFlow, pandas or rich here: this module runs in the parent process and
in the fast unit tests. Axes come from :mod:`detaudit.core.axes`, layer kinds
from :mod:`detaudit.core.kinds`, comparisons from
:mod:`detaudit.core.comparisons`; this module only walks the document. Every
error names the file, the YAML key path, the value received, what is allowed
and, for a typo, the nearest valid choice; a file's errors are reported all at once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from detaudit.core.axes import AXES, process_axes
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.kinds import (
    IMPORT_PATH,
    KINDS,
    USER_LAYER,
    LayerKind,
    canonical_params,
    kind_of,
)
from detaudit.core.validation import (
    INVALID,
    Context,
    as_list,
    boolean,
    int_tuple,
    integer,
    short_repr,
    mapping,
)
from detaudit.errors import ConfigError, did_you_mean

__all__ = [
    "CELL_ID",
    "Cell",
    "Config",
    "Expectations",
    "LayerSpec",
    "Settings",
    "bundled_config_path",
    "cell_memory_bytes",
    "expand_matrix",
    "expected_cells",
    "expected_jobs",
    "iter_groups",
    "load_config",
    "parse_config",
    "parse_settings",
    "shard_cells",
]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: Every cell id: a slug of the kind, a dash, 12 hex digits. Ids name files, so nothing else is accepted.
CELL_ID = re.compile(r"^[a-z0-9._-]{1,24}-[0-9a-f]{12}$")
MAX_SEED = (1 << 32) - 1
MAX_REPEATS = 100_000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_BATCH_SIZE = 1024
TOP_KEYS = ("name", "description", "seeds", "repeats", "timeout_s", "replay_process", "keep_tensors", "batch_sizes",
            "layers", "matrix", "baseline", "expect")
_DESCRIPTIONS = {
    "name": "a name of letters, digits, '.', '_' or '-'; the run id ends with it",
    "description": "free text",
    "seeds": "each seed builds its own weights, input and upstream gradient",
    "repeats": "forward+backward passes per cell, each compared with the first",
    "timeout_s": "seconds one cell may take before its worker is killed (TensorFlow's start-up gets at least 120)",
    "replay_process": "replay every cell in a second fresh worker (the `process` comparison)",
    "keep_tensors": "keep each cell's first-repeat tensors in tensors/ (baseline and process ULPs need them)",
    "batch_sizes": "batch sizes each cell's samples are also run at (the `batch` comparison); default none",
    "layers": "the layers under test",
    "matrix": "axis -> values; every combination is a cell",
    "baseline": "the settings every cell is compared with (run even when the matrix lacks them)",
    "expect": "what must hold for exit code 0",
}


# ---------------------------------------------------------------------------
# Frozen config objects
# ---------------------------------------------------------------------------


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
class LayerSpec:
    """A layer under test: its kind, constructor parameters and input shape (batch included)."""

    kind: str
    params_json: str  # canonical JSON of the parameters, so the spec is hashable
    input_shape: tuple[int, ...]

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    @property
    def declaration(self) -> LayerKind:
        return kind_of(self.kind)

    @property
    def rank(self) -> int | None:
        """Spatial rank for built-in kinds, None for a user layer."""
        return self.declaration.rank

    @property
    def short_kind(self) -> str:
        """The class name alone for a user layer (``pkg.mod:Up`` -> ``Up``)."""
        return self.kind.rpartition(":")[2]

    def describe(self) -> str:
        p = self.params
        bits = [f"{k}={p[k]}" for k in ("filters", "kernel_size", "strides", "padding") if k in p]
        return f"{self.short_kind}({', '.join(bits)}) on {list(self.input_shape)}"


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
             self.settings.as_dict(), self.seed],
            sort_keys=True,
        )
        slug = _SAFE_NAME.sub("", self.layer.short_kind).lower()[:24] or "layer"
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
            layer = _layer({"kind": data["kind"], **data["params"], "input_shape": data["input_shape"]}, ctx)
            seed = integer(data["seed"], ctx.at("seed"), 0, MAX_SEED)
            repeats = integer(data["repeats"], ctx.at("repeats"), 1, MAX_REPEATS)
            batch_sizes = _batch_sizes(data, ctx)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cell record: missing or malformed field ({exc}).") from None
        ctx.raise_errors()
        return cls(layer, settings, seed, repeats, batch_sizes)


@dataclasses.dataclass(frozen=True)
class Expectations:
    """What must hold for exit code 0.

    ``deterministic`` selects the cells whose run-to-run comparisons must be
    bitwise equal: None means every cell, an empty tuple none, otherwise the
    cells whose settings match every listed axis. ``max_ulp`` /
    ``max_ulp_scaled`` map a comparison (``baseline``, ...) to a threshold per
    precision (key ``"*"`` for any precision).
    """

    deterministic: tuple[tuple[str, tuple[Any, ...]], ...] | None = None
    max_ulp: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    max_ulp_scaled: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    batch_invariant: tuple[tuple[str, tuple[Any, ...]], ...] | None = ()  # default: none

    def selects(self, name: str, settings: Any) -> bool:
        """Whether the selector expectation ``name`` (``deterministic``, ``batch_invariant``) covers ``settings``."""
        selector = getattr(self, name)
        if selector is None:
            return True
        if not selector:
            return False
        return all(getattr(settings, axis) in values for axis, values in selector)

    def must_be_deterministic(self, settings: Any) -> bool:
        return self.selects("deterministic", settings)

    def threshold(self, kind: str, comparison: str, precision: str) -> float | None:
        table = dict(dict(getattr(self, kind)).get(comparison, ()))
        return table.get(precision, table.get("*"))


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated run configuration. Build one with :func:`load_config` or :func:`parse_config`."""

    name: str
    seeds: tuple[int, ...]
    repeats: int
    timeout_s: float
    layers: tuple[LayerSpec, ...]
    matrix: tuple[tuple[str, tuple[Any, ...]], ...]
    baseline: Any  # Settings
    replay_process: bool = False
    keep_tensors: bool = True
    expect: Expectations = Expectations()
    source: str = "<dict>"
    batch_sizes: tuple[int, ...] = ()

    @property
    def axes(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data; parse_config(to_dict()) gives an equal Config."""
        expect: dict[str, Any] = {}
        if self.expect.deterministic is not None:
            expect["deterministic"] = {a: list(v) for a, v in self.expect.deterministic} or "none"
        if self.expect.batch_invariant != ():
            expect["batch_invariant"] = ("all" if self.expect.batch_invariant is None
                                         else {a: list(v) for a, v in self.expect.batch_invariant})
        for kind in ("max_ulp", "max_ulp_scaled"):
            if getattr(self.expect, kind):
                expect[kind] = {c: dict(t) for c, t in getattr(self.expect, kind)}
        out: dict[str, Any] = {
            "name": self.name,
            "seeds": list(self.seeds),
            "repeats": self.repeats,
            "timeout_s": self.timeout_s,
            "layers": [{"kind": s.kind, **s.params, "input_shape": list(s.input_shape)} for s in self.layers],
            "matrix": {a: list(v) for a, v in self.matrix},
            "baseline": self.baseline.as_dict(),
            "replay_process": self.replay_process,
            "keep_tensors": self.keep_tensors,
            **({"batch_sizes": list(self.batch_sizes)} if self.batch_sizes else {}),
        }
        if expect:
            out["expect"] = expect
        return out

    def cells(self) -> list[Cell]:
        """Every cell of the run: see :func:`expand_matrix`."""
        return expand_matrix(self)

    def user_modules(self) -> list[tuple[int, str]]:
        """(layer index, module) of every ``package.module:Class`` layer: the code this config imports."""
        return [(i, spec.kind.partition(":")[0]) for i, spec in enumerate(self.layers)
                if spec.declaration is USER_LAYER]


# ---------------------------------------------------------------------------
# Settings and layers
# ---------------------------------------------------------------------------


def _axis_value(axis: str, value: Any, ctx: Context) -> Any:
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
        values[name] = ctx.attempt(_axis_value, name, raw.get(name, default), ctx.at(name))
    if any(v is INVALID for v in values.values()):
        ctx.raise_errors()
    return Settings(**values)


def _layer(raw: Any, ctx: Context) -> LayerSpec:
    data = mapping(raw, ctx)
    if "kind" not in data:
        raise ctx.fail("a mapping with a `kind` key", raw)
    kind_name = data.pop("kind")
    kctx = ctx.at("kind")
    if not isinstance(kind_name, str) or (kind_name not in KINDS and not IMPORT_PATH.match(kind_name)):
        raise kctx.fail(f"one of {', '.join(KINDS)} or an import path 'package.module:Class' (a Keras Layer "
                        "subclass)", kind_name, did_you_mean(kind_name, KINDS))
    if "input_shape" not in data:
        raise ctx.fail("an `input_shape` key (batch included)", raw)
    declaration = kind_of(kind_name)
    rank = declaration.rank
    input_shape = int_tuple(data.pop("input_shape"), ctx.at("input_shape"), None if rank is None else rank + 2,
                            1, 1 << 31)
    if declaration is USER_LAYER:
        try:
            params_json = json.dumps(data, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError):
            raise ctx.fail("constructor arguments that are plain YAML data", data) from None
        return LayerSpec(kind_name, params_json, input_shape)

    assert rank is not None
    for key in data:
        if key not in declaration.keys:
            raise ctx.unknown_key(key, declaration.keys + ("kind", "input_shape"))
    params: dict[str, Any] = {}
    for param in declaration.params:
        if param.name not in data and param.required:
            raise ctx.fail(f"a `{param.name}` key for kind {kind_name}", raw)
        value = data.get(param.name, param.default)
        params[param.name] = param.parse(value, ctx.at(param.name), rank) if param.name in data else value
        if isinstance(params[param.name], int) and not isinstance(params[param.name], bool) and \
                param.name in ("kernel_size", "strides", "dilation_rate", "size"):
            params[param.name] = (params[param.name],) * rank  # a default of 1 broadcast to the rank
    strides, dilation = params.get("strides"), params.get("dilation_rate")
    if strides and dilation and any(s > 1 for s in strides) and any(d > 1 for d in dilation):
        raise ctx.at("dilation_rate").fail(
            "1 when any stride is greater than 1 (Keras and tf.nn refuse both at once)", list(dilation))
    if params.get("output_shape") is not None:
        _check_output_shape(params, input_shape, ctx.at("output_shape"))
    if params.get("output_padding") is not None:
        for p, s in zip(params["output_padding"], params["strides"]):
            if p >= s:
                raise ctx.at("output_padding").fail(f"values smaller than the stride {list(params['strides'])}",
                                                    list(params["output_padding"]))
    return LayerSpec(kind_name, canonical_params(params), input_shape)


def _check_output_shape(params: dict[str, Any], input_shape: tuple[int, ...], ctx: Context) -> None:
    """A raw op's output_shape must map back to the input under its convolution, or TensorFlow refuses it at run time."""
    from detaudit.core.shapes import conv_length

    shape, channels_first = list(params["output_shape"]), params["data_format"] == "channels_first"
    spatial_in = input_shape[2:] if channels_first else input_shape[1:-1]
    spatial_out = shape[2:] if channels_first else shape[1:-1]
    channels = shape[1] if channels_first else shape[-1]
    back = [conv_length(m, k, s, params["padding"], d)
            for m, k, s, d in zip(spatial_out, params["kernel_size"], params["strides"], params["dilation_rate"])]
    if shape[0] != input_shape[0] or channels != params["filters"] or back != list(spatial_in):
        raise ctx.fail(f"the input's batch {input_shape[0]}, `filters` {params['filters']} channels, and lengths whose "
                       f"convolution gives back the input's {list(spatial_in)} (this one gives {back})", shape)


def cell_memory_bytes(spec: LayerSpec) -> int:
    """A generous estimate of a worker's memory for one cell of ``spec`` (bytes), before anything runs.

    Counts the input, the output and the kernel in float64 (the reference
    computes in float64) about six times over: TensorFlow's tensors and
    gradients, the first repeat kept for comparison, the current repeat and
    the reference's canvas. A user layer's output is unknown: its input counts.
    """
    x = math.prod(spec.input_shape)
    params = spec.params
    declaration = spec.declaration
    if declaration.rank is None or "kernel_size" not in params:
        return 6 * 8 * x
    from detaudit.core.reference import output_length

    channels_first = params.get("data_format") == "channels_first"
    spatial = spec.input_shape[2:] if channels_first else spec.input_shape[1:-1]
    channels = spec.input_shape[1] if channels_first else spec.input_shape[-1]
    if declaration.transposed:
        lengths = [output_length(n, k, s, params["padding"], d)
                   for n, k, s, d in zip(spatial, params["kernel_size"], params["strides"], params["dilation_rate"])]
    else:
        lengths = [n * s for n, s in zip(spatial, params.get("size", [1] * len(spatial)))]
    out = spec.input_shape[0] * params["filters"] * math.prod(lengths)
    kernel = math.prod(params["kernel_size"]) * params["filters"] * channels
    return 6 * 8 * (x + out + kernel)


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(spec: LayerSpec, ctx: Context) -> None:
    need, have = cell_memory_bytes(spec), machine_memory_bytes()
    if have is not None and need > have:
        raise ctx.at("input_shape").fail(
            f"a layer whose cell fits this machine's memory ({_gib(have)}); this one needs about {_gib(need)}",
            list(spec.input_shape))


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


# ---------------------------------------------------------------------------
# Expectations
# ---------------------------------------------------------------------------


def _selector(value: Any, dctx: Context) -> tuple[tuple[str, tuple[Any, ...]], ...] | None:
    """``all`` (None), ``none`` (empty), or the cells matching every listed axis."""
    if value in ("all", True):
        return None
    if value in ("none", False):
        return ()
    known = len(dctx.errors)
    selector = mapping(value, dctx, tuple(AXES))
    parsed = tuple((axis, tuple(_axis_value(axis, v, dctx.at(axis).at(i)) for i, v in enumerate(as_list(vals))))
                   for axis, vals in selector.items())
    if not parsed and len(dctx.errors) == known:  # an unknown key was reported already
        raise dctx.fail("all, none, or a mapping of axis to values", value)
    return parsed


def _expectations(raw: Any, ctx: Context) -> Expectations:
    selectors = ComparisonKind.selector_expectations()
    data = mapping(raw, ctx, (*selectors, "max_ulp", "max_ulp_scaled"))
    chosen = {name: _selector(data[name], ctx.at(name)) for name in selectors if name in data}
    thresholds = {}
    precisions = tuple(AXES["precision"].choices or ()) + ("*",)
    for kind in ("max_ulp", "max_ulp_scaled"):
        kctx = ctx.at(kind)
        table = mapping(data.get(kind, {}), kctx, ComparisonKind.with_thresholds())
        parsed = []
        for comparison, per_precision in table.items():
            cctx = kctx.at(comparison)
            if not isinstance(per_precision, dict):
                if isinstance(per_precision, bool) or not isinstance(per_precision, (int, float)) \
                        or not 0 <= per_precision < math.inf:
                    raise cctx.fail("a finite number >= 0, or a mapping of precision (or \"*\") to such a number",
                                    per_precision)
                per_precision = {"*": per_precision}
            per = mapping(per_precision, cctx, precisions)
            for precision, limit in per.items():
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit < math.inf:
                    raise cctx.at(precision).fail("a finite number >= 0", limit)
            parsed.append((comparison, tuple(sorted(per.items()))))
        thresholds[kind] = tuple(parsed)
    return Expectations(max_ulp=thresholds["max_ulp"], max_ulp_scaled=thresholds["max_ulp_scaled"], **chosen)


def _batch_sizes(data: Mapping[str, Any], ctx: Context) -> tuple[int, ...]:
    raw = data.get("batch_sizes")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ctx.at("batch_sizes").fail(f"a non-empty list of batch sizes from 1 to {MAX_BATCH_SIZE:,}", raw)
    return tuple(sorted({integer(b, ctx.at("batch_sizes").at(i), 1, MAX_BATCH_SIZE) for i, b in enumerate(raw)}))


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def _name(data: dict[str, Any], ctx: Context, source: str) -> str:
    name = data.get("name", Path(source).stem if source != "<dict>" else "config")
    if not isinstance(name, str) or not name or len(name) > 64 or _SAFE_NAME.search(name):
        raise ctx.at("name").fail("a non-empty name of at most 64 letters, digits, '.', '_' or '-'", name)
    return name


def _seeds(data: dict[str, Any], ctx: Context) -> tuple[int, ...]:
    raw = as_list(data.get("seeds", [0]))
    if not raw:
        raise ctx.at("seeds").fail("at least one seed", data.get("seeds"))
    return tuple(dict.fromkeys(integer(s, ctx.at("seeds").at(i), 0, MAX_SEED) for i, s in enumerate(raw)))


def _timeout(data: dict[str, Any], ctx: Context) -> float:
    value = data.get("timeout_s", 300)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
        raise ctx.at("timeout_s").fail(f"a number of seconds > 0 and at most {MAX_TIMEOUT_S:,.0f} (a week)", value)
    return float(value)


def _layers(data: dict[str, Any], ctx: Context) -> tuple[LayerSpec, ...]:
    raw = data.get("layers")
    if not isinstance(raw, list) or not raw:
        raise ctx.at("layers").fail("a non-empty list of layer specs", raw)
    specs = [ctx.attempt(_layer, item, ctx.at("layers").at(i)) for i, item in enumerate(raw)]
    for i, spec in enumerate(specs):
        if spec is not INVALID:
            ctx.attempt(_check_memory, spec, ctx.at("layers").at(i))
    return tuple(specs)


def _matrix(data: dict[str, Any], ctx: Context) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    mctx = ctx.at("matrix")
    raw = mapping(data.get("matrix") or {}, mctx, tuple(AXES))
    matrix = []
    for name, axis in AXES.items():
        values = as_list(raw.get(name, axis.default))
        if not values:
            raise mctx.at(name).fail("at least one value", raw.get(name))
        parsed = [ctx.attempt(_axis_value, name, v, mctx.at(name).at(i)) for i, v in enumerate(values)]
        matrix.append((name, tuple(dict.fromkeys(parsed))))
    return tuple(matrix)


def parse_config(data: Any, source: str = "<dict>") -> Config:
    """Validate a config mapping (as read from YAML) and return a frozen :class:`Config`.

    Every error of the document is reported, one line each.

    Raises:
        ConfigError: naming the key path, the value received and what is allowed.
    """
    ctx = Context(source)
    data = mapping(data, ctx, TOP_KEYS)
    if not isinstance(data.get("description", ""), str):
        ctx.errors.append(ctx.at("description").fail("text", data["description"]))
    fields = {
        "name": ctx.attempt(_name, data, ctx, source),
        "seeds": ctx.attempt(_seeds, data, ctx),
        "repeats": ctx.attempt(lambda: integer(data.get("repeats", 3), ctx.at("repeats"), 2, MAX_REPEATS)),
        "timeout_s": ctx.attempt(_timeout, data, ctx),
        "layers": ctx.attempt(_layers, data, ctx),
        "matrix": ctx.attempt(_matrix, data, ctx),
        "baseline": ctx.attempt(parse_settings, data.get("baseline"), ctx.at("baseline"),
                                {n: a.baseline_default for n, a in AXES.items()}),
        "replay_process": ctx.attempt(boolean, data.get("replay_process", False), ctx.at("replay_process")),
        "keep_tensors": ctx.attempt(boolean, data.get("keep_tensors", True), ctx.at("keep_tensors")),
        "expect": ctx.attempt(_expectations, data.get("expect") or {}, ctx.at("expect")),
        "batch_sizes": ctx.attempt(_batch_sizes, data, ctx),
    }
    expect, keep = fields["expect"], fields["keep_tensors"]
    if expect is not INVALID and keep is False:  # parent-measured gaps need the kept tensors, or go unmeasured
        for kind in ("max_ulp", "max_ulp_scaled"):
            for comparison, _ in getattr(expect, kind):
                if ComparisonKind(comparison).spec.measured_in == "parent":
                    ctx.errors.append(ctx.at("expect").at(kind).at(comparison).fail(
                        "no threshold on a comparison measured from kept tensors while keep_tensors is false "
                        "(set keep_tensors: true)", dict(dict(getattr(expect, kind))[comparison])))
    ctx.raise_errors()
    return Config(source=source, **fields)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file (``yaml.safe_load`` only).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    name = str(path)
    path = Path(path)
    try:
        if name in bundled_config_names() and not path.is_file():
            # `detaudit run nightly` from anywhere (a file of that name wins; a directory, say `--out nightly`,
            # does not).
            path = bundled_config_path(name)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (bundled configs, by name alone: "
                              f"{', '.join(bundled_config_names())})." if not path.exists() else
                              f"{path}: not a config file (a directory or a device).")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}.")
        text = path.read_text(encoding="utf-8")
    except (PermissionError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}).") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}.") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply to be a config.") from None
    return parse_config(data, source=str(path))


MAX_CONFIG_BYTES = 1 << 20


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader for configs: no aliases, plain keys, each key once.

    An alias (``*name``) is refused: a config needs none, and a few hundred
    bytes of nested aliases expand to billions of values (an "alias bomb")
    that no size cap on the file bounds. A key must be a plain value (a
    complex key such as ``? [1, 2]`` cannot name a setting), and a key given
    twice is refused (PyYAML keeps the last one silently).
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{short_repr(event.anchor)}) is not allowed in a config; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain name or number, not a list or a mapping",
                    key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {short_repr(key)} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _bundled_folder() -> Path:
    here = Path(__file__).resolve().parent.parent  # the package root
    # Installed: configs/ ships inside the package (pyproject maps it to detaudit/configs).
    # Source checkout: it sits beside the package.
    return next((f for f in (here / "configs", here.parent / "configs") if f.is_dir()), here / "configs")


def bundled_config_names() -> list[str]:
    """Names of the configs shipped with detaudit (quick, nightly, gpu-triage)."""
    folder = _bundled_folder()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def bundled_config_path(name: str = "quick") -> Path:
    """Path of a config shipped with detaudit (quick, nightly, gpu-triage)."""
    path = _bundled_folder() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no bundled config named {name!r}.")
    return path


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
