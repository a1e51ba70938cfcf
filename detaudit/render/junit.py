"""JUnit XML for CI test-report viewers: one testcase per cell. Standard library only."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from detaudit.core.vocabulary import Verdict
from detaudit.render.text import xml_text

if TYPE_CHECKING:
    from detaudit.analysis.summary import RunSummary

__all__ = ["JUnitCase", "summary_cases", "write_junit"]


@dataclasses.dataclass(frozen=True)
class JUnitCase:
    """One cell as a test: ``failure`` or ``skipped`` carry the finding or the reason."""

    classname: str
    name: str
    seconds: float = 0.0
    failure: str | None = None
    skipped: str | None = None


def write_junit(path: str | Path, suite: str, cases: list[JUnitCase]) -> None:
    """Write ``cases`` as one <testsuite> inside <testsuites>, the shape Jenkins, GitLab and GitHub read."""
    failures = sum(c.failure is not None for c in cases)
    skipped = sum(c.skipped is not None and c.failure is None for c in cases)
    total_time = sum(c.seconds for c in cases)
    root = ET.Element("testsuites", name="detaudit", tests=str(len(cases)), failures=str(failures),
                      errors="0", skipped=str(skipped), time=f"{total_time:.3f}")
    element = ET.SubElement(root, "testsuite", name=xml_text(suite), tests=str(len(cases)), failures=str(failures),
                            errors="0", skipped=str(skipped), time=f"{total_time:.3f}")
    for case in cases:  # every string through xml_text: a control character would make the file ill-formed
        node = ET.SubElement(element, "testcase", classname=xml_text(case.classname), name=xml_text(case.name),
                             time=f"{case.seconds:.3f}")
        if case.failure is not None:
            first_line = case.failure.splitlines()[0][:200] if case.failure else "failed"
            ET.SubElement(node, "failure", message=xml_text(first_line)).text = xml_text(case.failure)
        elif case.skipped is not None:
            ET.SubElement(node, "skipped", message=xml_text(case.skipped[:200]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def summary_cases(summary: RunSummary, failures: dict[str, list[str]] | None = None) -> list[JUnitCase]:
    """One testcase per cell of a run summary; ``failures`` (cell id -> sentences) default to its own.

    A cell that has no record (an incomplete run) is a failing testcase too, so CI never shows it green.
    """
    cases = []
    for cell in summary.cells:
        failed = cell.failures if failures is None else failures.get(cell.cell_id)
        cases.append(JUnitCase(
            classname=cell.layer, name=f"{cell.settings_label}, seed={cell.seed}", seconds=cell.seconds or 0.0,
            failure="\n".join(failed) if failed else None,
            skipped=cell.message if cell.verdict == Verdict.SKIPPED else None))
    if failures is None and summary.nothing_measured:  # all skips, which CI viewers show green: the run failed
        cases.append(JUnitCase(classname="run", name="something was measured",
                               failure=summary.status_headline))
    for cell_id in summary.completeness.missing:
        cases.append(JUnitCase(classname="missing cells", name=cell_id,
                               failure=f"no record: the run is incomplete ({summary.completeness.resume_command})"))
    return cases
