"""pytest plugin: determinism checks in users' own test suites.

Installed with detaudit (entry point ``pytest11``), so every pytest session gets:

* a report header line with what decides determinism here: TensorFlow and Keras
  versions, GPUs (or "CPU only"), oneDNN, op determinism, XLA auto-jit and TF32;
* the marker ``@pytest.mark.deterministic(repeats=3, max_ulp=0, atol=0.0)``: the
  test function runs ``repeats`` times and what it returns must be the same every
  time (see :func:`detaudit.testing.assert_deterministic` for the comparison);
* the fixture ``assert_deterministic``: :func:`detaudit.testing.assert_deterministic`.

The plugin never imports TensorFlow (the header reads package metadata and the
environment); a marked test that returns tensors has imported it itself.

Fixtures of a marked test are set up once; the test body runs ``repeats`` times
with the same fixture values, so state the body changes carries over. Async
tests are left to the plugins that run them (the marker does not apply).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
import shutil
import subprocess
from collections import Counter
from typing import Any

import pytest

# Distributions that install the `tensorflow` module, most common first.
_TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
                             "tensorflow-rocm", "tf-nightly", "tf-nightly-cpu", "tf-nightly-gpu")
_KERAS_DISTRIBUTIONS = ("keras", "keras-nightly")
_MARKER = "deterministic"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _frameworks() -> str:
    found = [(name, v) for name in _TENSORFLOW_DISTRIBUTIONS if (v := _version(name))]
    if not found:
        tensorflow = "TensorFlow not installed"
    else:
        tensorflow = f"TensorFlow {found[0][1]}"
        if len(found) > 1:  # two distributions share one `tensorflow` directory: whichever installed last wins
            tensorflow += " (also installed: " + ", ".join(f"{name} {v}" for name, v in found[1:]) + ")"
    if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true"):
        legacy = _version("tf-keras")
        keras = f"tf-keras {legacy} (TF_USE_LEGACY_KERAS)" if legacy else "tf-keras not installed (TF_USE_LEGACY_KERAS)"
    else:
        version = next((v for name in _KERAS_DISTRIBUTIONS if (v := _version(name))), None)
        keras = f"Keras {version}" if version else "Keras not installed"
    return f"{tensorflow}, {keras}"


def _gpu_names() -> list[str]:
    """GPU names from ``nvidia-smi -L`` (no TensorFlow, no CUDA context), [] where there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return re.findall(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?$", listing.stdout, flags=re.MULTILINE)


def _device(cpu_model: str) -> str:
    gpus = _gpu_names()
    plural = "s" if len(gpus) > 1 else ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpus:
        return f"CPU only ({cpu_model})"
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CPU only ({cpu_model}; CUDA_VISIBLE_DEVICES={visible!r} hides {len(gpus)} GPU{plural})"
    names = ", ".join(f"{count}x {name}" if count > 1 else name for name, count in Counter(gpus).items())
    restricted = f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
    return f"{len(gpus)} GPU{plural} ({names}{restricted})"


def _op_determinism() -> str:
    value = os.environ.get("TF_DETERMINISTIC_OPS")
    if value is None:
        return "op determinism off unless a test enables it"
    state = "on" if value.strip().lower() in ("1", "true") else "off"
    return f"op determinism {state} (TF_DETERMINISTIC_OPS={value})"


def _xla() -> str:
    flags = os.environ.get("TF_XLA_FLAGS", "")
    auto_jit = re.search(r"--tf_xla_auto_jit=(\S+)", flags)
    if auto_jit and auto_jit.group(1) not in ("0", "-1"):
        return f"XLA auto-jit {auto_jit.group(1)} (TF_XLA_FLAGS)"
    if re.search(r"--tf_xla_cpu_global_jit(?:=(?:1|true))?(?:\s|$)", flags):
        return "XLA auto-jit on CPU (TF_XLA_FLAGS)"
    return "XLA off"


def _tf32() -> str:
    value = os.environ.get("NVIDIA_TF32_OVERRIDE")
    if value is None:
        return "TF32 default (on for Ampere+ GPUs)"
    return f"TF32 {'off' if value.strip() == '0' else 'default'} (NVIDIA_TF32_OVERRIDE={value})"


def header_line() -> str:
    """The one-line summary of the determinism-relevant environment that the plugin adds to pytest's header."""
    from detaudit.engine.fingerprint import host_fingerprint

    host = host_fingerprint()
    parts = [_frameworks(), _device(host["cpu_model"]), f"oneDNN {host['onednn_state']}", _op_determinism(), _xla(),
             _tf32()]
    return "detaudit: " + ", ".join(parts)


def pytest_report_header(config: pytest.Config) -> str:
    return header_line()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(repeats=3, max_ulp=0, atol=0.0): run the test `repeats` times and assert that what it returns "
        "is the same every time, bit for bit by default (detaudit.testing.assert_deterministic)")


def _marker_options(repeats: int = 3, max_ulp: int = 0, atol: float = 0.0) -> dict[str, Any]:
    return {"repeats": repeats, "max_ulp": max_ulp, "atol": atol}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a test marked ``deterministic`` ``repeats`` times and compare what it returns.

    Returning True tells pytest the call is done, so its own implementation
    (and its warning about tests that return a value) does not run.
    """
    marker = pyfuncitem.get_closest_marker(_MARKER)
    function = pyfuncitem.obj
    if marker is None or inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return None
    __tracebackhide__ = True
    from detaudit.errors import UsageError
    from detaudit.testing import assert_deterministic

    try:
        options = _marker_options(*marker.args, **marker.kwargs)
    except TypeError as exc:
        problem = str(exc).replace(f"{_marker_options.__name__}() ", "")
        raise UsageError(f"Invalid arguments for `@pytest.mark.{_MARKER}`: {problem}. Expected "
                         f"{_MARKER}(repeats=3, max_ulp=0, atol=0.0).") from None
    # The same arguments pytest's own pytest_pyfunc_call passes: the test function's fixtures and parameters.
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    def run_test() -> Any:
        __tracebackhide__ = True
        result = function(**arguments)
        if result is None:
            pytest.fail(f"{pyfuncitem.name} is marked @pytest.mark.{_MARKER} but returned None: return the tensors "
                        "to compare between runs.", pytrace=False)
        return result

    assert_deterministic(run_test, **options)
    return True


@pytest.fixture(name="assert_deterministic")
def assert_deterministic_fixture() -> Any:
    """``assert_deterministic(fn, *args, repeats=3, max_ulp=0, atol=0.0, **kwargs)``: see :mod:`detaudit.testing`."""
    from detaudit.testing import assert_deterministic

    return assert_deterministic
