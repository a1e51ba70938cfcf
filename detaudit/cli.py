"""Command line: parse arguments, call the library, print, choose the exit code.

The arguments, their help and the exit codes are declared in
:mod:`detaudit.arguments`; the work is done by the engine, analysis and
workflows; the output is formatted by :mod:`detaudit.render`. The commands
that run a workflow live in :mod:`detaudit.cli_tools`, what all commands
share in :mod:`detaudit.cli_common`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from detaudit.arguments import build_parser, version_text
from detaudit.cli_common import (
    SafeStream,
    err_console,
    show_progress,
    note,
    out_console,
    outside_runs,
    print_json,
    summary_code,
    writable,
    write,
)
from detaudit.cli_tools import cmd_adjoint, cmd_audit, cmd_shapes, cmd_triage, print_audit_comparison
from detaudit.core.vocabulary import ExitCode, RunStatus
from detaudit.errors import DetauditError, RunDirError, UsageError

__all__ = ["main"]


def _print_run(stored: Any, as_json: bool, strict: bool, comparison: Any = None,
               not_compared: str = "") -> tuple[int, Any]:
    """Print a matrix run's summary (and a comparison with it, or why there is none when one was asked for);
    return its exit code and the summary."""
    from detaudit.analysis.summary import build_summary
    from detaudit.render.terminal import render_comparison, render_run

    summary = build_summary(stored, strict=strict)
    if stored.table_note:
        note(stored.table_note)
    if as_json:
        data = summary.to_dict()
        if comparison is not None:
            data["comparison"] = comparison.to_dict()
        elif not_compared:  # CI reading the JSON must see that the regression gate did not run
            data["comparison"], data["not_compared"] = None, not_compared
        print_json(data)
    else:
        out = out_console()
        out.print(render_run(summary))
        if summary.completeness.resume_command:  # a command to copy is never wrapped
            out.print(f"Resume with: {summary.completeness.resume_command}", style="bold yellow", highlight=False,
                      soft_wrap=True)
        where = stored.table_source or stored.store.cells_path  # never a results.parquet that was not used
        out.print(f"Results: {where}  (again: detaudit show {stored.path})", highlight=False, soft_wrap=True)
        if comparison is not None:
            out.print(render_comparison(comparison))
    return summary_code(summary), summary


def _cmd_run(args: Any) -> int:
    from detaudit.analysis.compare import compare_runs
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.core.config import bundled_config_path, load_config
    from detaudit.engine.runner import RunInterrupted, run
    from detaudit.render.junit import summary_cases, write_junit
    from detaudit.render.progress import RunProgress

    shard = args.shard
    if args.run_id is not None and not args.run_id:
        raise UsageError("Invalid value for argument `--run-id`. Expected a non-empty name. Received ''.")
    if args.resume and (args.config or shard or args.run_id or args.out != "runs"):
        raise UsageError("--resume finishes a run with its own config, shard, id and place; give no CONFIG, --shard, "
                         "--run-id or --out with it.")
    junit = writable(args.junit, "--junit")
    if not args.resume:
        outside_runs(args.out, "--out")  # a new run goes beside the others, never inside one
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
        note(f"Not compared: {not_compared}.")
    try:
        with RunProgress(err_console(), show_progress(args.json)) as progress:
            table = run(config, out=args.out, workers=args.workers, on_event=progress.on_event, run_id=args.run_id,
                        shard=shard, resume=args.resume, retry_failed=args.retry_failed)
    except RunInterrupted as stop:
        _print_run(load_run(stop.run_dir), args.json, args.strict)  # its code: the interruption's, below
        why = f"Stopped: {stop.reason}" if stop.reason else "Interrupted"
        # The summary above ends with the resume command; with --json it is in the JSON, and said here too.
        resume = f"\nResume with: detaudit run --resume {stop.run_dir}" if args.json else ""
        err_console().print(f"{why}. The cells that finished are saved in {stop.run_dir}{resume}", style="bold yellow",
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
        note(f"Not compared: {not_compared}")
    if junit is not None:
        write(junit, "--junit", lambda: write_junit(junit, stored.run_id, summary_cases(summary)))
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

        out_console().print(cell_ids_table(build_summary(stored, args.strict)))
        return ExitCode.OK
    if stored.kind is RunKind.MATRIX:
        return _print_run(stored, args.json, args.strict)[0]
    assert stored.result is not None
    if args.json:
        print_json({"run_id": stored.run_id, "kind": stored.kind.value, **stored.result})
    elif stored.kind is RunKind.AUDIT:
        out_console().print(audit_report(stored.result, show_all=args.all))
    else:
        out_console().print(triage_report(stored.result))
    if stored.kind is RunKind.AUDIT:
        return ExitCode.OK if AuditView.from_result(stored.result).verdict.passed else ExitCode.FAILED
    return ExitCode.OK if TriageView.from_result(stored.result).status == RunStatus.PASS else ExitCode.FAILED


def _cmd_compare(args: Any) -> int:
    from detaudit.analysis.compare import compare_runs
    from detaudit.engine.store import RunKind
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.analysis.summary import build_summary
    from detaudit.render.junit import summary_cases, write_junit
    from detaudit.render.terminal import render_comparison

    junit = writable(args.junit, "--junit")
    new_path = resolve_run(args.new, args.runs)
    base_path = resolve_run(args.base, args.runs, relative_to=new_path)
    new = load_run(new_path)
    base = load_run(base_path)
    if RunKind.AUDIT in (base.kind, new.kind):
        return print_audit_comparison(base, new, args.json)
    comparison = compare_runs(base, new)
    if args.json:
        print_json(comparison.to_dict())
    else:
        out_console().print(render_comparison(comparison))
    if junit is not None:
        regressions: dict[str, list[str]] = {}
        for change in comparison.changes:
            if change.category.regression:
                regressions.setdefault(change.cell_id, []).append(
                    f"{change.category.mark} {change.category.label}: {change.detail}")
        write(junit, "--junit", lambda: write_junit(junit, f"{comparison.base_id}..{comparison.new_id}",
                                                     summary_cases(build_summary(new), regressions)))
    if new.completeness is not None and not new.completeness.complete:
        err_console().print(f"{new.run_id} is INCOMPLETE ({len(new.completeness.missing)} cells have no record): "
                     "its missing cells are not compared.", style="bold yellow", highlight=False)
        return ExitCode.FAILED
    return ExitCode.FAILED if comparison.regressions else ExitCode.OK


def _cmd_history(args: Any) -> int:
    from detaudit.analysis.history import history_rows
    from detaudit.render.terminal import history_table

    rows = history_rows(args.runs_dir, on_skip=lambda path, why: note(f"skipped {path}: {why}"))
    if args.json:
        print_json(rows)
    else:
        out_console().print(history_table(rows) if rows else f"No runs in {args.runs_dir}.", highlight=False)
    return ExitCode.OK


def _cmd_report(args: Any) -> int:
    from detaudit.analysis.compare import compare_runs
    from detaudit.analysis.runs import load_run, resolve_run
    from detaudit.analysis.summary import build_summary
    from detaudit.engine.store import RunKind
    from detaudit.render.html import render_html, render_overview

    target = Path(args.target)
    path = writable(args.html, "--html")
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
    out_console().print(f"Report: {path}", highlight=False)
    return ExitCode.OK


def _cmd_merge(args: Any) -> int:
    from detaudit.analysis.runs import merge_runs

    outside_runs(args.out, "--out")  # the merged run goes beside its shards, never inside one
    return _print_run(merge_runs(args.run_dirs, args.out), args.json, False)[0]


def _cmd_env(args: Any) -> int:
    from detaudit.engine.fingerprint import host_fingerprint
    from detaudit.engine.runner import spawn_env_probe

    info = {"host": host_fingerprint(), "tensorflow": spawn_env_probe()}
    if args.json:
        print_json(info)
        return ExitCode.OK
    out = out_console()
    for section, values in info.items():
        out.print(section, style="bold", highlight=False)
        for key, value in values.items():
            out.print(f"  {key}: {value}", highlight=False, markup=False)
    return ExitCode.OK


def _cmd_schema(args: Any) -> int:
    from detaudit.core.schema import config_schema

    print_json(config_schema())
    return ExitCode.OK


_HANDLERS = {"run": _cmd_run, "show": _cmd_show, "compare": _cmd_compare, "history": _cmd_history,
             "report": _cmd_report, "shapes": cmd_shapes, "adjoint": cmd_adjoint, "triage": cmd_triage,
             "audit": cmd_audit, "merge": _cmd_merge, "env": _cmd_env, "schema": _cmd_schema}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``detaudit`` console script."""
    streams = sys.stdout, sys.stderr
    if sys.stdout is not None and not isinstance(sys.stdout, SafeStream):
        sys.stdout = SafeStream(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None and not isinstance(sys.stderr, SafeStream):
        sys.stderr = SafeStream(sys.stderr)  # type: ignore[assignment]
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
