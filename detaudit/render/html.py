"""Self-contained HTML pages: a matrix run, an audit or triage run, and a directory of runs over time.

The pages format the view models of :mod:`detaudit.analysis` (a
:class:`~detaudit.analysis.summary.RunSummary`, a
:class:`~detaudit.analysis.compare.RunComparison`, the rows of
:func:`~detaudit.analysis.history.history_rows`); they never recompute a
verdict, a gap or a status line. Everything a page needs is inside it: CSS and
the few lines of JavaScript that sort tables are inline, plots are drawn with
matplotlib (Agg) and embedded as base64 PNG, so a page opens offline, from a CI
artifact, with nothing fetched. Every value from a run is escaped.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detaudit.analysis.compare import RunComparison, environment_diff
from detaudit.analysis.findings import Finding, layer_label, percent, relative_error
from detaudit.analysis.runs import StoredRun
from detaudit.analysis.summary import CellView, Gap, KnownMatch, RunSummary
from detaudit.analysis.verdicts import Verdict
from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind, Role
from detaudit.engine.store import RunKind
from detaudit.errors import UsageError, install_hint
from detaudit.render.text import html_text

__all__ = ["render_html", "render_overview", "render_result_page"]

_BASELINE, _REFERENCE = ComparisonKind.BASELINE.value, ComparisonKind.REFERENCE.value
_STATUS_COLOURS = {"PASS": "#2e7d32", "FAIL": "#c62828", "INCOMPLETE": "#b26a00", "REPRODUCIBLE": "#2e7d32",
                   "OK": "#2e7d32", "REGRESSED": "#c62828"}
#: The scaled-ULP colour scale of the drift matrix: log2 from 1 to 1024 (and above), pale yellow to dark red.
_SCALE_TOP = 1024.0
_SCALE_STOPS = ((0.0, (255, 243, 196)), (0.35, (255, 183, 77)), (0.7, (229, 57, 53)), (1.0, (127, 0, 0)))
_IDENTICAL = "#e8f5e9"
#: meta.json facts whose change between two consecutive runs is marked on the overview's plots.
_MARKED_FACTS = ("tensorflow.", "host.onednn_state", "host.env.", "host.cpu_model", "host.cpu_count",
                 "host.nvidia_driver", "host.numpy_version", "host.python", "host.detaudit_version")

_STYLE = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1.5em 2em;color:#222;
max-width:1600px}
h1{font-size:1.45em;margin:0 0 .3em}
h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd;padding-bottom:2px}
h3{font-size:1em;margin:1.2em 0 .3em}
nav{font-size:13px;color:#555;margin:.3em 0 1em}nav a{margin-right:1em;color:#1565c0}
a{color:#1565c0}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
td,th{border:1px solid #d6d6d6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.wrap{overflow-x:auto;max-width:100%}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:1px 1em;margin:.4em 0 .8em;font-size:13px}
dl.facts dt{color:#666}dl.facts dd{margin:0}
.status{font-size:1.1em;font-weight:700;color:#fff;padding:.45em .8em;border-radius:4px;margin:.6em 0}
.badge{display:inline-block;color:#fff;font-weight:600;font-size:12px;padding:0 6px;border-radius:3px;
white-space:nowrap}
.counts .badge{margin-right:.2em}.counts span.c{margin-right:1.2em}
.muted{color:#666}.nowrap{white-space:nowrap}.small{font-size:12px}
ul.failures li{color:#b71c1c}
.known{border-left:4px solid #8e24aa;padding:.2em .8em;margin:.5em 0;background:#faf5fc}
table.sortable thead th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable thead th:hover{background:#e6e6e6}
table.sortable thead th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
table.sortable thead th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
tr.failed td:first-child{box-shadow:inset 4px 0 #c62828}
table.drift td{text-align:center;min-width:7.5em;padding:4px 6px}
table.drift td>b{font-size:15px;display:block}
table.drift td small{display:block;font-size:11px;white-space:nowrap}
table.drift th.change{font-weight:500;max-width:26em}
table.drift tr.layer th{background:#e3eaf5}
.legend{display:flex;flex-wrap:wrap;gap:0;align-items:center;font-size:12px;margin:.2em 0 .6em}
.legend span{padding:2px 8px;border:1px solid #ccc;margin-right:-1px}
table.heat td{width:26px;height:22px;padding:0;text-align:center;color:#fff;font-size:11px;font-weight:700}
table.heat th{font-size:11px;font-weight:500;text-align:center;padding:2px 3px;overflow-wrap:anywhere;min-width:26px}
table.heat th.axis{text-align:right;color:#666;background:#fafafa}
table.heat th.row{text-align:left;white-space:nowrap;font-weight:600}
img{max-width:100%;height:auto}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:12px}
details summary{cursor:pointer;color:#1565c0;margin:.3em 0}
.card{border:1px solid #ddd;border-radius:4px;padding:.6em 1em;margin:.8em 0}.card h2{margin-top:.2em}
"""

