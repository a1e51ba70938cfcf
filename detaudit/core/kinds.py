"""The layer kinds a config can name, each declared once: parameters, defaults, rank, capabilities, builder.

The parent imports this module (no TensorFlow): the config validator, the
JSON Schema, the shape and adjoint commands, triage's shrinking and the
reproducer read it. The builder named by each kind lives in
:mod:`detaudit.engine.standalone` and is loaded only in workers (and copied
into emitted reproducers).

A ``package.module:Class`` kind is a user layer: it must resolve to a Keras
``Layer`` subclass, checked in the worker before anything is called.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from detaudit.core.axes import unsupported_reason
from detaudit.core.validation import Context, boolean, choice, int_tuple, integer

__all__ = ["KINDS", "USER_LAYER", "LayerKind", "Param", "kind_of", "module_exists"]

MAX_KERNEL, MAX_STRIDE, MAX_FILTERS = 256, 256, 1 << 16
REQUIRED = "<required>"


@dataclasses.dataclass(frozen=True)
class Param:
    """One constructor parameter of a layer kind: its default (absent = required), validator and schema."""

    name: str
    parse: Callable[[Any, Context, int], Any]  # (value, where, rank) -> normalized value
    schema: dict[str, Any]
    description: str
    default: Any = "<required>"  # REQUIRED: the config must give it

    @property
    def required(self) -> bool:
        return self.default == REQUIRED


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """A layer kind: what a config may write for it and what detaudit can do with it."""

    name: str
    description: str
    rank: int | None  # spatial rank; None for a user layer
    params: tuple[Param, ...]
    builder: str  # a name in detaudit.engine.standalone.BUILDERS
    reference: bool = False  # a NumPy float64 reference exists (detaudit.core.reference)
    adjoint: bool = False  # the dot-product test applies (channels_last only)
    shape_audit: bool = False  # `detaudit shapes` / Keras' output-length formula applies
    transposed: bool = True  # a transposed convolution (the kernel layout is (*k, filters, in))
    tensorflow_only: bool = False  # built from tf.nn ops: under another Keras backend the cell is unsupported

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}

    def json_schema(self) -> dict[str, Any]:
        props = {p.name: {**p.schema, "description": p.description} for p in self.params}
        return {"type": "object", "description": self.description,
                "properties": {"kind": {"const": self.name}, "input_shape": _input_shape_schema(self.rank), **props},
                "required": ["kind", "input_shape", *(p.name for p in self.params if p.required)],
                "additionalProperties": False}


def _input_shape_schema(rank: int | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": {"type": "integer", "minimum": 1},
                              "description": "the input's shape, batch included"}
    if rank is not None:
        schema.update(minItems=rank + 2, maxItems=rank + 2)
    return schema


def _ints(maximum: int, minimum: int = 1) -> Callable[[Any, Context, int], tuple[int, ...]]:
    return lambda value, ctx, rank: int_tuple(value, ctx, rank, minimum, maximum)


def _ints_schema(maximum: int, minimum: int = 1) -> dict[str, Any]:
    one = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return {"oneOf": [one, {"type": "array", "items": one}]}


def _choice(*allowed: str) -> Callable[[Any, Context, int], str]:
    return lambda value, ctx, rank: choice(str(value).lower() if isinstance(value, str) else value, ctx, allowed)


def _optional(parse: Callable[[Any, Context, int], Any]) -> Callable[[Any, Context, int], Any]:
    return lambda value, ctx, rank: None if value is None else parse(value, ctx, rank)


def _output_shape(value: Any, ctx: Context, rank: int) -> tuple[int, ...]:
    return int_tuple(value, ctx, rank + 2, 1, 1 << 31)


FILTERS = Param("filters", lambda v, ctx, rank: integer(v, ctx, 1, MAX_FILTERS),
                {"type": "integer", "minimum": 1, "maximum": MAX_FILTERS}, "output channels")
KERNEL = Param("kernel_size", _ints(MAX_KERNEL), _ints_schema(MAX_KERNEL), "kernel size per spatial axis")
STRIDES = Param("strides", _ints(MAX_STRIDE), _ints_schema(MAX_STRIDE), "stride per spatial axis", 1)
PADDING = Param("padding", _choice("same", "valid"), {"enum": ["same", "valid"]}, "same or valid", "valid")
DILATION = Param("dilation_rate", _ints(MAX_KERNEL), _ints_schema(MAX_KERNEL), "dilation per spatial axis", 1)
DATA_FORMAT = Param("data_format", _choice("channels_last", "channels_first"),
                    {"enum": ["channels_last", "channels_first"]}, "where the channels are", "channels_last")
USE_BIAS = Param("use_bias", lambda v, ctx, rank: boolean(v, ctx), {"type": "boolean"}, "add a bias", True)
OUTPUT_PADDING = Param("output_padding", _optional(_ints(MAX_STRIDE - 1, 0)),
                       {"oneOf": [{"type": "null"}, _ints_schema(MAX_STRIDE - 1, 0)]},
                       "extra output length per axis (smaller than the stride); null: Keras' default", None)
OUTPUT_SHAPE = Param("output_shape", _optional(_output_shape),
                     {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "integer", "minimum": 1}}]},
                     "the op's explicit output shape, batch included; null: Keras' formula", None)
SIZE = Param("size", _ints(64), _ints_schema(64), "upsampling factor per axis", 2)
INTERPOLATION = Param("interpolation", _choice("nearest", "bilinear"), {"enum": ["nearest", "bilinear"]},
                      "UpSampling2D interpolation", "nearest")

KINDS: dict[str, LayerKind] = {}


def _define(kind: LayerKind) -> None:
    KINDS[kind.name] = kind


for _rank in (1, 2, 3):
    _define(LayerKind(
        f"Conv{_rank}DTranspose", f"keras.layers.Conv{_rank}DTranspose", _rank,
        (FILTERS, KERNEL, STRIDES, PADDING, OUTPUT_PADDING, DILATION, DATA_FORMAT, USE_BIAS),
        builder="keras_transpose", reference=True, adjoint=True, shape_audit=True))
for _rank in (1, 2, 3):
    _define(LayerKind(
        f"conv{_rank}d_transpose", f"tf.nn.conv{_rank}d_transpose with an explicit output_shape "
        "(plus tf.nn.bias_add when use_bias)", _rank,
        (FILTERS, KERNEL, STRIDES, PADDING, OUTPUT_SHAPE, DILATION, DATA_FORMAT,
         dataclasses.replace(USE_BIAS, default=False)),
        builder="raw_transpose", reference=True, adjoint=True, shape_audit=True, tensorflow_only=True))
_define(LayerKind(
    "resize_conv2d", "UpSampling2D then Conv2D: the checkerboard-free alternative to a strided transpose", 2,
    (FILTERS, KERNEL, SIZE, INTERPOLATION, dataclasses.replace(PADDING, default="same"), DATA_FORMAT, USE_BIAS),
    builder="resize_conv2d", transposed=False))

#: The kind of every ``package.module:Class`` layer: any plain-data keys are constructor arguments.
USER_LAYER = LayerKind("package.module:Class", "a Keras Layer subclass of your own, imported in the worker "
                       "(naming a module imports it: treat a config like code)", None, (), builder="user_layer",
                       transposed=False)
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def kind_of(name: str) -> LayerKind:
    """The declaration of a built-in kind, or :data:`USER_LAYER` for a ``package.module:Class`` path."""
    return KINDS.get(name) or USER_LAYER


def module_exists(module: str, cwd: str | None = None) -> bool:
    """Whether ``module`` can be found where workers import from (the working directory first), without importing it.

    ``importlib.util.find_spec`` would import the parent packages; walking the
    path finder one component at a time does not run any of their code.
    """
    parts = module.split(".")
    here = cwd or os.getcwd()
    # The top-level name through every finder (editable installs use import hooks), the working directory
    # first as in the worker: find_spec of a top-level name imports nothing.
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [here])
    if spec is None:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            spec = None
    if spec is None:
        return False
    path = list(spec.submodule_search_locations or [])
    for i in range(1, len(parts)):  # below it, one path component at a time: no parent package runs
        if not path:
            return False  # a module, not a package, cannot hold submodules
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), path)
        if spec is None:
            return False
        path = list(spec.submodule_search_locations or [])
    return True


def canonical_params(params: dict[str, Any]) -> str:
    """Canonical JSON of the parameters, so a spec is hashable and equal specs have equal ids."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}, sort_keys=True)


def backend_refusal(kind: str, backend: str) -> str | None:
    """Why a layer kind cannot run on a Keras backend (raw tf.nn kinds are TensorFlow's), or None."""
    declaration = kind_of(kind)
    if declaration.tensorflow_only and backend != "tensorflow":
        return (f"{kind} is built from tf.nn ops: it runs on the tensorflow backend only, not on {backend}; "
                f"use Conv{declaration.rank}DTranspose there")
    return None


def not_applicable(values: Mapping[str, Any], kind: str) -> str | None:
    """Why a cell cannot exist on its backend (a setting, e.g. ``xla: off`` on JAX, or its kind does not apply
    there), or None. The worker records such a cell as ``unsupported`` with this reason; the summary, deciding
    from the same declarations, lets it fail no expectation."""
    return unsupported_reason(values) or backend_refusal(kind, str(values.get("backend", "tensorflow")))
