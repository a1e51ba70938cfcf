"""The short ``repro.py`` a TensorFlow maintainer would run: TensorFlow and NumPy only, at most 60 lines.

It builds the minimal case with the very seeded values detaudit used (NumPy
draws, the same streams as :class:`detaudit.engine.standalone.Case`), applies
the cell's settings (from the axis declarations, as literal lines), runs the
layer's forward and backward pass and then:

- for an error against float64 (or a failed adjoint test): computes the
  expected tensor independently in float64 NumPy in a few lines, prints
  observed vs expected (relative error, ULP in the compute dtype, the worst
  element) and exits 1 while the error is beyond the dtype's limit;
- for run-to-run nondeterminism: runs the pass again and exits 1 when the bits differ.

Built-in Keras transposed convolutions (channels_last, no dilation, output_padding
None) only; anything else gets ``None`` and keeps ``repro_full.py``.
"""

from __future__ import annotations

import json

from detaudit.core.axes import cell_statements, compute_dtype, environment_changes, startup_statements
from detaudit.core.config import Cell
from detaudit.workflows.targets import TriageMode

__all__ = ["MAX_LINES", "render_short_repro", "supports"]

MAX_LINES = 60

_SETUP = '''#!/usr/bin/env python3
"""{title}
{known}
Standalone: TensorFlow and NumPy only. Exit 1 while the bug is there, 0 once it is fixed."""
import os
import sys

os.environ.update({env})  # before TensorFlow starts
import numpy as np
import tensorflow as tf
import keras

tf.get_logger().setLevel("ERROR")
{statements}
SHAPE, SEED, TENSOR = {shape}, {seed}, "{tensor}"
layer = keras.layers.{kind}({filters}, {kernel}, strides={strides}, padding="{padding}")
x = tf.constant(np.random.default_rng([SEED, 0]).standard_normal(SHAPE, dtype=np.float32))
y_shape = layer(x).shape  # builds the weights; then the seeded values (fan-in scaled kernel)
rng = np.random.default_rng([SEED, 1])
for v in layer.trainable_variables:
    scale = 0.1 if len(v.shape) <= 1 else 1 / np.sqrt(np.prod(v.shape[:-1]))
    v.assign(rng.standard_normal(v.shape, dtype=np.float32) * np.float32(scale))
dy = tf.cast(np.random.default_rng([SEED, 2]).standard_normal(y_shape, dtype=np.float32), layer.compute_dtype)

@tf.function(jit_compile={xla})
def step(x, dy):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    return dict(zip(["output", "grad_input", "grad_kernel", "grad_bias"],
                    [y, *tape.gradient(y, [x, layer.kernel, layer.bias], output_gradients=dy)]))

'''

_ACCURACY = '''
c = layer.compute_dtype  # what TensorFlow computed in: expected from the same rounded values, in float64
X, W, DY = (tf.cast(tf.cast(t, c), tf.float64).numpy() for t in (x, layer.kernel, dy))
{taps}{expected}
observed = step(x, dy)[TENSOR].numpy().astype(np.float64)
diff, scale = np.abs(observed - expected), np.abs(expected).max()
worst = tuple(int(i) for i in np.unravel_index(diff.argmax(), diff.shape))
ulp = 2.0 ** (np.floor(np.log2(scale)) - {{"bfloat16": 7, "float16": 10, "float32": 23}}.get(c, 52))
rel = diff.max() / scale
print(f"TensorFlow {{tf.__version__}}, {{TENSOR}} ({op}), compute dtype {{c}}, shape {{list(observed.shape)}}")
print(f"worst element {{list(worst)}}: observed {{observed[worst]:.6g}}, expected (float64) {{expected[worst]:.6g}}")
print(f"max |diff| {{diff.max():.3g}} = {{rel:.3%}} of max |expected| = {{int(round(diff.max() / ulp))}} {{c}} ULP"
      f" (limit {{LIMIT:.3%}})")
print("BUG" if rel > LIMIT else "OK")
sys.exit(1 if rel > LIMIT else 0)
'''

# The kernel taps of the transposed convolution: for tap t, the upstream gradient (zero-padded as TensorFlow pads)
# at the positions input element i reaches, i * stride + t. Every gradient but the bias's is a sum over taps.
_TAPS = '''k, s = layer.kernel_size, layer.strides
pad = [max(ki - si, 0) // 2 if layer.padding == "same" else 0 for ki, si in zip(k, s)]
DYP = np.zeros((DY.shape[0], *[n * si + max(ki - si, 0) for n, ki, si in zip(X.shape[1:-1], k, s)], DY.shape[-1]))
DYP[(slice(None), *[slice(p, p + m) for p, m in zip(pad, DY.shape[1:-1])])] = DY
taps = {t: DYP[(slice(None), *[slice(ti, ti + (n - 1) * si + 1, si) for ti, n, si in zip(t, X.shape[1:-1], s)])]
        for t in np.ndindex(*k)}
'''

