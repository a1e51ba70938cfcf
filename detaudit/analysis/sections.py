"""The summary's sections: what a comparison or a measurement has to say beyond the cell table.

A :class:`Section` is a titled list of plain sentences; every renderer
(terminal, HTML, JSON, Markdown) shows ``RunSummary.sections`` the same way
without knowing what they are about, so a new comparison adds a section
builder to :data:`SECTION_BUILDERS` and no renderer changes. Pure data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Section", "SectionLine"]


@dataclasses.dataclass(frozen=True)
class SectionLine:
    """One sentence of a section; ``notable`` marks a difference worth a reader's eye (a renderer may colour it)."""

    text: str
    notable: bool = False


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled block of sentences, with an optional legend line under them."""

    key: str  # a stable identifier (HTML anchor, JSON key)
    title: str
    lines: tuple[SectionLine, ...]
    legend: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "legend": self.legend,
                "lines": [{"text": line.text, "notable": line.notable} for line in self.lines]}