# Sorts a table.sortable by the clicked header: numbers (data-type="num", value in data-v) largest first on the
# first click, text A-Z; cells without a value go last. Marks <html data-sortable="N"> once wired (tests read it).
_SCRIPT = """
(function(){
function key(td,num){var v=td.getAttribute('data-v');if(v===null)v=td.textContent.trim();
if(!num)return v.toLowerCase();if(v==='')return null;var f=parseFloat(v);return isNaN(f)?null:f;}
function sort(t,i,th,hs){var num=th.getAttribute('data-type')==='num',was=th.getAttribute('aria-sort');
var asc=was?was!=='ascending':!num;
for(var j=0;j<hs.length;j++)hs[j].removeAttribute('aria-sort');
th.setAttribute('aria-sort',asc?'ascending':'descending');
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
rows.sort(function(r,s){var a=key(r.cells[i],num),c=key(s.cells[i],num);
if(a===null||c===null)return a===c?0:a===null?1:-1;var d=num?a-c:(a<c?-1:a>c?1:0);return asc?d:-d;});
for(var k=0;k<rows.length;k++)b.appendChild(rows[k]);}
var tables=document.querySelectorAll('table.sortable');
Array.prototype.forEach.call(tables,function(t){var hs=t.tHead.rows[t.tHead.rows.length-1].cells;
Array.prototype.forEach.call(hs,function(th,i){th.tabIndex=0;th.title=th.title||'click to sort';
th.addEventListener('click',function(){sort(t,i,th,hs);});
th.addEventListener('keydown',function(e){if(e.key==='Enter')sort(t,i,th,hs);});});});
document.documentElement.setAttribute('data-sortable',String(tables.length));
})();
"""


# -- small formatting helpers ---------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html_text(value)  # the one rule for outside text in HTML (detaudit.render.text)


def _page(title: str, body: Iterable[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}<script>{_SCRIPT}</script></body></html>")


def _percent(fraction: float | None) -> str:
    """A relative error as the terminal prints it (NaN: not measured)."""
    return percent(None if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)) else fraction)


