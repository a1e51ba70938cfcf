"""The words the code compares, as types: cell status, verdicts, exit codes, triage modes, the oneDNN state.

Pure Python (no framework, no pandas), imported by every layer above ``core``.
Each string enum's values are exactly the strings stored in run directories,
so stored runs load unchanged, and a member compares equal to its value. The
enums say what a word means; how it looks (colours, styles) is
:mod:`detaudit.render.theme`'s business, not theirs.
"""

from __future__ import annotations

import dataclasses
import enum
import textwrap

__all__ = ["ExitCode", "OneDnnState", "RunStatus", "Status", "ToggleOutcome", "TriageMode", "Verdict",
           "exit_codes_help"]


class Status(str, enum.Enum):
    """The ``status`` of a cell record and of a results-table row: whether the cell produced a measurement."""

    OK = "ok"
    SKIPPED = "skipped"  # the device is not visible on this machine
    UNSUPPORTED = "unsupported"  # the framework refused to be deterministic, or a setting does not apply on the backend
    ERROR = "error"  # the layer or TensorFlow raised
    CRASH = "crash"  # the worker died while running the cell
    TIMEOUT = "timeout"  # the worker exceeded timeout_s

    @property
    def failed(self) -> bool:
        """The worker failed under the cell (crash, timeout): what ``run --resume --retry-failed`` runs again."""
        return self in (Status.CRASH, Status.TIMEOUT)

    @property
    def verdict(self) -> Verdict:
        """The cell verdict this status gives on its own (OK gives DETERMINISTIC until a comparison differs)."""
        return Verdict.DETERMINISTIC if self is Status.OK else Verdict(self.value.upper())

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    """The verdict of one cell, worst first."""

    CRASH = "CRASH"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    NONDETERMINISTIC = "NONDETERMINISTIC"
    UNSUPPORTED = "UNSUPPORTED"
    SKIPPED = "SKIPPED"
    DETERMINISTIC = "DETERMINISTIC"

    @property
    def description(self) -> str:
        return _VERDICT_DESCRIPTIONS[self]

    @property
    def severity(self) -> int:
        """0 is the worst."""
        return list(Verdict).index(self)

    @property
    def failed_to_run(self) -> bool:
        """The cell produced no measurement because something broke (always fails a run)."""
        return self in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.ERROR)

    @classmethod
    def of_status(cls, status: str) -> Verdict:
        """The verdict of a row's status; a status this version does not know is an ERROR."""
        try:
            return Status(status).verdict
        except ValueError:
            return cls.ERROR

    def __str__(self) -> str:
        return self.value


_VERDICT_DESCRIPTIONS = {
    Verdict.CRASH: "the worker process died while running the cell",
    Verdict.TIMEOUT: "the worker exceeded timeout_s while running the cell",
    Verdict.ERROR: "the layer or TensorFlow raised an error",
    Verdict.NONDETERMINISTIC: "a repeat or a fresh-process replay gave different bits",
    Verdict.UNSUPPORTED: "the framework has no deterministic implementation of an op, or a setting does not apply on "
                         "the cell's backend (the message says which)",
    Verdict.SKIPPED: "the device is not visible on this machine",
    Verdict.DETERMINISTIC: "every repeat and replay gave identical bits",
}


class RunStatus(str, enum.Enum):
    """The outcome of a whole matrix run (and of a triage run: every cell reproduced, or not)."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCOMPLETE = "INCOMPLETE"

    def __str__(self) -> str:
        return self.value


class ExitCode(enum.IntEnum):
    """The exit status of every ``detaudit`` command; the help texts are generated from these."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    WORKER_FAILED = 3
    INTERRUPTED = 130
    TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM stopped

    @property
    def meaning(self) -> str:
        """What this exit status tells the caller, in one paragraph."""
        return _EXIT_MEANINGS[self]


