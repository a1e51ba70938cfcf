"""The matrix axes, each declared once; everything else derives from these declarations.

An axis is a setting a cell runs under (Keras backend, device, precision, op
determinism, XLA, oneDNN, threads, TF32). Its one :func:`_define` call says: the
values it takes and how they are validated, its default and the baseline's
default, when it is applied (in the environment before the framework starts,
by a framework call right after it starts, or per cell inside a running
worker), and, per Keras backend, the exact environment changes and Python
statements that apply it (the worker executes them, the emitted reproducer
prints them) or why a value does not apply there (the cell is then
``unsupported``, with that reason); the value triage tries, the results
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

__all__ = ["AXES", "BACKENDS", "Axis", "EnvironmentCheck", "How", "Scope", "axis_names", "cell_statements",
           "compute_dtype", "environment_changes", "id_values", "parse_axis_value", "process_axes", "settings_spec",
           "startup_statements", "unsupported_reason"]

#: The Keras backends a cell can run on (``KERAS_BACKEND``); the first is the default.
BACKENDS = ("tensorflow", "jax", "torch")


class Scope(enum.Enum):
    """When an axis takes effect, which decides whether cells that differ in it can share a worker."""

    ENVIRONMENT = "environment"  # an environment variable read when the framework is imported: a fresh worker
    STARTUP = "startup"  # a framework call that must come before any op runs: a fresh worker
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


def _no_environ(value: Any) -> dict[str, str | None]:
    return {}


def _no_statements(value: Any) -> list[str]:
    return []


def _applies(value: Any) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class How:
    """How an axis is applied on one Keras backend.

    ``environ``: environment changes before the framework starts (None: remove the variable);
    ``statements``: Python run with ``keras`` and the backend's module imported (``tf``, ``jax`` or ``torch``);
    ``refuses``: why a value does not apply on this backend (the cell is ``unsupported``), or None.
    """

    environ: Callable[[Any], dict[str, str | None]] = _no_environ
    statements: Callable[[Any], list[str]] = _no_statements
    refuses: Callable[[Any], str | None] = _applies


def _only(allowed: tuple[Any, ...], why: str) -> Callable[[Any], str | None]:
    """A ``refuses`` that accepts ``allowed`` values and gives ``why`` for any other."""
    return lambda value: None if value in allowed else why


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
    how: Mapping[str, How]  # per Keras backend: how a value is applied there, or why it is not
    toggle: Any  # the value triage tries: one step toward settings known to reproduce
    column_dtype: str  # pandas dtype of the results column
    json_schema: dict[str, Any]
    check: EnvironmentCheck
    in_id_at_default: bool  # False for axes added after cell ids were first stored: their ids stay as they were

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
            check: EnvironmentCheck, how: Mapping[str, How], choices: tuple[Any, ...] | None = None,
            parse: Callable[[Any], Any] | None = None, baseline_default: Any = None, column_dtype: str = "string",
            json_schema: dict[str, Any] | None = None, in_id_at_default: bool = True) -> None:
    if _LOCKED:
        raise RuntimeError("axes are locked after import; declare a new axis in detaudit/core/axes.py")
    if set(how) != set(BACKENDS):  # every axis says, for every backend, how it applies or that it does not
        raise RuntimeError(f"axis {name!r} must say how it applies on each of {', '.join(BACKENDS)}")
    if parse is None:
        assert choices is not None
        parse = _choice_parser(choices)
    # YAML 1.1 reads bare on/off as booleans, and the validator accepts them: so does the schema.
    booleans = [True, False] if choices and {"on", "off"} & set(choices) else []
    schema = json_schema or {"enum": [*(choices or ()), *booleans]}
    AXES[name] = Axis(
        name=name, description=description, default=default,
        baseline_default=default if baseline_default is None else baseline_default, choices=choices,
        parse=parse, expected=expected, scope=scope, how=dict(how), toggle=toggle, column_dtype=column_dtype,
        json_schema={**schema, "description": description, "default": default}, check=check,
        in_id_at_default=in_id_at_default)


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


def _everywhere(how: How) -> dict[str, How]:
    """The same application on every backend."""
    return {backend: how for backend in BACKENDS}


def _backend_environ(value: Any) -> dict[str, str | None]:
    extra: dict[str, str | None] = {}
    if value == "jax":
        # float64 cells need 64-bit JAX arrays (Keras computes float64 in float32 without them), and several
        # workers share a GPU: without this the first JAX process takes 75% of its memory.
        extra = {"JAX_ENABLE_X64": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    return {"KERAS_BACKEND": value, **extra}


_define(
    "backend", "the Keras backend the layer runs on: tensorflow, jax or torch (KERAS_BACKEND, set before Keras is "
    "imported; each backend gets workers of its own)",
    default="tensorflow", expected="tensorflow, jax or torch", choices=BACKENDS, scope=Scope.ENVIRONMENT,
    toggle="tensorflow", how=_everywhere(How(environ=_backend_environ)), in_id_at_default=False,
    check=EnvironmentCheck("Keras backend", "each backend has its own kernels, compiler and determinism switch: "
                           "the same layer gives different bits on TensorFlow, JAX and PyTorch",
                           "compare within one backend, and set that backend's own determinism switch",
                           state="keras.backend.backend()"))
_define(
    "device", "where the cell runs: cpu, gpu (the first GPU) or gpu:N",
    default="cpu", expected="cpu, gpu or gpu:N", parse=_parse_device, scope=Scope.CELL, toggle="cpu",
    how=_everywhere(How()),  # a device scope, applied by the worker (standalone.apply_cell)
    json_schema={"type": "string", "pattern": r"^(cpu|gpu)(:\d{1,3})?$"},
    check=EnvironmentCheck("device", "CPU and GPU kernels sum in different orders; no bit-exactness across "
                           "devices, GPU models or GPU counts (tensorflow#38197)",
                           "compare within one device type; use max_ulp_scaled thresholds across devices"))
_define(
    "precision", "the Keras dtype policy of the layer (mixed_* compute in 16 bits, keep float32 variables)",
    default="float32", expected="a Keras dtype policy",
    choices=("float32", "float64", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"),
    scope=Scope.CELL, toggle="float32",
    how=_everywhere(How(statements=lambda value: [f"keras.config.set_dtype_policy({value!r})"])),
    check=EnvironmentCheck("dtype policy", "mixed or low precision rounding dominates every other effect",
                           "compare at the policy's precision, with ULP thresholds",
                           state="keras.config.dtype_policy().name"))
_NO_ENV_SWITCH = ("determinism: env is TF_DETERMINISTIC_OPS, TensorFlow's pre-2.8 switch; on the {backend} backend "
                  "use determinism: on")
_define(
    "determinism", "op determinism: off or on (TensorFlow: tf.config.experimental.enable_op_determinism(); JAX: "
    "XLA_FLAGS=--xla_gpu_deterministic_ops=true, replacing an inherited XLA_FLAGS; PyTorch: "
    "torch.use_deterministic_algorithms(True) with CUBLAS_WORKSPACE_CONFIG=:4096:8 and cudnn.benchmark off), or env "
    "(TensorFlow only: TF_DETERMINISTIC_OPS=1, the pre-2.8 switch)",
    default="off", baseline_default="on", expected="off, on or env", choices=("off", "on", "env"),
    scope=Scope.STARTUP, toggle="on",
    how={
        "tensorflow": How(
            # off means off: an inherited TF_DETERMINISTIC_OPS would silently turn it on.
            environ=lambda value: {"TF_DETERMINISTIC_OPS": "1" if value == "env" else None,
                                   "TF_CUDNN_DETERMINISTIC": None},
            statements=lambda value: ["tf.config.experimental.enable_op_determinism()"] if value == "on" else []),
        # Also turns off autotuning; the narrower --xla_gpu_exclude_nondeterministic_ops fails to compile
        # select-and-scatter (openxla/xla#12520), so detaudit uses this one.
        "jax": How(environ=lambda value: {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"} if value == "on" else {},
                   refuses=_only(("off", "on"), _NO_ENV_SWITCH.format(backend="jax"))),
        "torch": How(
            environ=lambda value: {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} if value == "on" else {},
            statements=lambda value: ["torch.use_deterministic_algorithms(True)",
                                      "torch.backends.cudnn.benchmark = False"] if value == "on" else [],
            refuses=_only(("off", "on"), _NO_ENV_SWITCH.format(backend="torch"))),
    },
    check=EnvironmentCheck("op determinism", "GPU kernels (cuDNN backprop algorithms, atomicAdd reductions) may "
                           "sum in a different order on each run",
                           "tf.config.experimental.enable_op_determinism() before building the model",
                           applies="gpu", state="'on' if op_determinism() else "
                           "('env' if os.environ.get('TF_DETERMINISTIC_OPS') else 'off')"))
_define(
    "xla", "XLA compilation of the pass (TensorFlow: tf.function(jit_compile=True); JAX: always on; PyTorch: off)",
    default="off", expected="off or on", choices=("off", "on"), scope=Scope.CELL, toggle="off",
    how={"tensorflow": How(),  # jit_compile, read by the worker (standalone.apply_cell)
         "jax": How(refuses=_only(("on",), "xla: off does not exist on the jax backend: JAX compiles every pass "
                                           "with XLA (jax.jit); use xla: on")),
         "torch": How(refuses=_only(("off",), "xla: on does not exist on the torch backend: PyTorch runs the "
                                              "pass eagerly; use xla: off"))},
    check=EnvironmentCheck("XLA / jit_compile", "XLA fuses and reorders: its bits differ from the graph executor's",
                           "use one jit_compile setting wherever results are compared"))
_TF_ONLY_ONEDNN = ("onednn: on is TensorFlow's switch (TF_ENABLE_ONEDNN_OPTS); on the {backend} backend TensorFlow's "
                   "oneDNN custom ops are not used: use onednn: default or off")
_define(
    "onednn", "TensorFlow's oneDNN custom ops on the CPU: default (as the environment has TF_ENABLE_ONEDNN_OPTS, "
    "else TensorFlow's CPU-based default), off or on; on other backends they are never used (on is unsupported)",
    default="default", expected="default, off or on", choices=("default", "off", "on"),
    scope=Scope.ENVIRONMENT, toggle="off",
    how={"tensorflow": How(environ=lambda value: {} if value == "default"
                           else {"TF_ENABLE_ONEDNN_OPTS": "0" if value == "off" else "1"}),
         **{backend: How(refuses=_only(("default", "off"), _TF_ONLY_ONEDNN.format(backend=backend)))
            for backend in BACKENDS[1:]}},
    check=EnvironmentCheck("oneDNN", "CPU results (and some error texts and shapes) differ between machines with "
                           "oneDNN on and off; TensorFlow turns it on by default on CPUs with AVX512_VNNI/BF16 or AMX",
                           "set TF_ENABLE_ONEDNN_OPTS to one value on every machine", applies="cpu",
                           state="onednn_state()"))
_define(
    "threads", "intra-op threads of the CPU thread pool (0 = the framework's default; not settable on JAX)",
    default=0, expected=f"an integer from 0 to {MAX_THREADS}", parse=_parse_threads, scope=Scope.STARTUP,
    toggle=1, column_dtype="int64",
    how={"tensorflow": How(statements=lambda value: [f"tf.config.threading.set_intra_op_parallelism_threads("
                                                     f"{int(value)})"] if value else []),
         "jax": How(refuses=_only((0,), "threads: JAX has no intra-op thread setting (XLA sizes its CPU thread "
                                        "pool itself); use threads: 0")),
         "torch": How(statements=lambda value: [f"torch.set_num_threads({int(value)})"] if value else [])},
    json_schema={"type": "integer", "minimum": 0, "maximum": MAX_THREADS},
    check=EnvironmentCheck("intra-op threads", "the thread count changes how CPU kernels partition reductions",
                           "pin tf.config.threading.set_intra_op_parallelism_threads(N) everywhere", applies="cpu",
                           state="str(tf.config.threading.get_intra_op_parallelism_threads() or 'default')"))
_define(
    "tf32", "TensorFloat-32 for float32 convolutions and matmuls on Ampere and later GPUs: default (the backend's "
    "own default) or off",
    default="default", expected="default or off", choices=("default", "off"), scope=Scope.CELL, toggle="off",
    # Stated for both values: a worker shared between cells must undo an earlier cell's `off`.
    how={"tensorflow": How(statements=lambda value: [
             f"tf.config.experimental.enable_tensor_float_32_execution({value != 'off'})"]),
         # JAX's default precision lets XLA use TF32 on the GPU; 'highest' is full float32.
         "jax": How(statements=lambda value: [
             f"jax.config.update('jax_default_matmul_precision', {'highest' if value == 'off' else None!r})"]),
         # PyTorch's defaults: TF32 for cuDNN convolutions, not for matmuls.
         "torch": How(statements=lambda value: [f"torch.backends.cudnn.allow_tf32 = {value != 'off'}",
                                                "torch.backends.cuda.matmul.allow_tf32 = False"])},
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


def _backend(values: Mapping[str, Any]) -> str:
    return values.get("backend", AXES["backend"].default)


def environment_changes(values: Mapping[str, Any]) -> dict[str, str | None]:
    """The environment changes of every axis for these values on their backend (None: remove the variable)."""
    changes: dict[str, str | None] = {}
    backend = _backend(values)
    for name, axis in AXES.items():
        changes.update(axis.how[backend].environ(values.get(name, axis.default)))
    return changes


def _statements(values: Mapping[str, Any], scope: Scope) -> list[str]:
    backend = _backend(values)
    return [s for name, axis in AXES.items() if axis.scope is scope
            for s in axis.how[backend].statements(values.get(name, axis.default))]


def startup_statements(values: Mapping[str, Any]) -> list[str]:
    """Statements of the process-wide axes, run once right after the framework starts."""
    return _statements(values, Scope.STARTUP)


def cell_statements(values: Mapping[str, Any]) -> list[str]:
    """Statements of the per-cell axes, run before each cell is built."""
    return _statements(values, Scope.CELL)


def unsupported_reason(values: Mapping[str, Any]) -> str | None:
    """Why these values cannot run together (a value that does not apply on the backend), or None."""
    backend = _backend(values)
    for name, axis in AXES.items():
        why = axis.how[backend].refuses(values.get(name, axis.default))
        if why:
            return why
    return None


def id_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that name a cell (its id hashes them): an axis added later leaves out its default, so the
    cells of runs stored before it existed keep their ids."""
    return {name: value for name, value in values.items()
            if name not in AXES or AXES[name].in_id_at_default or value != AXES[name].default}


def settings_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that applies these axis values, as plain data for a worker or a reproducer.

    ``environment`` is set before the framework is imported, ``startup`` runs right after it starts and
    ``cell`` before each cell; ``unsupported`` says why the values cannot run on their backend (or is None).
    :func:`detaudit.engine.standalone.start_process` and :func:`~detaudit.engine.standalone.apply_cell` apply them.
    """
    values = dict(values)
    return {"values": values, "environment": environment_changes(values), "startup": startup_statements(values),
            "cell": cell_statements(values), "unsupported": unsupported_reason(values)}
