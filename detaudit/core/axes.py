"""The matrix axes, each declared once; everything else derives from these declarations.

An axis is a setting a cell runs under (device, precision, op determinism, XLA,
oneDNN, threads, TF32). Its one :func:`_define` call says: the values it takes
and how they are validated, its default and the baseline's default, when it is
applied (in the environment before TensorFlow starts, by a TensorFlow call
right after it starts, or per cell inside a running worker), the exact
environment changes and Python statements that apply it (the worker executes
them, the emitted reproducer prints them), the value triage tries, the results
column's dtype, the help of its command-line flag and the environment check a
model audit shows. The config validator, the worker, the results table, the
reproducer, the JSON Schema and the CLI read these declarations; none of them
lists axis names of its own.

No TensorFlow, pandas or rich here.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["AXES", "Axis", "EnvironmentCheck", "Scope", "axis_names", "cell_statements", "compute_dtype",
           "environment_changes",
           "parse_axis_value", "process_axes", "settings_spec", "startup_statements"]


class Scope(enum.Enum):
    """When an axis takes effect, which decides whether cells that differ in it can share a worker."""

    ENVIRONMENT = "environment"  # an environment variable read when TensorFlow is imported: a fresh worker
    STARTUP = "startup"  # a TensorFlow call that must come before any op runs: a fresh worker
    CELL = "cell"  # set per cell inside a running worker (device scope, jit_compile, dtype policy, TF32)

    @property
    def process_wide(self) -> bool:
        """Whether cells that differ in such an axis need different worker processes."""
        return self is not Scope.CELL


@dataclasses.dataclass(frozen=True)
class EnvironmentCheck:
    """What a model audit says about an axis: the risk it carries and the fix; ``applies`` to cpu, gpu or any.

    ``state`` is a Python expression a worker evaluates to report the axis' state, with ``tf``, ``keras``,
    ``os``, ``value`` (the axis' setting), ``onednn_state`` and ``op_determinism`` in scope.
    """

    title: str
    risk: str
    fix: str
    applies: str = "any"
    state: str = "value"


@dataclasses.dataclass(frozen=True)
class Axis:
    """One matrix axis. Build through :func:`_define` only; see the module docstring."""

    name: str
    description: str
    default: Any
    baseline_default: Any
    choices: tuple[Any, ...] | None  # a closed set of values, or None when ``parse`` decides
    parse: Callable[[Any], Any]  # the normalized value, or ValueError naming what is expected
    expected: str  # what is allowed, in words, for error messages and --help
    scope: Scope
    environ: Callable[[Any], dict[str, str | None]]  # env changes before TensorFlow starts (None: remove)
    statements: Callable[[Any], list[str]]  # Python run with `tf` and `keras` imported, before the cell
    toggle: Any  # the value triage tries: one step toward settings known to reproduce
    column_dtype: str  # pandas dtype of the results column
    json_schema: dict[str, Any]
    check: EnvironmentCheck

    def validate(self, value: Any) -> Any:
        """The normalized value, or ValueError whose text says what is allowed ("one of off, on")."""
        return self.parse(value)

    @property
    def suggestions(self) -> tuple[Any, ...]:
        """Values a typo is matched against for "Did you mean"."""
        return self.choices or (("cpu", "gpu") if self.name == "device" else ())


AXES: dict[str, Axis] = {}
_LOCKED = False


def _define(name: str, description: str, *, default: Any, expected: str, scope: Scope, toggle: Any,
            check: EnvironmentCheck, choices: tuple[Any, ...] | None = None,
            parse: Callable[[Any], Any] | None = None, baseline_default: Any = None,
            environ: Callable[[Any], dict[str, str | None]] | None = None,
            statements: Callable[[Any], list[str]] | None = None, column_dtype: str = "string",
            json_schema: dict[str, Any] | None = None) -> None:
    if _LOCKED:
        raise RuntimeError("axes are locked after import; declare a new axis in detaudit/core/axes.py")
    if parse is None:
        assert choices is not None
        parse = _choice_parser(choices)
    # YAML 1.1 reads bare on/off as booleans, and the validator accepts them: so does the schema.
    booleans = [True, False] if choices and {"on", "off"} & set(choices) else []
    schema = json_schema or {"enum": [*(choices or ()), *booleans]}
    AXES[name] = Axis(
        name=name, description=description, default=default,
        baseline_default=default if baseline_default is None else baseline_default, choices=choices,
        parse=parse, expected=expected, scope=scope, environ=environ or (lambda value: {}),
        statements=statements or (lambda value: []), toggle=toggle, column_dtype=column_dtype,
        json_schema={**schema, "description": description, "default": default}, check=check)


def _choice_parser(choices: tuple[Any, ...]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        # YAML 1.1 reads bare on/off as booleans: accept them for the on/off axes.
        if isinstance(value, bool) and {"on", "off"} & set(choices):
            value = "on" if value else "off"
        if value not in choices:
            raise ValueError(f"one of {', '.join(map(str, choices))}")
        return value
    return parse


_DEVICE = re.compile(r"^(cpu|gpu)(:\d{1,3})?$")


def _parse_device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value.lower()):
        raise ValueError("cpu, gpu or gpu:N")
    return value.lower()


MAX_THREADS = 1024


def _parse_threads(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THREADS:
        raise ValueError(f"an integer from 0 to {MAX_THREADS} (0 = TensorFlow's default)")
    return value


_define(
    "device", "where the cell runs: cpu, gpu (the first GPU) or gpu:N",
    default="cpu", expected="cpu, gpu or gpu:N", parse=_parse_device, scope=Scope.CELL, toggle="cpu",
    json_schema={"type": "string", "pattern": r"^(cpu|gpu)(:\d{1,3})?$"},
    check=EnvironmentCheck("device", "CPU and GPU kernels sum in different orders; no bit-exactness across "
                           "devices, GPU models or GPU counts (tensorflow#38197)",
                           "compare within one device type; use max_ulp_scaled thresholds across devices"))
_define(
    "precision", "the Keras dtype policy of the layer (mixed_* compute in 16 bits, keep float32 variables)",
    default="float32", expected="a Keras dtype policy",
    choices=("float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"),
    scope=Scope.CELL, toggle="float32",
    statements=lambda value: [f"keras.config.set_dtype_policy({value!r})"],
    check=EnvironmentCheck("dtype policy", "mixed or low precision rounding dominates every other effect",
                           "compare at the policy's precision, with ULP thresholds",
                           state="keras.config.dtype_policy().name"))
_define(
    "determinism", "op determinism: off, on (tf.config.experimental.enable_op_determinism()) or env "
    "(TF_DETERMINISTIC_OPS=1, the pre-2.8 switch)",
    default="off", baseline_default="on", expected="off, on or env", choices=("off", "on", "env"),
    scope=Scope.STARTUP, toggle="on",
    # off means off: an inherited TF_DETERMINISTIC_OPS would silently turn it on.
    environ=lambda value: {"TF_DETERMINISTIC_OPS": "1" if value == "env" else None, "TF_CUDNN_DETERMINISTIC": None},
    statements=lambda value: ["tf.config.experimental.enable_op_determinism()"] if value == "on" else [],
    check=EnvironmentCheck("op determinism", "GPU kernels (cuDNN backprop algorithms, atomicAdd reductions) may "
                           "sum in a different order on each run",
                           "tf.config.experimental.enable_op_determinism() before building the model",
                           applies="gpu", state="'on' if op_determinism() else "
                           "('env' if os.environ.get('TF_DETERMINISTIC_OPS') else 'off')"))
_define(
    "xla", "XLA compilation of the pass (tf.function(jit_compile=True))",
    default="off", expected="off or on", choices=("off", "on"), scope=Scope.CELL, toggle="off",
    check=EnvironmentCheck("XLA / jit_compile", "XLA fuses and reorders: its bits differ from the graph executor's",
                           "use one jit_compile setting wherever results are compared"))
_define(
    "onednn", "oneDNN custom ops on the CPU: default (as the environment has TF_ENABLE_ONEDNN_OPTS, else "
    "TensorFlow's CPU-based default), off or on",
    default="default", expected="default, off or on", choices=("default", "off", "on"),
    scope=Scope.ENVIRONMENT, toggle="off",
    environ=lambda value: {} if value == "default" else {"TF_ENABLE_ONEDNN_OPTS": "0" if value == "off" else "1"},
    check=EnvironmentCheck("oneDNN", "CPU results (and some error texts and shapes) differ between machines with "
                           "oneDNN on and off; TensorFlow turns it on by default on CPUs with AVX512_VNNI/BF16 or AMX",
                           "set TF_ENABLE_ONEDNN_OPTS to one value on every machine", applies="cpu",
                           state="onednn_state()"))
_define(
    "threads", "intra-op threads of the CPU thread pool (0 = TensorFlow's default)",
    default=0, expected=f"an integer from 0 to {MAX_THREADS}", parse=_parse_threads, scope=Scope.STARTUP,
    toggle=1, column_dtype="int64",
    statements=lambda value: [f"tf.config.threading.set_intra_op_parallelism_threads({int(value)})"] if value else [],
    json_schema={"type": "integer", "minimum": 0, "maximum": MAX_THREADS},
    check=EnvironmentCheck("intra-op threads", "the thread count changes how CPU kernels partition reductions",
                           "pin tf.config.threading.set_intra_op_parallelism_threads(N) everywhere", applies="cpu",
                           state="str(tf.config.threading.get_intra_op_parallelism_threads() or 'default')"))
_define(
    "tf32", "TensorFloat-32 for float32 convolutions and matmuls on Ampere and later GPUs: default (on) or off",
    default="default", expected="default or off", choices=("default", "off"), scope=Scope.CELL, toggle="off",
    # Stated for both values: a worker shared between cells must undo an earlier cell's `off`.
    statements=lambda value: [f"tf.config.experimental.enable_tensor_float_32_execution({value != 'off'})"],
    check=EnvironmentCheck("TF32", "on Ampere and later GPUs float32 convolutions round their inputs to a "
                           "10-bit mantissa", "tf.config.experimental.enable_tensor_float_32_execution(False)",
                           applies="gpu", state="'on' if tf.config.experimental.tensor_float_32_execution_enabled() "
                           "else 'off'"))
_LOCKED = True


def compute_dtype(precision: str) -> str:
    """The dtype a precision computes in: a ``mixed_*`` policy computes in its 16-bit half."""
    return precision.removeprefix("mixed_")


def axis_names() -> tuple[str, ...]:
    """The axes in declaration order (the order of table columns and labels)."""
    return tuple(AXES)


def process_axes() -> tuple[str, ...]:
    """The axes whose cells need different worker processes."""
    return tuple(name for name, axis in AXES.items() if axis.scope.process_wide)


def parse_axis_value(name: str, value: Any) -> Any:
    """Validate one value of axis ``name``; the public validator the config and the CLI share.

    Raises:
        KeyError: no such axis.
        ValueError: the value is not allowed; the message says what is ("Expected ..." text).
    """
    return AXES[name].validate(value)


def environment_changes(values: Mapping[str, Any]) -> dict[str, str | None]:
    """The environment changes of every axis for these values (None: remove the variable)."""
    changes: dict[str, str | None] = {}
    for name, axis in AXES.items():
        changes.update(axis.environ(values[name]))
    return changes


def startup_statements(values: Mapping[str, Any]) -> list[str]:
    """Statements of the process-wide axes, run once right after TensorFlow starts."""
    return [s for name, axis in AXES.items() if axis.scope is Scope.STARTUP for s in axis.statements(values[name])]


def cell_statements(values: Mapping[str, Any]) -> list[str]:
    """Statements of the per-cell axes, run before each cell is built."""
    return [s for name, axis in AXES.items() if axis.scope is Scope.CELL for s in axis.statements(values[name])]


def settings_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that applies these axis values, as plain data for a worker or a reproducer.

    ``environment`` is set before TensorFlow is imported, ``startup`` runs right after it starts and
    ``cell`` before each cell; :func:`detaudit.engine.standalone.start_process` and
    :func:`~detaudit.engine.standalone.apply_cell` apply them.
    """
    values = dict(values)
    return {"values": values, "environment": environment_changes(values), "startup": startup_statements(values),
            "cell": cell_statements(values)}
