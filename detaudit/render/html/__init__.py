"""Self-contained HTML pages: a matrix run, an audit or triage run, and a directory of runs over time.

The pages format the view models of :mod:`detaudit.analysis` (a
:class:`~detaudit.analysis.summary.RunSummary`, a
:class:`~detaudit.analysis.compare.RunComparison`, the rows of
:func:`~detaudit.analysis.history.history_rows`); they never recompute a
verdict, a gap or a status line. Everything a page needs is inside it: CSS and
the few lines of JavaScript that sort tables are inline, plots are drawn with
matplotlib (Agg) and embedded as base64 PNG, so a page opens offline, from a CI
artifact, with nothing fetched. Every value from a run is escaped.

Modules: :mod:`.shell` (CSS, JavaScript, the document), :mod:`.parts` (cells, tables, badges, colours, plots),
:mod:`.run_page` and :mod:`.matrix` (a matrix run), :mod:`.audit_page`, :mod:`.triage_page`, :mod:`.overview`.
"""

from __future__ import annotations

from detaudit.analysis.runs import StoredRun
from detaudit.engine.store import RunKind
from detaudit.render.html.audit_page import _audit_page
from detaudit.render.html.overview import render_overview
from detaudit.render.html.run_page import render_html
from detaudit.render.html.shell import _page
from detaudit.render.html.triage_page import _triage_page

__all__ = ["render_html", "render_overview", "render_result_page"]


def render_result_page(stored: StoredRun) -> str:
    """The HTML page of an audit run (verdict, culprit, layers, losses, restart, checks) or a triage run
    (per cell: cause, fix, toggles, minimal case, reproducer)."""
    result = stored.result or {}
    if stored.kind is RunKind.TRIAGE:
        return _page(f"detaudit triage {stored.run_id}", _triage_page(stored, result))
    return _page(f"detaudit audit {stored.run_id}", _audit_page(stored, result))
