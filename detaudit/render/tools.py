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

from detaudit.analysis.audit_view import AuditView
from detaudit.analysis.triage_view import TriagedCell, TriageView
from detaudit.render import theme
from detaudit.render.terminal import render_known
from detaudit.render.text import visible

__all__ = ["adjoint_table", "audit_comparison", "audit_markdown", "audit_report", "cell_ids_table",
           "checkerboard_panel", "shapes_table", "triage_report"]


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
        formula = Text("rejected", style=theme.style("warn")) if row["rejected"] else Text(str(row["output"]))
        if measured is None:
            tf_text = Text("-", style=theme.style("muted"))
        elif measured.get("error"):
            tf_text = Text("error", style=theme.style("warn" if row["rejected"] else "bad"))
        else:
            tf_text = Text(str(measured["length"]), style=theme.style("good" if measured["length"] == row["output"]
                                                                      else "bad"))
        other = "same" if bool(row["rejected"]) == bool(row["rejected_other_path"]) else (
            "rejected" if row["rejected_other_path"] else "runs")
        trip = Text(f"{row['n']} -> {row['conv']} -> {row['round_trip']}",
                    style=theme.style("good" if row["round_trip_ok"] else "warn"))
        fix = "-" if row["round_trip_ok"] else (
            f"output_padding={row['fixing_output_padding']}" if row["fixing_output_padding"] is not None else "none")
        grid.add_row(*([] if shared else [_shape_spec(row)]), str(row["n"]), formula, tf_text,
                     Text(other, style=theme.style("warn" if other != "same" else "muted")), trip, fix)
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
    for column in ("kernel", "stride", "analytic", "TensorFlow", "taps (transpose)", "resize-conv",
                   "taps (resize-conv)"):
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
                cells.append(Text("refused", style=theme.style("warn")))
            else:
                value = result["adjoint_eps"]
                cells.append(Text(f"{value:.3g}", style=theme.style("bad" if value > threshold else "good")))
        recon = row["results"].get("float64", {}).get("reconstruction")
        status = Text("KNOWN", style=theme.style("known")) if row.get("known") else (
            Text("FAIL", style=theme.style("bad")) if row["failed"] else Text("ok", style=theme.style("good")))
        grid.add_row(_spec(row), *cells, "-" if recon is None else f"{recon:.3g}", status)
    if failing or report.get("all"):
        parts.append(grid)
    if passing and not report.get("all"):
        parts.append(Text(f"{len(passing)} of {len(report['specs'])} specs pass in float32 and float64 "
                          "(--all lists them)", style=theme.style("good")))
    recon = [r["results"].get("float64", {}).get("reconstruction") for r in report["specs"]]
    recon = [v for v in recon if v is not None]
    if recon:
        parts.append(Text(f"Reconstruction |conv_transpose(conv(z)) - z| / |z| ranges {min(recon):.2g} to "
                          f"{max(recon):.2g}: the transpose is the adjoint of the convolution, not its inverse.",
                          style=theme.style("muted")))
    parts.extend(render_known(report["known_matches"]))
    parts.append(Text(report["status_line"], style=theme.style("status.fail" if report["failed"] else "status.pass")))
    return Group(*parts)




