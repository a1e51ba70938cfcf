"""The HTML page of a triage run: per cell the cause, the fix, the toggles, the minimal case and the reproducer."""

from __future__ import annotations

import json
from typing import Any

from detaudit.analysis.runs import StoredRun
from detaudit.render.html.parts import _e, _facts, _link, _status_block, _table, _td


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
    parts += [_triage_card(data) for data in cells]
    if not cells:
        parts.append("<p>No cell was triaged.</p>")
    others = result.get("other_findings") or []
    if others:
        parts.append(f"<h2>Other findings ({len(others)})</h2><p class='small muted'>detaudit triage RUN --cell ID"
                     "</p><ul>" + "".join(f"<li><code>{_e(o.get('line'))}</code></li>" for o in others) + "</ul>")
    return parts


def _triage_card(data: dict[str, Any]) -> str:
    """One triaged cell: what was confirmed, the cause and fix, the toggles, the steps, the reproducers."""
    title = _cell_title(data)
    if not data.get("reproduced"):
        return (f"<div class='card'><h2>{_e(title)}</h2><p><b style='color:#b26a00'>Not reproduced</b> "
                f"(flaky, or gone): {_e(data.get('cell_id'))}</p></div>")
    card = [f"<div class='card'><h2>{_e(title)}</h2><p class='small muted'>cell {_e(data.get('cell_id'))}</p>",
            f"<dl class='facts'>{_card_facts(data)}</dl>"]
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
    return "".join(card) + "</div>"


def _card_facts(data: dict[str, Any]) -> str:
    """The ``<dt>/<dd>`` items of a reproduced cell's card."""
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
    return items
