"""YAML config -> a validated, frozen :class:`Config`.

No TensorFlow, pandas or rich here: this module runs in the parent process and
in the fast unit tests. Axes come from :mod:`detaudit.core.axes`, layer kinds
from :mod:`detaudit.core.kinds`, comparisons from
:mod:`detaudit.core.comparisons`; this module only walks the document. Every
error names the file, the YAML key path, the value received, what is allowed
and, for a typo, the nearest valid choice; a file's errors are reported all at once.

The parts of a config are declared beside it and re-exported here as the config model: a point of the matrix
(:class:`~detaudit.core.cells.Settings`) and a measurement (:class:`~detaudit.core.cells.Cell`) in
:mod:`detaudit.core.cells`, a layer under test in :mod:`detaudit.core.layer_spec`, what must hold
(:class:`~detaudit.core.expectations.Expectations`) in :mod:`detaudit.core.expectations`. Expanding a config into
cells, groups and shards is :mod:`detaudit.core.planning`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from detaudit.core.axes import AXES
from detaudit.core.cells import (
    CELL_ID,
    MAX_BATCH_SIZE,
    MAX_REPEATS,
    MAX_SEED,
    SAFE_NAME,
    Cell,
    Settings,
    axis_value,
    parse_batch_sizes,
    parse_settings,
)
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.expectations import Expectations, check_coverage, parse_expectations
from detaudit.core.kinds import USER_LAYER, not_applicable
from detaudit.core.layer_spec import LayerSpec, check_memory, parse_layer
from detaudit.core.planning import expand_matrix
from detaudit.core.validation import INVALID, Context, as_list, boolean, integer, mapping, short_repr
from detaudit.errors import ConfigError

__all__ = [
    "CELL_ID",
    "MAX_BATCH_SIZE",
    "MAX_REPEATS",
    "MAX_SEED",
    "Cell",
    "Config",
    "Expectations",
    "LayerSpec",
    "Settings",
    "bundled_config_names",
    "bundled_config_path",
    "load_config",
    "parse_config",
    "parse_settings",
]

MAX_TIMEOUT_S = 7 * 24 * 3600.0
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
# Entry points
# ---------------------------------------------------------------------------


def _name(data: dict[str, Any], ctx: Context, source: str) -> str:
    name = data.get("name", Path(source).stem if source != "<dict>" else "config")
    if not isinstance(name, str) or not name or len(name) > 64 or SAFE_NAME.search(name):
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
    return tuple(ctx.attempt(parse_layer, item, ctx.at("layers").at(i)) for i, item in enumerate(raw))


def _matrix(data: dict[str, Any], ctx: Context) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    mctx = ctx.at("matrix")
    raw = mapping({} if data.get("matrix") is None else data["matrix"], mctx, tuple(AXES))
    matrix = []
    for name, axis in AXES.items():
        values = as_list(raw.get(name, axis.default))
        if not values:
            raise mctx.at(name).fail("at least one value", raw.get(name))
        parsed = [ctx.attempt(axis_value, name, v, mctx.at(name).at(i)) for i, v in enumerate(values)]
        matrix.append((name, tuple(dict.fromkeys(parsed))))
    return tuple(matrix)


def _baseline(data: dict[str, Any], ctx: Context) -> Any:
    raw = data.get("baseline")
    if raw is not None and not isinstance(raw, dict):  # parse_settings reads any empty value as the defaults
        raise ctx.at("baseline").fail("a mapping of axis -> one value", raw)
    return parse_settings(raw, ctx.at("baseline"), {n: a.baseline_default for n, a in AXES.items()})


def _valid(value: Any) -> bool:
    """A field that validated, all of it (a matrix keeps its good values beside INVALID ones)."""
    if isinstance(value, tuple):
        return all(_valid(v) for v in value)
    return value is not INVALID


def _check_baseline(baseline: Any, layers: tuple[LayerSpec, ...], raw: Any, ctx: Context) -> None:
    """A baseline cell that cannot exist on its backend would be ``unsupported``: no cell would be compared with it.
    The reason is the one the worker would record (:func:`detaudit.core.kinds.not_applicable`), once per reason."""
    reasons = dict.fromkeys(why for spec in layers if (why := not_applicable(baseline.as_dict(), spec.kind)))
    for why in reasons:
        ctx.errors.append(ctx.at("baseline").fail(
            f"a baseline that runs on its backend (backend={baseline.backend}); {why}",
            baseline.as_dict() if raw is None else raw))


def _check_expect(expect: Expectations, fields: Mapping[str, Any], data: dict[str, Any], ctx: Context) -> None:
    """What `expect` asks of the rest of the config: kept tensors, batch sizes, cells it can select."""
    ectx = ctx.at("expect")
    if fields["keep_tensors"] is False:  # parent-measured gaps need the kept tensors, or go unmeasured
        for kind in ("max_ulp", "max_ulp_scaled"):
            for comparison, limits in getattr(expect, kind):
                if ComparisonKind(comparison).spec.measured_in == "parent":
                    ctx.errors.append(ectx.at(kind).at(comparison).fail(
                        "no threshold on a comparison measured from kept tensors while keep_tensors is false "
                        "(set keep_tensors: true)", dict(limits)))
    if expect.batch_invariant != () and not fields["batch_sizes"]:
        ctx.errors.append(ectx.at("batch_invariant").fail(
            "no batch_invariant expectation without batch_sizes (add e.g. `batch_sizes: [1]`)",
            data["expect"].get("batch_invariant")))
    if _valid(fields["matrix"]) and _valid(fields["baseline"]):
        present = {axis: tuple(dict.fromkeys((*values, getattr(fields["baseline"], axis))))
                   for axis, values in fields["matrix"]}
        check_coverage(expect, present, ectx)


def _check_across(fields: Mapping[str, Any], data: dict[str, Any], ctx: Context) -> None:
    """The rules that join keys: each runs when the keys it reads validated, so every error is still reported."""
    layers, batch_sizes = fields["layers"], fields["batch_sizes"]
    if _valid(fields["expect"]) and _valid(batch_sizes):
        _check_expect(fields["expect"], fields, data, ctx)
    if _valid(layers) and _valid(fields["baseline"]):
        _check_baseline(fields["baseline"], layers, data.get("baseline"), ctx)
    if layers is not INVALID:  # the batch comparison runs each cell at its largest batch size too
        for i, spec in enumerate(layers):
            if spec is not INVALID:
                ctx.attempt(check_memory, spec, ctx.at("layers").at(i), () if batch_sizes is INVALID else batch_sizes)


def parse_config(data: Any, source: str = "<dict>", *, stored: bool = False) -> Config:
    """Validate a config mapping (as read from YAML) and return a frozen :class:`Config`.

    Every error of the document is reported, one line each. ``stored``: the config of a run that already
    ran (show, compare, merge, resume). Each key is still checked, but not the rules that plan a new run
    on this machine (memory, a baseline that can run, selectors that name a cell): the run's records are
    the truth, and a run made elsewhere or by an older version must still open.

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
        "baseline": ctx.attempt(_baseline, data, ctx),
        "replay_process": ctx.attempt(boolean, data.get("replay_process", False), ctx.at("replay_process")),
        "keep_tensors": ctx.attempt(boolean, data.get("keep_tensors", True), ctx.at("keep_tensors")),
        "expect": ctx.attempt(parse_expectations, data.get("expect"), ctx.at("expect")),
        "batch_sizes": ctx.attempt(parse_batch_sizes, data, ctx),
    }
    if not stored:
        _check_across(fields, data, ctx)
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


