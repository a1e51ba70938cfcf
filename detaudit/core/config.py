"""YAML config -> validated, frozen config objects, and matrix expansion into cells.

No TensorFlow, pandas or rich here: this module runs in the parent process and
in the fast unit tests. Every validator either returns the normalized value or
raises :class:`~detaudit.errors.ConfigError` naming the file, the YAML key path,
the value received, what is allowed and, for a typo, the nearest valid choice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from detaudit.errors import ConfigError, did_you_mean

__all__ = [
    "AXES",
    "AXIS_DEFAULTS",
    "Cell",
    "Config",
    "Expectations",
    "LayerSpec",
    "Settings",
    "bundled_config_path",
    "expand_matrix",
    "load_config",
    "parse_config",
]

#: The allowed values of each matrix axis; `threads` takes any integer >= 0.
AXES: dict[str, tuple[str, ...] | None] = {
    "device": None,  # cpu, gpu, gpu:N
    "precision": ("float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"),
    "determinism": ("off", "on", "env"),
    "xla": ("off", "on"),
    "onednn": ("default", "off", "on"),
    "threads": None,  # integer >= 0, 0 = TensorFlow's default
    "tf32": ("default", "off"),
}
AXIS_DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "precision": "float32",
    "determinism": "off",
    "xla": "off",
    "onednn": "default",
    "threads": 0,
    "tf32": "default",
}
BASELINE_DEFAULTS: dict[str, Any] = {**AXIS_DEFAULTS, "determinism": "on"}
#: Axes whose setting is process-wide: cells differing in them never share a worker.
PROCESS_AXES = ("precision", "determinism", "onednn", "threads", "tf32")

KERAS_KINDS = {"Conv1DTranspose": 1, "Conv2DTranspose": 2, "Conv3DTranspose": 3}
RAW_KINDS = {"conv1d_transpose": 1, "conv2d_transpose": 2, "conv3d_transpose": 3}
RESIZE_KINDS = {"resize_conv2d": 2}
BUILTIN_KINDS = {**KERAS_KINDS, **RAW_KINDS, **RESIZE_KINDS}
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_DEVICE = re.compile(r"^(cpu|gpu)(:\d+)?$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

TOP_KEYS = (
    "name", "seeds", "repeats", "timeout_s", "layers", "matrix", "baseline",
    "replay_process", "keep_tensors", "expect", "description",
)


# ---------------------------------------------------------------------------
# Frozen config objects
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """One point of the matrix: the settings a cell runs under."""

    device: str = "cpu"
    precision: str = "float32"
    determinism: str = "off"
    xla: str = "off"
    onednn: str = "default"
    threads: int = 0
    tf32: str = "default"

    def process_key(self) -> tuple[Any, ...]:
        """The process-wide part: cells with equal keys can share one worker."""
        return tuple(getattr(self, axis) for axis in PROCESS_AXES)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        """A short human label listing the settings that differ from the defaults."""
        parts = [f"{k}={v}" for k, v in self.as_dict().items() if v != AXIS_DEFAULTS[k]]
        return ", ".join(parts) or "defaults"


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
    def rank(self) -> int | None:
        """Spatial rank for built-in kinds, None for a user layer."""
        return BUILTIN_KINDS.get(self.kind)

    def describe(self) -> str:
        p = self.params
        bits = [f"{k}={p[k]}" for k in ("filters", "kernel_size", "strides", "padding") if k in p]
        return f"{self.kind}({', '.join(bits)}) on {list(self.input_shape)}"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measurement: a layer spec under one point of the matrix with one seed."""

    layer: LayerSpec
    settings: Settings
    seed: int
    repeats: int

    @functools.cached_property
    def cell_id(self) -> str:
        """Stable across runs and machines: a hash of layer, params, input shape, settings and seed."""
        key = json.dumps(
            [self.layer.kind, self.layer.params_json, list(self.layer.input_shape),
             self.settings.as_dict(), self.seed],
            sort_keys=True,
        )
        slug = _SAFE_NAME.sub("", self.layer.kind.split(":")[-1]).lower()[:24]
        return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the worker's job file and cells.jsonl."""
        return {
            "cell_id": self.cell_id,
            "kind": self.layer.kind,
            "params": self.layer.params,
            "input_shape": list(self.layer.input_shape),
            "settings": self.settings.as_dict(),
            "seed": self.seed,
            "repeats": self.repeats,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        layer = LayerSpec(data["kind"], json.dumps(data["params"], sort_keys=True), tuple(data["input_shape"]))
        return cls(layer, Settings(**data["settings"]), data["seed"], data["repeats"])


@dataclasses.dataclass(frozen=True)
class Expectations:
    """What must hold for exit code 0.

    ``deterministic`` selects the cells whose ``repeat`` and ``process``
    comparisons must be bitwise equal: None means every cell, an empty mapping
    none, otherwise the cells whose settings match every listed axis.
    ``max_ulp`` / ``max_ulp_scaled`` map a comparison (``baseline``, ...) to a
    threshold per precision (key ``"*"`` for any precision).
    """

    deterministic: tuple[tuple[str, tuple[Any, ...]], ...] | None = None
    max_ulp: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    max_ulp_scaled: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def must_be_deterministic(self, settings: Settings) -> bool:
        if self.deterministic is None:
            return True
        if not self.deterministic:
            return False
        return all(getattr(settings, axis) in values for axis, values in self.deterministic)

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
    baseline: Settings
    replay_process: bool = False
    keep_tensors: bool = True
    expect: Expectations = Expectations()
    source: str = "<dict>"

    @property
    def axes(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data; parse_config(to_dict()) gives an equal Config."""
        expect: dict[str, Any] = {}
        if self.expect.deterministic is not None:
            expect["deterministic"] = {a: list(v) for a, v in self.expect.deterministic} or "none"
        for kind in ("max_ulp", "max_ulp_scaled"):
            if getattr(self.expect, kind):
                expect[kind] = {c: dict(t) for c, t in getattr(self.expect, kind)}
        out: dict[str, Any] = {
            "name": self.name,
            "seeds": list(self.seeds),
            "repeats": self.repeats,
            "timeout_s": self.timeout_s,
            "layers": [
                {"kind": s.kind, **s.params, "input_shape": list(s.input_shape)} for s in self.layers
            ],
            "matrix": {a: list(v) for a, v in self.matrix},
            "baseline": self.baseline.as_dict(),
            "replay_process": self.replay_process,
            "keep_tensors": self.keep_tensors,
        }
        if expect:
            out["expect"] = expect
        return out

    def cells(self) -> list[Cell]:
        """Every cell of the run: see :func:`expand_matrix`."""
        return expand_matrix(self)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


class _Ctx:
    """Where we are in the document, for error messages."""

    def __init__(self, source: str, path: str = ""):
        self.source, self.path = source, path

    def at(self, key: str | int) -> _Ctx:
        if isinstance(key, int):
            return _Ctx(self.source, f"{self.path}[{key}]")
        return _Ctx(self.source, f"{self.path}.{key}" if self.path else key)

    def fail(self, expected: str, received: Any, hint: str = "") -> ConfigError:
        where = f"`{self.path}`" if self.path else "the top level"
        return ConfigError(
            f"{self.source}: invalid value for {where}. Expected {expected}. "
            f"Received {self.path.rsplit('.', 1)[-1] or 'value'}={received!r}.{hint}"
        )

    def unknown_key(self, key: Any, allowed: Sequence[str]) -> ConfigError:
        where = f"`{self.path}`" if self.path else "the top level"
        return ConfigError(
            f"{self.source}: unknown key `{key}` in {where}.{did_you_mean(key, allowed)} "
            f"Allowed keys: {', '.join(allowed)}."
        )


def _mapping(value: Any, ctx: _Ctx, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.fail("a mapping", value)
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise ctx.unknown_key(key, allowed)
    return dict(value)


def _as_list(value: Any) -> list[Any]:
    """A scalar where a list is expected means a one-element list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int(value: Any, ctx: _Ctx, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a strictly positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ctx.fail(what, value)
    return value


def _bool(value: Any, ctx: _Ctx) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail("true or false", value)
    return value


def _choice(value: Any, ctx: _Ctx, allowed: Sequence[str]) -> str:
    # YAML 1.1 reads bare on/off as booleans: accept them for the on/off axes.
    if isinstance(value, bool) and {"on", "off"} & set(allowed):
        value = "on" if value else "off"
    if value not in allowed:
        raise ctx.fail(f"one of {', '.join(allowed)}", value, did_you_mean(value, allowed))
    return value


def _axis_value(axis: str, value: Any, ctx: _Ctx) -> Any:
    if axis == "threads":
        return _int(value, ctx, 0)
    if axis == "device":
        if not isinstance(value, str) or not _DEVICE.match(value.lower()):
            raise ctx.fail("cpu, gpu or gpu:N", value, did_you_mean(value, ("cpu", "gpu")))
        return value.lower()
    allowed = AXES[axis]
    assert allowed is not None
    return _choice(value, ctx, allowed)


def _int_tuple(value: Any, ctx: _Ctx, length: int | None, minimum: int = 1) -> tuple[int, ...]:
    """An int or a list of ints; a single int is broadcast to ``length``."""
    if isinstance(value, int) and not isinstance(value, bool) and length is not None:
        return (_int(value, ctx, minimum),) * length
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        n = f"{length} " if length is not None else ""
        raise ctx.fail(f"an integer or a list of {n}integers >= {minimum}", value)
    return tuple(_int(v, ctx.at(i), minimum) for i, v in enumerate(value))


# ---------------------------------------------------------------------------
# Layer specs
# ---------------------------------------------------------------------------

_COMMON = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "data_format", "use_bias")
LAYER_KEYS: dict[str, tuple[str, ...]] = {
    "keras": _COMMON + ("output_padding",),
    "raw": _COMMON + ("output_shape",),
    "resize": ("filters", "kernel_size", "size", "interpolation", "padding", "data_format", "use_bias"),
}
LAYER_DEFAULTS: dict[str, dict[str, Any]] = {
    "keras": {"strides": 1, "padding": "valid", "dilation_rate": 1, "data_format": "channels_last",
              "use_bias": True, "output_padding": None},
    "raw": {"strides": 1, "padding": "valid", "dilation_rate": 1, "data_format": "channels_last",
            "use_bias": False, "output_shape": None},
    "resize": {"size": 2, "interpolation": "nearest", "padding": "same",
               "data_format": "channels_last", "use_bias": True},
}


def _family(kind: str) -> str:
    if kind in KERAS_KINDS:
        return "keras"
    if kind in RAW_KINDS:
        return "raw"
    if kind in RESIZE_KINDS:
        return "resize"
    return "custom"


def _layer(raw: Any, ctx: _Ctx) -> LayerSpec:
    data = _mapping(raw, ctx)
    if "kind" not in data:
        raise ctx.fail("a mapping with a `kind` key", raw)
    kind = data.pop("kind")
    kctx = ctx.at("kind")
    if not isinstance(kind, str) or (kind not in BUILTIN_KINDS and not _IMPORT_PATH.match(kind)):
        raise kctx.fail(
            f"one of {', '.join(BUILTIN_KINDS)} or an import path 'package.module:Class'",
            kind, did_you_mean(kind, BUILTIN_KINDS),
        )
    if "input_shape" not in data:
        raise ctx.fail("an `input_shape` key (batch included)", raw)
    family = _family(kind)
    rank = BUILTIN_KINDS.get(kind)
    input_shape = _int_tuple(data.pop("input_shape"), ctx.at("input_shape"),
                             None if rank is None else rank + 2)
    if family == "custom":
        try:
            params_json = json.dumps(data, sort_keys=True)
        except TypeError:
            raise ctx.fail("constructor arguments that are plain YAML data", data) from None
        return LayerSpec(kind, params_json, input_shape)

    allowed = LAYER_KEYS[family]
    for key in data:
        if key not in allowed:
            raise ctx.unknown_key(key, allowed + ("kind", "input_shape"))
    params = {**LAYER_DEFAULTS[family], **data}
    for required in ("filters", "kernel_size"):
        if required not in params:
            raise ctx.fail(f"a `{required}` key for kind {kind}", raw)
    assert rank is not None
    params["filters"] = _int(params["filters"], ctx.at("filters"), 1)
    params["kernel_size"] = _int_tuple(params["kernel_size"], ctx.at("kernel_size"), rank)
    params["padding"] = _choice(str(params["padding"]).lower(), ctx.at("padding"), ("same", "valid"))
    params["data_format"] = _choice(params["data_format"], ctx.at("data_format"),
                                    ("channels_last", "channels_first"))
    params["use_bias"] = _bool(params["use_bias"], ctx.at("use_bias"))
    if family == "resize":
        params["size"] = _int_tuple(params["size"], ctx.at("size"), rank)
        params["interpolation"] = _choice(params["interpolation"], ctx.at("interpolation"),
                                          ("nearest", "bilinear"))
    else:
        params["strides"] = _int_tuple(params["strides"], ctx.at("strides"), rank)
        params["dilation_rate"] = _int_tuple(params["dilation_rate"], ctx.at("dilation_rate"), rank)
        if any(s > 1 for s in params["strides"]) and any(d > 1 for d in params["dilation_rate"]):
            raise ctx.at("dilation_rate").fail(
                "1 when any stride is greater than 1 (Keras and tf.nn refuse both at once)",
                list(params["dilation_rate"]))
    if family == "keras" and params["output_padding"] is not None:
        octx = ctx.at("output_padding")
        params["output_padding"] = _int_tuple(params["output_padding"], octx, rank, 0)
        for p, s in zip(params["output_padding"], params["strides"]):
            if p >= s:
                raise octx.fail(f"values smaller than the stride {list(params['strides'])}",
                                list(params["output_padding"]))
    if family == "raw" and params["output_shape"] is not None:
        params["output_shape"] = _int_tuple(params["output_shape"], ctx.at("output_shape"), rank + 2)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    return LayerSpec(kind, json.dumps(params, sort_keys=True), input_shape)


# ---------------------------------------------------------------------------
# Expectations
# ---------------------------------------------------------------------------


def _expectations(raw: Any, ctx: _Ctx) -> Expectations:
    data = _mapping(raw, ctx, ("deterministic", "max_ulp", "max_ulp_scaled"))
    deterministic: tuple[tuple[str, tuple[Any, ...]], ...] | None = None
    if "deterministic" in data:
        dctx = ctx.at("deterministic")
        value = data["deterministic"]
        if value in ("all", True):
            deterministic = None
        elif value in ("none", False):
            deterministic = ()
        else:
            selector = _mapping(value, dctx, tuple(AXES))
            deterministic = tuple(
                (axis, tuple(_axis_value(axis, v, dctx.at(axis).at(i))
                             for i, v in enumerate(_as_list(vals))))
                for axis, vals in selector.items()
            )
            if not deterministic:
                raise dctx.fail("all, none, or a mapping of axis to values", value)
    thresholds = {}
    for kind in ("max_ulp", "max_ulp_scaled"):
        kctx = ctx.at(kind)
        table = _mapping(data.get(kind, {}), kctx, ("repeat", "process", "baseline", "reference"))
        parsed = []
        for comparison, per_precision in table.items():
            cctx = kctx.at(comparison)
            if isinstance(per_precision, (int, float)) and not isinstance(per_precision, bool):
                per_precision = {"*": per_precision}
            per = _mapping(per_precision, cctx, AXES["precision"] + ("*",))  # type: ignore[operator]
            for precision, limit in per.items():
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
                    raise cctx.at(precision).fail("a number >= 0", limit)
            parsed.append((comparison, tuple(sorted(per.items()))))
        thresholds[kind] = tuple(parsed)
    return Expectations(deterministic, thresholds["max_ulp"], thresholds["max_ulp_scaled"])


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def parse_config(data: Any, source: str = "<dict>") -> Config:
    """Validate a config mapping (as read from YAML) and return a frozen :class:`Config`.

    Raises:
        ConfigError: naming the key path, the value received and what is allowed.
    """
    ctx = _Ctx(source)
    data = _mapping(data, ctx, TOP_KEYS)
    name = data.get("name", Path(source).stem if source != "<dict>" else "config")
    if not isinstance(name, str) or not name or _SAFE_NAME.search(name):
        raise ctx.at("name").fail("a non-empty name of letters, digits, '.', '_' or '-'", name)
    seeds = tuple(_int(s, ctx.at("seeds").at(i), 0) for i, s in enumerate(_as_list(data.get("seeds", [0]))))
    if not seeds:
        raise ctx.at("seeds").fail("at least one seed", data.get("seeds"))
    repeats = _int(data.get("repeats", 3), ctx.at("repeats"), 2)
    timeout_s = data.get("timeout_s", 300)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ctx.at("timeout_s").fail("a number of seconds > 0", timeout_s)
    layers_raw = data.get("layers")
    if not isinstance(layers_raw, list) or not layers_raw:
        raise ctx.at("layers").fail("a non-empty list of layer specs", layers_raw)
    layers = tuple(_layer(item, ctx.at("layers").at(i)) for i, item in enumerate(layers_raw))

    mctx = ctx.at("matrix")
    matrix_raw = _mapping(data.get("matrix") or {}, mctx, tuple(AXES))
    matrix = []
    for axis in AXES:
        values = _as_list(matrix_raw.get(axis, AXIS_DEFAULTS[axis]))
        if not values:
            raise mctx.at(axis).fail("at least one value", matrix_raw.get(axis))
        parsed = tuple(dict.fromkeys(_axis_value(axis, v, mctx.at(axis).at(i)) for i, v in enumerate(values)))
        matrix.append((axis, parsed))

    bctx = ctx.at("baseline")
    baseline_raw = _mapping(data.get("baseline") or {}, bctx, tuple(AXES))
    baseline = Settings(**{
        axis: _axis_value(axis, baseline_raw.get(axis, BASELINE_DEFAULTS[axis]), bctx.at(axis))
        for axis in AXES
    })
    return Config(
        name=name,
        seeds=tuple(dict.fromkeys(seeds)),
        repeats=repeats,
        timeout_s=float(timeout_s),
        layers=layers,
        matrix=tuple(matrix),
        baseline=baseline,
        replay_process=_bool(data.get("replay_process", False), ctx.at("replay_process")),
        keep_tensors=_bool(data.get("keep_tensors", True), ctx.at("keep_tensors")),
        expect=_expectations(data.get("expect") or {}, ctx.at("expect")),
        source=source,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file (``yaml.safe_load`` only).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found.") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}.") from None
    return parse_config(data, source=str(path))


def bundled_config_path(name: str = "quick") -> Path:
    """Path of a config shipped with detaudit (quick, nightly, gpu-triage)."""
    here = Path(__file__).resolve().parent.parent  # the package root
    # Installed: configs/ ships inside the package (pyproject maps it to detaudit/configs).
    # Source checkout: it sits beside the package.
    folder = next((f for f in (here / "configs", here.parent / "configs") if f.is_dir()), here / "configs")
    path = folder / f"{name}.yaml"
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
    return [
        Cell(layer, settings, seed, config.repeats)
        for layer in config.layers
        for settings in points
        for seed in config.seeds
    ]


def iter_groups(cells: Sequence[Cell]) -> Iterator[tuple[tuple[Any, ...], list[Cell]]]:
    """Cells grouped by their process-wide settings, in first-seen order."""
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.settings.process_key(), []).append(cell)
    yield from groups.items()

