"""The facts of a run read from its meta.json once: versions, devices, CPU, oneDNN. Pure Python.

Every page that shows where a run ran (the summary header, ``history``, a
triage's environment, the HTML pages, the tidy table) reads
:meth:`RunFacts.from_meta` instead of digging in meta.json on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from detaudit.core.vocabulary import OneDnnState

__all__ = ["RunFacts"]


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """Where and with what a run ran. Missing facts are None (a run of a worker that never started has no
    TensorFlow facts; a hand-edited meta.json may lack anything)."""

    run_id: str
    kind: str
    config_name: str | None
    started: str | None
    tensorflow_version: str | None
    keras_version: str | None
    cuda_version: str | None
    cudnn_version: str | None
    gpus: tuple[str, ...]  # the names of the GPUs TensorFlow saw
    cpu_model: str | None
    onednn: OneDnnState  # the host's oneDNN state, as predicted in the parent
    detaudit_version: str | None
    host: dict[str, Any]  # meta.json's host fingerprint as stored, for facts not named here
    tensorflow: dict[str, Any]  # meta.json's TensorFlow fingerprint as stored

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RunFacts:
        """The facts of a run's meta.json (any format version: absent fields are None)."""
        tf, host = _mapping(meta.get("tensorflow")), _mapping(meta.get("host"))
        gpus = tuple(str(g.get("name") or g.get("device")) for g in tf.get("gpus") or [] if isinstance(g, Mapping))
        return cls(run_id=str(meta.get("run_id") or "?"), kind=str(meta.get("kind") or "matrix"),
                   config_name=_text(meta.get("config_name")), started=_text(meta.get("started")),
                   tensorflow_version=_text(tf.get("tensorflow_version")), keras_version=_text(tf.get("keras_version")),
                   cuda_version=_text(tf.get("cuda_version")), cudnn_version=_text(tf.get("cudnn_version")),
                   gpus=gpus, cpu_model=_text(host.get("cpu_model")),
                   onednn=OneDnnState.parse(host.get("onednn_state")),
                   detaudit_version=_text(host.get("detaudit_version")), host=host, tensorflow=tf)

    @property
    def has_tensorflow(self) -> bool:
        """A worker reported its TensorFlow (a run whose workers never started has no such facts)."""
        return bool(self.tensorflow)

    @property
    def devices(self) -> str:
        """The GPUs' names, or ``CPU only``."""
        return ", ".join(self.gpus) if self.gpus else "CPU only"

    @property
    def frameworks(self) -> str:
        """``2.21.0 / Keras 3.15.1``."""
        return f"{self.tensorflow_version} / Keras {self.keras_version}"