def _scaled(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _num(value: Any) -> float | None:
    """A finite float, or None (for sort keys)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else (None if math.isnan(number) else number)


def _td(text: Any, key: Any = None, *, raw: bool = False, cls: str = "", title: str = "", style: str = "") -> str:
    """A table cell: ``text`` escaped unless ``raw``; ``key`` is its numeric sort value (data-v)."""
    attrs = ""
    if key is not None:
        number = _num(key)
        if number is None:
            attrs += f' data-v="{_e(key)}"'
        else:  # JavaScript's parseFloat reads "Infinity", not Python's "inf"
            attrs += f' data-v="{number if math.isfinite(number) else ("Infinity" if number > 0 else "-Infinity")}"'
    elif cls == "n":
        attrs += ' data-v=""'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{_e(title)}"'
    if style:
        attrs += f' style="{style}"'
    return f"<td{attrs}>{text if raw else _e(text)}</td>"


def _table(headers: Sequence[str | tuple[str, str]], rows: Iterable[Sequence[str] | tuple[str, Sequence[str]]], *,
           sortable: bool = True, cls: str = "") -> str:
    """A table of ``rows``: lists of ``_td`` strings, or (``<tr>`` attributes, list). A header ``(label, "num")``
    is a right-aligned number, ``(label, "rank")`` sorts by its cells' data-v (a verdict's severity, say)."""
    head = []
    for header in headers:
        label, kind = (header, "text") if isinstance(header, str) else header
        attrs = {"num": " class=n data-type=num", "rank": " data-type=num"}.get(kind, "")
        head.append(f"<th{attrs}>{_e(label)}</th>")
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    table_attrs = f' class="{classes}"' if classes else ""
    body = "".join(f"<tr{row[0]}>{''.join(row[1])}</tr>" if isinstance(row, tuple) else f"<tr>{''.join(row)}</tr>"
                   for row in rows)
    return (f"<div class='wrap'><table{table_attrs}><thead><tr>{''.join(head)}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _badge(text: str, colour: str, title: str = "") -> str:
    tip = f' title="{_e(title)}"' if title else ""
    return f'<span class="badge" style="background:{colour}"{tip}>{_e(text)}</span>'


def _verdict_badge(verdict: Verdict) -> str:
    return _badge(verdict.value, verdict.colour, verdict.description)


def _status_block(text: str, word: str) -> str:
    colour = _STATUS_COLOURS.get(word, "#c62828")
    return f'<p class="status" id="status" style="background:{colour}">{_e(text)}</p>'


def _facts(facts: Sequence[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v not in (None, ""))
    return f"<dl class='facts'>{items}</dl>"


def _link(target: str, text: str | None = None) -> str:
    """A plain link to an upstream page (followed only when clicked), or the text when it is not a web address."""
    if target.startswith(("https://", "http://")):
        return f'<a href="{_e(target)}" rel="noreferrer">{_e(text or target)}</a>'
    return _e(text or target)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"the HTML report needs matplotlib: {install_hint('report')}") from None
    return plt


def _png(fig: Any, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _scale_colour(scaled: float) -> tuple[str, str]:
    """(background, text colour) of a scaled-ULP gap on the drift matrix's log scale."""
    t = 0.0 if scaled <= 1 else min(1.0, math.log2(scaled) / math.log2(_SCALE_TOP))
    for (t0, c0), (t1, c1) in zip(_SCALE_STOPS, _SCALE_STOPS[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            rgb = [round(a + f * (b - a)) for a, b in zip(c0, c1)]
            return "#{:02x}{:02x}{:02x}".format(*rgb), ("#fff" if t > 0.55 else "#222")
    return "#7f0000", "#fff"


# -- the run page ---------------------------------------------------------------------------------------------------

def _layer_names(stored: StoredRun, cells: Sequence[CellView]) -> dict[str, str]:
    """Each cell's layer label; layers of one kind and input shape with different parameters get their parameters."""
    params: dict[str, str] = {}
    if "params" in stored.table and len(stored.table):
        params = dict(zip(stored.table["cell_id"], stored.table["params"].astype(str)))
    seen: dict[str, set[str]] = {}
    for cell in cells:
        seen.setdefault(cell.layer, set()).add(params.get(cell.cell_id, ""))
    return {c.cell_id: _distinct(c.layer, params.get(c.cell_id, ""), seen[c.layer]) for c in cells}


def _distinct(label: str, params: str, variants: set[str]) -> str:
    """``label``, with the parameters that tell it apart from the other ``variants`` (JSON) sharing it."""
    if len(variants) < 2:
        return label
    parsed = [_params(v) for v in sorted(variants)]
    keys = [k for k in dict.fromkeys(k for p in parsed for k in p)
            if len({json.dumps(p.get(k), sort_keys=True) for p in parsed}) > 1]
    mine = _params(params)
    return f"{label} " + ", ".join(f"{k}={json.dumps(mine.get(k))}" for k in keys)


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"params": text}
    return value if isinstance(value, dict) else {"params": value}


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
             f"<p><b style='color:{_STATUS_COLOURS.get(head, '#222')}'>{_e(verdict)}</b></p>"]
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


def _drift_section(summary: RunSummary) -> list[str]:
    """Setting change (rows, by layer) x tensor: scaled ULP coloured on a log scale, and the float64 errors."""
    drifts = [f for f in summary.findings if f.comparison == _BASELINE and isinstance(f.between, tuple)]
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
    legend = [f"<span style='background:{_IDENTICAL}'>= identical bits</span>"]
    for value in (1, 4, 16, 64, 256, 1024):
        background, ink = _scale_colour(value)
        text = f"≥{value}" if value == _SCALE_TOP else str(value)
        legend.append(f"<span style='background:{background};color:{ink}'>{text}</span>")
    legend.append("<span style='background:#eee'>n/a: not measured</span>")
    parts.append(f"<div class='legend'><span class='muted' style='border:0'>scaled ULP (log scale):</span>"
                 f"{''.join(legend)}</div>")
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
            tds = []
            for tensor in columns:
                gap = gaps.get(tensor)
                if gap is None:
                    present = tensor in tensors_of.get(layer, [])
                    tds.append(f"<td style='background:{_IDENTICAL if present else '#f5f5f5'}' "
                               f"title='{_e('identical bits' if present else 'no such tensor')}'>"
                               f"{'=' if present else ''}</td>")
                    continue
                tip = gap.phrase((before, after))
                if math.isnan(gap.max_ulp_scaled):
                    tds.append(f"<td style='background:#eee' title='{_e(tip)}'><b>n/a</b>"
                               f"<small>{gap.max_ulp:,} ULP raw</small></td>")
                    continue
                background, ink = _scale_colour(gap.max_ulp_scaled)
                truth = ""
                if gap.truth and any(v is not None for v in gap.truth):
                    truth = f"<small>vs f64: {_e(_percent(gap.truth[0]))} → {_e(_percent(gap.truth[1]))}</small>"
                known = ""
                if gap.known:
                    where = _link(gap.known, "upstream") if gap.known.startswith("http") else "not yet reported"
                    known = f"<small><b>KNOWN</b> {where}</small>"
                tds.append(f"<td style='background:{background};color:{ink}' title='{_e(tip)}'>"
                           f"<b>{_e(_scaled(gap.max_ulp_scaled))}</b>{truth}{known}</td>")
            body.append(f"<tr class='change'><th class='change'>{_e(before)} → {_e(after)}</th>{''.join(tds)}</tr>")
    parts.append(f"<div class='wrap'><table class='drift'><thead><tr><th>setting change</th>{head}</tr></thead>"
                 f"<tbody>{''.join(body)}</tbody></table></div>")
    if summary.ulp_units:
        units = ", ".join(f"{d} {u}" for d, u in summary.ulp_units.items())
        parts.append(f"<p class='small muted'>1 ULP at 1.0: {_e(units)}. A gap between two precisions is counted in "
                     "the narrower one's ULPs.</p>")
    return parts