_EXPECTED = {
    "grad_bias": "expected = DY.sum(axis=tuple(range(DY.ndim - 1)))",
    "grad_input": "expected = sum(taps[t] @ W[t] for t in taps)",
    "grad_kernel": "expected = np.stack([np.tensordot(taps[t], X, (range(X.ndim - 1),) * 2) for t in taps]).reshape("
                   "W.shape)",
    "output": "B = tf.cast(tf.cast(layer.bias, c), tf.float64).numpy()\n"
              "out = np.zeros(DYP.shape[:-1] + (W.shape[-2],))\n"
              "for t in np.ndindex(*k):\n"
              "    out[(slice(None), *[slice(ti, ti + (n - 1) * si + 1, si) for ti, n, si in zip(t, X.shape[1:-1], s)])]"
              " += X @ W[t].T\n"
              "expected = out[(slice(None), *[slice(p, p + m) for p, m in zip(pad, DY.shape[1:-1])])] + B",
}

_REPEAT = '''
first = {{name: t.numpy() for name, t in step(x, dy).items()}}
differ = False
for i in range(1, {repeats}):
    for name, t in step(x, dy).items():
        n = int(np.sum(t.numpy() != first[name]))
        if n:
            differ = True
            print(f"pass {{i + 1}}: {{name}} differs from pass 1 in {{n}} of {{t.numpy().size}} elements")
print(f"TensorFlow {{tf.__version__}}: " + ("BITS DIFFER run to run" if differ else "identical in every pass"))
sys.exit(1 if differ else 0)
'''


def supports(cell: Cell) -> bool:
    """Whether the short reproducer can express this cell (a built-in Keras transposed convolution)."""
    params = cell.layer.params
    return (cell.layer.declaration.builder == "keras_transpose" and params.get("data_format") == "channels_last"
            and set(params.get("dilation_rate") or [1]) == {1} and params.get("output_padding") is None
            and bool(params.get("use_bias")))


def render_short_repro(cell: Cell, mode: TriageMode, tensor: str | None, limit: float, op: str | None = None,
                       known: str | None = None, onednn: str = "") -> str | None:
    """The text of a short ``repro.py`` for ``cell`` (None where :func:`supports` says no).

    ``onednn``: the path (on/off) a cell with ``onednn=default`` ran on; the reproducer pins it, so that it
    reproduces on a machine whose default differs.
    """
    if not supports(cell):
        return None
    params, values = cell.layer.params, cell.settings.as_dict()
    if values.get("onednn") == "default" and onednn in ("on", "off"):
        values = {**values, "onednn": onednn}
    if mode is not TriageMode.REPEAT:
        tensor = tensor or "grad_input"  # a failed adjoint test: the input gradient is the transposed op's adjoint
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", **{k: v for k, v in environment_changes(values).items() if v is not None}}
    statements = [*startup_statements(values), *cell_statements(values)]
    statements = [s for s in statements if "tensor_float_32" not in s or values.get("tf32") == "off"]
    title = f"{cell.layer.describe()} [{cell.settings.label()}]: {tensor or 'the pass'} "
    title += "run to run" if mode is TriageMode.REPEAT else f"against float64 ({compute_dtype(cell.settings.precision)})"
    text = _SETUP.format(
        title=title, known=f"Upstream: {known}\n" if known else "", env=json.dumps(env),
        statements="\n".join(statements), shape=list(cell.layer.input_shape), seed=cell.seed, tensor=tensor or "",
        kind=cell.layer.kind, filters=params["filters"], kernel=tuple(params["kernel_size"]),
        strides=tuple(params["strides"]), padding=params["padding"], xla=cell.settings.xla == "on")
    if mode is TriageMode.REPEAT:
        return text + _REPEAT.format(repeats=max(cell.repeats, 5))
    expected = _EXPECTED.get(tensor or "grad_input", _EXPECTED["grad_input"])
    text = text.replace('SHAPE, SEED, TENSOR = ', f"LIMIT = {limit!r}  # largest relative error allowed in this "
                        "dtype\nSHAPE, SEED, TENSOR = ")
    taps = "" if tensor == "grad_bias" else _TAPS
    return text + _ACCURACY.format(taps=taps, expected=expected, op=(op or "the op").replace('"', "'"))
