"""``detaudit adjoint``: is TensorFlow's conv_transpose the adjoint of its convolution, spec by spec?

Parent side (no TensorFlow): builds the specs (a built-in grid or a config's
layers), runs the dot-product test in a worker, and judges it: a spec fails
above the threshold, unless a known upstream bug (knowledge.yaml) explains it
(then it is KNOWN, and fails only with ``strict``); a known bug whose spec now
passes is reported as fixed upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detaudit.analysis.summary import KnownMatch
from detaudit.analysis.verdicts import ADJOINT_LIMIT_EPS
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import Config
from detaudit.core.knowledge import judge_known_bugs
from detaudit.core.vocabulary import OneDnnState, RunStatus
from detaudit.engine.runner import run_probe
from detaudit.errors import UsageError

__all__ = ["ADJOINT_GRID", "adjoint_specs", "run_adjoint"]

#: Every rank, kernel 1-4, stride 1-3, both paddings: 72 small specs.
ADJOINT_GRID = [{"rank": rank, "n": 5 if rank < 3 else 3, "kernel": k, "stride": s, "padding": padding,
                 "channels": 2, "filters": 3}
                for rank in (1, 2, 3) for k in (1, 2, 3, 4) for s in (1, 2, 3) for padding in ("same", "valid")]


def adjoint_specs(config: Config | None) -> list[dict[str, Any]]:
    """The specs to test: the channels_last layers of a config that have an adjoint test, or the built-in grid."""
    if config is None:
        return list(ADJOINT_GRID)
    items = []
    for layer in config.layers:
        p = layer.params
        if not layer.declaration.adjoint or p["data_format"] != "channels_last":
            continue
        if len(set(p["kernel_size"])) > 1 or len(set(p["strides"])) > 1 or set(p["dilation_rate"]) != {1}:
            continue  # the probe tests cubic specs without dilation; the run's own adjoint rows cover the rest
        items.append({"rank": layer.rank, "n": layer.input_shape[1], "kernel": p["kernel_size"][0],
                      "stride": p["strides"][0], "padding": p["padding"], "channels": layer.input_shape[-1],
                      "filters": p["filters"]})
    if not items:
        raise UsageError(f"{config.source}: no channels_last Keras or raw transposed convolution with equal kernel "
                         "sizes, strides and dilation 1 on every axis to test.")
    return items


def run_adjoint(config: Config | None, threshold: float = ADJOINT_LIMIT_EPS, strict: bool = False,
                on_progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run and judge the adjoint tests; returns the report every renderer formats (plain data + KnownMatch)."""
    measured = run_probe("adjoint", adjoint_specs(config), on_progress=on_progress)
    onednn = OneDnnState.parse(measured["onednn"]).word
    tf_version = measured.get("tensorflow")
    specs, matches = [], []
    for row in measured["specs"]:
        above, explained = [], set()
        for dtype, result in row["results"].items():
            if result.get("error"):
                continue
            facts = {"comparison": ComparisonKind.ADJOINT.value, "rank": row["rank"], "kernel": row["kernel"],
                     "stride": row["stride"],
                     "padding": row["padding"], "dtype": dtype, "device": "cpu", "onednn": onednn,
                     "tensorflow": tf_version, "adjoint_eps": result["adjoint_eps"]}
            failed = result["adjoint_eps"] > threshold
            label = f"rank {row['rank']}, kernel {row['kernel']}, stride {row['stride']}, {row['padding']}, {dtype}"
            for bug, shows in judge_known_bugs(facts):  # the one rule, shared with the run summary
                if shows and failed:
                    explained.add(dtype)
                    matches.append(KnownMatch(bug, label, f"{result['adjoint_eps']:.3g} eps", excused=True))
                elif not shows:
                    matches.append(KnownMatch(bug, label, "passes", fixed=True))
            if failed:
                above.append((dtype, result["adjoint_eps"]))
        known = bool(above) and all(dtype in explained for dtype, _ in above)  # every failing dtype explained
        specs.append({**row, "failed": bool(above) and (strict or not known), "known": known and not strict,
                      "above": above})
    failing = [s for s in specs if s["failed"]]
    known_specs = [s for s in specs if s["known"]]
    if failing:
        names = "; ".join(f"rank {s['rank']} kernel {s['kernel']} stride {s['stride']} {s['padding']} ("
                          + ", ".join(f"{d} {e:.3g} eps" for d, e in s["above"]) + ")" for s in failing)
        line = (f"{RunStatus.FAIL}: {len(failing)} adjoint test(s) above {threshold:g} eps: {names}. "
                "A TensorFlow bug: report it")
    else:
        line = f"{RunStatus.PASS}: conv_transpose is the adjoint of conv in every spec (and never its inverse)"
        if known_specs:
            line += f"; {len(known_specs)} spec(s) show a KNOWN upstream bug, not counted (--strict counts them)"
    return {"threshold_eps": threshold, "strict": strict, "onednn": measured["onednn"], "specs": specs,
            "failed": len(failing), "known": len(known_specs), "status_line": line, "known_matches": matches}
