"""The vocabulary of a training audit: its verdict and its three answers (no framework, no pandas).

An audit answers three questions about a user's training, each on one line:

- **rerun**: does a fresh process with the same seed end with the same weights?
- **repeats**: are executions within one process identical (each one restored to a rerun's state)?
- **resume**: does resuming from a checkpoint taken at step k reach the weights of the uninterrupted run?
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = ["Answer", "AuditVerdict", "Question", "Stage", "compare_traces", "verdict_of"]


class Question(enum.Enum):
    """The three questions, in the order they are shown."""

    RERUN = "rerun"
    REPEATS = "repeats"
    RESUME = "resume"

    @property
    def label(self) -> str:
        """The question as a short row label."""
        return {Question.RERUN: "rerun reproduces", Question.REPEATS: "repeats identical",
                Question.RESUME: "resume reproduces"}[self]

    @property
    def asks(self) -> str:
        """The question in words."""
        return {Question.RERUN: "Does a rerun of this training reproduce it (fresh process, same seed)?",
                Question.REPEATS: "Are repeats within one process identical?",
                Question.RESUME: "Does resuming from a checkpoint reach the same weights?"}[self]


class AuditVerdict(enum.Enum):
    """The audit's one-word outcome; every value but REPRODUCIBLE exits 1."""

    REPRODUCIBLE = "REPRODUCIBLE"
    NOT_RERUN_REPRODUCIBLE = "NOT RERUN-REPRODUCIBLE"  # a fresh process ends elsewhere
    NONDETERMINISTIC = "NONDETERMINISTIC"  # repeats in one process differ
    NOT_RESUMABLE = "NOT RESUMABLE"  # a resumed training ends elsewhere

    @property
    def passed(self) -> bool:
        return self is AuditVerdict.REPRODUCIBLE


class Stage(enum.Enum):
    """Where a training step first diverges, in the order a step runs."""

    DATA = "data"
    FORWARD = "forward"
    LOSS = "loss"
    GRADIENTS = "gradients"
    UPDATE = "update"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer: whether it holds (None: not asked, e.g. a one-step training cannot be resumed) and why."""

    question: Question
    holds: bool | None
    detail: str

    @property
    def mark(self) -> str:
        """``yes``, ``NO`` or ``-`` (not asked): the answer in one word."""
        return {True: "yes", False: "NO", None: "-"}[self.holds]

    @property
    def look(self) -> str:
        """``yes``, ``no`` or ``unknown``: the answer's semantic name, for a theme."""
        return {True: "yes", False: "no", None: "unknown"}[self.holds]

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question.value, "holds": self.holds, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        return cls(Question(data["question"]), data.get("holds"), str(data.get("detail", "")))


def verdict_of(answers: list[Answer]) -> AuditVerdict:
    """The verdict: the first question that fails names it (a rerun outranks repeats, repeats a resume)."""
    failing = {answer.question for answer in answers if answer.holds is False}
    for question, verdict in ((Question.RERUN, AuditVerdict.NOT_RERUN_REPRODUCIBLE),
                              (Question.REPEATS, AuditVerdict.NONDETERMINISTIC),
                              (Question.RESUME, AuditVerdict.NOT_RESUMABLE)):
        if question in failing:
            return verdict
    return AuditVerdict.REPRODUCIBLE


def compare_traces(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Where trace ``b`` first departs from ``a``: step, stage, tensor; None when every fingerprint agrees.

    Keys are matched by position (a second build in one process gets other automatic layer names); the
    names shown are ``a``'s.
    """
    if len(a["keys"]) != len(b["keys"]):
        return {"step": 1, "stage": Stage.FORWARD.value, "name": "the step's structure",
                "detail": f"the step recorded {len(a['keys'])} tensors in one run and {len(b['keys'])} in the other"}
    steps = min(len(h) for h in a["hashes"]) if a["hashes"] else 0
    for step in range(steps):
        for (stage, name), ha, hb in zip(a["keys"], a["hashes"], b["hashes"]):
            if step < len(hb) and ha[step] != hb[step]:
                return {"step": step + 1, "stage": stage, "name": name}
    if a["final"] != b["final"]:
        return {"step": steps, "stage": Stage.UPDATE.value, "name": "final weights"}
    return None
