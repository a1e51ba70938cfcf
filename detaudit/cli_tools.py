"""The commands that run a workflow in TensorFlow workers and print its report: shapes, adjoint, triage, audit.

Part of the command line (:mod:`detaudit.cli`): parse-call-print, with the exit code from the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detaudit.cli_common import err_console, show_progress, out_console, outside_runs, print_json, writable, write
from detaudit.core.vocabulary import ExitCode
from detaudit.errors import UsageError

__all__ = ["cmd_adjoint", "cmd_audit", "cmd_shapes", "cmd_triage", "print_audit_comparison"]


def print_audit_comparison(base: Any, new: Any, as_json: bool) -> int:
    from detaudit.analysis.audit_compare import compare_audits
    from detaudit.render.tools import audit_comparison

    comparison = compare_audits(base, new)
    if as_json:
        print_json(comparison.to_dict())
    else:
        out_console().print(audit_comparison(comparison))
    return ExitCode.OK if comparison.reproduced else ExitCode.FAILED


def cmd_shapes(args: Any) -> int:
    from detaudit.core.config import load_config
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import checkerboard_panel, shapes_table
    from detaudit.workflows.shapes import config_items, run_shapes

    if args.config:
        given = [f"--{n}" for n in ("kernel", "stride", "padding", "input", "output_padding")
                 if getattr(args, n) is not None]
        if given:
            raise UsageError(f"shapes takes a CONFIG or the flags, not both: {', '.join(given)} given with "
                             f"{args.config}.")
        items = config_items(load_config(args.config))
    else:
        missing = [f"--{name}" for name in ("kernel", "stride", "padding", "input") if getattr(args, name) is None]
        if missing:
            raise UsageError(f"shapes needs {', '.join(missing)} (or a CONFIG).")
        if args.output_padding is not None and args.output_padding >= args.stride:
            raise UsageError(f"Invalid value for argument `--output-padding`. Expected a value smaller than the stride "
                             f"{args.stride}. Received {args.output_padding}.")
        items = [{"rank": args.rank, "n": n, "kernel": args.kernel, "stride": args.stride, "padding": args.padding,
                  "dilation": args.dilation, "output_padding": args.output_padding} for n in args.input]
    with StageProgress(err_console(), show_progress(args.json), "starting TensorFlow") as progress:
        report = run_shapes(items, measure=not args.no_tf, on_progress=progress.update)
    if args.json:
        print_json(report)
        return ExitCode.OK
    out = out_console()
    out.print(shapes_table(report["shapes"], report["path"]))
    for row in report["shapes"]:
        if row["rejected"]:
            out.print(f"  n={row['n']}: {row['rejected']}", style="yellow", highlight=False)
    out.print(checkerboard_panel(report["checkerboard"]))
    return ExitCode.OK


def cmd_adjoint(args: Any) -> int:
    from detaudit.core.config import load_config
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import adjoint_table
    from detaudit.workflows.adjoint import run_adjoint

    config = load_config(args.config) if args.config else None
    with StageProgress(err_console(), show_progress(args.json), "starting TensorFlow") as progress:
        report = run_adjoint(config, args.threshold, args.strict, on_progress=progress.update)
    report["all"] = args.all
    if args.json:
        print_json({**report, "known_matches": [{"id": m.bug.id, "title": m.bug.title, "link": m.bug.link,
                                                  "spec": m.cell, "detail": m.detail, "fixed_upstream": m.fixed}
                                                 for m in report["known_matches"]]})
    else:
        out_console().print(adjoint_table(report))
    return ExitCode.FAILED if report["failed"] else ExitCode.OK


def cmd_triage(args: Any) -> int:
    from rich.text import Text

    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.core.config import bundled_config_names, load_config
    from detaudit.engine.runner import run
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import triage_report
    from detaudit.workflows.targets import TriageMode
    from detaudit.workflows.triage import triage_run

    target = Path(args.target)
    shown = show_progress(False)
    out = out_console()
    with StageProgress(err_console(), shown, "starting") as progress:
        if target.suffix in (".yaml", ".yml") or target.is_file() or args.target in bundled_config_names():
            stored = load_run(run(load_config(target), out=args.out).attrs["run_dir"])
        else:
            stored = load_run(resolve_run(args.target, args.out))

        def on_cell(cell: Any, mode: str) -> None:
            kind = TriageMode(mode).description
            out.print(Text(f"Triage {cell.cell_id} ({kind}): {cell.layer.describe()} "
                           f"[{cell.settings.label()}, seed={cell.seed}]", style="bold"))

        stage = ["starting"]
        done = [0, 0]

        def on_step(step: Any) -> None:
            if step.outcome == "running":
                stage[0] = f"{step.stage}: {step.what}"
                progress.update(stage[0])
            else:
                out.print(Text(f"  {step.stage:8s} {step.what}" + (f": {step.outcome}" if step.outcome else "")),
                          highlight=False)

        def on_event(event: Any) -> None:  # the cells of each measurement, as they finish
            if event.kind == "planned":
                done[:] = [0, event.total]
            elif event.kind == "cell_finished":
                done[0] += 1
            progress.update(f"{stage[0]} ({done[0]}/{done[1]} cells)")

        triage_dir, outcomes, _ = triage_run(stored, args.cell, args.budget_s, args.out, on_cell=on_cell,
                                             on_step=on_step, on_event=on_event)
    if triage_dir is None:
        out.print(Text(f"Nothing to triage: {'the cell' if args.cell else 'the run'} has no finding (no run-to-run "
                       "difference, no drift from the baseline, no tensor beyond its limit of float64, no failed "
                       "adjoint test).", style="bold green"))
        return ExitCode.OK
    triage = load_run(triage_dir)
    assert triage.result is not None
    out.print(triage_report(triage.result))
    out.print(f"Triage run: {triage_dir}", highlight=False)
    return ExitCode.OK if all(result is not None for _, result in outcomes) else ExitCode.FAILED


def cmd_audit(args: Any) -> int:
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.core.audit_outcome import AuditVerdict
    from detaudit.core.axes import AXES
    from detaudit.core.config import Settings
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import audit_markdown, audit_report
    from detaudit.workflows.audit import run_audit

    report = writable(args.report, "--report")
    outside_runs(args.out, "--out")  # the audit's run goes beside the others, never inside one
    base = load_run(resolve_run(args.compare_to, args.out)) if args.compare_to else None
    input_shape = None
    if args.input_shape:
        try:
            input_shape = [int(part) for part in args.input_shape.split(",")]
        except ValueError:
            input_shape = None
        if not input_shape or any(n < 1 for n in input_shape) or len(input_shape) < 2:
            raise UsageError(f"Invalid value for argument `--input-shape`. Expected positive integers, batch first, "
                             f"such as 8,64,64,3. Received {args.input_shape[:80]!r}.")
    settings = Settings(**{name: getattr(args, name) for name in AXES})
    with StageProgress(err_console(), show_progress(args.json), "starting TensorFlow") as progress:
        result = run_audit(args.model, settings, out=args.out, input_shape=input_shape, inputs=args.inputs,
                           targets=args.targets, loss=args.loss, steps=args.steps, repeats=args.repeats,
                           seed=args.seed, unsafe=args.unsafe, batch_size=args.batch_size,
                           resume_step=args.resume_step, on_progress=progress.update)
    if report is not None:
        write(report, "--report", lambda: report.write_text(audit_markdown(result), encoding="utf-8"))
    if args.json:
        print_json(result)
    else:
        out = out_console()
        out.print(audit_report(result, show_all=args.all))
        out.print(f"Stored: {result['run_dir']}  (again: detaudit show {result['run_dir']})", highlight=False,
                  soft_wrap=True)
    code = ExitCode.OK if AuditVerdict(result["verdict"]).passed else ExitCode.FAILED
    if base is not None:
        code = max(code, print_audit_comparison(base, load_run(result["run_dir"]), args.json))
    return code


