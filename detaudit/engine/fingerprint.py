"""The environment fingerprint a bug report needs.

:func:`host_fingerprint` is safe in the parent (no framework);
:func:`backend_fingerprint` and :func:`tensorflow_fingerprint` import a framework and are called in workers only.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_VARS", "backend_fingerprint", "host_fingerprint", "onednn_state", "tensorflow_fingerprint"]

#: Environment variables that change what TensorFlow computes, recorded in every run.
ENV_VARS = (
    "TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC", "TF_ENABLE_ONEDNN_OPTS", "TF_CUDNN_USE_FRONTEND",
    "TF_CUDNN_USE_AUTOTUNE", "TF_XLA_FLAGS", "XLA_FLAGS", "TF_GPU_ALLOCATOR", "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "NVIDIA_TF32_OVERRIDE",
    "TF_FORCE_GPU_ALLOW_GROWTH", "PYTHONHASHSEED", "KERAS_BACKEND", "JAX_ENABLE_X64", "JAX_PLATFORMS",
    "XLA_PYTHON_CLIENT_PREALLOCATE", "CUBLAS_WORKSPACE_CONFIG", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)
# TF-FACTS: oneDNN custom ops are on by default on Linux x86 CPUs with any of these.
_ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


#: TensorFlow's rule (tensorflow/core/util/util.cc, IsMKLEnabled, through ReadBoolFromEnvVar): only these
#: values of TF_ENABLE_ONEDNN_OPTS count, in any case and without spaces; any other (an empty one too) leaves
#: TensorFlow's CPU-based default, with a warning in its log.
_ONEDNN_WORDS = {"0": False, "false": False, "1": True, "true": True}


def _onednn_default() -> tuple[bool, str]:
    _, flags = _cpu_info()
    hits = sorted(flags.intersection(_ONEDNN_DEFAULT_FLAGS))
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64") and hits:
        return True, f"default: CPU has {', '.join(hits)}"
    return False, "default: CPU lacks AVX512_VNNI/AVX512_BF16/AVX_VNNI/AMX"


def _reported_by_tensorflow() -> bool | None:
    """Whether TensorFlow, already imported in this process, says oneDNN is on; None where it is not imported."""
    if "tensorflow" not in sys.modules:
        return None  # never imported for this: the parent process does not import TensorFlow
    try:
        from tensorflow.python.util import _pywrap_util_port  # internal, but the one place TensorFlow says it

        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:  # noqa: BLE001 - an older or newer TensorFlow without it: the prediction stands
        return None


def onednn_state(environ: Mapping[str, str] | None = None) -> str:
    """'on' or 'off', with the reason: TF_ENABLE_ONEDNN_OPTS when TensorFlow would read it, else its CPU default.

    In a process where TensorFlow is imported (a worker), what TensorFlow
    reports wins over this prediction, and the reason says so.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("TF_ENABLE_ONEDNN_OPTS")
    chosen = None if value is None else _ONEDNN_WORDS.get(value.lower())
    if chosen is not None:
        on, reason = chosen, f"TF_ENABLE_ONEDNN_OPTS={value}"
    else:
        on, reason = _onednn_default()
        if value is not None:
            shown = value if len(value) <= 20 else value[:20] + "..."
            reason = f"TF_ENABLE_ONEDNN_OPTS={shown!r} is not 0, 1, true or false, so the {reason}"
    reported = _reported_by_tensorflow() if environ is os.environ else None
    if reported is not None and reported != on:
        reason = f"reported by TensorFlow; predicted {'on' if on else 'off'} from {reason}"
        on = reported
    return f"{'on' if on else 'off'} ({reason})"


def _nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def host_fingerprint() -> dict[str, Any]:
    """Facts about this machine and process that need no TensorFlow."""
    import numpy

    from detaudit._version import __version__

    model, _ = _cpu_info()
    return {
        "detaudit_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "numpy_version": numpy.__version__,
        "onednn_state": onednn_state(),
        "nvidia_driver": _nvidia_driver(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }


def tensorflow_fingerprint() -> dict[str, Any]:
    """TensorFlow, Keras, CUDA/cuDNN build info, visible devices and GPU names. Imports TensorFlow."""
    import keras
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except Exception:  # noqa: BLE001 - details are best effort on exotic builds
            details = {}
        gpus.append({"device": device.name, "name": details.get("device_name"),
                     "compute_capability": details.get("compute_capability")})
    return {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "cuda_build": bool(build.get("is_cuda_build")),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "devices": [d.name for d in tf.config.list_physical_devices()],
        "gpus": gpus,
    }


def backend_fingerprint(backend: str) -> dict[str, Any]:
    """The environment a worker of ``backend`` reports: Keras, the framework's version, CUDA and cuDNN, devices.

    The keys of :func:`tensorflow_fingerprint` (``tensorflow_version`` is None
    on another backend), plus ``backend`` and ``backends``: ``{backend: {version,
    cuda_version, cudnn_version}}``, which the runner merges over every worker
    group, so a run records each backend it ran on.
    """
    import keras

    from detaudit.engine.backends import load

    facts = load(backend).fingerprint()
    tensorflow = tensorflow_fingerprint() if backend == "tensorflow" else {"tensorflow_version": None}
    return {**tensorflow, "backend": backend, "keras_version": keras.__version__,
            **{k: facts[k] for k in ("cuda_version", "cudnn_version", "devices", "gpus")},
            "backends": {backend: {k: facts[k] for k in ("version", "cuda_version", "cudnn_version")}}}
