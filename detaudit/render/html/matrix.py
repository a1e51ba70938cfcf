"""The matrix tables of the run page: the drift matrix (setting change x tensor), the verdict heat map (layer x
settings) and the sortable cell table."""

from __future__ import annotations

import math
from typing import Any

from detaudit.analysis.findings import Finding
from detaudit.analysis.summary import CellView, Gap, RunSummary
from detaudit.analysis.verdicts import Verdict
from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind
from detaudit.render import theme
from detaudit.render.html.parts import (_IDENTICAL, _SCALE_TOP, _badge, _e, _link, _percent, _scale_colour, _scaled,
                                        _table, _td, _verdict_badge)

def _drift_section(summary: RunSummary) -> list[str]:
    """Setting change (rows, by layer) x tensor: scaled ULP coloured on a log scale, and the float64 errors."""
    drifts = [f for f in summary.findings if f.comparison == ComparisonKind.BASELINE and isinstance(f.between, tuple)]
    measured = any(c.baseline is not None for c in summary.cells)
    parts = ["<h2 id='drift'>Drift matrix: each setting change against the baseline</h2>"]
    if not drifts:
        text = ("Every setting gives the baseline's bits for every tensor." if measured
                else "No cell was compared with the baseline (no baseline cell ran, or nothing but it).")
        return parts + [f"<p>{_e(text)}</p>"]
    tensors_of: dict[str, list[str]] = {}
    for cell in summary.cells:
        names = tensors_of.setdefault(cell.layer, [])
        names.extend(t for t in cell.worst_ulp if t not in names)
    columns = [t for t in summary.tensors if any(t in names for names in tensors_of.values())]
    parts.append(
        "<p class='small'>A row is a change of settings from the baseline, reported under the fewest changed "
        "settings that produce it (seeds pooled). A cell shows the largest gap in <b>scaled ULP</b> (units of the "
        "spacing at the tensor's largest magnitude) and below it the error against the float64 truth of the "
        "baseline side → the changed side, as a percentage of the truth's largest value. Hover for the raw ULP and "
        "the number of elements that differ.</p>")
    parts.append(_drift_legend())
    by_layer: dict[str, list[Finding]] = {}
    for finding in drifts:
        by_layer.setdefault(finding.layer, []).append(finding)
    head = "".join(f"<th>{_e(t)}</th>" for t in columns)
    body = []
    for layer, rows in by_layer.items():
        body.append(f"<tr class='layer'><th colspan='{len(columns) + 1}'>{_e(layer)}</th></tr>")
        for finding in rows:
            before, after = finding.between  # type: ignore[misc]
            gaps = {g.tensor: g for g in finding.gaps}
            tds = [_drift_cell(gaps.get(tensor), tensor in tensors_of.get(layer, []), (before, after))
                   for tensor in columns]
            body.append(f"<tr class='change'><th class='change'>{_e(before)} → {_e(after)}</th>{''.join(tds)}</tr>")
    parts.append(f"<div class='wrap'><table class='drift'><thead><tr><th>setting change</th>{head}</tr></thead>"
                 f"<tbody>{''.join(body)}</tbody></table></div>")
    if summary.ulp_units:
        units = ", ".join(f"{d} {u}" for d, u in summary.ulp_units.items())
        parts.append(f"<p class='small muted'>1 ULP at 1.0: {_e(units)}. A gap between two precisions is counted in "
                     "the narrower one's ULPs.</p>")
    return parts


def _drift_legend() -> str:
    legend = [f"<span style='background:{_IDENTICAL}'>= identical bits</span>"]
    for value in (1, 4, 16, 64, 256, 1024):
        background, ink = _scale_colour(value)
        text = f"≥{value}" if value == _SCALE_TOP else str(value)
        legend.append(f"<span style='background:{background};color:{ink}'>{text}</span>")
    legend.append("<span style='background:#eee'>n/a: not measured</span>")
    return (f"<div class='legend'><span class='muted' style='border:0'>scaled ULP (log scale):</span>"
            f"{''.join(legend)}</div>")


