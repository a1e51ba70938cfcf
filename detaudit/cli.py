"""Command line: parse arguments, call the library, print, choose the exit code.

Exit codes: 0 every expectation held, 1 an expectation failed (or a cell
crashed or timed out), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from detaudit._version import __version__
from detaudit.analysis.compare import RunComparison, compare_runs
from detaudit.core.config import AXES, Cell, Settings, bundled_config_path, load_config
from detaudit.errors import DetauditError, RunDirError, UsageError
from detaudit.render.junit import JUnitCase, write_junit
from detaudit.render.terminal import (
    adjoint_table,
    audit_markdown,
    audit_report,
    checkerboard_panel,
    history_table,
    render_comparison,
    render_run,
    shapes_table,
    summary_json,
)
from detaudit.analysis.results import Verdict, cell_verdicts, evaluate, evaluate_cells
from detaudit.engine.runner import Event, RunInterrupted, parse_shard, run, spawn_env_probe
from detaudit.analysis.runs import StoredRun, list_runs, load_run, merge_runs, resolve_run

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(EXIT_BAD_INPUT, f"detaudit: error: {message} (see `detaudit {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"detaudit: error: {message} (see `detaudit --help`)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, with a message that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, received {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, received {value}")
        return value
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="detaudit", description="Determinism and numerics audits of TensorFlow transposed convolutions.")
    parser.add_argument("--version", action="version", version=f"detaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_run = sub.add_parser("run", help="run a config's matrix of cells and summarize it")
    p_run.add_argument("config", nargs="?", help="YAML config (default: the bundled configs/quick.yaml)")
    p_run.add_argument("--out", default="runs", help="directory for run directories (default: runs)")
    p_run.add_argument("--workers", type=_positive_int, default=None,
                       help="environment groups run in parallel (default: number of cores)")
    p_run.add_argument("--run-id", default=None, help="name of the run directory (default: timestamp-config)")
    p_run.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_run.add_argument("--shard", default=None, metavar="I/N",
                       help="run only shard I of N of the matrix (stable by cell id); join with `detaudit merge`")
    p_run.add_argument("--resume", default=None, metavar="RUN_DIR",
                       help="finish an interrupted run: cells already recorded are not run again")
    p_run.add_argument("--compare-to", default=None, metavar="RUN_DIR|latest",
                       help="after the run, compare it with this run (latest: the newest other run in --out)")
    p_run.add_argument("--junit", default=None, metavar="PATH", help="write JUnit XML, one testcase per cell")

    p_show = sub.add_parser("show", help="re-render a stored run")
    p_show.add_argument("run_dir")
    p_show.add_argument("--json", action="store_true", help="print the summary as JSON")

    p_cmp = sub.add_parser("compare", help="compare two stored runs cell by cell; exit 1 on a regression")
    p_cmp.add_argument("base", help="run directory, or latest / previous in --runs")
    p_cmp.add_argument("new", help="run directory, or latest / previous in --runs")
    p_cmp.add_argument("--runs", default="runs", help="where latest and previous are looked up (default: runs)")
    p_cmp.add_argument("--junit", default=None, metavar="PATH", help="write JUnit XML, one testcase per cell")
    p_cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")

    p_hist = sub.add_parser("history", help="list the stored runs, newest first")
    p_hist.add_argument("runs_dir", nargs="?", default="runs")
    p_hist.add_argument("--json", action="store_true", help="print as JSON")

    p_report = sub.add_parser("report", help="write a self-contained HTML report of a stored run")
    p_report.add_argument("run_dir")
    p_report.add_argument("--html", required=True, metavar="PATH", help="where to write the page")
    p_report.add_argument("--compare-to", default=None, metavar="RUN_DIR|previous",
                          help="add the drift table against this run")
    p_report.add_argument("--runs", default="runs", help="where previous/latest are looked up (default: runs)")

    p_shapes = sub.add_parser("shapes", help="audit output shapes, the Conv round trip and the checkerboard")
    p_shapes.add_argument("config", nargs="?", help="audit the Keras layers of this config instead of the flags")
    p_shapes.add_argument("--kernel", type=_positive_int)
    p_shapes.add_argument("--stride", type=_positive_int)
    p_shapes.add_argument("--padding", choices=["same", "valid"])
    p_shapes.add_argument("--dilation", type=_positive_int, default=1)
    p_shapes.add_argument("--output-padding", type=_non_negative_int, default=None)
    p_shapes.add_argument("--input", type=_positive_int, nargs="+", metavar="N", help="input lengths to audit")
    p_shapes.add_argument("--rank", type=int, choices=[1, 2, 3], default=2)
    p_shapes.add_argument("--no-tf", action="store_true", help="formulas only: do not start a TensorFlow worker")
    p_shapes.add_argument("--json", action="store_true", help="print as JSON")

    p_adj = sub.add_parser("adjoint", help="the dot-product test: is conv_transpose the adjoint of conv?")
    p_adj.add_argument("config", nargs="?", help="test the Keras and raw layers of this config (default: a built-in grid)")
    p_adj.add_argument("--threshold", type=float, default=64.0, help="fail above this many epsilons (default: 64)")
    p_adj.add_argument("--json", action="store_true", help="print as JSON")

    p_triage = sub.add_parser("triage", help="confirm, isolate, shrink and explain a difference; write a reproducer")
    p_triage.add_argument("target", help="a run directory (or latest), or a config to run first")
    p_triage.add_argument("--cell", default=None, help="the cell id to triage (default: every nondeterministic cell)")
    p_triage.add_argument("--budget-s", type=float, default=300.0, help="time budget for shrinking, per cell")
    p_triage.add_argument("--out", default="runs", help="where a config's run goes, and latest is looked up")

    p_audit = sub.add_parser("audit", help="pre-training determinism audit of your own Keras model")
    p_audit.add_argument("model", help="a .keras file, or module:function returning a Keras model")
    shape = p_audit.add_mutually_exclusive_group()
    shape.add_argument("--input-shape", default=None, help="batch included, e.g. 8,64,64,3 (default: the model's, batch 2)")
    shape.add_argument("--inputs", default=None, help="a .npy file with the input batch")
    p_audit.add_argument("--targets", default=None, help="a .npy file with the targets (default: seeded random)")
    p_audit.add_argument("--loss", default="mse")
    p_audit.add_argument("--steps", type=_positive_int, default=3)
    p_audit.add_argument("--repeats", type=_int_at_least(2), default=3)
    p_audit.add_argument("--seed", type=_non_negative_int, default=0)
    p_audit.add_argument("--device", default="cpu")
    p_audit.add_argument("--precision", default="float32")
    p_audit.add_argument("--determinism", default="off")
    p_audit.add_argument("--xla", default="off")
    p_audit.add_argument("--unsafe", action="store_true", help="allow code in the model file (Lambda layers)")
    p_audit.add_argument("--out", default="runs", help="where the audit's run directory goes (default: runs)")
    p_audit.add_argument("--report", default=None, metavar="PATH", help="write a Markdown report")
    p_audit.add_argument("--json", action="store_true", help="print as JSON")

    p_merge = sub.add_parser("merge", help="merge shard runs of one config into one run")
    p_merge.add_argument("run_dirs", nargs="+")
    p_merge.add_argument("--out", required=True, help="directory for the merged run directory")
    p_merge.add_argument("--json", action="store_true", help="print the summary as JSON")

    p_env = sub.add_parser("env", help="print this machine's environment fingerprint (for bug reports)")
    p_env.add_argument("--json", action="store_true", help="print as JSON")
    return parser


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # Piped into a CI log, rich would wrap at 80 columns; a log can afford the full table.
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


def _progress_callback(progress: Progress) -> Any:
    task = progress.add_task("cells", total=None)

    def on_event(event: Event) -> None:
        if event.kind == "planned":
            progress.update(task, total=event.total, description=event.message)
        elif event.kind == "cell_finished" and event.record is not None:
            status = event.record["status"]
            progress.update(task, advance=1, description=f"{event.cell_id} {status}")
    return on_event


def _print_summary(stored: StoredRun, as_json: bool, comparison: RunComparison | None = None) -> int:
    """Print a run's summary (and a comparison with it): rich text, or one JSON object."""
    table, meta, config = stored.table, stored.meta, stored.config
    failures = evaluate(table, config)
    if as_json:
        data = summary_json(table, meta, config.baseline, failures)
        if comparison is not None:
            data["comparison"] = comparison.to_dict()
        print(json.dumps(data, indent=2, default=str))
    else:
        console = _console()
        console.print(render_run(table, meta, config.baseline, failures))
        console.print(f"Results: {stored.store.results_path}  (re-render: detaudit show {stored.store.path})")
    return EXIT_FAILED if failures else EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard) if args.shard else None
    if args.resume and (args.config or shard):
        raise UsageError("--resume finishes a run with its own config and shard; give no CONFIG or --shard with it.")
    config = None if args.resume else load_config(args.config or bundled_config_path("quick"))
    err = _console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True, disable=args.json or not err.is_terminal) as progress:
            table = run(config, out=args.out, workers=args.workers, on_event=_progress_callback(progress),
                        run_id=args.run_id, shard=shard, resume=args.resume)
    except RunInterrupted as stop:
        stored = load_run(stop.run_dir)
        _print_summary(stored, args.json)
        err.print(f"Interrupted: the cells that finished are saved in {stop.run_dir}\n"
                  f"Resume with: detaudit run --resume {stop.run_dir}", style="bold yellow")
        return EXIT_INTERRUPTED
    stored = load_run(table.attrs["run_dir"])
    comparison = None
    if args.compare_to:
        base_path = resolve_run(args.compare_to, Path(args.out), exclude=stored.store.path)
        comparison = compare_runs(load_run(base_path), stored)
    code = _print_summary(stored, args.json, comparison)
    if comparison is not None and not args.json:
        _print_comparison(comparison, as_json=False)
    if args.junit:
        write_junit(args.junit, stored.run_id, _run_cases(stored))
    return max(code, EXIT_FAILED if comparison is not None and comparison.regressions else EXIT_OK)


