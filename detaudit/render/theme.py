"""One theme for every renderer: semantic style names mapped to a terminal style and an HTML colour.

Renderers name what a piece of text *is* (``verdict.nondeterministic``,
``status.fail``, ``toggle.persists``); this table says how it looks, in the
terminal (a rich style) and on an HTML page (a colour), in the way of rich's
``Theme``. The domain enums (:mod:`detaudit.core.vocabulary`) carry no colours.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["Look", "THEME", "colour", "look", "name_of", "style"]


@dataclasses.dataclass(frozen=True)
class Look:
    """How one semantic name is drawn: a rich style for the terminal and a CSS colour for HTML."""

    style: str
    colour: str


_GOOD, _BAD, _WARN, _SPECIAL, _MUTED = "#2e7d32", "#c62828", "#b26a00", "#8e24aa", "#9e9e9e"

THEME: dict[str, Look] = {
    # cell verdicts (analysis.verdicts.Verdict)
    "verdict.deterministic": Look("green", _GOOD),
    "verdict.nondeterministic": Look("bold red", _BAD),
    "verdict.unsupported": Look("yellow", "#f9a825"),
    "verdict.skipped": Look("dim", _MUTED),
    "verdict.error": Look("red", "#ef6c00"),
    "verdict.crash": Look("bold red", "#6a1b9a"),
    "verdict.timeout": Look("bold red", "#4e342e"),
    # a run's outcome (RunStatus), an audit's (AuditVerdict) and a comparison's
    "status.pass": Look("bold green", _GOOD),
    "status.fail": Look("bold red", _BAD),
    "status.incomplete": Look("bold yellow", _WARN),
    "status.reproducible": Look("bold green", _GOOD),
    "status.ok": Look("bold green", _GOOD),
    "status.regressed": Look("bold red", _BAD),
    "status.failed": Look("bold red", _BAD),  # any other failing word (an audit's NOT RESUMABLE, ...)
    # the comparisons of the results table (core.comparisons.ComparisonKind): plots, legends
    "comparison.repeat": Look("red", _BAD),
    "comparison.process": Look("red", "#6a1b9a"),
    "comparison.baseline": Look("yellow", "#1565c0"),
    "comparison.reference": Look("magenta", _SPECIAL),
    "comparison.adjoint": Look("cyan", "#00838f"),
    "comparison.batch": Look("blue", "#283593"),
    # one change of a comparison
    "change.regression": Look("bold red", _BAD),
    "change.fixed": Look("green", _GOOD),
    "change.other": Look("dim", _MUTED),
    # what one toggled setting did in a triage (ToggleOutcome; "reduced" is an older spelling)
    "toggle.removed": Look("green", _GOOD),
    "toggle.fixes": Look("green", _GOOD),
    "toggle.reduces": Look("yellow", _WARN),
    "toggle.reduced": Look("yellow", _WARN),
    "toggle.persists": Look("bold red", _BAD),
    "toggle.failed": Look("magenta", "#6a1b9a"),
    # an answer of an audit: holds, fails, not asked
    "answer.yes": Look("bold green", _GOOD),
    "answer.no": Look("bold red", _BAD),
    "answer.unknown": Look("dim", ""),
    # words that recur across pages
    "known": Look("bold magenta", _SPECIAL),
    "known.fixed": Look("green", _MUTED),
    "known.reference": Look("magenta", _SPECIAL),
    "failure": Look("red", _BAD),  # a failed expectation, a finding that is run to run
    "error.large": Look("red", _BAD),  # an error against float64 of 1% or more
    "culprit": Look("bold red", _BAD),
    "not_reproduced": Look("bold yellow", _WARN),
    "good": Look("green", _GOOD),
    "bad": Look("bold red", _BAD),
    "warn": Look("yellow", _WARN),
    "muted": Look("dim", _MUTED),
    "layer": Look("bold cyan", "#1565c0"),
}
_DEFAULT = Look("bold", "#222")


def name_of(kind: str, word: object) -> str:
    """The semantic name of a word of some kind: ``name_of("verdict", Verdict.SKIPPED)`` is ``verdict.skipped``."""
    value = word.value if isinstance(word, enum.Enum) else word
    return f"{kind}.{str(value).lower()}"


def look(name: str, word: object = None) -> Look:
    """The look of a semantic name (or of ``name_of(name, word)``); an unknown name is plain bold."""
    return THEME.get(name if word is None else name_of(name, word), _DEFAULT)


def style(name: str, word: object = None) -> str:
    """The terminal (rich) style of a semantic name."""
    return look(name, word).style


def colour(name: str, word: object = None) -> str:
    """The HTML colour of a semantic name."""
    return look(name, word).colour