def _drift_cell(gap: Gap | None, present: bool, between: tuple[str, str]) -> str:
    """One tensor's gap for one setting change: its scaled ULP on the colour scale, the float64 errors, a known bug."""
    if gap is None:
        return (f"<td style='background:{_IDENTICAL if present else '#f5f5f5'}' "
                f"title='{_e('identical bits' if present else 'no such tensor')}'>{'=' if present else ''}</td>")
    tip = gap.phrase(between)
    if math.isnan(gap.max_ulp_scaled):
        return f"<td style='background:#eee' title='{_e(tip)}'><b>n/a</b><small>{gap.max_ulp:,} ULP raw</small></td>"
    background, ink = _scale_colour(gap.max_ulp_scaled)
    truth = ""
    if gap.truth and any(v is not None for v in gap.truth):
        truth = f"<small>vs f64: {_e(_percent(gap.truth[0]))} → {_e(_percent(gap.truth[1]))}</small>"
    known = ""
    if gap.known:
        where = _link(gap.known, "upstream") if gap.known.startswith("http") else "not yet reported"
        known = f"<small><b>KNOWN</b> {where}</small>"
    return (f"<td style='background:{background};color:{ink}' title='{_e(tip)}'>"
            f"<b>{_e(_scaled(gap.max_ulp_scaled))}</b>{truth}{known}</td>")


def _heat_section(summary: RunSummary, names: dict[str, str]) -> list[str]:
    """Verdict per layer (rows) and settings (columns, in matrix order, the axes that vary as stacked headers)."""
    shown = [c for c in summary.cells if not c.folded]
    if not shown:
        return []
    every = list(dict.fromkeys(c.settings for c in summary.cells))  # matrix order, as the cells come
    measured = {c.settings for c in shown}
    hidden = [s for s in every if s not in measured]
    settings = [s for s in every if s in measured]
    layers = list(dict.fromkeys(names[c.cell_id] for c in summary.cells))
    worst: dict[tuple[str, Any], list[CellView]] = {}
    for cell in shown:
        worst.setdefault((names[cell.cell_id], cell.settings), []).append(cell)
    varying = [a for a in AXES if len({getattr(s, a) for s in settings}) > 1]
    header_rows = []
    for depth, axis in enumerate(varying):
        spans: list[list[Any]] = []
        for s in settings:
            key = tuple(getattr(s, a) for a in varying[: depth + 1])
            if spans and spans[-1][0] == key:
                spans[-1][1] += 1
            else:
                spans.append([key, 1])
        ths = "".join(f"<th colspan='{n}' title='{_e(axis)}={_e(key[-1])}'>{_e(key[-1])}</th>" for key, n in spans)
        header_rows.append(f"<tr><th class='axis'>{_e(axis)}</th>{ths}</tr>")
    if not varying:
        header_rows.append("<tr><th class='axis'>settings</th>"
                           + "".join(f"<th>{_e(s.label())}</th>" for s in settings) + "</tr>")
    body = []
    for layer in layers:
        tds = []
        for s in settings:
            cells = worst.get((layer, s))
            if not cells:
                tds.append("<td style='background:#f5f5f5'></td>")
                continue
            verdict = min((c.verdict for c in cells), key=lambda v: v.severity)
            letter = "" if verdict is Verdict.DETERMINISTIC else verdict.value[0]
            seeds = ", ".join(str(c.seed) for c in cells)
            tip = f"{layer} · {s.label()}: {verdict.value} (worst of seed {seeds})"
            tds.append(f"<td style='background:{theme.colour('verdict', verdict)}' title='{_e(tip)}'>{letter}</td>")
        body.append(f"<tr><th class='row'>{_e(layer)}</th>{''.join(tds)}</tr>")
    legend = "".join(f"<span style='background:{theme.colour('verdict', v)};color:#fff'>"
                     f"{'' if v is Verdict.DETERMINISTIC else v.value[0] + ' '}{v.value}</span>"
                     for v in Verdict if any(c.verdict is v for c in shown))
    parts = ["<h2 id='verdicts'>Verdicts over the matrix</h2>",
             f"<div class='legend'><span class='muted' style='border:0'>worst over seeds:</span>{legend}</div>",
             f"<div class='wrap'><table class='heat'><thead>{''.join(header_rows)}</thead>"
             f"<tbody>{''.join(body)}</tbody></table></div>"]
    if hidden:
        parts.append(f"<p class='small muted'>{len(hidden)} setting(s) not shown: every cell skipped or not applicable "
                     f"({_e('; '.join(s.label() for s in hidden[:6]))}{', ...' if len(hidden) > 6 else ''}).</p>")
    return parts