_EXIT_MEANINGS = {
    ExitCode.OK: "every expectation held",
    ExitCode.FAILED: "an expectation failed, a cell crashed, timed out or errored, the run is INCOMPLETE (cells "
                     "without a record), nothing was measured (every cell of the matrix skipped), or a comparison "
                     "found a regression",
    ExitCode.BAD_INPUT: "bad input: one line naming the file, YAML key path or argument, what was received and what "
                        "is allowed (nothing ran)",
    ExitCode.WORKER_FAILED: "a TensorFlow worker failed on its own (not your input): its last stderr lines are shown",
    ExitCode.INTERRUPTED: "interrupted with Ctrl-C: what finished is saved; the resume command is printed",
    ExitCode.TERMINATED: "stopped by SIGTERM (a cancelled CI job, Slurm, Kubernetes): handled as Ctrl-C is",
}


def exit_codes_help(width: int = 96) -> str:
    """The ``exit codes:`` block of every command's ``--help``, one entry per :class:`ExitCode`."""
    lines = ["exit codes:"]
    for code in ExitCode:
        lines += textwrap.wrap(code.meaning, width, initial_indent=f"  {int(code):<5d}", subsequent_indent=" " * 7)
    return "\n".join(lines)


class TriageMode(str, enum.Enum):
    """The kind of finding triaged, and the question triage asks about it."""

    REPEAT = "repeat"
    DRIFT = "drift"
    ACCURACY = "accuracy"
    ADJOINT = "adjoint"

    @property
    def description(self) -> str:
        return _MODE_WORDS[self][0]

    @property
    def question(self) -> str:
        return _MODE_WORDS[self][1]

    @property
    def judged_by_accuracy(self) -> bool:
        """The finding is a tensor beyond its limit of float64 (or a failed adjoint test): a toggle *fixes* it,
        keeping the precision and the device; for the others a toggle *removes* it."""
        return self in (TriageMode.ACCURACY, TriageMode.ADJOINT)

    def __str__(self) -> str:
        return self.value


_MODE_WORDS = {
    TriageMode.REPEAT: ("run-to-run difference", "which single setting removes the run-to-run difference?"),
    TriageMode.DRIFT: ("drift from the baseline", "which side is closer to float64, and is either beyond its limit?"),
    TriageMode.ACCURACY: ("error against float64", "which setting, keeping the precision and the device, brings the "
                                                   "tensor within its limit of float64?"),
    TriageMode.ADJOINT: ("failed adjoint test", "which setting, keeping the precision and the device, makes the "
                                               "adjoint test pass?"),
}


class ToggleOutcome(str, enum.Enum):
    """What changing one setting did to the finding triaged."""

    REMOVED = "removed"  # a run-to-run difference or a drift is gone
    FIXES = "fixes"  # the tensor is back within its limit of float64 (precision and device kept)
    REDUCES = "reduces"
    PERSISTS = "persists"
    FAILED = "failed"  # the variant could not be measured (it crashed, errored or was refused)

    @property
    def fixed(self) -> bool:
        """The change made the finding go away."""
        return self in (ToggleOutcome.REMOVED, ToggleOutcome.FIXES)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class OneDnnState:
    """Whether TensorFlow's oneDNN path is on, and why; ``on`` is None where it is not known.

    Stored as prose (``"on (TF_ENABLE_ONEDNN_OPTS=1)"``, ``"off (default: ...)"``), as
    :func:`detaudit.engine.fingerprint.onednn_state` writes it; :meth:`parse` reads that back.
    """

    on: bool | None
    reason: str = ""

    @classmethod
    def parse(cls, text: object) -> OneDnnState:
        """The state of a stored string; missing, empty or unreadable text is an unknown state."""
        word, _, rest = str(text or "").strip().partition(" ")
        on = {"on": True, "off": False}.get(word)
        reason = rest.strip()
        if reason.startswith("(") and reason.endswith(")"):
            reason = reason[1:-1]
        return cls(on, reason if on is not None else str(text or ""))

    @property
    def word(self) -> str:
        """``on``, ``off`` or ``""`` (not known): the value the ``onednn`` axis and the knowledge table use."""
        return "" if self.on is None else "on" if self.on else "off"

    def or_word(self, default: str) -> str:
        """:attr:`word`, or ``default`` where the state is not known."""
        return self.word or default

    def __str__(self) -> str:
        if self.on is None:
            return self.reason
        return f"{self.word} ({self.reason})" if self.reason else self.word
