"""Standalone reproducers (``repro.py``), generated from the declarations and the worker's own code.

A reproducer is one Python file that needs TensorFlow and NumPy only (plus the
user layer's module for a ``package.module:Class`` kind). It holds:

- the case (kind, builder, parameters, input shape, seed, repeats);
- for each setting it runs under, the environment changes and the statements
  of every axis, taken from :mod:`detaudit.core.axes` (what the worker applies);
- the source of :mod:`detaudit.engine.standalone` verbatim (the code the worker
  builds and runs the layer with) and of :mod:`detaudit.core.numerics` (the
  comparison), so nothing is a second copy.

``python repro.py`` exits 1 when the bits differ; ``python repro.py --digests``
prints the sha256 of each tensor of the first pass, which equal the run's
``digest`` column for that cell (the parity test holds it to that).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from detaudit.core import numerics
from detaudit.core.axes import settings_spec
from detaudit.core.config import Cell
from detaudit.core.vocabulary import TriageMode
from detaudit.engine import standalone

__all__ = ["render_repro"]

_HEADER = '''#!/usr/bin/env python3
"""{title}

Standalone reproducer written by `detaudit triage`: TensorFlow and NumPy only{user_note}.
It rebuilds the case with the seeded weights, input and upstream gradient detaudit used,
applies the settings before TensorFlow starts, runs the forward and backward pass and
compares the bits ({what}). Exit 1 when they differ, 0 when they are identical.

    python repro.py              # whether the bits differ, and by how many ULP
    python repro.py --digests    # sha256 of each tensor of the first pass (detaudit's `digest` column)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import types

CASE = json.loads(r"""{case}""")
# Per setting: the environment set before TensorFlow is imported, the statements run right after
# it starts, and the statements run before the case is built (from detaudit's axis declarations).
SETTINGS = json.loads(r"""{settings}""")
'''

_MAIN = '''

# ---- the comparison: detaudit.core.numerics, verbatim --------------------------------------------------
NUMERICS_SOURCE = r"""{numerics}"""
numerics = sys.modules["detaudit_numerics"] = types.ModuleType("detaudit_numerics")  # dataclasses look it up
exec(compile(NUMERICS_SOURCE, "detaudit_numerics", "exec"), numerics.__dict__)


def _tensors(setting, repeats):
    """(names, the first pass's tensors, later passes to compare with it) under one setting, in this process.

    On a GPU the passes run as detaudit ran them there: compared on the device, inside the pass's own
    graph (DeviceCheckedPass), so the first pass's bits are the run's and only the most different later
    pass comes back to the host.
    """
    spec = SETTINGS[setting]
    start_process(spec)
    applied = apply_cell(spec)
    if applied.device is None:
        sys.exit(f"cannot run this setting here: {{applied.unavailable}}")
    with applied.scope():
        case = Case(CASE["builder"], CASE["kind"], CASE["params"], CASE["input_shape"], CASE["seed"],
                    xla=applied.xla)
        if not applied.compare_on_device:
            first = case.step()
            return case.names, first, [case.step() for _ in range(repeats - 1)]
        checked = case.device_pass()
        first = checked.first()
        for _ in range(repeats - 1):
            checked.later()
        worst = [first[i] if w is None else w for i, (_, w) in enumerate(checked.results())]
        return case.names, first, [worst]


def _child(setting, path):
    names, first, _ = _tensors(setting, 1)
    import numpy as np

    np.savez(path, **{{f"t{{i}}": t.view(f"u{{t.dtype.itemsize}}") for i, t in enumerate(first)}},
             __meta__=np.frombuffer(json.dumps([names, [t.dtype.name for t in first]]).encode(), np.uint8))


def _load(path):
    import numpy as np

    with np.load(path) as data:
        names, dtypes = json.loads(bytes(data["__meta__"]).decode())
        return names, [data[f"t{{i}}"].view(numerics.FLOAT_DTYPES[d]) for i, d in enumerate(dtypes)]