def _heat_section(summary: RunSummary, names: dict[str, str]) -> list[str]:
    """Verdict per layer (rows) and settings (columns, in matrix order, the axes that vary as stacked headers)."""
    shown = [c for c in summary.cells if c.verdict is not Verdict.SKIPPED]
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
            tds.append(f"<td style='background:{verdict.colour}' title='{_e(tip)}'>{letter}</td>")
        body.append(f"<tr><th class='row'>{_e(layer)}</th>{''.join(tds)}</tr>")
    legend = "".join(f"<span style='background:{v.colour};color:#fff'>"
                     f"{'' if v is Verdict.DETERMINISTIC else v.value[0] + ' '}{v.value}</span>"
                     for v in Verdict if any(c.verdict is v for c in shown))
    parts = ["<h2 id='verdicts'>Verdicts over the matrix</h2>",
             f"<div class='legend'><span class='muted' style='border:0'>worst over seeds:</span>{legend}</div>",
             f"<div class='wrap'><table class='heat'><thead>{''.join(header_rows)}</thead>"
             f"<tbody>{''.join(body)}</tbody></table></div>"]
    if hidden:
        parts.append(f"<p class='small muted'>{len(hidden)} setting(s) not shown: every cell SKIPPED "
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
    cells = [c for c in summary.cells if c.verdict is not Verdict.SKIPPED]
    parts = ["<h2 id='cells'>Cells</h2>"]
    if cells:
        tensors = [t for t in summary.tensors if any((c.worst_ulp.get(t) or 0) > 0 for c in cells)]
        quiet = [t for t in summary.tensors if t not in tensors]
        show_baseline = any(c.baseline is not None or c.is_baseline for c in cells)
        show_reference = any(c.reference is not None for c in cells)
        show_adjoint = any(c.adjoint_eps is not None for c in cells)
        show_message = any(c.message for c in cells)
        headers: list[Any] = ["layer", "settings", ("seed", "num"), ("verdict", "rank")]
        headers += [(f"run to run {t} (ULP)", "num") for t in tensors]
        headers += [("vs baseline (scaled ULP)", "num")] if show_baseline else []
        headers += [("vs float64", "num")] if show_reference else []
        headers += [("adjoint (eps)", "num")] if show_adjoint else []
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
            if show_message:
                row.append(_td(c.message[:300]))
            rows.append(row)
        # Rows with a failed expectation get a red edge and the reason on hover.
        table = _table(headers, [(f" class='failed' title='{_e('; '.join(c.failures))}'" if c.failures else "", row)
                                 for c, row in zip(cells, rows)])
        parts.append("<p class='small muted'>Click a column header to sort. Run to run: the largest ULP between a "
                     "repeat (or the fresh-process replay) and the first pass. vs baseline: the largest gap to the "
                     "baseline cell in scaled ULP. vs float64: the largest error against the float64 truth, as a "
                     "percentage of its largest value.</p>")
        parts.append(table)
        if quiet:
            parts.append(f"<p class='small'>Identical run to run in every cell: {_e(', '.join(quiet))}.</p>")
    for reason, count in summary.skipped:
        parts.append(f"<p class='small'>{_badge('SKIPPED', Verdict.SKIPPED.colour)} "
                     f"<b>{count} cell(s)</b>: {_e(reason)}</p>")
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
    palette = {"repeat": "#c62828", "process": "#6a1b9a", "baseline": "#1565c0"}
    for ax, tensor in zip(axes[0], tensors):
        mine = rows[rows["tensor"] == tensor]
        for kind in comparisons:
            picked = mine[mine["comparison"] == kind.value]["max_ulp_scaled"].astype("float64").to_numpy()
            picked = np.where(picked > 0, np.maximum(picked, 0.1), 0.0)  # a tiny gap is not identical bits
            if len(picked):
                ax.hist(picked, bins=bins, alpha=0.6, color=palette.get(kind.value, "#555"), label=kind.spec.label)
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
    sections = [("findings", "findings"), ("drift", "drift matrix"), ("verdicts", "verdicts"), ("cells", "cells")]
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
    parts += _drift_section(summary)
    parts += _heat_section(summary, names)
    parts += _cells_section(summary, names)
    if len(stored.table):
        parts += _histograms(stored.table)
    return _page(f"detaudit {stored.run_id}", parts)


# -- audit and triage pages ----------------------------------------------------------------------------------------

def _audit_page(stored: StoredRun, result: dict[str, Any]) -> list[str]:
    from detaudit.analysis.audit_view import AuditView

    view = AuditView.from_result(result)
    tf = result.get("tensorflow") or stored.meta.get("tensorflow") or {}
    settings = result.get("settings") or {}
    facts = [("model", view.model), ("run", stored.run_id), ("started", stored.meta.get("started")),
             ("TensorFlow", f"{tf.get('tensorflow_version', '?')} / Keras {tf.get('keras_version', '?')}"
              if tf else None),
             ("settings", ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else None),
             ("steps x repeats", f"{result['steps']} x {result['repeats']}" if "steps" in result and "repeats" in result
              else None), ("seed", result.get("seed"))]
    parts = [f"<h1>detaudit audit of {_e(view.model)}</h1>", _facts(facts),
             _status_block(view.verdict.value, view.verdict.value)]
    marks = {True: ("yes", "color:#2e7d32"), False: ("NO", "color:#c62828;font-weight:600"), None: ("-", "")}
    parts.append(_table(["question", "answer", "detail"], [
        [_td(a.question.asks), _td(marks[a.holds][0], style=marks[a.holds][1]), _td(a.detail)] for a in view.answers],
        sortable=False))
    parts += [f"<p class='small muted'>{_e(line)}</p>" for line in view.training]
    if view.culprit:
        parts.append(f"<p><b style='color:#c62828'>Culprit: {_e(view.culprit.sentence())}</b></p>"
                     f"<p>Fix: {_e(view.culprit.advice)}</p>")
    headers = ["stage", "tensor", "class", ("first differs (step)", "num"), ("max ULP", "num")]

    def rows(shown: list[dict[str, Any]]) -> list[list[str]]:
        return [[_td(r.get("stage")), _td(r.get("name")), _td(r.get("class")),
                 _td("-" if r.get("first_step") is None else r["first_step"], r.get("first_step"), cls="n"),
                 _td(f"{int(r.get('max_ulp') or 0):,}", r.get("max_ulp"), cls="n")] for r in shown]

    parts.append("<h2 id='layers'>Tensors that differ between repeats</h2>")
    parts.append(_table(headers, rows(view.differing)) if view.differing
                 else "<p>None: every recorded tensor was identical in every execution.</p>")
    if view.all_rows:
        parts.append(f"<details><summary>All {len(view.all_rows)} recorded tensors</summary>"
                     f"{_table(headers, rows(view.all_rows))}</details>")
    if view.pipeline:
        parts.append("<h2 id='pipeline'>Data pipeline</h2>")
        parts.append(_table(["node", "problem", "source", "fix"], [
            [_td(s.get(k, "")) for k in ("node", "problem", "source", "fix")] for s in view.pipeline]))
    if view.checks:
        parts.append("<h2 id='checks'>Environment: what decides reproducibility here, and the fix</h2>")
        parts.append(_table(["check", "state", "risk", "fix"],
                            [[_td(c.get(k, "")) for k in ("check", "state", "risk", "fix")] for c in view.checks]))
    if view.folded_checks:
        where = "no GPU visible" if not view.gpus else "a GPU is visible"
        parts.append(f"<p class='small muted'>Not shown ({where}, they do not apply): "
                     f"{_e(', '.join(view.folded_checks))}</p>")
    return parts


def _cell_title(data: dict[str, Any]) -> str:
    """``Conv2DTranspose(filters=8, ...) on [4, 16, 16, 8] [xla=on, seed=0]`` from a stored cell, else its id."""
    from detaudit.core.config import Cell
    from detaudit.errors import ConfigError

    try:
        cell = Cell.from_dict(data["cell"])
    except (ConfigError, KeyError, TypeError):
        return str(data.get("cell_id", "?"))
    return f"{cell.layer.describe()} [{cell.settings.label()}, seed={cell.seed}]"


_TRIAGE_MODES = {"repeat": "run to run", "drift": "drift from the baseline", "accuracy": "error against float64",
                 "adjoint": "failed adjoint test"}


def _triage_page(stored: StoredRun, result: dict[str, Any]) -> list[str]:
    environment = result.get("environment") or {}
    cells = result.get("cells") or []
    reproduced = sum(bool(c.get("reproduced")) for c in cells)
    facts = [("source run", result.get("source_run")), ("run", stored.run_id), ("started", stored.meta.get("started")),
             *[(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in environment.items()]]
    word = "PASS" if cells and reproduced == len(cells) else "INCOMPLETE"
    parts = [f"<h1>detaudit triage of {_e(stored.meta.get('source_run_id') or result.get('source_run', '?'))}</h1>",
             _facts(facts), _status_block(f"{reproduced} of {len(cells)} cell(s) reproduced and explained", word)]
    for data in cells:
        title = _cell_title(data)
        if not data.get("reproduced"):
            parts.append(f"<div class='card'><h2>{_e(title)}</h2><p><b style='color:#b26a00'>Not reproduced</b> "
                         f"(flaky, or gone): {_e(data.get('cell_id'))}</p></div>")
            continue
        explanation = data.get("explanation") or {}
        confirmed = data.get("confirmed") or {}
        removed = ", ".join(data.get("removed_by") or []) or "no single setting"
        source = str(explanation.get("source") or "")
        mode = str(data.get("mode") or "repeat")
        answer = (("Closer to float64", data.get("closer")) if mode == "drift" else
                  ("Fixed by (precision and device kept)", removed) if mode in ("accuracy", "adjoint") else
                  ("Removed by", removed))
        upstream = explanation.get("known") if explanation.get("reported") else (
            "not yet reported" if explanation.get("known") else None)
        rows = [("Mode", _TRIAGE_MODES.get(mode, mode)), ("Question", data.get("question")),
                ("Confirmed", confirmed.get("detail")), ("Op", data.get("op")),
                ("Most likely cause", explanation.get("cause")), ("Upstream", upstream),
                ("Fix", explanation.get("fix")), answer,
                ("Minimal case", data.get("minimal_description")), ("Shrunk", data.get("shrunk"))]
        items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v)
        if source:
            items += f"<dt>Source</dt><dd>{_link(source)}</dd>"
        if data.get("repro"):
            items += f"<dt>Reproducer</dt><dd><code>python {_e(data['repro'])}</code></dd>"
        if data.get("repro_full"):
            items += f"<dt>Full reproducer</dt><dd><code>python {_e(data['repro_full'])}</code></dd>"
        if data.get("report"):
            items += f"<dt>Report</dt><dd><code>{_e(data['report'])}</code> (for an upstream issue)</dd>"
        card = [f"<div class='card'><h2>{_e(title)}</h2><p class='small muted'>cell {_e(data.get('cell_id'))}</p>",
                f"<dl class='facts'>{items}</dl>"]
        toggles = data.get("toggles") or []
        if toggles:
            colours = {"removed": "#2e7d32", "fixes": "#2e7d32", "reduced": "#b26a00", "reduces": "#b26a00",
                       "persists": "#c62828", "failed": "#6a1b9a"}
            card.append("<h3>One setting at a time</h3>")
            card.append(_table(["setting", "outcome", ("max ULP", "num")], [
                [_td(f"{t.get('axis')}={t.get('value')}"),
                 _td(t.get("outcome"), style=f"color:{colours.get(str(t.get('outcome')), '#222')};font-weight:600"),
                 _td("-" if t.get("max_ulp") is None else f"{int(t['max_ulp']):,}", t.get("max_ulp"), cls="n")]
                for t in toggles]))
        steps = data.get("steps") or []
        if steps:
            card.append(f"<details><summary>{len(steps)} step(s)</summary>" + _table(
                ["stage", "what", "outcome"], [[_td(s.get("stage")), _td(s.get("what")), _td(s.get("outcome"))]
                                               for s in steps], sortable=False) + "</details>")
        parts.append("".join(card) + "</div>")
    if not cells:
        parts.append("<p>No cell was triaged.</p>")
    others = result.get("other_findings") or []
    if others:
        parts.append(f"<h2>Other findings ({len(others)})</h2><p class='small muted'>detaudit triage RUN --cell ID"
                     "</p><ul>" + "".join(f"<li><code>{_e(o.get('line'))}</code></li>" for o in others) + "</ul>")
    return parts


def render_result_page(stored: StoredRun) -> str:
    """The HTML page of an audit run (verdict, culprit, layers, losses, restart, checks) or a triage run
    (per cell: cause, fix, toggles, minimal case, reproducer)."""
    result = stored.result or {}
    if stored.kind is RunKind.TRIAGE:
        return _page(f"detaudit triage {stored.run_id}", _triage_page(stored, result))
    return _page(f"detaudit audit {stored.run_id}", _audit_page(stored, result))


# -- the overview of a runs directory -------------------------------------------------------------------------------

def _extremes(stored: StoredRun) -> dict[tuple[str, str, str, str], dict[str, tuple[float | None, float | None]]]:
    """Per layer (kind, params, input shape, label) and tensor: (largest scaled ULP vs the baseline, largest relative
    error vs float64)."""
    table = stored.table
    out: dict[tuple[str, str, str, str], dict[str, list[float | None]]] = {}
    if not len(table):
        return {}
    rows = table[table["comparison"].isin([_BASELINE, _REFERENCE]) & table["tensor"].notna()
                 & (table["status"] == "ok")]
    for row in rows.to_dict("records"):
        key = (str(row["layer"]), str(row["params"]), str(row["input_shape"]), layer_label(row))
        slot = out.setdefault(key, {}).setdefault(str(row["tensor"]), [None, None])
        if row["comparison"] == _BASELINE:
            value = _num(row["max_ulp_scaled"])
            index = 0
        else:
            value = relative_error(row)
            index = 1
        if value is not None and (slot[index] is None or value > slot[index]):
            slot[index] = value
    return {k: {t: (v[0], v[1]) for t, v in tensors.items()} for k, tensors in out.items()}


def _marked(diff: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The environment differences worth a marker, named without their meta.json section (``tensorflow_version``)."""
    return [(key.split(".", 1)[1], before, after) for key, before, after in diff if key.startswith(_MARKED_FACTS)]


def _short_date(started: str) -> str:
    return started[:16].replace("T", " ") if started else "?"


def _series_plot(title: str, runs: list[dict[str, Any]], data: list[dict[str, tuple[float | None, float | None]]],
                 markers: list[tuple[int, str]]) -> str:
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    tensors = list(dict.fromkeys(t for d in data for t in d))  # the table's order: output, then the gradients
    x = np.arange(len(runs))
    fig, axes = plt.subplots(1, 2, figsize=(11, 2.9))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (ax, what) in enumerate(zip(axes, ("max scaled ULP vs baseline", "max error vs float64 (%)"))):
        drawn, low, high = False, math.inf, 0.0
        for n, tensor in enumerate(tensors):
            values = [d.get(tensor, (None, None))[index] for d in data]
            y = np.array([np.nan if v is None else (100 * v if index else v) for v in values], dtype=float)
            if index:
                y[y <= 0] = np.nan  # a log axis: an exact match has no point
            if np.isnan(y).all():
                continue
            drawn = True
            low, high = min(low, float(np.nanmin(y))), max(high, float(np.nanmax(y)))
            ax.plot(x, y, marker="o", markersize=4, linewidth=1.4, label=tensor, color=colours[n % len(colours)])
        # Whole decades on both axes, so that every plot has labelled ticks.
        if index == 0:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(0, 10 ** max(1, math.ceil(math.log10(max(high, 1) * 1.2))))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        elif drawn:
            ax.set_yscale("log")
            bottom, top = math.floor(math.log10(low / 1.2)), math.ceil(math.log10(high * 1.2))
            ax.set_ylim(10 ** min(bottom, top - 1), 10 ** top)
            ax.yaxis.set_major_formatter(FuncFormatter(
                lambda v, _: f"{v:g}%" if v >= 0.001 else f"{v:.0e}%".replace("e-0", "e-")))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        if not drawn:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="#888")
        ax.set_title(what, fontsize=10)
        ax.set_xlim(-0.5, len(runs) - 0.5)
        step = max(1, math.ceil(len(runs) / 8))
        ticks = list(range(0, len(runs), step))
        ax.set_xticks(ticks, [f"#{i + 1}\n{_short_date(runs[i]['started'])[5:]}" for i in ticks], fontsize=7)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        for position, letter in markers:
            ax.axvline(position - 0.5, color="#8e24aa", linestyle="--", linewidth=1)
            ax.annotate(letter, (position - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", color="#8e24aa", fontsize=9, fontweight="bold")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    return _png(fig, f"{title}: max scaled ULP vs baseline and max error vs float64 per run")


def render_overview(runs_dir: str | Path) -> str:
    """The stored runs of a directory over time, as asv's main page.

    A table of every matrix run (date, config, TensorFlow, device, status, verdict counts, what changed in the
    environment), then per config and layer a plot of the largest scaled ULP against the baseline and the largest
    error against float64 per tensor, run after run, with a dashed line where the environment (TensorFlow, Keras,
    devices, oneDNN, ...) changed from the run before. Audit and triage runs are listed apart.
    """
    from detaudit.analysis.history import history_runs

    skipped: list[tuple[Path, str]] = []
    rows: list[dict[str, Any]] = []
    loaded: dict[str, StoredRun] = {}  # the matrix runs, read once here and used for the plots below
    for row, stored in history_runs(runs_dir, on_skip=lambda path, why: skipped.append((path, why))):
        rows.append(row)
        if stored.kind is RunKind.MATRIX:
            loaded[row["run_id"]] = stored
    matrix = [r for r in reversed(rows) if r["kind"] == RunKind.MATRIX.value]  # oldest first
    others = [r for r in rows if r["kind"] != RunKind.MATRIX.value]
    parts = [f"<h1>detaudit runs in {_e(runs_dir)}</h1>",
             f"<p>{len(matrix)} matrix run(s), {len(others)} audit or triage run(s).</p>"]
    if not rows:
        parts.append("<p>No readable run in this directory yet. Make one with <code>detaudit run --out "
                     f"{_e(runs_dir)}</code>.</p>")
    by_config: dict[str, list[dict[str, Any]]] = {}
    for row in matrix:
        by_config.setdefault(row["config"], []).append(row)
    letters = (chr(ord("A") + i) if i < 26 else str(i + 1) for i in itertools.count())
    changes: dict[str, tuple[str, str, list[tuple[str, Any, Any]]]] = {}  # run id -> (letter, previous, diff)
    for config_rows in by_config.values():
        for previous, row in zip(config_rows, config_rows[1:]):
            diff = _marked(environment_diff(loaded[previous["run_id"]].meta, loaded[row["run_id"]].meta))
            if diff:
                changes[row["run_id"]] = (next(letters), previous["run_id"], diff)
    number = {r["run_id"]: i + 1 for config_rows in by_config.values() for i, r in enumerate(config_rows)}
    if matrix:
        parts.append("<h2 id='runs'>Matrix runs</h2>")
        table_rows = []
        for row in reversed(matrix):
            status = row.get("status") or "?"
            counts = row.get("counts") or {}
            change = changes.get(row["run_id"])
            what = ("; ".join(f"{k}: {b} → {n}" for k, b, n in change[2][:4]) + (" ..." if len(change[2]) > 4 else "")
                    if change else "")
            table_rows.append([
                _td(f"#{number[row['run_id']]}" if row["run_id"] in number else "", number.get(row["run_id"]),
                    cls="n"),
                _td(_short_date(row["started"]), row["started"], cls="nowrap"), _td(row["run_id"], cls="nowrap"),
                _td(row["config"]), _td(row["tensorflow"]), _td(row["device"]),
                _td(_badge(status, _STATUS_COLOURS.get(status, "#555")), status, raw=True),
                _td(", ".join(f"{n:,} {v}" for v, n in counts.items())),
                _td((f"<b style='color:#8e24aa'>{change[0]}</b> " if change else "") + _e(what), raw=True)])
        parts.append(_table([("#", "num"), "started", "run", "config", "TensorFlow", "device", "status", "cells",
                             "environment change (from the run before)"], table_rows))
        parts.append("<p class='small muted'># numbers the runs of each config, oldest first, as on the plots. "
                     "Click a column header to sort.</p>")
    for config, config_rows in by_config.items():
        parts.append(f"<h2>Config <code>{_e(config)}</code>: {len(config_rows)} run(s) over time</h2>")
        data = [_extremes(loaded[r["run_id"]]) for r in config_rows]
        layers = list(dict.fromkeys(k for d in data for k in d))
        variants: dict[str, set[str]] = {}
        for key in layers:
            variants.setdefault(key[3], set()).add(key[1])
        marks = [(i, changes[r["run_id"]][0]) for i, r in enumerate(config_rows) if r["run_id"] in changes]
        if marks:
            items = "".join(
                f"<li><b style='color:#8e24aa'>{letter}</b> {_e(changes[config_rows[i]['run_id']][1])} → "
                f"{_e(config_rows[i]['run_id'])}: "
                + _e("; ".join(f"{k}: {b} → {n}" for k, b, n in changes[config_rows[i]["run_id"]][2])) + "</li>"
                for i, letter in marks)
            parts.append(f"<p class='small'>Dashed lines: the environment changed from the run before.</p>"
                         f"<ul class='small'>{items}</ul>")
        if not layers:
            parts.append("<p class='muted'>Nothing was compared with the baseline or float64 in these runs.</p>")
        for key in layers:
            title = _distinct(key[3], key[1], variants[key[3]])
            parts.append(_series_plot(title, config_rows, [d.get(key, {}) for d in data], marks))
    if others:
        parts.append("<h2 id='other'>Audit and triage runs</h2>")
        parts.append(_table(["started", "kind", "run", "name", "outcome"], [
            [_td(_short_date(r["started"]), r["started"]), _td(r["kind"]), _td(r["run_id"]), _td(r["config"]),
             _td(r.get("verdict") or "")] for r in others]))
    if skipped:
        parts.append("<h2>Unreadable directories (skipped)</h2><ul class='small'>"
                     + "".join(f"<li>{_e(p)}: {_e(why)}</li>" for p, why in skipped) + "</ul>")
    return _page(f"detaudit runs in {runs_dir}", parts)
