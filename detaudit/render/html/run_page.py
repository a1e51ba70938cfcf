"""The HTML page of a stored matrix run: status, failures, known bugs, the comparison, findings, the drift
matrix, the verdict heat map, the cell table and the scaled-ULP histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detaudit.analysis.compare import RunComparison
from detaudit.analysis.findings import Finding
from detaudit.analysis.runs import StoredRun
from detaudit.analysis.summary import CellView, KnownMatch, RunSummary
from detaudit.analysis.verdicts import Verdict
from detaudit.core.comparisons import ComparisonKind, Role
from detaudit.render.html.matrix import _cells_section, _drift_section, _heat_section
from detaudit.render import theme
from detaudit.render.html.parts import (_status_colour, _distinct, _e, _facts, _link, _png, _pyplot, _status_block,
                                        _table, _td, _verdict_badge)
from detaudit.render.html.shell import _page


def _layer_names(stored: StoredRun, cells: Sequence[CellView]) -> dict[str, str]:
    """Each cell's layer label; layers of one kind and input shape with different parameters get their parameters."""
    params: dict[str, str] = {}
    if "params" in stored.table and len(stored.table):
        params = dict(zip(stored.table["cell_id"], stored.table["params"].astype(str)))
    seen: dict[str, set[str]] = {}
    for cell in cells:
        seen.setdefault(cell.layer, set()).add(params.get(cell.cell_id, ""))
    return {c.cell_id: _distinct(c.layer, params.get(c.cell_id, ""), seen[c.layer]) for c in cells}



def _known_section(known: Sequence[KnownMatch]) -> list[str]:
    if not known:
        return []
    parts = ["<h2 id='known'>Known upstream bugs</h2>"]
    for match in known:
        bug = match.bug
        where = _link(bug.link) if bug.reported else _e(bug.reference())
        state = "" if match.fixed else (
            "; not counted as a failure (--strict counts it)" if match.excused else "; shown, not a failure")
        head = "FIXED HERE?" if match.fixed else "KNOWN"
        grey = " style='border-color:#9e9e9e'" if match.fixed else ""
        parts.append(
            f"<div class='known'{grey}><b>{head}: {_e(bug.title)}</b><br>"
            f"<span class='small'>{_e(match.detail)} at {_e(match.cell)}{_e(state)}</span><br>"
            f"<span class='small'>Upstream: {where}</span>"
            + (f"<br><span class='small'>Workaround: {_e(bug.workaround)}</span>" if bug.workaround and not match.fixed
               else "") + "</div>")
    return parts


def _comparison_section(comparison: RunComparison | None) -> list[str]:
    """The drift against another run, only where there is something to show (else one line)."""
    if comparison is None:
        return []
    verdict = comparison.verdict()
    head = verdict.split(":", 1)[0]
    if not (comparison.changes or comparison.environment or comparison.ignored_axes):
        return [f"<p class='muted' id='comparison'>Against run {_e(comparison.base_id)}: {_e(verdict)}; "
                "no environment difference.</p>"]
    parts = [f"<h2 id='comparison'>Drift against {_e(comparison.base_id)}</h2>",
             f"<p><b style='color:{_status_colour(head, '#222')}'>{_e(verdict)}</b></p>"]
    if comparison.ignored_axes:
        matched = ", ".join(f"{axis} ({a} in {comparison.base_id}, {b} here)"
                            for axis, (a, b) in comparison.ignored_axes.items())
        parts.append(f"<p class='small'>Cells matched ignoring {_e(matched)}: what did this change do to the bits?</p>")
    if comparison.environment:
        parts.append("<h3>Environment differences</h3>")
        parts.append(_table(["fact", comparison.base_id, comparison.new_id],
                            [[_td(k), _td("-" if b is None else b), _td("-" if n is None else n)]
                             for k, b, n in comparison.environment]))
    if comparison.changes:
        parts.append("<h3>Changed cells</h3>")
        parts.append(_table(["", "change", "cell", "detail"], [
            [_td(c.category.mark, title=c.category.description),
             _td(c.category.label, style="color:#c62828;font-weight:600" if c.category.regression else ""),
             _td(c.label), _td(c.detail)] for c in comparison.changes]))
    return parts


def _finding_parts(finding: Finding) -> tuple[str, list[str]]:
    """(head, per-tensor phrases) of a finding, cut from its own sentence so the words stay the summary's."""
    sides = finding.between if isinstance(finding.between, tuple) else None
    phrases = [g.phrase(sides) for g in finding.gaps]
    sentence, joined = finding.sentence(), "; ".join(phrases)
    if joined and sentence.endswith(joined):
        return sentence[: len(sentence) - len(joined)].rstrip().rstrip(":"), phrases
    return sentence, []


def _findings_section(found: Sequence[Finding]) -> list[str]:
    parts = ["<h2 id='findings'>Findings</h2>"]
    if not found:
        return parts + ["<p>Nothing differs: every repeat and replay gave the same bits, and every setting the "
                        "baseline's.</p>"]
    items = []
    for finding in found:
        head, phrases = _finding_parts(finding)
        sub = "".join(f"<li>{_e(p)}</li>" for p in phrases)
        items.append(f"<li><b>{_e(head)}</b>{f'<ul>{sub}</ul>' if sub else ''}</li>")
    shown, rest = items[:30], items[30:]
    parts.append(f"<ul>{''.join(shown)}</ul>")
    if rest:
        parts.append(f"<details><summary>{len(rest)} more finding(s)</summary><ul>{''.join(rest)}</ul></details>")
    return parts


