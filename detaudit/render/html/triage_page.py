"""The HTML page of a triage run: per cell the cause, the fix, the toggles, the minimal case and the reproducer.

It formats :class:`~detaudit.analysis.triage_view.TriageView`, the same view the terminal formats: the page
decides nothing (not the answer's label, not the upstream state, not the run's status).
"""

from __future__ import annotations

import json
from typing import Any

from detaudit.analysis.runs import StoredRun
from detaudit.analysis.triage_view import TriagedCell, TriageView
from detaudit.render import theme
from detaudit.render.html.parts import _e, _facts, _link, _status_block, _table, _td


def _triage_page(stored: StoredRun, result: dict[str, Any]) -> list[str]:
    view = TriageView.from_result(result)
    facts = [("source run", view.source_run), ("run", stored.run_id), ("started", stored.meta.get("started")),
             *[(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in view.environment.items()]]
    parts = [f"<h1>detaudit triage of {_e(stored.meta.get('source_run_id') or view.source_run)}</h1>",
             _facts(facts), _status_block(view.headline, view.status.value)]
    parts += [_triage_card(cell) for cell in view.cells]
    if not view.cells:
        parts.append("<p>No cell was triaged.</p>")
    if view.other_findings:
        parts.append(f"<h2>Other findings ({len(view.other_findings)})</h2><p class='small muted'>detaudit triage "
                     "RUN --cell ID</p><ul>" + "".join(f"<li><code>{_e(line)}</code></li>"
                                                       for line in view.other_findings) + "</ul>")
    return parts


def _triage_card(cell: TriagedCell) -> str:
    """One triaged cell: what was confirmed, the cause and fix, the toggles, the steps, the reproducers."""
    if not cell.reproduced:
        return (f"<div class='card'><h2>{_e(cell.title)}</h2><p><b style='color:{theme.colour('not_reproduced')}'>"
                f"Not reproduced</b> (flaky, or gone): {_e(cell.cell_id)}</p></div>")
    card = [f"<div class='card'><h2>{_e(cell.title)}</h2><p class='small muted'>cell {_e(cell.cell_id)}</p>",
            f"<dl class='facts'>{_card_facts(cell)}</dl>"]
    if cell.toggles:
        card.append("<h3>One setting at a time</h3>")
        card.append(_table(["setting", "outcome", ("max ULP", "num")], [
            [_td(t.setting),
             _td(t.outcome, style=f"color:{theme.colour('toggle', t.outcome)};font-weight:600"),
             _td("-" if t.max_ulp is None else f"{int(t.max_ulp):,}", t.max_ulp, cls="n")]
            for t in cell.toggles]))
    if cell.steps:
        card.append(f"<details><summary>{len(cell.steps)} step(s)</summary>" + _table(
            ["stage", "what", "outcome"], [[_td(s.get("stage")), _td(s.get("what")), _td(s.get("outcome"))]
                                           for s in cell.steps], sortable=False) + "</details>")
    return "".join(card) + "</div>"


def _card_facts(cell: TriagedCell) -> str:
    """The ``<dt>/<dd>`` items of a reproduced cell's card."""
    rows = [("Mode", cell.mode.description), ("Question", cell.question), ("Confirmed", cell.confirmed),
            ("Op", cell.op), ("Most likely cause", cell.cause), ("Upstream", cell.upstream), ("Fix", cell.fix),
            (cell.answer_label, cell.answer), ("Minimal case", cell.minimal), ("Shrunk", cell.shrunk)]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v)
    if cell.source:
        items += f"<dt>Source</dt><dd>{_link(cell.source)}</dd>"
    if cell.repro:
        items += f"<dt>Reproducer</dt><dd><code>{_e(cell.repro)}</code></dd>"
    if cell.repro_full:
        items += f"<dt>Full reproducer</dt><dd><code>{_e(cell.repro_full)}</code></dd>"
    if cell.report:
        items += f"<dt>Report</dt><dd><code>{_e(cell.report)}</code> (for an upstream issue)</dd>"
    return items
