"""The command line's arguments: every option with its help, choices and default; exit codes and examples.

Only the parser lives here (``detaudit/cli.py`` parses, calls, prints and
picks the exit code). The audit's setting flags come from the axis
declarations, validated by the same validator as a config's matrix.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any

from detaudit._version import __version__
from detaudit.core.axes import AXES, parse_axis_value
from detaudit.core.planning import shard_type
from detaudit.core.vocabulary import ExitCode, exit_codes_help

__all__ = ["build_parser", "version_text"]

_EXIT_CODES = exit_codes_help()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where there is one to show); the epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or action.option_strings == []:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    #: Builds the description when help is shown, for one generated from a module too slow to import on every call.
    describe: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.describe is not None:
            self.description = textwrap.fill(self.describe(), 88)
        return super().format_help()

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        command = self.prog.split()[-1] if " " in self.prog else ""
        self.exit(ExitCode.BAD_INPUT, f"detaudit: error: {message} (see `detaudit {command + ' ' if command else ''}"
                                  "--help`)\n")


def _int_range(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum], with a message that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {minimum} to {maximum:,}, received {text!r}") \
                from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer from {minimum} to {maximum:,}, received {value}")
        return value
    return parse


def _number(minimum: float, maximum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
        if not minimum <= value <= maximum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected a number from {minimum:g} to {maximum:g}, received {text}")
        return value
    return parse


def _axis(name: str) -> Callable[[str], Any]:
    """An argparse type for one axis value, checked by the axis' own validator."""
    def parse(text: str) -> Any:
        try:
            return parse_axis_value(name, int(text) if name == "threads" and text.isdigit() else text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {exc}, received {text!r}") from None
    parse.__name__ = name
    return parse


def _epilog(*examples: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + _EXIT_CODES


def _add(sub: Any, name: str, help_text: str, description: str, examples: tuple[str, ...]) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=textwrap.fill(description, 88),
                          epilog=_epilog(*examples), formatter_class=_Formatter)


def _json(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--json", action="store_true", help=help_text)


def _runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default="runs", help="where latest and previous are looked up (default: runs)")


def _junit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--junit", default=None, metavar="PATH", help="also write JUnit XML, one testcase per cell")


def build_parser() -> argparse.ArgumentParser:
    """The ``detaudit`` argument parser."""
    parser = _Parser(prog="detaudit", formatter_class=_Formatter, epilog=_EXIT_CODES,
                     description="Determinism and numerics audits of TensorFlow transposed convolutions.")
    parser.add_argument("--version", action="store_true", help="print detaudit's version and the TensorFlow it audits")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_run, _add_show, _add_compare, _add_history, _add_report, _add_shapes, _add_adjoint,
                _add_triage, _add_audit, _add_merge, _add_env, _add_schema):
        add(sub)
    return parser


def _add_run(sub: Any) -> None:
    p = _add(sub, "run", "run a config's matrix of cells and summarize it",
             "Expand a config into cells (layers x settings x seeds), run each in TensorFlow workers, store the "
             "results under --out and print the summary.",
             ("detaudit run", "detaudit run configs/nightly.yaml --compare-to latest --junit junit.xml",
              "detaudit run --resume runs/20261125T101500Z-nightly --retry-failed"))
    p.add_argument("config", nargs="?", help="YAML config (default: the bundled configs/quick.yaml)")
    p.add_argument("--out", default="runs", help="directory that receives the run directory")
    p.add_argument("--workers", type=_int_range(1, 256), default=None,
                   help="environment groups run in parallel (default: the number of CPU cores)")
    p.add_argument("--run-id", default=None, help="name of the run directory (default: UTC timestamp-config name)")
    p.add_argument("--shard", default=None, metavar="I/N", type=shard_type,
                   help="run only shard I of N of the matrix (stable by cell id); join the shards with merge")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="finish an interrupted run: cells already recorded are not run again")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: also run again the cells recorded as crash or timeout")
    p.add_argument("--compare-to", default=None, metavar="RUN_DIR|latest|previous",
                   help="after the run, compare with this run (latest: the newest earlier run of the same config in "
                        "--out; with none yet, the run is not compared and says so); exit 1 "
                        "on a regression")
    _junit(p)
    p.add_argument("--strict", action="store_true", help="known upstream bugs fail the run too")
    _json(p, "print the summary as one JSON object (no progress bar)")


