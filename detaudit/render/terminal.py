"""Rich renderables of run summaries, comparisons and history. Returns objects; never prints.

Everything here formats a view model (:class:`~detaudit.analysis.summary.RunSummary`,
:class:`~detaudit.analysis.compare.RunComparison`); nothing recomputes a
verdict. Tables fit the console they are printed on: rows are grouped under
their layer, columns whose every value is zero are left out (and named once),
verdicts never wrap, identical skip rows are folded into one line.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from detaudit.analysis.compare import Category, RunComparison
from detaudit.analysis.findings import percent
from detaudit.analysis.summary import CellView, Gap, RunSummary
from detaudit.core.vocabulary import Verdict
from detaudit.engine.store import RunKind
from detaudit.render import theme
from detaudit.render.text import SafeConsole, text

__all__ = ["PIPED_WIDTH", "console", "history_table", "render_comparison", "render_run"]

#: Width when the output is not a terminal and COLUMNS is not set.
PIPED_WIDTH = 100
_MAX_FINDINGS = 12


def console(stream: TextIO | None = None, width: int | None = None, stderr: bool = False) -> Console:
    """A console for ``stream``: the terminal's own width, else ``COLUMNS``, else :data:`PIPED_WIDTH`.

    Colour is off when the stream is not a terminal or ``NO_COLOR`` is set (rich's own rule). The console prints
    no markup and shows control characters as escapes: what it prints may come from a run directory.
    """
    target = stream or (sys.stderr if stderr else sys.stdout)
    if width is None and not (hasattr(target, "isatty") and target.isatty()):
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) >= 40 else PIPED_WIDTH
    return SafeConsole(file=target, width=width, soft_wrap=False)


def _ulp(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _scaled(gap: Gap | None, is_baseline: bool = False) -> Text:
    if is_baseline:
        return Text("baseline", style=theme.style("muted"))
    if gap is None:
        return Text("-", style=theme.style("muted"))
    if gap.identical:
        return Text("=", style=theme.style("good"))
    if gap.max_ulp_scaled is None:
        return Text("≠", style=theme.style("warn"))
    return Text(f"{gap.max_ulp_scaled:,.3g}", style=theme.style("warn"))


def _percent(gap: Gap | None) -> Text:
    if gap is None or gap.rel_error is None:
        return Text("-", style=theme.style("muted"))
    return Text(percent(gap.rel_error), style=theme.style("error.large") if gap.rel_error >= 0.01 else "default")


def _cell_table(cells: list[CellView], tensors: list[str], show_baseline: bool, show_reference: bool) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False)
    grid.add_column("settings", overflow="fold", ratio=3, min_width=12)
    grid.add_column("seed", justify="right", no_wrap=True)
    grid.add_column("verdict", no_wrap=True, min_width=len("NONDETERMINISTIC"))
    for tensor in tensors:
        grid.add_column(tensor, justify="right", no_wrap=True)
    if show_baseline:
        grid.add_column("vs baseline", justify="right", no_wrap=True)
    if show_reference:
        grid.add_column("vs float64", justify="right", no_wrap=True)
    for cell in cells:
        grid.add_row(
            text(cell.settings_label), str(cell.seed),
            Text(cell.verdict.value, style=theme.style("verdict", cell.verdict)),
            *(_ulp(cell.worst_ulp.get(t)) for t in tensors),
            *([_scaled(cell.baseline, cell.is_baseline)] if show_baseline else []),
            *([_percent(cell.reference)] if show_reference else []))
    return grid


def _header(summary: RunSummary) -> Text:
    text = Text(" · ".join(f"{v}" if k in ("run", "devices") else f"{k} {v}" for k, v in summary.facts.items()),
                style="bold")
    if summary.upgraded_from:
        text.append(f"\n(written by run format {summary.upgraded_from}; read and upgraded on the fly)",
                    style=theme.style("muted"))
    return text


def _counts_line(summary: RunSummary) -> Text:
    line = Text(f"{sum(summary.counts.values())} cells: ")
    for i, verdict in enumerate(v for v in Verdict if summary.counts.get(v.value)):
        if i:
            line.append(", ")
        line.append(f"{summary.counts[verdict.value]} {verdict.value}", style=theme.style("verdict", verdict))
    return line


def _bullets(mark: str, lines: list[tuple[str, str]]) -> Table:
    """Lines under a mark, wrapped with a hanging indent (continuations line up with the text)."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for text, style in lines:
        grid.add_row(Text(f"  {mark}", style=style), Text(text, style=style))
    return grid


def _legend(summary: RunSummary, shown: list[CellView], nonzero: list[str], quiet: list[str]) -> list[Text]:
    """What the cell tables' columns mean, and the cells folded out of them (skipped, not applicable)."""
    notes = []
    if quiet and shown:
        notes.append(f"identical run to run in every cell: {', '.join(quiet)}")
    if nonzero:
        notes.append("tensor columns: worst run-to-run difference in raw ULP")
    if any(c.baseline is not None or c.is_baseline for c in shown):
        notes.append("vs baseline: largest gap in scaled ULP (units of the spacing at the tensor's largest value)")
    if any(c.reference is not None for c in shown):
        notes.append("vs float64: largest error as a percentage of the float64 truth's largest value")
    if summary.ulp_units:
        notes.append("1 ULP at 1.0: " + ", ".join(f"{d} {u}" for d, u in summary.ulp_units.items()))
    notes.extend(f"{count} cell(s) SKIPPED: {reason}" for reason, count in summary.skipped)
    notes.extend(f"{count} cell(s) UNSUPPORTED, the setting does not apply: {reason}"
                 for reason, count in summary.not_applicable)
    return [Text(note, style=theme.style("muted")) for note in notes]


def render_run(summary: RunSummary) -> RenderableType:
    """The whole terminal summary of a run: header, cells by layer, findings, known bugs and the status line."""
    parts: list[RenderableType] = [_header(summary)]
    shown = [c for c in summary.cells if not c.folded]
    nonzero = [t for t in summary.tensors if any((c.worst_ulp.get(t) or 0) > 0 for c in shown)]
    quiet = [t for t in summary.tensors if t not in nonzero]
    layers: dict[str, list[CellView]] = {}
    for cell in shown:
        layers.setdefault(cell.layer, []).append(cell)
    for layer, cells in layers.items():
        parts.append(Text(layer, style=theme.style("layer")))
        # Per layer, columns with nothing to say are left out (resize_conv2d has no float64 reference).
        parts.append(_cell_table(cells, [t for t in nonzero if any((c.worst_ulp.get(t) or 0) > 0 for c in cells)],
                                 any(c.baseline is not None for c in cells),
                                 any(c.reference is not None for c in cells)))
    parts.extend(_legend(summary, shown, nonzero, quiet))
    parts.append(_counts_line(summary))
    if summary.findings:
        parts.append(Text("Findings:", style="bold"))
        parts.append(_bullets("•", [(f.sentence(), theme.style("failure") if f.run_to_run else "default")
                                    for f in summary.findings[:_MAX_FINDINGS]]))
        if len(summary.findings) > _MAX_FINDINGS:
            parts.append(Text(f"  … and {len(summary.findings) - _MAX_FINDINGS} more (detaudit show --json, or "
                              "results.parquet)", style=theme.style("muted")))
    parts.extend(render_known(summary.known))
    for section in summary.sections:  # whatever a comparison has to say beyond the table, drawn alike
        parts.append(Text(f"{section.title}:", style="bold"))
        parts.append(_bullets("•", [(line.text, "yellow" if line.notable else "default") for line in section.lines]))
        if section.legend:
            parts.append(Text(section.legend, style="dim"))
    completeness = summary.completeness
    if completeness.bad_lines:
        missing = "" if completeness.complete else "; their cells count as missing"
        parts.append(Text(f"Warning: {len(completeness.bad_lines)} unreadable line(s) in cells.jsonl (line "
                          f"{', '.join(map(str, completeness.bad_lines[:5]))}): cut writes or edits, skipped{missing}.",
                          style=theme.style("warn")))
    if completeness.interrupted and completeness.complete:
        parts.append(Text("The run was interrupted after its last cell finished.", style=theme.style("muted")))
    if summary.failures:
        parts.append(Text(f"{len(summary.failures)} expectation(s) failed:", style=theme.style("bad")))
        parts.append(_bullets("✗", [(failure, theme.style("failure"))
                                    for failure in summary.failures[:_MAX_FINDINGS]]))
        if len(summary.failures) > _MAX_FINDINGS:
            parts.append(Text(f"  … and {len(summary.failures) - _MAX_FINDINGS} more", style=theme.style("muted")))
    parts.append(Text(summary.status_headline, style=theme.style("status", summary.status)))
    return Group(*parts)


def render_known(known: Any) -> list[Text]:
    """Known upstream bugs that results show (KNOWN), one line per bug, and those that no longer reproduce."""
    parts = []
    groups: dict[tuple[str, bool], list[Any]] = {}
    for match in known:
        groups.setdefault((match.bug.id, match.fixed), []).append(match)
    for (_, fixed), matches in groups.items():
        bug = matches[0].bug
        where = "; ".join(f"{m.cell}: {m.detail}" for m in matches[:3]) + (
            f"; and {len(matches) - 3} more" if len(matches) > 3 else "")
        if fixed:
            parts.append(Text(f"Known bug no longer reproduces (fixed upstream?): {bug.title} [{bug.id}] ({where})",
                              style=theme.style("known.fixed")))
            continue
        parts.append(Text.assemble(("KNOWN ", theme.style("known")), f"{bug.title} ({where}). ",
                                   (bug.reference(), theme.style("known.reference")),
                                   f". Workaround: {bug.workaround}" if bug.workaround else ""))
    return parts


def _change_look(category: Category) -> str:
    """The theme name of a change's mark: a regression, a fix, or neither."""
    return "change.regression" if category.regression else "change.fixed" if category is Category.FIXED \
        else "change.other"


def render_comparison(comparison: RunComparison) -> RenderableType:
    """asv-style: environment differences, one mark per changed cell, then a one-line verdict."""
    parts: list[RenderableType] = [text(f"compare {comparison.base_id} -> {comparison.new_id}", style="bold")]
    if comparison.environment:
        env = Table(title="Environment differences (these usually explain the drift)", title_justify="left",
                    box=box.SIMPLE_HEAD)
        for column in ("fact", "base", "new"):
            env.add_column(column, overflow="fold")
        for key, base, new in comparison.environment:
            env.add_row(text(key), text(base), text(new))
        parts.append(env)
    else:
        parts.append(Text("Environment: no differences recorded", style=theme.style("muted")))
    if comparison.ignored_axes:
        parts.append(Text("Matched ignoring " + ", ".join(
            f"{axis}: {base} -> {new}" for axis, (base, new) in comparison.ignored_axes.items()),
            style=theme.style("muted")))
    if comparison.changes:
        changes = Table(title="Changed cells", title_justify="left", box=box.SIMPLE_HEAD)
        changes.add_column("", no_wrap=True)
        changes.add_column("cell", overflow="fold", ratio=2)
        changes.add_column("change", overflow="fold", ratio=3)
        for change in comparison.changes:
            changes.add_row(Text(change.category.mark, style=theme.style(_change_look(change.category))),
                            Text(change.label),
                            Text(f"{change.category.label}: {change.detail}"))
        parts.append(changes)
        parts.append(Text("  ".join(f"{c.mark} {c.label}" for c in Category), style=theme.style("muted")))
    parts.append(Text(comparison.verdict(), style=theme.style("status.regressed" if comparison.regressions
                                                              else "status.ok")))
    return Group(*parts)


def history_table(runs: list[dict[str, Any]]) -> Table:
    """One line per stored run, newest first: id, start, TensorFlow, device and the outcome (kind, status, counts)."""
    grid = Table(title="Runs, newest first", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("run", "started", "tensorflow", "device", "outcome"):
        grid.add_column(column, overflow="fold", no_wrap=column != "outcome", ratio=1 if column == "outcome" else None)
    for run in runs:
        outcome = Text("" if run["kind"] == RunKind.MATRIX.value else f"{run['kind']}: ")
        if run.get("status"):
            outcome.append(run["status"], style=theme.style("status", run["status"]))
            outcome.append(" ")
        for i, verdict in enumerate(v for v in Verdict if run["counts"].get(v.value)):
            outcome.append(", " if i else "")
            outcome.append(f"{run['counts'][verdict.value]} {verdict.value.lower()}",
                           style=theme.style("verdict", verdict))
        if run.get("verdict"):
            outcome.append(text(run["verdict"]))
        grid.add_row(text(run["run_id"]), text(run["started"][5:16].replace("T", " ")), text(run["tensorflow"]),
                     text(run["device"]), outcome)
    return grid