def _gap_cell(gap: Gap | None, is_baseline: bool) -> str:
    if is_baseline:
        return _td("baseline", -1, cls="n muted")
    if gap is None:
        return _td("-", cls="n")
    if gap.identical:
        return _td("=", 0, cls="n", title="identical bits")
    if gap.max_ulp_scaled is None:
        return _td(f"{gap.max_ulp:,} raw" if gap.max_ulp is not None else "differs", gap.max_ulp, cls="n")
    return _td(_scaled(gap.max_ulp_scaled), gap.max_ulp_scaled, cls="n",
               title=f"max {gap.max_ulp:,} ULP raw" if gap.max_ulp is not None else "")


def _cells_section(summary: RunSummary, names: dict[str, str]) -> list[str]:
    cells = [c for c in summary.cells if not c.folded]
    parts = ["<h2 id='cells'>Cells</h2>"]
    if cells:
        tensors = [t for t in summary.tensors if any((c.worst_ulp.get(t) or 0) > 0 for c in cells)]
        quiet = [t for t in summary.tensors if t not in tensors]
        show_baseline = any(c.baseline is not None or c.is_baseline for c in cells)
        show_reference = any(c.reference is not None for c in cells)
        show_adjoint = any(c.adjoint_eps is not None for c in cells)
        show_time = any(c.ms_per_pass is not None for c in cells)
        show_message = any(c.message for c in cells)
        headers: list[Any] = ["layer", "settings", ("seed", "num"), ("verdict", "rank")]
        headers += [(f"run to run {t} (ULP)", "num") for t in tensors]
        headers += [("vs baseline (scaled ULP)", "num")] if show_baseline else []
        headers += [("vs float64", "num")] if show_reference else []
        headers += [("adjoint (eps)", "num")] if show_adjoint else []
        headers += [("ms per pass", "num"), ("time vs baseline", "num")] if show_time else []
        headers += ["message"] if show_message else []
        rows = []
        for c in cells:
            row = [_td(names[c.cell_id]), _td(c.settings_label), _td(c.seed, c.seed, cls="n"),
                   _td(_verdict_badge(c.verdict), c.verdict.severity, raw=True)]
            for t in tensors:
                value = c.worst_ulp.get(t)
                row.append(_td("-" if value is None else f"{value:,}", value, cls="n"))
            if show_baseline:
                row.append(_gap_cell(c.baseline, c.is_baseline))
            if show_reference:
                error = c.reference.rel_error if c.reference else None
                row.append(_td(_percent(error), error, cls="n",
                               style="color:#c62828" if error is not None and error >= 0.01 else ""))
            if show_adjoint:
                row.append(_td("-" if c.adjoint_eps is None else f"{c.adjoint_eps:.3g}", c.adjoint_eps, cls="n"))
            if show_time:
                row.append(_td("-" if c.ms_per_pass is None else f"{c.ms_per_pass:.3g}", c.ms_per_pass, cls="n"))
                row.append(_td("-" if c.time_ratio is None else f"{c.time_ratio:.2f}x", c.time_ratio, cls="n"))
            if show_message:
                row.append(_td(c.message[:300]))
            rows.append(row)
        # Rows with a failed expectation get a red edge and the reason on hover.
        table = _table(headers, [(f" class='failed' title='{_e('; '.join(c.failures))}'" if c.failures else "", row)
                                 for c, row in zip(cells, rows)])
        parts.append("<p class='small muted'>Click a column header to sort. Run to run: the largest ULP between a "
                     "repeat (or the fresh-process replay) and the first pass. vs baseline: the largest gap to the "
                     "baseline cell in scaled ULP. vs float64: the largest error against the float64 truth, as a "
                     "percentage of its largest value. ms per pass: one warm forward and backward pass; time vs "
                     "baseline: over the baseline cell's (same layer and seed).</p>")
        parts.append(table)
        if quiet:
            parts.append(f"<p class='small'>Identical run to run in every cell: {_e(', '.join(quiet))}.</p>")
    for reason, count in summary.skipped:
        parts.append(f"<p class='small'>{_badge('SKIPPED', theme.colour('verdict', Verdict.SKIPPED))} "
                     f"<b>{count} cell(s)</b>: {_e(reason)}</p>")
    for reason, count in summary.not_applicable:
        parts.append(f"<p class='small'>{_badge('UNSUPPORTED', theme.colour('verdict', Verdict.UNSUPPORTED))} "
                     f"<b>{count} cell(s)</b>, the setting does not apply: {_e(reason)}</p>")
    return parts