def _add_show(sub: Any) -> None:
    p = _add(sub, "show", "re-render a stored run of any kind (matrix, audit, triage)",
             "Render a stored run again. A run with cells that have no record is INCOMPLETE (exit 1) and the "
             "command that finishes it is printed.",
             ("detaudit show latest", "detaudit show runs/20261125T101500Z-quick --json"))
    p.add_argument("run_dir", nargs="?", default="latest", metavar="RUN_DIR|latest|previous",
                   help="the run directory, or latest / previous in --runs")
    _runs(p)
    p.add_argument("--all", action="store_true", help="an audit: list every layer, not only those that differ")
    p.add_argument("--strict", action="store_true", help="known upstream bugs count as failures")
    _json(p, "print the summary as JSON")
    p.add_argument("--ids", action="store_true", help="a matrix run: list each cell's id (what `triage --cell` "
                   "takes), its layer, settings, seed and verdict")


def _compare_description() -> str:
    """The marks of ``compare``, from its categories (pandas is imported only when this help is shown)."""
    from detaudit.analysis.compare import Category

    marks = ", ".join(f"{c.mark} {c.label}" for c in Category)
    failing = " ".join(c.mark for c in Category if c.regression)
    return (f"asv-style comparison: environment differences first, then one mark per changed cell ({marks}), "
            f"then one verdict line. The marks {failing} exit 1.")


def _add_compare(sub: Any) -> None:
    p = _add(sub, "compare", "compare two stored runs cell by cell; exit 1 on a regression", "",
             ("detaudit compare previous latest", "detaudit compare runs/base runs/new --junit compare.xml"))
    p.describe = _compare_description
    p.add_argument("base", metavar="BASE", help="run directory, or latest / previous in --runs")
    p.add_argument("new", metavar="NEW", help="run directory, or latest / previous in --runs")
    _runs(p)
    _junit(p)
    _json(p, "print the comparison as JSON")


def _add_history(sub: Any) -> None:
    p = _add(sub, "history", "list the stored runs, newest first",
             "One line per run directory under RUNS_DIR: id, start, kind, config, TensorFlow, device and outcome. "
             "Broken directories are reported and skipped.", ("detaudit history", "detaudit history shards --json"))
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR", help="the directory of run directories")
    _json(p, "print as JSON")


def _add_report(sub: Any) -> None:
    p = _add(sub, "report", "write a self-contained HTML report of a run, or of all runs over time",
             "Given a run (or latest/previous): its page (verdict heat map, drift matrix, sortable cell table). "
             "Given a directory of runs: the overview across runs over time, as asv's main page.",
             ("detaudit report latest --html report.html --compare-to previous", "detaudit report runs --html history.html"))
    p.add_argument("target", metavar="RUN_DIR|RUNS_DIR|latest|previous", help="a run, or a directory of runs")
    p.add_argument("--html", required=True, metavar="PATH", help="where to write the page")
    p.add_argument("--compare-to", default=None, metavar="RUN_DIR|previous", help="add the drift against this run")
    _runs(p)


