"""Rich renderables built from results tables. Returns objects; never prints."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from typing import Any

import pandas as pd
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from detaudit.analysis.compare import Category, RunComparison
from detaudit.core.config import AXES, Settings
from detaudit.analysis.results import Verdict, cell_verdicts, findings

__all__ = ["VERDICT_STYLES", "adjoint_table", "checkerboard_panel", "history_table", "render_comparison", "render_run",
           "shapes_table", "summary_json", "summary_table"]

VERDICT_STYLES = {
    Verdict.DETERMINISTIC: "green",
    Verdict.NONDETERMINISTIC: "bold red",
    Verdict.UNSUPPORTED: "yellow",
    Verdict.SKIPPED: "dim",
    Verdict.ERROR: "red",
    Verdict.CRASH: "bold red",
    Verdict.TIMEOUT: "bold red",
}
_TENSOR_COLUMNS = ("output", "grad_input", "grad_kernel", "grad_bias")
_MAX_FINDINGS = 12


def _fmt_ulp(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{int(value):,}"


def _gap_column(table: pd.DataFrame, comparison: str = "baseline") -> dict[str, str]:
    """Per cell, the worst gap of one comparison: '=' identical, else max scaled ULP."""
    out = {}
    rows = table[(table["comparison"] == comparison) & table["tensor"].notna()]
    for cell_id, group in rows.groupby("cell_id", sort=False):
        if group["bitwise_equal"].fillna(False).all():
            out[cell_id] = "="
        else:
            scaled = group["max_ulp_scaled"].max()
            out[cell_id] = "≠" if pd.isna(scaled) else f"{scaled:.3g}"
    return out


def summary_table(table: pd.DataFrame, baseline: Settings | None = None) -> Table:
    """One row per cell: layer, settings, seed, verdict, worst run-to-run ULP per tensor, gap to baseline."""
    verdicts = cell_verdicts(table)
    extra = sorted({t for w in verdicts["worst_ulp"] for t in w} - set(_TENSOR_COLUMNS)) if len(verdicts) else []
    tensors = [t for t in _TENSOR_COLUMNS if len(verdicts) and any(t in w for w in verdicts["worst_ulp"])] + extra
    grid = Table(title="Cells (tensor columns: worst repeat or replay ULP; gap columns: max scaled ULP)",
                 title_justify="left",
                 show_lines=False, expand=False)
    grid.add_column("layer")
    grid.add_column("settings")
    grid.add_column("seed", justify="right")
    grid.add_column("verdict")
    for tensor in tensors:
        grid.add_column(tensor, justify="right")
    grid.add_column("vs baseline", justify="right")
    references = _gap_column(table, "reference")
    if references:
        grid.add_column("vs float64", justify="right")
    gaps = _gap_column(table)
    for row in verdicts.to_dict("records"):
        settings = Settings(**{axis: row[axis] for axis in AXES})
        verdict = Verdict(row["verdict"])
        if verdict is Verdict.SKIPPED:
            continue  # listed once, with the reason, under the table
        shape = json.loads(row["input_shape"])
        is_baseline = baseline is not None and settings == baseline
        grid.add_row(
            f"{row['layer'].rpartition(':')[2]} {shape}",
            settings.label(),
            str(row["seed"]),
            Text(verdict.value, style=VERDICT_STYLES[verdict]),
            *(_fmt_ulp(row["worst_ulp"].get(t)) for t in tensors),
            "baseline" if is_baseline else gaps.get(row["cell_id"], "-"),
            *([references.get(row["cell_id"], "-")] if references else []),
        )
    return grid


def _header(table: pd.DataFrame, meta: dict[str, Any]) -> Text:
    tf = meta.get("tensorflow") or {}
    host = meta.get("host") or {}
    parts = [f"run {meta.get('run_id', '?')}"]
    if tf:
        parts.append(f"TensorFlow {tf.get('tensorflow_version')} / Keras {tf.get('keras_version')}")
        gpus = [g.get("name") or g.get("device") for g in tf.get("gpus", [])]
        parts.append(f"GPUs: {', '.join(gpus)}" if gpus else "no GPU")
    if host:
        parts.append(f"oneDNN {host.get('onednn_state', '?')}")
    return Text(" · ".join(parts), style="bold")


def _counts_line(table: pd.DataFrame) -> Text:
    counts = Counter(cell_verdicts(table)["verdict"]) if len(table) else Counter()
    line = Text(f"{sum(counts.values())} cells: ")
    for i, verdict in enumerate(v for v in Verdict if counts[v.value]):
        if i:
            line.append(", ")
        line.append(f"{counts[verdict.value]} {verdict.value}", style=VERDICT_STYLES[verdict])
    return line


def _skipped_lines(table: pd.DataFrame) -> list[Text]:
    verdicts = cell_verdicts(table) if len(table) else pd.DataFrame(columns=["verdict", "message"])
    skipped = verdicts[verdicts["verdict"] == Verdict.SKIPPED.value]
    return [Text(f"{n} cells SKIPPED: {reason}", style="dim")
            for reason, n in Counter(skipped["message"]).items()]


def render_run(table: pd.DataFrame, meta: dict[str, Any], baseline: Settings,
               failures: list[str]) -> RenderableType:
    """The whole terminal summary of a run: header, cell table, findings and the verdict line."""
    parts: list[RenderableType] = [_header(table, meta), summary_table(table, baseline),
                                   *_skipped_lines(table), _counts_line(table)]
    found = findings(table, baseline)
    if found:
        parts.append(Text("Findings:", style="bold"))
        for finding in found[:_MAX_FINDINGS]:
            style = "red" if finding.comparison != "baseline" else "default"
            parts.append(Text(f"  • {finding.sentence()}", style=style))
        if len(found) > _MAX_FINDINGS:
            parts.append(Text(f"  … and {len(found) - _MAX_FINDINGS} more (see results.parquet)", style="dim"))
    if meta.get("interrupted"):
        parts.append(Text("Run was interrupted: the table holds the cells that finished.", style="bold yellow"))
    if failures:
        parts.append(Text(f"FAIL: {len(failures)} expectation(s) failed", style="bold red"))
        for failure in failures[:_MAX_FINDINGS]:
            parts.append(Text(f"  ✗ {failure}", style="red"))
        if len(failures) > _MAX_FINDINGS:
            parts.append(Text(f"  … and {len(failures) - _MAX_FINDINGS} more", style="dim"))
    else:
        parts.append(Text("PASS: every expectation held", style="bold green"))
    return Group(*parts)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def summary_json(table: pd.DataFrame, meta: dict[str, Any], baseline: Settings,
                 failures: list[str]) -> dict[str, Any]:
    """The summary as plain JSON-able data, for ``--json``."""
    verdicts = cell_verdicts(table) if len(table) else pd.DataFrame(columns=["verdict"])
    return {
        "run_id": meta.get("run_id"),
        "run_dir": table.attrs.get("run_dir"),
        "passed": not failures,
        "failures": failures,
        "counts": dict(Counter(verdicts["verdict"])),
        "cells": [{k: _plain(v) for k, v in row.items()} for row in verdicts.to_dict("records")],
        "findings": [{"layer": f.layer, "comparison": f.comparison, "between": f.between,
                      "sentence": f.sentence(),
                      "tensors": [{k: _plain(v) for k, v in dataclasses.asdict(g).items()} for g in f.gaps]}
                     for f in findings(table, baseline)],
        "tensorflow": meta.get("tensorflow"),
    }


def render_comparison(comparison: RunComparison) -> RenderableType:
    """asv-style: environment differences, one mark per changed cell, then a one-line verdict."""
    parts: list[RenderableType] = [Text(f"compare {comparison.base_id} -> {comparison.new_id}", style="bold")]
    if comparison.environment:
        env = Table(title="Environment differences (these usually explain the drift)", title_justify="left")
        for column in ("fact", "base", "new"):
            env.add_column(column, overflow="fold")
        for key, base, new in comparison.environment:
            env.add_row(Text(key), Text(str(base)), Text(str(new)))
        parts.append(env)
    else:
        parts.append(Text("Environment: no differences recorded", style="dim"))
    if comparison.ignored_axes:
        parts.append(Text("Matched ignoring " + ", ".join(
            f"{axis}: {base} -> {new}" for axis, (base, new) in comparison.ignored_axes.items()), style="dim"))
    if comparison.changes:
        changes = Table(title="Changed cells", title_justify="left")
        changes.add_column("")
        changes.add_column("cell")
        changes.add_column("change", overflow="fold")
        for change in comparison.changes:
            style = "bold red" if change.category.regression else ("green" if change.category.name == "FIXED" else "dim")
            changes.add_row(Text(change.category.mark, style=style), Text(change.label),
                            Text(f"{change.category.name.lower().replace('_', ' ')}: {change.detail}"))
        parts.append(changes)
        legend = "  ".join(f"{c.mark} {c.name.lower().replace('_', ' ')}" for c in Category)
        parts.append(Text(legend, style="dim"))
    parts.append(Text(comparison.verdict(), style="bold red" if comparison.regressions else "bold green"))
    return Group(*parts)


def history_table(runs: list[dict[str, Any]]) -> Table:
    """One line per stored run, newest first: id, date, config, TensorFlow, device, verdict counts."""
    grid = Table(title="Runs, newest first", title_justify="left")
    for column in ("run", "started", "config", "tensorflow", "device", "cells"):
        grid.add_column(column)
    for run in runs:
        counts = Text(f"audit: {run['verdict']}" if run.get("verdict") else "")
        for i, verdict in enumerate(v for v in Verdict if run["counts"].get(v.value)):
            if i:
                counts.append(", ")
            counts.append(f"{run['counts'][verdict.value]} {verdict.value}", style=VERDICT_STYLES[verdict])
        grid.add_row(run["run_id"], run["started"][:19].replace("T", " "), run["config"], run["tensorflow"],
                     run["device"], counts)
    return grid


def shapes_table(rows: list[dict[str, Any]]) -> Table:
    """The shape audit: formula vs TensorFlow, the Conv round trip and the fix, rejections."""
    grid = Table(title="Transposed-convolution shapes (one spatial axis)", title_justify="left")
    for column in ("input", "kernel", "stride", "padding", "dilation", "output_padding", "Keras formula",
                   "TensorFlow", "Conv round trip", "fix"):
        grid.add_column(column, justify="right" if column not in ("padding", "Conv round trip", "fix") else "left")
    for row in rows:
        measured = row.get("measured")
        if row["rejected"]:
            formula = Text("rejected", style="yellow")
        else:
            formula = Text(str(row["output"]))
        if measured is None:
            tf_text = Text("-", style="dim")
        elif measured.get("error"):
            tf_text = Text("error", style="yellow" if row["rejected"] else "bold red")
        else:
            tf_text = Text(str(measured["length"]), style="green" if measured["length"] == row["output"] else "bold red")
        trip = Text(f"{row['n']} -> {row['conv']} -> {row['round_trip']}",
                    style="green" if row["round_trip_ok"] else "yellow")
        fix = "-" if row["round_trip_ok"] else (
            f"output_padding={row['fixing_output_padding']}" if row["fixing_output_padding"] is not None else "none")
        grid.add_row(str(row["n"]), str(row["kernel"]), str(row["stride"]), row["padding"], str(row["dilation"]),
                     str(row["output_padding"]), formula, tf_text, trip, fix)
    return grid


def _heat(window: list[list[int]]) -> Text:
    top = max(max(r) for r in window) or 1
    text = Text()
    for r in window:
        for value in r:
            shade = int(40 + 200 * value / top)
            text.append(f"{value:3d}", style=f"on rgb({shade},{shade // 3},{shade // 3})")
        text.append("\n")
    return text


def checkerboard_panel(items: list[dict[str, Any]]) -> RenderableType:
    """Checkerboard scores (analytic and measured) with the tap-count window of each, beside resize-conv."""
    grid = Table(title="Checkerboard: taps per output position, interior (score 0 = uniform)", title_justify="left")
    for column in ("kernel", "stride", "analytic", "TensorFlow", "taps (transpose)", "resize-conv", "taps (resize-conv)"):
        grid.add_column(column)
    for item in items:
        measured = item.get("measured")
        grid.add_row(str(item["kernel"]), str(item["stride"]), f"{item['score']:.3g}",
                     f"{measured['transpose']['score']:.3g}" if measured else "-",
                     _heat(measured["transpose"]["window"]) if measured else Text("-"),
                     f"{measured['resize_conv']['score']:.3g}" if measured else "-",
                     _heat(measured["resize_conv"]["window"]) if measured else Text("-"))
    return grid


def adjoint_table(rows: list[dict[str, Any]], threshold: float) -> Table:
    """The dot-product test per spec: |<Cz, x> - <z, Tx>| in epsilons, and the reconstruction error."""
    grid = Table(title=f"Adjoint test: <conv(z), x> = <z, conv_transpose(x)> (fails above {threshold:g} eps)",
                 title_justify="left")
    for column in ("rank", "kernel", "stride", "padding", "float32 eps", "float64 eps", "reconstruction |T(C z) - z|/|z|"):
        grid.add_column(column, justify="right" if column != "padding" else "left")
    for row in rows:
        cells = []
        for dtype in ("float32", "float64"):
            result = row["results"].get(dtype, {})
            if result.get("error"):
                cells.append(Text("refused", style="yellow"))
            else:
                value = result["adjoint_eps"]
                cells.append(Text(f"{value:.3g}", style="bold red" if value > threshold else "green"))
        recon = row["results"].get("float64", {}).get("reconstruction")
        grid.add_row(str(row["rank"]), str(row["kernel"]), str(row["stride"]), row["padding"], *cells,
                     "-" if recon is None else f"{recon:.3g}")
    return grid


_AUDIT_STYLES = {"REPRODUCIBLE": "bold green", "NONDETERMINISTIC": "bold red", "NOT RESTART-REPRODUCIBLE": "bold red"}


def audit_report(result: dict[str, Any]) -> RenderableType:
    """``detaudit audit``: verdict, per-layer table with the culprit marked, losses, and the fixes."""
    parts: list[RenderableType] = [Text(f"Audit of {result['model']}: {result['verdict']}",
                                        style=_AUDIT_STYLES.get(result["verdict"], "bold"))]
    culprit = result.get("culprit")
    grid = Table(title="Layers in topological order", title_justify="left")
    for column in ("", "layer", "class", "forward", "backward", "max ULP", "first step"):
        grid.add_column(column)
    for row in result["layers"]:
        mark = "►" if culprit and culprit["layer"] == row["layer"] else ""
        grid.add_row(Text(mark, style="bold red"), Text(row["layer"]), Text(row["class"]),
                     Text(row["forward"], style="red" if row["forward"] != "ok" else "green"),
                     Text(row["backward"], style="red" if row["backward"] != "ok" else "green"),
                     f"{row['max_ulp']:,}", "-" if row["first_step"] is None else str(row["first_step"]))
    parts.append(grid)
    if culprit:
        parts.append(Text(f"Culprit: {culprit['layer']} ({culprit['class']}), {culprit['tensor']}", style="bold red"))
    diverged = [loss["step"] for loss in result["losses"] if not loss["equal"]]
    parts.append(Text(f"Loss differs from step {diverged[0]}" if diverged else "Loss identical at every step"))
    restart = result.get("restart")
    if restart:
        parts.append(Text("Restart: " + ", ".join(f"{k} {'same' if v else 'DIFFERS'}" for k, v in restart.items())))
    fixes = Table(title="Environment and fixes", title_justify="left")
    for column in ("check", "state", "risk", "fix"):
        fixes.add_column(column, overflow="fold")
    for check in result["checks"]:
        fixes.add_row(*(Text(str(check[k])) for k in ("check", "state", "risk", "fix")))
    parts.append(fixes)
    return Group(*parts)


def audit_markdown(result: dict[str, Any]) -> str:
    """The audit as Markdown, to attach to a ticket."""
    lines = [f"# detaudit audit: {result['model']}", "", f"**Verdict: {result['verdict']}**", ""]
    if result.get("culprit"):
        c = result["culprit"]
        lines += [f"Culprit: `{c['layer']}` ({c['class']}), {c['tensor']}.", ""]
    lines += ["| layer | class | forward | backward | max ULP | first step |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['class']} | {r['forward']} | {r['backward']} | {r['max_ulp']} | {r['first_step'] or '-'} |"
              for r in result["layers"]]
    lines += ["", "## Environment and fixes", "", "| check | state | risk | fix |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['state']} | {c['risk']} | {c['fix']} |" for c in result["checks"]]
    return "\n".join(lines) + "\n"
