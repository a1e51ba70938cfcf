"""Command line: parse arguments, call the library, print, choose the exit code.

The arguments, their help and the exit codes are declared in
:mod:`detaudit.arguments`; the work is done by the engine, analysis and
workflows; the output is formatted by :mod:`detaudit.render`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from detaudit.arguments import build_parser, version_text
from detaudit.core.vocabulary import ExitCode, RunStatus
from detaudit.errors import DetauditError, RunDirError, UsageError

__all__ = ["main"]


def _out() -> Any:
    from detaudit.render.terminal import console

    return console()


def _err() -> Any:
    from detaudit.render.terminal import console

    return console(stderr=True)


def _live(as_json: bool) -> bool:
    """Progress only on a terminal, and never with --json."""
    return not as_json and sys.stderr.isatty()


def _outside_runs(path: str | Path, what: str) -> None:
    """Refuse an output path inside a run directory: a report written there would replace a run's records.

    Raises:
        UsageError: naming the argument and the run directory.
    """
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / "meta.json").is_file() or (folder / "cells.jsonl").is_file():
            raise UsageError(f"Invalid value for argument `{what}`. Expected a path outside every run directory. "
                             f"Received {str(path)!r}, inside the run directory {folder}.")


def _writable(path: str | None, what: str) -> Path | None:
    """Check an output path before any work: not a directory, not inside a run directory, and its folder can be
    made and the file written (``/dev/full`` cannot).

    Raises:
        UsageError: naming the argument and why the path cannot be written.
    """
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"Invalid value for argument `{what}`. Expected a file path. Received {path!r}, a directory.")
    _outside_runs(target, what)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            if existed and not target.is_file():  # a device: only a write shows whether it takes data
                handle.write("\n")
                handle.flush()
    except OSError as exc:
        raise UsageError(f"Invalid value for argument `{what}`. Cannot write {path!r}: "
                         f"{exc.strerror or exc.__class__.__name__}.") from None
    if not existed:
        target.unlink()
    return target


def _write(path: Path, what: str, write: Any) -> None:
    """Write an output file after the work; a failure (the disk filled meanwhile) is one line, not a traceback."""
    try:
        write()
    except OSError as exc:
        raise UsageError(f"Invalid value for argument `{what}`. Cannot write {str(path)!r}: "
                         f"{exc.strerror or exc.__class__.__name__}.") from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _summary_code(summary: Any) -> int:
    return ExitCode.OK if summary.status == RunStatus.PASS else ExitCode.FAILED


def _note(text: str) -> None:
    """A yellow line on stderr, as written (paths and names from run directories are not markup)."""
    _err().print(text, style="yellow", highlight=False, markup=False, soft_wrap=True)


def _print_run(stored: Any, as_json: bool, strict: bool, comparison: Any = None,
               not_compared: str = "") -> tuple[int, Any]:
    """Print a matrix run's summary (and a comparison with it, or why there is none when one was asked for);
    return its exit code and the summary."""
    from detaudit.analysis.summary import build_summary
    from detaudit.render.terminal import render_comparison, render_run

    summary = build_summary(stored, strict=strict)
    if stored.table_note:
        _note(stored.table_note)
    if as_json:
        data = summary.to_dict()
        if comparison is not None:
            data["comparison"] = comparison.to_dict()
        elif not_compared:  # CI reading the JSON must see that the regression gate did not run
            data["comparison"], data["not_compared"] = None, not_compared
        _print_json(data)
    else:
        out = _out()
        out.print(render_run(summary))
        if summary.completeness.resume_command:  # a command to copy is never wrapped
            out.print(f"Resume with: {summary.completeness.resume_command}", style="bold yellow", highlight=False,
                      soft_wrap=True)
        where = stored.table_source or stored.store.cells_path  # never a results.parquet that was not used
        out.print(f"Results: {where}  (again: detaudit show {stored.path})", highlight=False, soft_wrap=True)
        if comparison is not None:
            out.print(render_comparison(comparison))
    return _summary_code(summary), summary


def _cmd_run(args: Any) -> int:
    from detaudit.analysis.compare import compare_runs
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.core.config import bundled_config_path, load_config
    from detaudit.engine.runner import RunInterrupted, parse_shard, run
    from detaudit.render.junit import summary_cases, write_junit
    from detaudit.render.progress import RunProgress

    shard = parse_shard(args.shard) if args.shard is not None else None
    if args.run_id is not None and not args.run_id:
        raise UsageError("Invalid value for argument `--run-id`. Expected a non-empty name. Received ''.")
    if args.resume and (args.config or shard or args.run_id or args.out != "runs"):
        raise UsageError("--resume finishes a run with its own config, shard, id and place; give no CONFIG, --shard, "
                         "--run-id or --out with it.")
    junit = _writable(args.junit, "--junit")
    if not args.resume:
        _outside_runs(args.out, "--out")  # a new run goes beside the others, never inside one
    config = None if args.resume else load_config(args.config or bundled_config_path("quick"))
    runs_dir = Path(args.resume).parent if args.resume else Path(args.out)
    base_path, not_compared = None, ""
    if args.compare_to:  # resolved before the run: a bad path is bad input, before any work
        try:
            base_path = resolve_run(args.compare_to, runs_dir, relative_to=Path(args.resume) if args.resume else None,
                                    config_name=config.name if config is not None else None)
        except RunDirError as exc:  # `latest` on the first night: run, and be the base of later ones
            not_compared = f"nothing to compare with yet ({exc})"
        else:
            if load_run(base_path).config is None:
                raise UsageError(f"{base_path}: not a run of `detaudit run`; --compare-to takes a matrix run.")
    if not_compared:
        _note(f"Not compared: {not_compared}.")
    try:
        with RunProgress(_err(), _live(args.json)) as progress:
            table = run(config, out=args.out, workers=args.workers, on_event=progress.on_event, run_id=args.run_id,
                        shard=shard, resume=args.resume, retry_failed=args.retry_failed)
    except RunInterrupted as stop:
        _print_run(load_run(stop.run_dir), args.json, args.strict)  # its code: the interruption's, below
        why = f"Stopped: {stop.reason}" if stop.reason else "Interrupted"
        # The summary above ends with the resume command; with --json it is in the JSON, and said here too.
        resume = f"\nResume with: detaudit run --resume {stop.run_dir}" if args.json else ""
        _err().print(f"{why}. The cells that finished are saved in {stop.run_dir}{resume}", style="bold yellow",
                     highlight=False, markup=False, soft_wrap=True)  # a command to copy is never wrapped
        return ExitCode.FAILED if stop.reason else ExitCode.INTERRUPTED
    stored = load_run(table.attrs["run_dir"])
    comparison = None
    if base_path is not None:
        try:
            comparison = compare_runs(load_run(base_path), stored)
        except UsageError as exc:  # e.g. the config changed under its name: the two runs share no cell
            not_compared = str(exc)
    code, summary = _print_run(stored, args.json, args.strict, comparison, not_compared)
    if not_compared and base_path is not None:
        _note(f"Not compared: {not_compared}")
    if junit is not None:
        _write(junit, "--junit", lambda: write_junit(junit, stored.run_id, summary_cases(summary)))
    return max(code, ExitCode.FAILED if comparison is not None and comparison.regressions else ExitCode.OK)


def _cmd_show(args: Any) -> int:
    from detaudit.analysis.audit_view import AuditView
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.analysis.triage_view import TriageView
    from detaudit.engine.store import RunKind
    from detaudit.render.tools import audit_report, triage_report

    stored = load_run(resolve_run(args.run_dir, args.runs, kinds=None))
    if stored.kind is RunKind.MATRIX and args.ids:
        from detaudit.analysis.summary import build_summary
        from detaudit.render.tools import cell_ids_table

        _out().print(cell_ids_table(build_summary(stored, args.strict)))
        return ExitCode.OK
    if stored.kind is RunKind.MATRIX:
        return _print_run(stored, args.json, args.strict)[0]
    assert stored.result is not None
    if args.json:
        _print_json({"run_id": stored.run_id, "kind": stored.kind.value, **stored.result})
    elif stored.kind is RunKind.AUDIT:
        _out().print(audit_report(stored.result, show_all=args.all))
    else:
        _out().print(triage_report(stored.result))
    if stored.kind is RunKind.AUDIT:
        return ExitCode.OK if AuditView.from_result(stored.result).verdict.passed else ExitCode.FAILED
    return ExitCode.OK if TriageView.from_result(stored.result).status == RunStatus.PASS else ExitCode.FAILED


def _print_audit_comparison(base: Any, new: Any, as_json: bool) -> int:
    from detaudit.analysis.audit_compare import compare_audits
    from detaudit.render.tools import audit_comparison

    comparison = compare_audits(base, new)
    if as_json:
        _print_json(comparison.to_dict())
    else:
        _out().print(audit_comparison(comparison))
    return ExitCode.OK if comparison.reproduced else ExitCode.FAILED


def _cmd_compare(args: Any) -> int:
    from detaudit.analysis.compare import compare_runs
    from detaudit.engine.store import RunKind
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.analysis.summary import build_summary
    from detaudit.render.junit import summary_cases, write_junit
    from detaudit.render.terminal import render_comparison

    junit = _writable(args.junit, "--junit")
    new_path = resolve_run(args.new, args.runs)
    base_path = resolve_run(args.base, args.runs, relative_to=new_path)
    new = load_run(new_path)
    base = load_run(base_path)
    if RunKind.AUDIT in (base.kind, new.kind):
        return _print_audit_comparison(base, new, args.json)
    comparison = compare_runs(base, new)
    if args.json:
        _print_json(comparison.to_dict())
    else:
        _out().print(render_comparison(comparison))
    if junit is not None:
        regressions: dict[str, list[str]] = {}
        for change in comparison.changes:
            if change.category.regression:
                regressions.setdefault(change.cell_id, []).append(
                    f"{change.category.mark} {change.category.label}: {change.detail}")
        _write(junit, "--junit", lambda: write_junit(junit, f"{comparison.base_id}..{comparison.new_id}",
                                                     summary_cases(build_summary(new), regressions)))
    if new.completeness is not None and not new.completeness.complete:
        _err().print(f"{new.run_id} is INCOMPLETE ({len(new.completeness.missing)} cells have no record): "
                     "its missing cells are not compared.", style="bold yellow", highlight=False)
        return ExitCode.FAILED
    return ExitCode.FAILED if comparison.regressions else ExitCode.OK


def _cmd_history(args: Any) -> int:
    from detaudit.analysis.history import history_rows
    from detaudit.render.terminal import history_table

    rows = history_rows(args.runs_dir, on_skip=lambda path, why: _note(f"skipped {path}: {why}"))
    if args.json:
        _print_json(rows)
    else:
        _out().print(history_table(rows) if rows else f"No runs in {args.runs_dir}.", highlight=False)
    return ExitCode.OK


def _cmd_report(args: Any) -> int:
    from detaudit.analysis.compare import compare_runs
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.analysis.summary import build_summary
    from detaudit.engine.store import RunKind
    from detaudit.render.html import render_html, render_overview

    target = Path(args.target)
    path = _writable(args.html, "--html")
    assert path is not None
    if args.target not in ("latest", "previous") and target.is_dir() and not (target / "meta.json").exists():
        page = render_overview(target)
    else:
        stored = load_run(resolve_run(args.target, args.runs, kinds=None))
        if stored.kind is not RunKind.MATRIX:
            from detaudit.render.html import render_result_page

            page = render_result_page(stored)
        else:
            comparison = None
            if args.compare_to:
                base = load_run(resolve_run(args.compare_to, args.runs, relative_to=stored.path))
                comparison = compare_runs(base, stored)
            page = render_html(stored, build_summary(stored), comparison)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the report ({exc.strerror}).") from None
    _out().print(f"Report: {path}", highlight=False)
    return ExitCode.OK


def _cmd_shapes(args: Any) -> int:
    from detaudit.core.config import load_config
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import checkerboard_panel, shapes_table
    from detaudit.workflows.shapes import config_items, run_shapes

    if args.config:
        given = [f"--{n}" for n in ("kernel", "stride", "padding", "input", "output_padding") if getattr(args, n) is not None]
        if given:
            raise UsageError(f"shapes takes a CONFIG or the flags, not both: {', '.join(given)} given with {args.config}.")
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
    with StageProgress(_err(), _live(args.json), "starting TensorFlow") as progress:
        report = run_shapes(items, measure=not args.no_tf, on_progress=progress.update)
    if args.json:
        _print_json(report)
        return ExitCode.OK
    out = _out()
    out.print(shapes_table(report["shapes"], report["path"]))
    for row in report["shapes"]:
        if row["rejected"]:
            out.print(f"  n={row['n']}: {row['rejected']}", style="yellow", highlight=False)
    out.print(checkerboard_panel(report["checkerboard"]))
    return ExitCode.OK


def _cmd_adjoint(args: Any) -> int:
    from detaudit.core.config import load_config
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import adjoint_table
    from detaudit.workflows.adjoint import run_adjoint

    config = load_config(args.config) if args.config else None
    with StageProgress(_err(), _live(args.json), "starting TensorFlow") as progress:
        report = run_adjoint(config, args.threshold, args.strict, on_progress=progress.update)
    report["all"] = args.all
    if args.json:
        _print_json({**report, "known_matches": [{"id": m.bug.id, "title": m.bug.title, "link": m.bug.link,
                                                  "spec": m.cell, "detail": m.detail, "fixed_upstream": m.fixed}
                                                 for m in report["known_matches"]]})
    else:
        _out().print(adjoint_table(report))
    return ExitCode.FAILED if report["failed"] else ExitCode.OK


def _cmd_triage(args: Any) -> int:
    from rich.text import Text

    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.core.config import bundled_config_names, load_config
    from detaudit.engine.runner import run
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import triage_report
    from detaudit.workflows.targets import TriageMode
    from detaudit.workflows.triage import triage_run

    target = Path(args.target)
    live = _live(False)
    out = _out()
    with StageProgress(_err(), live, "starting") as progress:
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


def _cmd_audit(args: Any) -> int:
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.core.audit_outcome import AuditVerdict
    from detaudit.core.axes import AXES
    from detaudit.core.config import Settings
    from detaudit.render.progress import StageProgress
    from detaudit.render.tools import audit_markdown, audit_report
    from detaudit.workflows.audit import run_audit

    report = _writable(args.report, "--report")
    _outside_runs(args.out, "--out")  # the audit's run goes beside the others, never inside one
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
    with StageProgress(_err(), _live(args.json), "starting TensorFlow") as progress:
        result = run_audit(args.model, settings, out=args.out, input_shape=input_shape, inputs=args.inputs,
                           targets=args.targets, loss=args.loss, steps=args.steps, repeats=args.repeats,
                           seed=args.seed, unsafe=args.unsafe, batch_size=args.batch_size,
                           resume_step=args.resume_step, on_progress=progress.update)
    if report is not None:
        _write(report, "--report", lambda: report.write_text(audit_markdown(result), encoding="utf-8"))
    if args.json:
        _print_json(result)
    else:
        out = _out()
        out.print(audit_report(result, show_all=args.all))
        out.print(f"Stored: {result['run_dir']}  (again: detaudit show {result['run_dir']})", highlight=False,
                  soft_wrap=True)
    code = ExitCode.OK if AuditVerdict(result["verdict"]).passed else ExitCode.FAILED
    if base is not None:
        code = max(code, _print_audit_comparison(base, load_run(result["run_dir"]), args.json))
    return code


def _cmd_merge(args: Any) -> int:
    from detaudit.analysis.runs import merge_runs

    _outside_runs(args.out, "--out")  # the merged run goes beside its shards, never inside one
    return _print_run(merge_runs(args.run_dirs, args.out), args.json, False)[0]


def _cmd_env(args: Any) -> int:
    from detaudit.engine.fingerprint import host_fingerprint
    from detaudit.engine.runner import spawn_env_probe

    info = {"host": host_fingerprint(), "tensorflow": spawn_env_probe()}
    if args.json:
        _print_json(info)
        return ExitCode.OK
    out = _out()
    for section, values in info.items():
        out.print(section, style="bold", highlight=False)
        for key, value in values.items():
            out.print(f"  {key}: {value}", highlight=False, markup=False)
    return ExitCode.OK


def _cmd_schema(args: Any) -> int:
    from detaudit.core.schema import config_schema

    _print_json(config_schema())
    return ExitCode.OK


_HANDLERS = {"run": _cmd_run, "show": _cmd_show, "compare": _cmd_compare, "history": _cmd_history,
             "report": _cmd_report, "shapes": _cmd_shapes, "adjoint": _cmd_adjoint, "triage": _cmd_triage,
             "audit": _cmd_audit, "merge": _cmd_merge, "env": _cmd_env, "schema": _cmd_schema}


class _Output:
    """sys.stdout or sys.stderr made safe for any reader: a character the encoding lacks is written as an escape
    (``PYTHONIOENCODING=ascii``, ``LC_ALL=C``), and once the reader has gone (``detaudit run | head -1``) the rest
    is dropped, so the command finishes with its own exit code instead of failing on the pipe."""

    def __init__(self, stream: Any):
        self._stream, self.closed_by_reader = stream, False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                return self._guarded(lambda: self._stream.write(
                    text.encode(encoding, "backslashreplace").decode(encoding)), len(text))
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            self._guarded(self._stream.flush, None)

    def _guarded(self, action: Any, default: Any) -> Any:
        try:
            return action()
        except BrokenPipeError:
            self._reader_left()
            return default

    def _reader_left(self) -> None:
        self.closed_by_reader = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # the interpreter's last flush must not fail
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno: the stream's own
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``detaudit`` console script."""
    streams = sys.stdout, sys.stderr
    if sys.stdout is not None and not isinstance(sys.stdout, _Output):
        sys.stdout = _Output(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None and not isinstance(sys.stderr, _Output):
        sys.stderr = _Output(sys.stderr)  # type: ignore[assignment]
    try:
        return int(_main_with_signals(argv))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stdout, sys.stderr = streams  # main() called in-process leaves the streams as it found them


def _main_with_signals(argv: list[str] | None) -> int:
    terminated = False

    def on_sigterm(signum: int, frame: Any) -> None:
        # SIGTERM (a cancelled CI job, Slurm or Kubernetes stopping a task) is handled as Ctrl-C is: workers
        # stopped, what finished saved, the resume command printed; the exit status is then the shell's 143.
        nonlocal terminated
        terminated = True
        raise KeyboardInterrupt

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread (detaudit called from a thread): leave it be
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        code = _main(argv)
    finally:
        if previous is not None:  # main() called in-process (tests, a service) leaves SIGTERM as it found it
            signal.signal(signal.SIGTERM, previous)
    return ExitCode.TERMINATED if terminated and code == ExitCode.INTERRUPTED else code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return ExitCode.OK
    if args.command is None:
        print("detaudit: error: a command is required (see `detaudit --help`)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        return _HANDLERS[args.command](args)
    except DetauditError as exc:
        from detaudit.render.text import visible

        for line in str(exc).splitlines() or [exc.__class__.__name__]:  # may quote a run's or a config's text
            print(f"detaudit: error: {visible(line)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("detaudit: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `detaudit show | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = None  # type: ignore[assignment]
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
