"""Rich renderables of the one-off commands: shapes, checkerboard, adjoint, audit and triage. Never prints.

Each leads with the answer: what failed (by name) or that nothing did, then
the detail a reader needs, folded where it is the same for many rows.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from detaudit.render.terminal import render_known
from detaudit.render.text import visible

__all__ = ["adjoint_table", "applies_here", "audit_markdown", "audit_report", "checkerboard_panel", "shapes_table",
           "triage_report"]


def _shape_spec(row: dict[str, Any]) -> str:
    extra = f" d{row['dilation']}" if row["dilation"] != 1 else ""
    padding = "" if row["output_padding"] is None else f" output_padding={row['output_padding']}"
    return f"kernel {row['kernel']}, stride {row['stride']}, {row['padding']}{extra}{padding}"


def shapes_table(rows: list[dict[str, Any]], path: str) -> Table:
    """The shape audit: formula vs TensorFlow on the measured path, the other path's prediction, the round trip."""
    specs = list(dict.fromkeys(_shape_spec(r) for r in rows))
    shared = len(specs) == 1
    title = f"Transposed-convolution shapes{': ' + specs[0] if shared else ''} (one spatial axis; {path})"
    grid = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    if not shared:
        grid.add_column("layer", overflow="fold")
    for column in ("input", "Keras", "TensorFlow", "other path", "Conv round trip", "fix"):
        grid.add_column(column, no_wrap=column != "fix", overflow="fold",
                        justify="right" if column in ("input", "Keras", "TensorFlow") else "left")
    for row in rows:
        measured = row.get("measured")
        formula = Text("rejected", style="yellow") if row["rejected"] else Text(str(row["output"]))
        if measured is None:
            tf_text = Text("-", style="dim")
        elif measured.get("error"):
            tf_text = Text("error", style="yellow" if row["rejected"] else "bold red")
        else:
            tf_text = Text(str(measured["length"]), style="green" if measured["length"] == row["output"] else "bold red")
        other = "same" if bool(row["rejected"]) == bool(row["rejected_other_path"]) else (
            "rejected" if row["rejected_other_path"] else "runs")
        trip = Text(f"{row['n']} -> {row['conv']} -> {row['round_trip']}",
                    style="green" if row["round_trip_ok"] else "yellow")
        fix = "-" if row["round_trip_ok"] else (
            f"output_padding={row['fixing_output_padding']}" if row["fixing_output_padding"] is not None else "none")
        grid.add_row(*([] if shared else [_shape_spec(row)]), str(row["n"]), formula, tf_text,
                     Text(other, style="yellow" if other != "same" else "dim"), trip, fix)
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
    grid = Table(title="Checkerboard: taps per output position, interior (score 0 = uniform)", title_justify="left",
                 box=box.SIMPLE_HEAD)
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


def _spec(row: dict[str, Any]) -> str:
    return f"rank {row['rank']}, kernel {row['kernel']}, stride {row['stride']}, {row['padding']}"