def _run_cases(stored: StoredRun, failures: dict[str, list[str]] | None = None) -> list[JUnitCase]:
    """One JUnit testcase per cell; ``failures`` (cell id -> sentences) default to the failed expectations."""
    failures = evaluate_cells(stored.table, stored.config) if failures is None else failures
    cases = []
    for row in cell_verdicts(stored.table).to_dict("records"):
        settings = Settings(**{axis: row[axis] for axis in AXES})
        failed = failures.get(row["cell_id"])
        seconds = stored.table.loc[stored.table["cell_id"] == row["cell_id"], "seconds"].max()
        cases.append(JUnitCase(
            classname=f"{row['layer']} {row['input_shape']}", name=f"{settings.label()}, seed={row['seed']}",
            seconds=0.0 if seconds != seconds else float(seconds),
            failure="\n".join(failed) if failed else None,
            skipped=row["message"] if row["verdict"] == Verdict.SKIPPED.value else None))
    return cases


def _print_comparison(comparison: RunComparison, as_json: bool) -> None:
    if as_json:
        print(json.dumps(comparison.to_dict(), indent=2, default=str))
    else:
        _console().print(render_comparison(comparison))


def _cmd_show(args: argparse.Namespace) -> int:
    _print_summary(load_run(args.run_dir), args.json)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    new_path = resolve_run(args.new, args.runs)
    base_path = resolve_run(args.base, args.runs, exclude=new_path if args.base in ("latest", "previous")
                            and args.new not in ("latest", "previous") else None)
    comparison = compare_runs(load_run(base_path), load_run(new_path))
    _print_comparison(comparison, args.json)
    if args.junit:
        regressions: dict[str, list[str]] = {}
        for change in comparison.changes:
            if change.category.regression:
                regressions.setdefault(change.cell_id, []).append(
                    f"{change.category.mark} {change.category.name.lower()}: {change.detail}")
        write_junit(args.junit, f"{comparison.base_id}..{comparison.new_id}",
                    _run_cases(load_run(new_path), regressions))
    return EXIT_FAILED if comparison.regressions else EXIT_OK


