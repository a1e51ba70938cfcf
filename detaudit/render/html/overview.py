"""The HTML overview of a runs directory over time, as asv's main page: a table of the runs and, per config and
layer, plots of the largest gaps run after run with the environment changes marked."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from detaudit.analysis.compare import environment_diff
from detaudit.analysis.findings import layer_label, relative_error
from detaudit.analysis.runs import StoredRun
from detaudit.core.comparisons import ComparisonKind
from detaudit.engine.store import RunKind
from detaudit.render.html.parts import _status_colour, _badge, _distinct, _e, _num, _png, _pyplot, _table, _td
from detaudit.render.html.shell import _page

#: meta.json facts whose change between two consecutive runs is marked on the overview's plots.
_MARKED_FACTS = ("tensorflow.", "host.onednn_state", "host.env.", "host.cpu_model", "host.cpu_count",
                 "host.nvidia_driver", "host.numpy_version", "host.python", "host.detaudit_version")


def _extremes(stored: StoredRun) -> dict[tuple[str, str, str, str], dict[str, tuple[float | None, float | None]]]:
    """Per layer (kind, params, input shape, label) and tensor: (largest scaled ULP vs the baseline, largest relative
    error vs float64)."""
    table = stored.table
    out: dict[tuple[str, str, str, str], dict[str, list[float | None]]] = {}
    if not len(table):
        return {}
    measured = [ComparisonKind.BASELINE.value, ComparisonKind.REFERENCE.value]
    rows = table[table["comparison"].isin(measured) & table["tensor"].notna() & (table["status"] == "ok")]
    for row in rows.to_dict("records"):
        key = (str(row["layer"]), str(row["params"]), str(row["input_shape"]), layer_label(row))
        slot = out.setdefault(key, {}).setdefault(str(row["tensor"]), [None, None])
        if row["comparison"] == ComparisonKind.BASELINE:
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


#: A run's environment change from the run before it: (its letter on the plots, the previous run's id, the diff).
_Change = tuple[str, str, list[tuple[str, Any, Any]]]


def _environment_changes(by_config: dict[str, list[dict[str, Any]]],
                         loaded: dict[str, StoredRun]) -> dict[str, _Change]:
    """Per run id, what changed in the environment from the run before it of the same config (lettered A, B, ...)."""
    letters = (chr(ord("A") + i) if i < 26 else str(i + 1) for i in itertools.count())
    changes: dict[str, _Change] = {}
    for config_rows in by_config.values():
        for previous, row in zip(config_rows, config_rows[1:]):
            diff = _marked(environment_diff(loaded[previous["run_id"]].meta, loaded[row["run_id"]].meta))
            if diff:
                changes[row["run_id"]] = (next(letters), previous["run_id"], diff)
    return changes


def _runs_table(matrix: list[dict[str, Any]], changes: dict[str, _Change], number: dict[str, int]) -> list[str]:
    """The matrix runs, newest first: date, config, TensorFlow, device, status, counts, environment change."""
    table_rows = []
    for row in reversed(matrix):
        status = row.get("status") or "?"
        counts = row.get("counts") or {}
        change = changes.get(row["run_id"])
        what = ("; ".join(f"{k}: {b} → {n}" for k, b, n in change[2][:4]) + (" ..." if len(change[2]) > 4 else "")
                if change else "")
        table_rows.append([
            _td(f"#{number[row['run_id']]}" if row["run_id"] in number else "", number.get(row["run_id"]), cls="n"),
            _td(_short_date(row["started"]), row["started"], cls="nowrap"), _td(row["run_id"], cls="nowrap"),
            _td(row["config"]), _td(row["tensorflow"]), _td(row["device"]),
            _td(_badge(status, _status_colour(status, "#555")), status, raw=True),
            _td(", ".join(f"{n:,} {v}" for v, n in counts.items())),
            _td((f"<b style='color:#8e24aa'>{change[0]}</b> " if change else "") + _e(what), raw=True)])
    return ["<h2 id='runs'>Matrix runs</h2>",
            _table([("#", "num"), "started", "run", "config", "TensorFlow", "device", "status", "cells",
                    "environment change (from the run before)"], table_rows),
            "<p class='small muted'># numbers the runs of each config, oldest first, as on the plots. "
            "Click a column header to sort.</p>"]


def _config_section(config: str, config_rows: list[dict[str, Any]], loaded: dict[str, StoredRun],
                    changes: dict[str, _Change]) -> list[str]:
    """One config's runs over time: the environment changes, then one plot per layer."""
    parts = [f"<h2>Config <code>{_e(config)}</code>: {len(config_rows)} run(s) over time</h2>"]
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
    return parts


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
    changes = _environment_changes(by_config, loaded)
    number = {r["run_id"]: i + 1 for config_rows in by_config.values() for i, r in enumerate(config_rows)}
    if matrix:
        parts += _runs_table(matrix, changes, number)
    for config, config_rows in by_config.items():
        parts += _config_section(config, config_rows, loaded, changes)
    if others:
        parts.append("<h2 id='other'>Audit and triage runs</h2>")
        parts.append(_table(["started", "kind", "run", "name", "outcome"], [
            [_td(_short_date(r["started"]), r["started"]), _td(r["kind"]), _td(r["run_id"]), _td(r["config"]),
             _td(r.get("verdict") or "")] for r in others]))
    if skipped:
        parts.append("<h2>Unreadable directories (skipped)</h2><ul class='small'>"
                     + "".join(f"<li>{_e(p)}: {_e(why)}</li>" for p, why in skipped) + "</ul>")
    return _page(f"detaudit runs in {runs_dir}", parts)
