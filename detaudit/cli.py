"""Command line: parse arguments, call the library, print, choose the exit code.

Exit codes: 0 every expectation held, 1 an expectation failed (or a cell
crashed or timed out), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .config import Config, bundled_config_path, load_config, parse_config
from .errors import ConfigError, DetauditError, RunDirError
from .report import render_run, summary_json
from .results import build_table, evaluate
from .runner import Event, RunInterrupted, run, spawn_env_probe
from .store import RunStore

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(EXIT_BAD_INPUT, f"detaudit: error: {message} (see `detaudit {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"detaudit: error: {message} (see `detaudit --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {value}")
    return value


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

    p_show = sub.add_parser("show", help="re-render a stored run")
    p_show.add_argument("run_dir")
    p_show.add_argument("--json", action="store_true", help="print the summary as JSON")

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


def _print_summary(table: Any, meta: dict[str, Any], config: Config, as_json: bool) -> int:
    failures = evaluate(table, config)
    if as_json:
        print(json.dumps(summary_json(table, meta, config.baseline, failures), indent=2, default=str))
    else:
        console = _console()
        console.print(render_run(table, meta, config.baseline, failures))
        run_dir = table.attrs.get("run_dir")
        if run_dir:
            console.print(f"Results: {Path(run_dir) / 'results.parquet'}  (re-render: detaudit show {run_dir})")
    return EXIT_FAILED if failures else EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config or bundled_config_path("quick"))
    err = _console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True, disable=args.json or not err.is_terminal) as progress:
            table = run(config, out=args.out, workers=args.workers, on_event=_progress_callback(progress),
                        run_id=args.run_id)
    except RunInterrupted as stop:
        meta = RunStore(stop.run_dir).read_meta()
        stop.table.attrs["run_dir"] = str(stop.run_dir)
        _print_summary(stop.table, meta, config, args.json)
        err.print(f"Interrupted: the cells that finished are saved in {stop.run_dir}", style="bold yellow")
        return EXIT_INTERRUPTED
    meta = RunStore(Path(table.attrs["run_dir"])).read_meta()
    return _print_summary(table, meta, config, args.json)


def _cmd_show(args: argparse.Namespace) -> int:
    import pandas as pd

    store = RunStore.open(args.run_dir)
    try:
        config = parse_config(store.read_config(), source=str(store.path / "config.yaml"))
    except ConfigError as exc:
        raise RunDirError(f"{store.path}: its config.yaml does not validate: {exc}") from None
    if store.results_path.is_file():
        try:
            table = pd.read_parquet(store.results_path)
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet is the same user-facing problem
            raise RunDirError(f"{store.results_path}: unreadable ({exc.__class__.__name__}).") from None
    else:  # a run killed before it could write its table: rebuild it from cells.jsonl
        table = build_table(store, config)
    table.attrs["run_dir"] = str(store.path)
    _print_summary(table, store.read_meta(), config, args.json)
    return EXIT_OK


def _cmd_env(args: argparse.Namespace) -> int:
    from .fingerprint import host_fingerprint

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
    handlers = {"run": _cmd_run, "show": _cmd_show, "env": _cmd_env}
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