def _cmd_history(args: argparse.Namespace) -> int:
    err = _console(stderr=True)
    rows = []
    for store in list_runs(args.runs_dir, on_skip=lambda path, why: err.print(f"skipped {path}: {why}", style="yellow")):
        meta = store.read_meta()
        if meta.get("kind") == "audit":
            tf = meta.get("tensorflow") or {}
            rows.append({"run_id": store.run_id, "started": str(meta.get("started") or ""),
                         "config": meta.get("config_name", "audit"), "tensorflow": str(tf.get("tensorflow_version") or "?"),
                         "device": "audit", "counts": {}, "verdict": meta.get("verdict"), "run_dir": str(store.path)})
            continue
        try:
            stored = load_run(store.path)
        except RunDirError as exc:
            err.print(f"skipped {store.path}: {exc}", style="yellow")
            continue
        tf = stored.meta.get("tensorflow") or {}
        gpus = [g.get("name") or g.get("device") for g in tf.get("gpus", [])]
        rows.append({"run_id": stored.run_id, "started": str(stored.meta.get("started") or ""),
                     "config": stored.config.name, "tensorflow": str(tf.get("tensorflow_version") or "?"),
                     "device": ", ".join(gpus) if gpus else "cpu", "counts": stored.verdict_counts(),
                     "run_dir": str(stored.store.path)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _console().print(history_table(rows))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from detaudit.render.html import render_html

    stored = load_run(resolve_run(args.run_dir, args.runs))
    comparison = None
    if args.compare_to:
        base = load_run(resolve_run(args.compare_to, args.runs, exclude=stored.store.path))
        comparison = compare_runs(base, stored)
    path = Path(args.html)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(stored, comparison), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the report ({exc.strerror}).") from None
    _console().print(f"Report: {path}")
    return EXIT_OK


def _shape_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(rank, n, kernel, stride, padding, dilation, output_padding) items from the flags or a config."""
    if args.config:
        items = []
        for layer in load_config(args.config).layers:
            if layer.rank is None or layer.kind == "resize_conv2d":
                continue
            p = layer.params
            spatial = layer.input_shape[2:] if p["data_format"] == "channels_first" else layer.input_shape[1:-1]
            for axis, n in enumerate(spatial):
                items.append({"rank": layer.rank, "n": n, "kernel": p["kernel_size"][axis], "stride": p["strides"][axis],
                              "padding": p["padding"], "dilation": p["dilation_rate"][axis],
                              "output_padding": (p.get("output_padding") or [None] * layer.rank)[axis]})
        return list({json.dumps(i, sort_keys=True): i for i in items}.values())
    missing = [f"--{name}" for name in ("kernel", "stride", "padding", "input") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"shapes needs {', '.join(missing)} (or a CONFIG).")
    return [{"rank": args.rank, "n": n, "kernel": args.kernel, "stride": args.stride, "padding": args.padding,
             "dilation": args.dilation, "output_padding": args.output_padding} for n in args.input]


def _cmd_shapes(args: argparse.Namespace) -> int:
    from detaudit.engine.runner import run_probe
    from detaudit.core.shapes import checkerboard_score, shape_row

    items = _shape_specs(args)
    rows = [shape_row(i["n"], i["kernel"], i["stride"], i["padding"], i["dilation"], i["output_padding"]).to_dict()
            for i in items]
    boards = [{"kernel": k, "stride": s, "dilation": d, "score": checkerboard_score(k, s, d, rank=2)}
              for k, s, d in dict.fromkeys((i["kernel"], i["stride"], i["dilation"]) for i in items)]
    if not args.no_tf:
        plain = [b for b in boards if b["dilation"] == 1]
        measured = run_probe("shapes", {"lengths": items, "checkerboard": plain})
        for row, length in zip(rows, measured["lengths"]):
            row["measured"] = length
        for board, taps in zip(plain, measured["checkerboard"]):
            board["measured"] = taps
    if args.json:
        print(json.dumps({"shapes": rows, "checkerboard": boards}, indent=2))
        return EXIT_OK
    console = _console()
    console.print(shapes_table(rows))
    for row in rows:
        if row["rejected"]:
            console.print(Text(f"  n={row['n']}: {row['rejected']}", style="yellow"))
    console.print(checkerboard_panel(boards))
    return EXIT_OK


ADJOINT_GRID = [{"rank": rank, "n": 5 if rank < 3 else 3, "kernel": k, "stride": s, "padding": padding,
                 "channels": 2, "filters": 3}
                for rank in (1, 2, 3) for k in (1, 2, 3, 4) for s in (1, 2, 3) for padding in ("same", "valid")]


def _cmd_adjoint(args: argparse.Namespace) -> int:
    from detaudit.engine.runner import run_probe

    if args.config:
        items = []
        for layer in load_config(args.config).layers:
            if layer.rank is None or layer.kind == "resize_conv2d" or layer.params["data_format"] != "channels_last":
                continue
            p = layer.params
            items.append({"rank": layer.rank, "n": layer.input_shape[1], "kernel": p["kernel_size"][0],
                          "stride": p["strides"][0], "padding": p["padding"], "channels": layer.input_shape[-1],
                          "filters": p["filters"]})
        if not items:
            raise UsageError(f"{args.config}: no channels_last Keras or raw transposed convolution to test.")
    else:
        items = ADJOINT_GRID
    rows = run_probe("adjoint", items)
    failed = [r for r in rows for res in r["results"].values()
              if not res.get("error") and res["adjoint_eps"] > args.threshold]
    if args.json:
        print(json.dumps({"threshold_eps": args.threshold, "failed": len(failed), "specs": rows}, indent=2))
    else:
        console = _console()
        console.print(adjoint_table(rows, args.threshold))
        console.print(Text(f"FAIL: {len(failed)} adjoint test(s) above {args.threshold:g} eps: a TensorFlow bug"
                           if failed else "PASS: conv_transpose is the adjoint of conv everywhere, and never its inverse",
                           style="bold red" if failed else "bold green"))
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_triage(args: argparse.Namespace) -> int:
    from detaudit.workflows.triage import triage_run

    target = Path(args.target)
    if target.suffix in (".yaml", ".yml") or target.is_file():
        stored = load_run(run(load_config(target), out=args.out).attrs["run_dir"])
    else:
        stored = load_run(resolve_run(args.target, args.out))
    console = _console()

    def header(cell: Cell, mode: str) -> None:
        kind = "run-to-run difference" if mode == "repeat" else "drift from the baseline"
        console.print(Text(f"Triage {cell.cell_id} ({kind})", style="bold"))
        console.print(Text(f"  {cell.layer.describe()} [{cell.settings.label()}, seed={cell.seed}]"))

    outcomes = triage_run(stored, args.cell, args.budget_s, on_cell=header,
                          on_step=lambda s: console.print(Text(f"  {s.stage:8s} {s.what}: {s.outcome}")))
    if not outcomes:
        console.print(Text("Nothing to triage: no cell differs run to run"
                           + (" or from the baseline" if args.cell else "") + ".", style="bold green"))
        return EXIT_OK
    code = EXIT_OK
    for cell, result in outcomes:
        if result is None:
            console.print(Text(f"  Not reproduced in {max(cell.repeats, 5)} repeats: flaky, or gone.",
                               style="bold yellow"))
            code = EXIT_FAILED
            continue
        console.print(Panel(Text.assemble(
            ("Most likely cause: ", "bold"), result.explanation["cause"], "\n",
            ("Fix: ", "bold"), result.explanation["fix"], "\n",
            ("Removed by: ", "bold"), ", ".join(result.removed_by) or "no single setting", "\n",
            ("Minimal case: ", "bold"), result.minimal.layer.describe(), "\n",
            ("Reproducer: ", "bold"), f"python {result.repro}", "\n",
            ("Report: ", "bold"), str(result.report)), title=f"triage {cell.cell_id}"))
    return code


def _cmd_audit(args: argparse.Namespace) -> int:
    from detaudit.workflows.audit import run_audit
    from detaudit.core.config import parse_config

    settings_data = {"device": args.device, "precision": args.precision, "determinism": args.determinism,
                     "xla": args.xla}
    try:  # the same validators as a config's matrix, so errors read the same
        checked = parse_config({"name": "audit", "layers": [{"kind": "x.y:Z", "input_shape": [1]}],
                                "matrix": settings_data}, source="arguments")
    except DetauditError as exc:
        raise UsageError(str(exc).replace("`matrix.", "`--").replace("[0]`", "`").replace("[0]=", "=")) from None
    input_shape = None
    if args.input_shape:
        try:
            input_shape = [int(part) for part in args.input_shape.split(",")]
        except ValueError:
            raise UsageError(f"Invalid value for argument `--input-shape`. Expected integers such as 8,64,64,3. "
                             f"Received {args.input_shape!r}.") from None
    result = run_audit(args.model, Settings(**{axis: values[0] for axis, values in checked.matrix}), out=args.out,
                       input_shape=input_shape, inputs=args.inputs, targets=args.targets, loss=args.loss,
                       steps=args.steps, repeats=args.repeats, seed=args.seed, unsafe=args.unsafe)
    if args.report:
        Path(args.report).write_text(audit_markdown(result), encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        console = _console()
        console.print(audit_report(result))
        console.print(f"Results: {result['results_path']}")
    return EXIT_OK if result["verdict"] == "REPRODUCIBLE" else EXIT_FAILED


def _cmd_merge(args: argparse.Namespace) -> int:
    merged = merge_runs(args.run_dirs, args.out)
    _print_summary(merged, args.json)
    return EXIT_OK


def _cmd_env(args: argparse.Namespace) -> int:
    from detaudit.engine.fingerprint import host_fingerprint

    info = {"host": host_fingerprint(), "tensorflow": spawn_env_probe()}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    console = _console()
    for section, values in info.items():
        console.print(f"[bold]{section}[/bold]")
        for key, value in values.items():
            console.print(f"  {key}: {value}", highlight=False, markup=False)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``detaudit`` console script."""
    args = _parser().parse_args(argv)
    handlers = {"run": _cmd_run, "show": _cmd_show, "env": _cmd_env, "compare": _cmd_compare,
                "history": _cmd_history, "merge": _cmd_merge, "report": _cmd_report, "shapes": _cmd_shapes,
                "adjoint": _cmd_adjoint, "triage": _cmd_triage, "audit": _cmd_audit}
    try:
        return handlers[args.command](args)
    except DetauditError as exc:
        print(f"detaudit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("detaudit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