def _add_shapes(sub: Any) -> None:
    p = _add(sub, "shapes", "audit output shapes, the Conv round trip and the checkerboard",
             "Keras' output length next to what TensorFlow returns, the Conv round trip (15 -> 8 -> 16) and the "
             "output_padding that fixes it, configurations TensorFlow rejects at run time (predicted for the oneDNN "
             "path measured, with the other path's prediction), and the checkerboard score.",
             ("detaudit shapes --kernel 3 --stride 2 --padding same --input 15 16",
              "detaudit shapes configs/quick.yaml --no-tf"))
    p.add_argument("config", nargs="?", help="audit the transposed convolutions of this config instead of the flags")
    p.add_argument("--kernel", type=_int_range(1, 256), help="kernel size (1-256)")
    p.add_argument("--stride", type=_int_range(1, 256), help="stride (1-256)")
    p.add_argument("--padding", choices=["same", "valid"], help="padding")
    p.add_argument("--dilation", type=_int_range(1, 256), default=1, help="dilation rate (1-256)")
    p.add_argument("--output-padding", type=_int_range(0, 255), default=None,
                   help="output_padding (smaller than the stride; default: Keras' None)")
    p.add_argument("--input", type=_int_range(1, 1 << 20), nargs="+", metavar="N", help="input lengths to audit")
    p.add_argument("--rank", type=int, choices=[1, 2, 3], default=2, help="spatial rank of the layer measured")
    p.add_argument("--no-tf", action="store_true", help="formulas only: do not start a TensorFlow worker")
    _json(p, "print as JSON")


def _add_adjoint(sub: Any) -> None:
    p = _add(sub, "adjoint", "the dot-product test: is conv_transpose the adjoint of conv?",
             "<conv(z), x> = <z, conv_transpose(x)> per spec in float32 and float64, in epsilons, beside the "
             "reconstruction error of conv_transpose(conv(z)). A failure matching a known upstream bug is KNOWN "
             "(exit 0) unless --strict.",
             ("detaudit adjoint", "detaudit adjoint configs/nightly.yaml --strict"))
    p.add_argument("config", nargs="?", help="test the layers of this config (default: a built-in grid of 72 specs)")
    p.add_argument("--threshold", type=_number(0, 1e30), default=64.0, help="fail above this many epsilons")
    p.add_argument("--strict", action="store_true", help="known upstream bugs fail too")
    p.add_argument("--all", action="store_true", help="list every spec, not only those that fail")
    _json(p, "print as JSON")


def _add_triage(sub: Any) -> None:
    p = _add(sub, "triage", "confirm, isolate, shrink and explain a difference; write a reproducer",
             "Take the run's worst finding (a broken expectation first, then the largest error against float64; "
             "or the given cell's): confirm it, name the op behind the tensor, change one setting at a time (for an "
             "error against float64, keeping the precision and the device), shrink the layer within the budget, "
             "name the most likely cause or known upstream bug and write repro.py (short, standalone), "
             "repro_full.py and report.md (with a section in TensorFlow's bug-report template) into a new triage "
             "run (the source run is not changed). The other findings are listed with their cell ids.",
             ("detaudit triage latest", "detaudit triage runs/20261125T101500Z-quick --cell conv2dtranspose-970425c421e1"))
    p.add_argument("target", metavar="RUN_DIR|latest|CONFIG", help="a run directory (or latest), or a config to run first")
    p.add_argument("--cell", default=None, help="the cell id (or a unique start of one) to triage (default: the "
                   "run's worst finding; `detaudit show RUN --ids` lists the ids)")
    p.add_argument("--budget-s", type=_number(1, 86400), default=120.0,
                   help="seconds for shrinking the case (the shrink stops there)")
    p.add_argument("--out", default="runs", help="where the triage run goes (and a config's run, and latest)")


