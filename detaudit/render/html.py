"""A self-contained HTML page for a run: summary, verdict heat map, ULP histograms, drift table.

Plots are drawn with matplotlib (Agg) and embedded as base64 PNG, so the page
needs no network and no files beside it when viewed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from detaudit.analysis.compare import RunComparison
from detaudit.analysis.runs import StoredRun
from detaudit.analysis.summary import RunSummary
from detaudit.analysis.verdicts import Verdict, cell_verdicts, settings_of
from detaudit.errors import UsageError, install_hint

__all__ = ["render_html"]

_COLOURS = {v: v.colour for v in Verdict}
_SEVERITY = {v.value: v.severity for v in Verdict}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f4f4f4}
.v{color:#fff;font-weight:600}
.fail{color:#c62828;font-weight:600}.pass{color:#2e7d32;font-weight:600}.incomplete{color:#b26a00;font-weight:600}
img{max-width:100%}
code{background:#f4f4f4;padding:1px 4px}
"""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"the HTML report needs matplotlib: {install_hint('report')}") from None
    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _heat_map(verdicts: pd.DataFrame) -> str:
    """Verdicts over layers (rows) x settings (columns), the worst over seeds."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    frame = verdicts.assign(
        layer_label=[f"{r['layer'].rpartition(':')[2]} {r['input_shape']}" for r in verdicts.to_dict("records")],
        settings_label=[settings_of(r).label() for r in verdicts.to_dict("records")],
        severity=verdicts["verdict"].map(_SEVERITY))
    grid = frame.pivot_table(index="layer_label", columns="settings_label", values="severity", aggfunc="min")
    order = list(Verdict)
    cmap = ListedColormap([_COLOURS[v] for v in order])
    width = min(40, 2 + 0.35 * grid.shape[1])
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.45 * grid.shape[0]))
    ax.imshow(np.ma.masked_invalid(grid.to_numpy(dtype=float)), cmap=cmap, vmin=-0.5, vmax=len(order) - 0.5,
              aspect="auto", interpolation="nearest")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOURS[v]) for v in order]
    ax.legend(handles, [v.value for v in order], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title("Verdict per layer and settings (worst over seeds)")
    return _png(fig)


def _histograms(table: pd.DataFrame) -> str:
    """Per tensor: how many cells differ from the baseline by how many ULP (log scale), and run to run."""
    plt = _pyplot()
    rows = table[table["tensor"].notna() & table["max_ulp"].notna()]
    tensors = list(dict.fromkeys(rows["tensor"]))
    if not tensors:
        return "<p>No tensor comparisons to plot.</p>"
    fig, axes = plt.subplots(1, len(tensors), figsize=(3.4 * len(tensors), 2.8), squeeze=False)
    for ax, tensor in zip(axes[0], tensors):
        mine = rows[rows["tensor"] == tensor]
        bins = np.histogram_bin_edges(np.log10(1 + mine["max_ulp"].astype("float64").to_numpy()), bins=20)
        for comparison, colour in (("baseline", "#1565c0"), ("repeat", "#c62828"), ("process", "#6a1b9a")):
            values = mine[mine["comparison"] == comparison]["max_ulp"]
            values = np.log10(1 + values.astype("float64").to_numpy())
            if len(values):
                ax.hist(values, bins=bins, alpha=0.6, color=colour, label=comparison)
        ax.set_title(tensor)
        ax.set_xlabel("log10(1 + max ULP)")
    axes[0][0].set_ylabel("cells")
    axes[0][-1].legend(fontsize=8)
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]], raw: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{v if i in raw else html.escape(str(v))}</td>" for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict_badge(verdict: str) -> str:
    return f'<span class="v" style="background:{_COLOURS[Verdict(verdict)]};padding:1px 6px">{verdict}</span>'


def render_html(stored: StoredRun, summary: RunSummary, comparison: RunComparison | None = None) -> str:
    """The HTML page of a stored run, with the drift table of ``comparison`` when given."""
    table, meta, config = stored.table, stored.meta, stored.config
    verdicts = cell_verdicts(table)
    failures = summary.failures
    tf = meta.get("tensorflow") or {}
    counts = Counter(verdicts["verdict"])
    parts = [
        f"<h1>detaudit run {html.escape(stored.run_id)}</h1>",
        f"<p>config <code>{html.escape(config.name)}</code> · TensorFlow {html.escape(str(tf.get('tensorflow_version')))}"
        f" · started {html.escape(str(meta.get('started')))}</p>",
        "<p>" + ", ".join(f"{_verdict_badge(v.value)} {counts[v.value]}" for v in Verdict if counts[v.value]) + "</p>",
        f'<p class="{summary.status.value.lower()}">{html.escape(summary.status_line)}</p>',
    ]
    if failures:
        parts.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failures[:200]) + "</ul>")
    found = summary.findings
    if found:
        parts.append("<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(f.sentence())}</li>" for f in found) + "</ul>")
    if comparison is not None:
        parts.append(f"<h2>Drift against {html.escape(comparison.base_id)}</h2>")
        parts.append(f"<p><b>{html.escape(comparison.verdict())}</b></p>")
        if comparison.environment:
            parts.append(_table(["fact", "base", "new"], [list(e) for e in comparison.environment]))
        parts.append(_table(["", "cell", "change"], [[c.category.mark, c.label, f"{c.category.name.lower()}: {c.detail}"]
                                                     for c in comparison.changes]))
    if len(verdicts):
        parts += ["<h2>Verdicts over the matrix</h2>", _heat_map(verdicts)]
        parts += ["<h2>ULP distributions per tensor</h2>", _histograms(table)]
        rows = [[r["layer"], r["input_shape"], settings_of(r).label(), r["seed"],
                 _verdict_badge(r["verdict"]), json.dumps(r["worst_ulp"]), r["message"]]
                for r in verdicts.to_dict("records")]
        parts += ["<h2>Cells</h2>", _table(["layer", "input", "settings", "seed", "verdict", "worst ULP", "message"],
                                          rows, raw={4})]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>detaudit {html.escape(stored.run_id)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def render_result_page(stored: StoredRun) -> str:
    """A page for an audit or triage run: its stored result, as a table of facts."""
    result = stored.result or {}
    rows = [[k, json.dumps(v, default=str)[:400]] for k, v in result.items()]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>detaudit {html.escape(stored.run_id)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>detaudit {stored.kind.value} run {html.escape(stored.run_id)}</h1>"
            f"{_table(['key', 'value'], rows)}</body></html>")


def render_overview(runs_dir: Any) -> str:
    """The stored runs of a directory over time (an asv-like overview)."""
    from detaudit.analysis.history import history_rows

    rows = [[r["run_id"], r["started"], r["kind"], r["config"], r["tensorflow"], r["status"] or r["verdict"] or ""]
            for r in history_rows(runs_dir)]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>detaudit runs</title><style>{_STYLE}</style>"
            f"</head><body><h1>detaudit runs in {html.escape(str(runs_dir))}</h1>"
            f"{_table(['run', 'started', 'kind', 'config', 'tensorflow', 'outcome'], rows)}</body></html>")
