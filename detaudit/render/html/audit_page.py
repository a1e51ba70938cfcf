"""The HTML page of an audit run: verdict, answers, culprit, differing tensors, pipeline and environment checks."""

from __future__ import annotations

from typing import Any

from detaudit.analysis.runs import StoredRun
from detaudit.render.html.parts import _e, _facts, _status_block, _table, _td


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
