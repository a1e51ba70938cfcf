"""The layer under test: :class:`LayerSpec`, its validation from a config's mapping, and its memory estimate.

No TensorFlow here: the kinds' declarations (:mod:`detaudit.core.kinds`) say which parameters a kind takes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from detaudit.core.kinds import IMPORT_PATH, KINDS, USER_LAYER, LayerKind, canonical_params, kind_of
from detaudit.core.validation import Context, int_tuple, mapping
from detaudit.errors import did_you_mean

__all__ = ["LayerSpec", "cell_memory_bytes", "check_memory", "machine_memory_bytes", "parse_layer"]


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


def parse_layer(raw: Any, ctx: Context) -> LayerSpec:
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


def check_memory(spec: LayerSpec, ctx: Context, batch_sizes: tuple[int, ...] = ()) -> None:
    """Refuse a layer whose cell would not fit this machine, at the largest batch the cell runs: its own, or
    the largest of ``batch_sizes`` (the ``batch`` comparison runs every pass at exactly the size asked for,
    repeating the cell's samples to fill a batch larger than its own: :func:`detaudit.core.batch.pass_plan`)."""
    largest = max((spec.input_shape[0], *batch_sizes))
    at = dataclasses.replace(spec, input_shape=(largest, *spec.input_shape[1:]))
    need, have = cell_memory_bytes(at), machine_memory_bytes()
    if have is not None and need > have:
        where = f" at batch {largest:,} (the largest of batch_sizes)" if largest > spec.input_shape[0] else ""
        raise ctx.at("input_shape").fail(
            f"a layer whose cell fits this machine's memory ({_gib(have)}); this one needs about {_gib(need)}{where}",
            list(spec.input_shape))


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"
