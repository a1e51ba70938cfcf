"""Shrinking a layer while a finding persists: batch, spatial sizes, channels, filters, kernel and stride.

Pure Python (the measuring is the caller's). Each round offers, per knob, the
smallest value (1) and half the current one; the caller measures them all at
once (one worker), and :func:`combine` merges every knob that kept the finding
into one candidate, so a round moves all knobs together and the shrink ends in
a few rounds instead of one knob per round.
"""

from __future__ import annotations

from typing import Any

from detaudit.core.config import LayerSpec
from detaudit.core.kinds import canonical_params

__all__ = ["Candidate", "candidates", "combine", "hinted", "size", "step_of"]

Candidate = tuple[str, LayerSpec]  # (knob, the smaller layer)


def _layer(spec: LayerSpec, params: dict[str, Any], shape: list[int]) -> LayerSpec:
    return LayerSpec(spec.kind, canonical_params(params), tuple(shape))


def _smaller(value: int) -> list[int]:
    """1 and half of ``value``, each only if smaller (half first dropped when it is 1)."""
    return sorted({v for v in (1, max(1, value // 2)) if v < value})


def _knobs(spec: LayerSpec) -> dict[str, tuple[int, Any]]:
    """Each knob's current value and a function making the layer with a new value."""
    params, shape = dict(spec.params), list(spec.input_shape)
    declared = set(spec.declaration.keys) or set(params)
    channels_first = params.get("data_format") == "channels_first"
    spatial = list(range(2, len(shape))) if channels_first else list(range(1, len(shape) - 1))
    channel_axis = 1 if channels_first else len(shape) - 1

    def reshaped(axes: list[int]) -> Any:
        return lambda v: _layer(spec, params, [v if i in axes else n for i, n in enumerate(shape)])

    knobs: dict[str, tuple[int, Any]] = {"batch": (shape[0], reshaped([0]))}
    if spatial and len({shape[a] for a in spatial}) == 1:
        knobs["spatial"] = (shape[spatial[0]], reshaped(spatial))
    else:
        for axis in spatial:
            knobs[f"size[{axis}]"] = (shape[axis], reshaped([axis]))
    knobs["channels"] = (shape[channel_axis], reshaped([channel_axis]))
    if "filters" in declared and isinstance(params.get("filters"), int):
        knobs["filters"] = (params["filters"], lambda v: _layer(spec, {**params, "filters": v}, shape))
    for key, name in (("kernel_size", "kernel"), ("strides", "stride")):
        value = params.get(key)
        plain = isinstance(value, int) and not isinstance(value, bool)  # a user layer's plain int
        if key in declared and (plain or isinstance(value, list) and len(set(value)) == 1):
            def make(v: int, key: str = key, plain: bool = plain) -> LayerSpec:
                new = {**params, key: v if plain else [v] * len(params[key])}
                if key == "strides" and new.get("output_padding") is not None:
                    new["output_padding"] = None  # it must stay below the stride
                return _layer(spec, new, shape)
            knobs[name] = (value if plain else value[0], make)
    return knobs


def candidates(spec: LayerSpec) -> list[Candidate]:
    """One smaller layer per knob and value (the smallest, then half), output_shape left to the formula."""
    out = []
    for name, (value, make) in _knobs(spec).items():
        for smaller in _smaller(value):
            layer = make(smaller)
            if layer.params.get("output_shape") is not None:
                layer = _layer(layer, {**layer.params, "output_shape": None}, list(layer.input_shape))
            out.append((f"{name} {value}->{smaller}", layer))
    return out


def combine(spec: LayerSpec, kept: list[Candidate], boldest: bool = True) -> LayerSpec | None:
    """Every knob that kept the finding moved in one layer (None if only one knob moved): to its smallest value
    that kept it, or (``boldest=False``) its largest, the gentler step when the finding depends on a product
    of knobs (the length of a sum: batch times spatial size)."""
    best: dict[str, int] = {}
    pick = min if boldest else max
    for name, _ in kept:
        knob, _, change = name.partition(" ")
        value = int(change.partition("->")[2])
        best[knob] = pick(best[knob], value) if knob in best else value
    if len(best) < 2:
        return None
    knobs = _knobs(spec)
    layer = spec
    for knob, value in best.items():
        layer = _knobs(layer)[knob][1](value) if knob in knobs else layer
    if layer.params.get("output_shape") is not None:
        layer = _layer(layer, {**layer.params, "output_shape": None}, list(layer.input_shape))
    return layer


def size(spec: LayerSpec) -> int:
    """How big a layer is: input elements times kernel taps times filters (to pick the smallest)."""
    params = spec.params
    kernel = 1
    sizes = params.get("kernel_size") or [1]
    for k in sizes if isinstance(sizes, list) else [sizes] * (len(spec.input_shape) - 2):
        kernel *= int(k)
    total = kernel * int(params.get("filters", 1) or 1)
    for n in spec.input_shape:
        total *= n
    return total


def step_of(name: str) -> tuple[str, str]:
    """(knob, "min" or "half") of a candidate's name ("batch 4->1" is the smallest step of batch)."""
    knob, _, change = name.partition(" ")
    return knob, "min" if change.endswith("->1") else "half"


def hinted(singles: list[Candidate], hints: dict[str, str] | None) -> list[Candidate]:
    """The candidates that repeat last round's kept steps (each knob's smallest kept step), or all at first."""
    if hints is None:
        return singles
    steps = {step_of(name) for name, _ in singles}
    wanted = {k: ("half" if v == "half" and (k, "half") in steps else "min") for k, v in hints.items()}
    return [c for c in singles if step_of(c[0])[0] in wanted and step_of(c[0])[1] == wanted[step_of(c[0])[0]]]
