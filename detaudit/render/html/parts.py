"""Small formatting helpers shared by the HTML pages: escaping, table cells and tables, badges, facts, links,
the colour scale of scaled ULP, and matplotlib figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from detaudit.analysis.findings import percent
from detaudit.analysis.verdicts import Verdict
from detaudit.errors import UsageError, install_hint
from detaudit.render import theme
from detaudit.render.text import html_text



def _status_colour(word: str, default: str) -> str:
    """The theme's colour of a run's, audit's or comparison's one-word status; ``default`` for other words."""
    known = theme.THEME.get(theme.name_of("status", word))
    return known.colour if known else default

#: The scaled-ULP colour scale of the drift matrix: log2 from 1 to 1024 (and above), pale yellow to dark red.
_SCALE_TOP = 1024.0
_SCALE_STOPS = ((0.0, (255, 243, 196)), (0.35, (255, 183, 77)), (0.7, (229, 57, 53)), (1.0, (127, 0, 0)))
_IDENTICAL = "#e8f5e9"


def _e(value: Any) -> str:
    return html_text(value)  # the one rule for outside text in HTML (detaudit.render.text)



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
    return _badge(verdict.value, theme.colour("verdict", verdict), verdict.description)


def _status_block(text: str, word: str) -> str:
    colour = _status_colour(word, theme.colour("status.fail"))
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