def adjoint_table(report: dict[str, Any]) -> RenderableType:
    """The adjoint command: failing specs by name first (KNOWN bugs apart), then the grid, folded where it passes."""
    threshold = report["threshold_eps"]
    parts: list[RenderableType] = []
    failing = [r for r in report["specs"] if r["failed"]]
    passing = [r for r in report["specs"] if not r["failed"]]
    grid = Table(title=f"Adjoint test <conv(z), x> = <z, conv_transpose(x)> in epsilons (fails above {threshold:g}), "
                 "and the reconstruction error |T(C z) - z| / |z|", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("spec", "float32 eps", "float64 eps", "reconstruction", "status"):
        grid.add_column(column, justify="left" if column in ("spec", "status") else "right", overflow="fold")
    for row in failing + (passing if report.get("all") else []):
        cells = []
        for dtype in ("float32", "float64"):
            result = row["results"].get(dtype, {})
            if result.get("error"):
                cells.append(Text("refused", style="yellow"))
            else:
                value = result["adjoint_eps"]
                cells.append(Text(f"{value:.3g}", style="bold red" if value > threshold else "green"))
        recon = row["results"].get("float64", {}).get("reconstruction")
        status = Text("KNOWN", style="bold magenta") if row.get("known") else (
            Text("FAIL", style="bold red") if row["failed"] else Text("ok", style="green"))
        grid.add_row(_spec(row), *cells, "-" if recon is None else f"{recon:.3g}", status)
    if failing or report.get("all"):
        parts.append(grid)
    if passing and not report.get("all"):
        parts.append(Text(f"{len(passing)} of {len(report['specs'])} specs pass in float32 and float64 "
                          "(--all lists them)", style="green"))
    recon = [r["results"].get("float64", {}).get("reconstruction") for r in report["specs"]]
    recon = [v for v in recon if v is not None]
    if recon:
        parts.append(Text(f"Reconstruction |conv_transpose(conv(z)) - z| / |z| ranges {min(recon):.2g} to "
                          f"{max(recon):.2g}: the transpose is the adjoint of the convolution, not its inverse.",
                          style="dim"))
    parts.extend(render_known(report["known_matches"]))
    parts.append(Text(report["status_line"], style="bold red" if report["failed"] else "bold green"))
    return Group(*parts)


_AUDIT_STYLES = {"REPRODUCIBLE": "bold green", "NONDETERMINISTIC": "bold red", "NOT RESTART-REPRODUCIBLE": "bold red"}


def applies_here(check: dict[str, Any], gpus: int) -> bool:
    """Whether an environment check applies to the devices present (cpu, gpu or any)."""
    return check.get("applies", "any") == "any" or (check["applies"] == "gpu") == (gpus > 0)


def audit_report(result: dict[str, Any], show_all: bool = False) -> RenderableType:
    """``detaudit audit``: the verdict and the culprit first, then only the layers that differ, losses, fixes."""
    parts: list[RenderableType] = [Text(f"Audit of {result['model']}: {result['verdict']}",
                                        style=_AUDIT_STYLES.get(result["verdict"], "bold"))]
    culprit = result.get("culprit")
    if culprit:
        row = next((r for r in result["layers"] if r["layer"] == culprit["layer"]), {})
        step = f", first differs at step {row['first_step']}" if row.get("first_step") else ""
        parts.append(Text(f"Culprit: {culprit['layer']} ({culprit['class']}), {culprit['tensor']}{step}",
                          style="bold red"))
    differing = [r for r in result["layers"] if r["forward"] != "ok" or r["backward"] != "ok" or r.get("first_step")]
    shown = result["layers"] if show_all else differing
    if shown:
        grid = Table(title="Layers in topological order" + ("" if show_all else " that differ"), title_justify="left",
                     box=box.SIMPLE_HEAD)
        for column in ("", "layer", "class", "forward (step 1)", "backward (step 1)", "max ULP", "first differs"):
            grid.add_column(column, overflow="fold")
        for row in shown:
            mark = "►" if culprit and culprit["layer"] == row["layer"] else ""
            grid.add_row(Text(mark, style="bold red"), Text(row["layer"]), Text(row["class"]),
                         Text(row["forward"], style="red" if row["forward"] != "ok" else "green"),
                         Text(row["backward"], style="red" if row["backward"] != "ok" else "green"),
                         f"{row['max_ulp']:,}", "-" if row.get("first_step") is None else str(row["first_step"]))
        parts.append(grid)
    clean = len(result["layers"]) - len(differing)
    if not show_all and clean:
        parts.append(Text(f"{clean} of {len(result['layers'])} layers identical in every execution "
                          "(--all lists them)", style="green"))
    losses = result.get("losses") or []
    diverged = [loss for loss in losses if not loss["equal"]]
    if losses:
        parts.append(Text(f"Loss differs from step {diverged[0]['step']} (max {diverged[0]['max_ulp']:,} ULP)"
                          if diverged else f"Loss identical at every step ({len(losses)})"))
    restart = result.get("restart")
    if restart:
        parts.append(Text("Restart in a fresh process: " + ", ".join(
            f"{k.replace('_', ' ')} {'same' if v else 'DIFFERS'}" for k, v in restart.items())))
    checks = result.get("checks") or []
    gpus = int(result.get("gpus_visible") or 0)
    relevant = [c for c in checks if applies_here(c, gpus)]
    if relevant:
        fixes = Table(title="Environment: what decides reproducibility here, and the fix", title_justify="left",
                      box=box.SIMPLE_HEAD)
        columns = ("check", "state", "risk", "fix") if show_all else ("check", "state", "fix")
        for column in columns:
            fixes.add_column(column, overflow="fold")
        for check in relevant:
            fixes.add_row(*(Text(str(check[k])) for k in columns))
        parts.append(fixes)
    folded = [c["check"] for c in checks if not applies_here(c, gpus)]
    if folded:
        where = "no GPU visible" if not gpus else "a GPU is visible"
        parts.append(Text(f"Not shown ({where}, they do not apply): {', '.join(folded)}", style="dim"))
    if result.get("note"):
        parts.append(Text(result["note"], style="dim"))
    return Group(*parts)


def audit_markdown(result: dict[str, Any]) -> str:
    """The audit as Markdown, to attach to a ticket."""
    lines = [f"# detaudit audit: {result['model']}", "", f"**Verdict: {result['verdict']}**", ""]
    if result.get("culprit"):
        c = result["culprit"]
        lines += [f"Culprit: `{c['layer']}` ({c['class']}), {c['tensor']}.", ""]
    lines += ["| layer | class | forward | backward | max ULP | first step |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['class']} | {r['forward']} | {r['backward']} | {r['max_ulp']} | "
              f"{r.get('first_step') or '-'} |" for r in result["layers"]]
    gpus = int(result.get("gpus_visible") or 0)
    checks = [c for c in result.get("checks") or [] if applies_here(c, gpus)]
    if checks:
        lines += ["", "## Environment and fixes", "", "| check | state | risk | fix |", "|---|---|---|---|"]
        lines += [f"| {c['check']} | {c['state']} | {c['risk']} | {c['fix']} |" for c in checks]
    return visible("\n".join(lines) + "\n")  # a report file is read in a terminal too


def triage_report(result: dict[str, Any]) -> RenderableType:
    """A stored triage run: per triaged cell, the cause, the fix, what removed it and the reproducer."""
    parts: list[RenderableType] = [Text(f"Triage of {result.get('source_run', '?')}", style="bold")]
    for cell in result.get("cells", []):
        if not cell.get("reproduced"):
            parts.append(Text(f"{cell['cell_id']}: not reproduced (flaky, or gone)", style="bold yellow"))
            continue
        explanation = cell["explanation"]
        parts.append(Panel(Text.assemble(
            ("Most likely cause: ", "bold"), explanation["cause"], "\n",
            ("Fix: ", "bold"), explanation["fix"], "\n",
            ("Removed by: ", "bold"), ", ".join(cell["removed_by"]) or "no single setting", "\n",
            ("Minimal case: ", "bold"), cell["minimal_description"], "\n",
            ("Reproducer: ", "bold"), f"python {cell['repro']}", "\n",
            ("Report: ", "bold"), str(cell["report"])), title=f"triage {cell['cell_id']} ({cell['mode']})"))
    return Group(*parts)
