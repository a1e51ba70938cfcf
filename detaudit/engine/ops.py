"""Which TensorFlow op produced each tensor of a cell's pass, read from the pass's traced graph.

Imported only inside worker processes. For each output of the traced
forward+backward function it walks back through the ops that only move or
relabel values (Identity, Cast, Reshape, ...) to the op that computed them:
``BiasAddGrad`` on the CPU in bfloat16, say. Under XLA (``jit_compile=True``)
the graph's ops are not what runs: the whole pass is one XLA cluster, and
where the optimized HLO is available the XLA instruction (a fusion, mostly)
that yields the tensor is named too, with the TensorFlow op it came from.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

__all__ = ["PASSTHROUGH", "hlo_outputs", "op_label", "producers", "producers_or_error"]

#: Ops that move, relabel or cast values without computing them: walked through to the op that did.
PASSTHROUGH = frozenset({"Identity", "IdentityN", "Cast", "Reshape", "StopGradient", "Squeeze", "ExpandDims",
                         "EnsureShape", "PreventGradient"})
_HLO_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def _producer(tensor: Any) -> tuple[Any, Any, list[str]]:
    """The computing op of ``tensor``, the tensor it produced, and the passthrough ops walked through (outer first)."""
    via: list[str] = []
    op = tensor.op
    while op.type in PASSTHROUGH and op.inputs:
        via.append(op.type)
        tensor = op.inputs[tensor.value_index if op.type == "IdentityN" else 0]
        op = tensor.op
    return op, tensor, via


def _device(op: Any, default: str) -> str:
    name = op.device or default
    match = re.search(r"(CPU|GPU|TPU):(\d+)", name, re.I)
    return f"{match.group(1).upper()}:{match.group(2)}" if match else name


def hlo_outputs(hlo: str) -> list[dict[str, str]]:
    """Per output of the entry computation's ROOT tuple: the XLA instruction, its opcode/kind and TF op.

    Pure text parsing of XLA's HLO dump (no TensorFlow), public so that it is tested on a stored dump.
    """
    lines = hlo.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("ENTRY")), None)
    if start is None:
        return []
    defined: dict[str, str] = {}
    root = ""
    for line in lines[start + 1:]:
        if line.startswith("}"):
            break
        match = _HLO_LINE.match(line)
        if match:
            defined[match.group(1)] = match.group(2)
            if line.strip().startswith("ROOT"):
                root = match.group(2)
    operands = re.search(r"\btuple\((.*?)\)", root)
    if not operands:
        return []
    out = []
    for name in (o.strip().lstrip("%") for o in operands.group(1).split(",")):
        body = defined.get(name, "")
        opcode = re.search(r"\}?\s([a-z][\w\-]*)\(", body)
        kind = re.search(r"kind=(k\w+)", body)
        op_type = re.search(r'op_type="([^"]+)"', body)
        out.append({"instruction": name, "opcode": opcode.group(1) if opcode else "?",
                    "kind": kind.group(1) if kind else "", "from": op_type.group(1) if op_type else ""})
    return out


def producers(case: Any, names: list[str], device: str, xla: bool) -> dict[str, dict[str, Any]]:
    """Per tensor name: the op that produced it in ``case``'s traced pass.

    Each entry has ``op`` (the TensorFlow op type), ``name`` (the graph node),
    ``device``, ``dtype`` (of the op's own output, before any Cast), ``via``
    (the passthrough ops after it) and, under XLA, ``xla`` (the instruction
    that yields it in the optimized HLO, where it could be read).
    """
    graph_outputs = case.concrete.outputs
    out: dict[str, dict[str, Any]] = {}
    for name, tensor in zip(names, graph_outputs):
        op, produced, via = _producer(tensor)
        out[name] = {"op": op.type, "name": op.name, "device": _device(op, device), "dtype": produced.dtype.name,
                     "via": list(reversed(via))}
    if xla:
        try:
            # With device_name None TensorFlow finds the device by running an unseeded random op
            # (compiler_ir.maybe_get_device_name), which op determinism refuses; the name is deprecated, not gone.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hlo = case.compiled.experimental_get_compiler_ir(case.x, case.upstream)(stage="optimized_hlo",
                                                                                        device_name=device)
            for name, info in zip(names, hlo_outputs(hlo)):
                out[name]["xla"] = info
        except Exception as exc:  # noqa: BLE001 - the HLO is a nicety; the graph op is still named
            for entry in out.values():
                entry["xla"] = {"error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
    return out


def op_label(entry: dict[str, Any] | None) -> str:
    """``BiasAddGrad (CPU:0, bfloat16)``; under XLA ``XLA fusion convert_convert_fusion (kLoop) from BiasAddGrad``."""
    if not entry:
        return ""
    label = f"{entry['op']} ({entry.get('device') or '?'}, {entry.get('dtype') or '?'})"
    xla = entry.get("xla")
    if xla is None:
        return label
    if "instruction" in xla:
        kind = f", {xla['kind']}" if xla.get("kind") else ""
        return f"XLA {xla['opcode']} {xla['instruction']}{kind} [traced as {label}]"
    return f"XLA cluster [traced as {label}]"


def producers_or_error(case: Any, device: str, xla: bool) -> dict[str, Any]:
    """:func:`producers` for the worker's record; a failure to read the graph is data (``{"error": ...}``)."""
    try:
        return producers(case, list(case.names), device, xla)
    except Exception as exc:  # noqa: BLE001 - naming the op must never cost the cell its measurement
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