def audit_report(result: dict[str, Any], show_all: bool = False) -> RenderableType:
    """``detaudit audit``: the three answers and the verdict first, then the culprit, what differs, the fixes."""
    view = AuditView.from_result(result)
    parts: list[RenderableType] = [Text(f"Audit of {view.model}: {view.verdict.value}",
                                        style=theme.style("status.pass" if view.verdict.passed else "status.fail"))]
    answers = Table.grid(padding=(0, 2))
    for _ in range(3):
        answers.add_column()
    answers.columns[2].overflow = "fold"
    for answer in view.answers:
        answers.add_row(answer.question.label, Text(answer.mark, style=theme.style("answer", answer.look)),
                        Text(answer.detail))
    parts.append(answers)
    parts += [Text(line, style=theme.style("muted")) for line in view.training]
    if view.culprit:
        parts.append(Text(f"Culprit: {view.culprit.sentence()}", style=theme.style("culprit")))
        parts.append(Text(f"Fix: {view.culprit.advice}"))
    if view.consequences and not show_all:
        parts.append(Text(f"{view.consequences} tensors after the data differ because the data does "
                          "(--all lists them)", style=theme.style("muted")))
    if view.identical and not show_all:
        parts.append(Text(f"{view.identical} of {len(view.all_rows)} recorded tensors identical in every execution "
                          "(--all lists them)", style=theme.style("good")))
    shown = view.all_rows if show_all else view.differing
    if shown:
        grid = Table(title="Tensors in the order a step computes them" + ("" if show_all else " that differ between "
                     "repeats"), title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("stage", "tensor", "class", "first differs at step", "max ULP"):
            grid.add_column(column, overflow="fold")
        for row in shown:
            grid.add_row(row["stage"], Text(row["name"]), Text(row.get("class") or ""),
                         "-" if row.get("first_step") is None else str(row["first_step"]), f"{row['max_ulp']:,}")
        parts.append(grid)
    if view.random_line:
        parts.append(Text(view.random_line))
    parts += [Text(note, style=theme.style("failure" if is_source else "muted")) for note, is_source in
              view.pipeline_notes]
    if view.checks:
        fixes = Table(title="Environment: what decides reproducibility here, and the fix", title_justify="left",
                      box=box.SIMPLE_HEAD)
        columns = ("check", "state", "risk", "fix") if show_all else ("check", "state", "fix")
        for column in columns:
            fixes.add_column(column, overflow="fold")
        for check in view.checks:
            fixes.add_row(*(Text(str(check[k])) for k in columns))
        parts.append(fixes)
    if view.folded_note:
        parts.append(Text(view.folded_note, style=theme.style("muted")))
    return Group(*parts)


def audit_markdown(result: dict[str, Any]) -> str:
    """The audit as Markdown, to attach to a ticket."""
    view = AuditView.from_result(result)
    lines = [f"# detaudit audit: {view.model}", "", f"**Verdict: {view.verdict.value}**", ""]
    lines += [f"- {a.question.asks} {f'**{a.mark}**' if a.holds is False else a.mark}: {a.detail}"
              for a in view.answers] + [""]
    lines += [f"_{line}_" for line in view.training] + [""]
    if view.culprit:
        lines += [f"Culprit: {view.culprit.sentence()}.", "", f"Fix: {view.culprit.advice}.", ""]
    if view.differing:
        lines += ["| stage | tensor | class | first differs at step | max ULP |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['name']} | {r.get('class') or ''} | {r['first_step']} | {r['max_ulp']} |"
                  for r in view.differing]
    lines += [f"- Data pipeline: {s['node']}: {s['problem']} ({s['source']})" for s in view.pipeline]
    if view.checks:
        lines += ["", "## Environment and fixes", "", "| check | state | risk | fix |", "|---|---|---|---|"]
        lines += [f"| {c['check']} | {c['state']} | {c['risk']} | {c['fix']} |" for c in view.checks]
    return visible("\n".join(lines) + "\n")  # a report file is read in a terminal too


def _triaged_cell(cell: TriagedCell) -> RenderableType:
    """One reproduced cell of a triage as a panel: finding, op, question, toggles, answer, cause, files."""
    tried = "; ".join(f"{t.setting}: {t.outcome}" for t in cell.toggles) or "nothing to toggle"
    repro = cell.repro + ("" if cell.repro_is_short else " (the full one: no short form for this layer)")
    lines = [("Finding: ", cell.finding), ("Op: ", cell.op or "not recorded"), ("Question: ", cell.question),
             ("Tried: ", tried), (f"{cell.answer_label}: ", cell.answer), ("Upstream: ", cell.upstream),
             ("Most likely cause: ", cell.cause), ("Fix: ", cell.fix),
             ("Minimal case: ", f"{cell.minimal} ({cell.shrunk})"), ("Reproducer: ", repro),
             *([("Full reproducer: ", cell.repro_full)] if cell.repro_full else []), ("Report: ", cell.report)]
    body = Text("\n").join(Text.assemble((label, "bold"), text) for label, text in lines)
    return Panel(body, title=f"triage {cell.cell_id} ({cell.mode})")


def triage_report(result: dict[str, Any], limit: int = 10) -> RenderableType:
    """A stored triage run: the finding, the op behind it, the answer, the cause, the minimal case, the files;
    then the run's other findings with their cell ids."""
    view = TriageView.from_result(result)
    parts: list[RenderableType] = [Text(f"Triage of {view.source_run}", style="bold")]
    for cell in view.cells:
        parts.append(_triaged_cell(cell) if cell.reproduced else
                     Text(f"{cell.cell_id}: not reproduced (flaky, or gone)", style=theme.style("not_reproduced")))
    others = view.other_findings
    if others:
        parts.append(Text(f"Other findings ({len(others)}; triage one with --cell ID):", style="bold"))
        parts.extend(Text(f"  {line}") for line in others[:limit])
        if len(others) > limit:
            parts.append(Text(f"  ... and {len(others) - limit} more (triage.json lists them all)"))
    return Group(*parts)


def audit_comparison(comparison: Any) -> RenderableType:
    """``detaudit compare`` of two audits: environment differences first, then losses and final weights."""
    parts: list[RenderableType] = [Text(f"{comparison.base} -> {comparison.new}: "
                                        f"{'REPRODUCED' if comparison.reproduced else 'DIFFERENT WEIGHTS'}",
                                        style=theme.style("status.ok" if comparison.reproduced else "status.fail"))]
    if not comparison.same_training:
        parts.append(Text("These audits ran different trainings (model, seed or steps differ): expect differences.",
                          style=theme.style("warn")))
    if comparison.environment:
        env = Table(title="Environment differences", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("field", "base", "new"):
            env.add_column(column, overflow="fold")
        for field, a, b in comparison.environment:
            env.add_row(Text(str(field)), Text(str(a)), Text(str(b)))
        parts.append(env)
    parts.append(Text("Losses: identical at every step" if comparison.losses_equal
                      else f"Losses: differ from step {comparison.first_loss_difference}"))
    parts.append(Text("Final weights: bit-identical" if comparison.weights_equal
                      else f"Final weights: {len(comparison.variables)} variable(s) differ"))
    if comparison.variables:
        grid = Table(box=box.SIMPLE_HEAD)
        for column in ("variable", "elements differ", "max ULP", "max relative"):
            grid.add_column(column, overflow="fold")
        for row in comparison.variables:
            grid.add_row(Text(row["variable"]),
                         f"{row['n_differ']:,}/{row['size']:,}" if row.get("size") else row.get("note", "-"),
                         "-" if row.get("max_ulp") is None else f"{row['max_ulp']:,}",
                         "-" if row.get("max_relative") is None else f"{row['max_relative']:.2e}")
        parts.append(grid)
    return Group(*parts)


def cell_ids_table(summary: Any) -> Table:
    """Each cell's id (what ``triage --cell`` takes), layer, settings, seed and verdict."""
    grid = Table(title=f"Cells of {summary.run_id}", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("cell id", "layer", "settings", "seed", "verdict"):
        grid.add_column(column, no_wrap=column == "cell id", overflow="fold")
    for cell in summary.cells:
        grid.add_row(Text(cell.cell_id), Text(cell.layer), Text(cell.settings_label), str(cell.seed),
                     Text(cell.verdict.value, style=theme.style("verdict", cell.verdict)))
    return grid