def _report(name, a, b, between):
    if a.dtype != b.dtype:
        common = numerics.narrower_dtype(a.dtype, b.dtype)
        a, b = a.astype(common), b.astype(common)
    result = numerics.compare(a, b, digest=False)
    if result.bitwise_equal:
        return False
    print(f"{{name}}: bits differ {{between}}: {{result.n_mismatch:,}}/{{result.n_elements:,}} elements, "
          f"max {{result.max_ulp:,}} ULP ({{result.max_ulp_scaled:.3g}} scaled), max |diff| {{result.max_abs:.3g}}")
    return True


def main(argv):
    if len(argv) == 4 and argv[1] == "--child":
        _child(argv[2], argv[3])
        return 0
    if "--digests" in argv:
        names, first, _ = _tensors("cell", 1)
        print(json.dumps({{n: numerics.digest(t) for n, t in zip(names, first)}}, indent=1))
        return 0
    differ = False
    if CASE["mode"] == "repeat":
        names, first, laters = _tensors("cell", CASE["repeats"])
        for later in laters:
            for name, a, b in zip(names, later, first):
                differ |= _report(name, a, b, "run to run")
    else:  # drift: the case under two settings, each in a fresh process
        outputs = []
        with tempfile.TemporaryDirectory() as tmp:
            for setting in ("cell", "reference"):
                path = f"{{tmp}}/{{setting}}.npz"
                subprocess.run([sys.executable, __file__, "--child", setting, path], check=True)
                outputs.append(_load(path))
        (names, mine), (_, theirs) = outputs
        for name, a, b in zip(names, mine, theirs):
            differ |= _report(name, a, b, "between the two settings")
    print("DIFFER" if differ else "IDENTICAL")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''


def _setting(settings: Any) -> dict[str, Any]:
    return settings_spec(settings.as_dict())


def _body(module: Any) -> str:
    """A module's source without its ``from __future__`` line (the reproducer has it at its top)."""
    return "\n".join(line for line in inspect.getsource(module).splitlines()
                     if line.strip() != "from __future__ import annotations")


def render_repro(cell: Cell, mode: str = TriageMode.REPEAT.value, reference: Any = None,
                 title: str | None = None) -> str:
    """The text of a standalone ``repro.py`` for ``cell``.

    Args:
        cell: the case (its layer, settings, seed and repeats).
        mode: ``"repeat"`` (run to run, in one process) or ``"drift"`` (``cell.settings``
            against ``reference``, each in a fresh process).
        reference: the other settings, for ``"drift"``.
        title: the first line of the reproducer's docstring.
    """
    if mode == TriageMode.DRIFT and reference is None:
        raise ValueError("a drift reproducer needs the reference settings")
    declaration = cell.layer.declaration
    case = {"kind": cell.layer.kind, "builder": declaration.builder, "params": cell.layer.params,
            "input_shape": list(cell.layer.input_shape), "seed": cell.seed, "repeats": max(cell.repeats, 2),
            "mode": mode}
    settings = {"cell": _setting(cell.settings)}
    if reference is not None:
        settings["reference"] = _setting(reference)
    user = cell.layer.kind.partition(":")[0] if declaration.builder == "user_layer" else None
    header = _HEADER.format(
        title=title or f"{cell.layer.describe()} [{cell.settings.label()}, seed={cell.seed}]",
        user_note=f", plus your module {user} (run it from the directory detaudit ran in)" if user else "",
        what="run to run" if mode == TriageMode.REPEAT else "under two settings, each in a fresh process",
        case=json.dumps(case, indent=1), settings=json.dumps(settings, indent=1))
    source = numerics_source()
    return (header + "\n\n# ---- how detaudit builds and runs a cell: detaudit.engine.standalone, verbatim ----\n"
            + _body(standalone) + _MAIN.format(numerics=source))


def numerics_source() -> str:
    """The numerics module's source, ready to sit inside a raw triple-quoted string of the reproducer."""
    source = _body(numerics)
    if "'''" in source:  # the swap below would break the code; numerics.py uses only \"\"\" docstrings
        raise RuntimeError("detaudit/core/numerics.py must not contain ''' for the reproducer to embed it")
    return source.replace('"""', "'''")