def _add_audit(sub: Any) -> None:
    p = _add(sub, "audit", "pre-training reproducibility audit of your own training",
             "Runs your training as written (your model, its compiled optimizer, loss and train_step, your data) "
             "--repeats times, each execution rebuilt as a rerun of your script, then once more in a fresh process "
             "and once resumed from a checkpoint at --resume-step; answers 'does a rerun reproduce?', 'are repeats "
             "identical?' and 'does a resume reach the same weights?', and names where a step first diverges "
             "(data, a layer's output, the loss, a gradient, the update).",
             ("detaudit audit mypkg.train:build --steps 4",
              "detaudit audit model.keras --inputs x.npz --targets y.npy --compare-to runs/workstation-audit"))
    p.add_argument("model", help="module:function returning a Keras model or a (model, data) pair, or a .keras file "
                   "(loaded in safe mode)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--input-shape", default=None, metavar="B,H,W,C",
                       help="synthetic input shape, batch included (default: the model's, batch 2)")
    shape.add_argument("--inputs", default=None, metavar="X.npy|X.npz",
                       help="inputs: a .npy array, or a .npz of arrays named as the model's inputs")
    p.add_argument("--targets", default=None, metavar="Y.npy|Y.npz", help="targets (default: seeded random, for an "
                   "uncompiled model)")
    p.add_argument("--loss", default="mse", help="for an uncompiled model: a Keras loss name (mse, ...)")
    p.add_argument("--batch-size", type=_int_range(1, 1 << 20), default=32, help="batch size for array data")
    p.add_argument("--steps", type=_int_range(1, 10_000), default=3, help="training steps per execution")
    p.add_argument("--repeats", type=_int_range(2, 1000), default=3, help="executions in one process")
    p.add_argument("--resume-step", type=_int_range(1, 10_000), default=None,
                   help="the step the resume check checkpoints at (default: --steps // 2)")
    p.add_argument("--seed", type=_int_range(0, (1 << 32) - 1), default=0,
                   help="keras.utils.set_random_seed before each build: weights, dropout, shuffles, synthetic data")
    p.add_argument("--compare-to", default=None, metavar="AUDIT_DIR",
                   help="after the audit, compare its final weights with a stored audit of the same model")
    for name, axis in AXES.items():  # every axis is a setting of the audit's workers
        p.add_argument(f"--{name}", type=_axis(name), default=axis.default,
                       metavar="cpu|gpu|gpu:N" if name == "device" else None, choices=axis.choices,
                       help=axis.description)
    p.add_argument("--unsafe", action="store_true", help="allow code in the model file (Lambda layers); trust it first")
    p.add_argument("--all", action="store_true", help="list every layer, not only those that differ")
    p.add_argument("--out", default="runs", help="where the audit's run directory goes")
    p.add_argument("--report", default=None, metavar="PATH", help="also write a Markdown report")
    _json(p, "print as JSON")


def _add_merge(sub: Any) -> None:
    p = _add(sub, "merge", "merge shard runs of one config into one run",
             "Join the runs of `detaudit run --shard i/n` into one run directory: the same table as running the "
             "config whole.", ("detaudit merge shards/* --out runs", "detaudit merge s1 s2 --out runs --json"))
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more shard run directories")
    p.add_argument("--out", required=True, help="directory that receives the merged run directory")
    _json(p, "print the summary as JSON")


def _add_env(sub: Any) -> None:
    p = _add(sub, "env", "print this machine's environment fingerprint (for bug reports)",
             "TensorFlow, Keras, CUDA/cuDNN build, GPUs, driver, CPU, oneDNN state and the environment variables "
             "that change what TensorFlow computes.", ("detaudit env", "detaudit env --json > env.json"))
    _json(p, "print as JSON")


def _add_schema(sub: Any) -> None:
    _add(sub, "schema", "print the config's JSON Schema (for YAML editors)",
         "The JSON Schema of a config, generated from the declarations the validator uses. Point your editor at it "
         "with a first line `# yaml-language-server: $schema=detaudit.schema.json`.",
         ("detaudit schema > detaudit.schema.json", "detaudit schema | python -m json.tool"))


def version_text() -> str:
    """``detaudit X`` plus the TensorFlow this environment would audit (read without importing it)."""
    import importlib.metadata

    for distribution in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-macos", "tensorflow-intel"):
        try:
            return f"detaudit {__version__} (TensorFlow {importlib.metadata.version(distribution)} from " \
                   f"{distribution})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"detaudit {__version__} (no TensorFlow installed)"