def _histograms(table: pd.DataFrame) -> list[str]:
    """Per tensor: how many cells differ by how many scaled ULP, run to run and against the baseline."""
    comparisons = [k for k in ComparisonKind if k.spec.role in (Role.DETERMINISM, Role.DRIFT)]
    rows = table[table["tensor"].notna() & table["max_ulp_scaled"].notna()
                 & table["comparison"].isin([k.value for k in comparisons])]
    parts = ["<h2 id='distributions'>Scaled-ULP distributions per tensor</h2>"]
    if not len(rows):
        return []
    if not (rows["max_ulp_scaled"] > 0).any():
        return parts + ["<p>Every compared tensor is bit-identical: no distribution to draw.</p>"]
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    tensors = list(dict.fromkeys(rows["tensor"]))
    # A bin of its own for identical bits, linear bins below 1 scaled ULP, four per decade above (symlog axis).
    top = max(1.0, float(rows["max_ulp_scaled"].max()))
    bins = np.concatenate([[0.0, 0.1, 0.25, 0.5, 0.75], np.logspace(0, math.log10(top) * 1.0001 + 1e-9,
                                                                max(1, math.ceil(4 * math.log10(top))) + 1)])
    fig, axes = plt.subplots(1, len(tensors), figsize=(3.3 * len(tensors), 2.6), squeeze=False, sharey=True)
    for ax, tensor in zip(axes[0], tensors):
        mine = rows[rows["tensor"] == tensor]
        for kind in comparisons:
            picked = mine[mine["comparison"] == kind.value]["max_ulp_scaled"].astype("float64").to_numpy()
            picked = np.where(picked > 0, np.maximum(picked, 0.1), 0.0)  # a tiny gap is not identical bits
            if len(picked):
                ax.hist(picked, bins=bins, alpha=0.6, color=theme.colour("comparison", kind), label=kind.spec.label)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, bins[-1])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else "=" if v == 0 else f"{v:g}"))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(tensor, fontsize=10)
        ax.set_xlabel("max scaled ULP (= identical)", fontsize=8)
    axes[0][0].set_ylabel("cells")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return parts + [_png(fig, "histograms of the largest scaled ULP per cell, per tensor")]


def render_html(stored: StoredRun, summary: RunSummary, comparison: RunComparison | None = None) -> str:
    """The HTML page of a stored matrix run.

    Args:
        stored: the run, as :func:`~detaudit.analysis.runs.load_run` opened it.
        summary: its :func:`~detaudit.analysis.summary.build_summary`.
        comparison: a :func:`~detaudit.analysis.compare.compare_runs` of a base run with this one, shown when it
            has changes or environment differences (else one line).

    Returns:
        A self-contained page: status line, failures, known bugs, the comparison, findings, the drift matrix,
        the verdict heat map, the sortable cell table with skipped cells folded, scaled-ULP histograms.
    """
    meta = stored.meta
    names = _layer_names(stored, summary.cells)
    facts = [("config", summary.config_name), *[(k, v) for k, v in summary.facts.items() if k != "run"],
             ("started", meta.get("started")),
             ("finished", meta.get("finished") or ("interrupted" if meta.get("interrupted") else None)),
             ("directory", summary.run_dir)]
    if summary.upgraded_from is not None:
        facts.append(("format", f"written by format {summary.upgraded_from}, read upgraded"))
    counts = "".join(f"<span class='c'>{_verdict_badge(v)} {summary.counts[v.value]:,}</span>"
                     for v in Verdict if summary.counts.get(v.value))
    sections = [("findings", "findings"), *[(s.key, s.title.lower()) for s in summary.sections],
                ("drift", "drift matrix"), ("verdicts", "verdicts"), ("cells", "cells")]
    if comparison is not None and (comparison.changes or comparison.environment or comparison.ignored_axes):
        sections.insert(0, ("comparison", "drift against " + comparison.base_id))
    parts = [f"<h1>detaudit run {_e(stored.run_id)}</h1>", _facts(facts),
             _status_block(summary.status_line, summary.status.value),
             f"<p class='counts'>{len(summary.cells):,} cells: {counts}</p>",
             "<nav>" + "".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t in sections) + "</nav>"]
    completeness = summary.completeness
    if completeness.bad_lines:
        parts.append(f"<p class='small'>cells.jsonl lines without a readable record: "
                     f"{_e(', '.join(map(str, completeness.bad_lines)))}</p>")
    if completeness.missing:
        more = f" and {len(completeness.missing) - 20} more" if len(completeness.missing) > 20 else ""
        parts.append(f"<p class='small'>Cells without a record: {_e(', '.join(completeness.missing[:20]))}{more}</p>")
    if summary.failures:
        shown = summary.failures[:200]
        more = f"<li>and {len(summary.failures) - 200} more</li>" if len(summary.failures) > 200 else ""
        parts.append(f"<h2 id='failures'>Failed expectations ({len(summary.failures)})</h2><ul class='failures'>"
                     + "".join(f"<li>{_e(f)}</li>" for f in shown) + more + "</ul>")
    parts += _known_section(summary.known)
    parts += _comparison_section(comparison)
    parts += _findings_section(summary.findings)
    for section in summary.sections:  # what a comparison says beyond the tables, drawn alike whatever it is
        items = "".join(f"<li>{'<b>' if line.notable else ''}{_e(line.text)}{'</b>' if line.notable else ''}</li>"
                        for line in section.lines)
        parts.append(f"<h2 id='{_e(section.key)}'>{_e(section.title)}</h2><ul>{items}</ul>"
                     f"<p class='small'>{_e(section.legend)}</p>")
    parts += _drift_section(summary)
    parts += _heat_section(summary, names)
    parts += _cells_section(summary, names)
    if len(stored.table):
        parts += _histograms(stored.table)
    return _page(f"detaudit {stored.run_id}", parts)
