"""What detaudit knows about TensorFlow, as data (knowledge.yaml): causes for triage, known upstream bugs.

Pure Python. :func:`judge_known_bugs` is the one rule for known upstream
bugs: which bugs live where a result lives, and whether the result shows each
(KNOWN, not failing unless ``--strict``) or not (fixed upstream?).
:func:`explain` picks the most likely cause of a triaged difference;
:func:`is_determinism_refusal` recognises TensorFlow's refusal texts.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KnownBug", "explain", "is_determinism_refusal", "judge_known_bugs", "known_bugs", "version_in_range"]

_PATH = Path(__file__).with_name("knowledge.yaml")


@functools.lru_cache(maxsize=1)
def _knowledge() -> dict[str, Any]:
    return yaml.safe_load(_PATH.read_text(encoding="utf-8"))


@dataclasses.dataclass(frozen=True)
class KnownBug:
    """An upstream bug: how to recognise it (``match``, ``symptom``), what it does, where it is reported."""

    id: str
    title: str
    match: Mapping[str, Any]
    symptom: Mapping[str, float]
    effect: str
    link: str
    repro: str
    workaround: str

    @property
    def reported(self) -> bool:
        return self.link.startswith("http")

    def applies_to(self, facts: Mapping[str, Any]) -> bool:
        """Whether a result with these facts is where this bug lives (whatever the result was)."""
        return _matches(self.match, facts)

    def shows_in(self, facts: Mapping[str, Any]) -> bool:
        """Whether the result shows the bug's symptom."""
        if "adjoint_eps_above" in self.symptom:
            value = facts.get("adjoint_eps")
            return value is not None and value > self.symptom["adjoint_eps_above"]
        if "rel_error_above" in self.symptom:
            value = facts.get("rel_error")
            return value is not None and value > self.symptom["rel_error_above"]
        return True

    def reference(self) -> str:
        """The link, or "not yet reported" with the minimal repro's first line."""
        return self.link if self.reported else "not yet reported (minimal repro in detaudit/core/knowledge.yaml)"


def known_bugs() -> list[KnownBug]:
    """Every known upstream bug, in file order."""
    return [KnownBug(e["id"], e["title"], e.get("match") or {}, e.get("symptom") or {}, e.get("effect", ""),
                     e.get("link", "not yet reported"), e.get("repro", ""), e.get("workaround", ""))
            for e in _knowledge().get("known_bugs", [])]


def judge_known_bugs(facts: Mapping[str, Any]) -> list[tuple[KnownBug, bool]]:
    """(bug, shows) for every known bug that lives where a result with these ``facts`` lives.

    ``shows`` is whether the result shows the bug's symptom: True is KNOWN,
    False means the bug no longer reproduces there (fixed upstream?).
    ``facts``: the keys knowledge.yaml's matchers describe.
    """
    return [(bug, bug.shows_in(facts)) for bug in known_bugs() if bug.applies_to(facts)]


def is_determinism_refusal(message: str) -> bool:
    """Whether an error is TensorFlow refusing an op for want of a deterministic kernel (the cause's own regex)."""
    entry = next(c for c in _knowledge()["causes"] if c["id"] == "unimplemented-deterministic-kernel")
    return bool(re.search(entry["when"]["message"], message or "", re.I))


def _matches(match: Mapping[str, Any], facts: Mapping[str, Any]) -> bool:
    for key, expected in match.items():
        if key == "any_of":
            if not any(_matches(option, facts) for option in expected):
                return False
        elif key == "tensorflow":
            if not version_in_range(facts.get("tensorflow"), expected):
                return False
        else:
            allowed = expected if isinstance(expected, list) else [expected]
            if facts.get(key) not in [str(a) if isinstance(facts.get(key), str) else a for a in allowed]:
                return False
    return True


def version_in_range(version: str | None, bounds: str) -> bool:
    """Whether ``version`` lies in ``"min,max"`` (max exclusive; either side may be empty)."""
    if not version:
        return False

    def parse(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text)[:2])

    low, _, high = bounds.partition(",")
    current = parse(version)
    return (not low.strip() or parse(low) <= current) and (not high.strip() or current < parse(high))


def explain(removed_by: list[str], device: str, message: str, tf_version: str | None,
            fixed_by: list[str] | None = None) -> dict[str, Any]:
    """The first triage cause whose conditions hold (the last entry always does).

    ``removed_by``: the settings whose change removed a run-to-run difference;
    ``fixed_by``: those that brought a tensor within its limit of float64.
    """
    causes = _knowledge()["causes"]
    for entry in causes:
        when = entry.get("when") or {}
        if "removed_by" in when and when["removed_by"] not in removed_by:
            continue
        if "fixed_by" in when and when["fixed_by"] not in (fixed_by or []):
            continue
        if "device" in when and not device.startswith(when["device"]):
            continue
        if "message" in when and not re.search(when["message"], message or ""):
            continue
        if "tensorflow" in when and not version_in_range(tf_version, when["tensorflow"]):
            continue
        return entry
    return causes[-1]
