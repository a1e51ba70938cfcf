"""report.md of a triage: what detaudit found, and a section in TensorFlow's bug-report template.

Pure Python. The upstream section follows TensorFlow's issue template (issue
type; versions; OS; CPU, oneDNN, GPU/CUDA/cuDNN; current and expected
behaviour; standalone code). For a known bug it names the existing issue and
gives the new evidence as a comment for it; for an unknown one it says "not
yet reported".
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from detaudit.analysis.run_facts import RunFacts
from detaudit.analysis.runs import StoredRun
from detaudit.core.vocabulary import OneDnnState, ToggleOutcome, TriageMode

__all__ = ["cpu_flags", "environment_of", "report_markdown", "upstream_section"]

_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_tile")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU flags that decide TensorFlow's kernels and oneDNN's default, from this machine's /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return ", ".join(f for f in _FLAGS if f in present) or "none of " + ", ".join(_FLAGS)


def environment_of(stored: StoredRun) -> dict[str, Any]:
    """The fingerprint an upstream issue needs: TensorFlow, Keras, Python, OS, CPU, oneDNN, GPU, CUDA, cuDNN."""
    facts = RunFacts.from_meta(stored.meta)
    return {"tensorflow_version": facts.tensorflow_version, "keras_version": facts.keras_version,
            "cuda_version": facts.cuda_version, "cudnn_version": facts.cudnn_version,
            "gpus": ", ".join(facts.gpus) or "none", "nvidia_driver": facts.host.get("nvidia_driver"),
            "cpu_model": facts.cpu_model, "onednn_state": facts.host.get("onednn_state"),
            "platform": facts.host.get("platform"), "python": facts.host.get("python"),
            "cpu_flags": cpu_flags(), "numpy_version": facts.host.get("numpy_version")}


def _behaviour(result: Any) -> tuple[str, str]:
    """(current, expected) behaviour in words and figures."""
    mode, tensor, measured = result.mode, result.tensor, result.minimal_measured
    op = result.confirmed.ops.get(tensor or "", "")
    where = f"`{tensor}` (computed by `{op}`)" if op else f"`{tensor}`"
    if mode is TriageMode.REPEAT:
        return (f"Two runs of the same pass, same inputs, same process, give different bits in {where}: "
                f"{measured.detail}.", "Bit-identical results from identical inputs (or an error, with op determinism "
                "on, naming the op that cannot be deterministic).")
    if mode is TriageMode.DRIFT:
        return (f"{where} differs between the two settings: {measured.detail}. {result.closer}.",
                "Both within the dtype's rounding of the float64 result.")
    original = list(result.cell.layer.input_shape)
    current = f"{where} in the minimal case: {measured.detail}."
    if result.minimal.layer != result.cell.layer:
        current += f" In the case as first found (input {original}): {result.confirmed.detail}."
    fixed = [t for t in result.toggles if t[2] == ToggleOutcome.FIXES]
    if fixed:
        current += " There, with one setting changed (same precision, same device): " + "; ".join(
            f"`{a}={v}`: {d}" for a, v, _, _, d in fixed) + "."
    also = ", ".join(f"`{a}={v}`" for a, v, *_ in fixed)
    return current, (f"`{tensor}` within the accuracy of its compute dtype of the float64 result computed from the "
                     f"same rounded inputs (the limit above){f', as with {also}' if also else ''}.")


def upstream_section(result: Any, environment: dict[str, Any], repro_text: str | None) -> list[str]:
    """The "For TensorFlow" section, in the issue template's order."""
    known = result.explanation.get("known")
    reported = bool(result.explanation.get("reported"))
    cell = result.minimal
    current, expected = _behaviour(result)
    head = ([f"Known upstream: {known}. Post this as new evidence on that issue (minimal case, figures, code)."]
            if reported else ["Status upstream: **not yet reported**. File it as a new issue with the text below."])
    gpu = environment.get("gpus") or "none"
    onednn = cell.settings.onednn if cell.settings.onednn != "default" else \
        OneDnnState.parse(environment.get("onednn_state")).or_word("default")
    driver = "" if gpu == "none" else f" (driver {environment.get('nvidia_driver')})"
    lines = [
        "## For TensorFlow (bug-report template)", "", *head, "",
        "**Issue type:** Bug", "",
        f"**Have you reproduced the bug with TensorFlow Nightly?** No (reproduced on {environment.get('tensorflow_version')})",
        "", "**Source:** binary", "",
        f"**TensorFlow version:** {environment.get('tensorflow_version')}", "",
        f"**Keras version:** {environment.get('keras_version')}", "",
        "**Custom code:** Yes (standalone, below)", "",
        f"**OS platform and distribution:** {environment.get('platform') or platform.platform()}", "",
        f"**Python version:** {environment.get('python')}", "",
        f"**CPU:** {environment.get('cpu_model')}; flags: {environment.get('cpu_flags')}", "",
        f"**oneDNN:** {environment.get('onednn_state')}; this case ran with oneDNN {onednn} (repro.py pins it)", "",
        f"**CUDA/cuDNN version:** {environment.get('cuda_version') or 'n/a'} / "
        f"{environment.get('cudnn_version') or 'n/a'}", "",
        f"**GPU model and memory:** {gpu}{driver}",
        "", "**Current behavior?**", "", current, "", "**Expected behavior?**", "", expected, "",
        f"Minimal case (shrunk by detaudit from {list(result.cell.layer.input_shape)}): "
        f"`{cell.layer.describe()}` with settings `{cell.settings.label()}`.", "",
        "**Standalone code to reproduce the issue**", "",
    ]
    if repro_text:
        lines += ["```python", repro_text.rstrip("\n"), "```", "",
                  "`python repro.py` exits 1 while the bug is there, 0 once it is fixed.", ""]
    else:
        lines += ["This layer has no short reproducer; `repro.py` (beside this report, the full digest-parity "
                  "reproducer) reproduces it.", ""]
    lines += ["**Relevant log output**", "", "```", *[f"{s.stage}: {s.what}: {s.outcome}" for s in result.steps
                                                     if s.stage in ("confirm", "toggle") and s.outcome], "```", ""]
    return lines


def report_markdown(result: Any, environment: dict[str, Any]) -> str:
    """The triage of one cell as Markdown: detaudit's findings, then the upstream section."""
    cell, minimal = result.cell, result.minimal
    ops = result.confirmed.ops
    repro_text = Path(result.repro).read_text(encoding="utf-8") if result.repro and result.repro_is_short else None
    lines = [
        f"# detaudit triage: {cell.layer.describe()}", "",
        f"Settings: `{cell.settings.label()}`, seed {cell.seed}. Finding: {result.mode.description}"
        f"{f' in `{result.tensor}`' if result.tensor else ''}.", "",
        f"Question: {result.mode.question}", "",
        "## Environment", "", *[f"- {key}: {value}" for key, value in environment.items()], "",
        "## 1. Confirmed", "", result.confirmed.detail, "",
        "## 2. The op behind each tensor", "", "| tensor | op |", "|---|---|",
        *[f"| {t} | {o} |" for t, o in ops.items()], "",
        "## 3. One setting at a time", "", "| setting | outcome | max ULP | detail |", "|---|---|---|---|",
        *[f"| {a}={v} | {o} | {u} | {d} |" for a, v, o, u, d in result.toggles], "",
        *([f"Closer to float64: {result.closer}", ""] if result.closer else []),
        "## 4. Minimal case", "", f"{minimal.layer.describe()}: {result.shrunk}", "",
        "## 5. Most likely cause", "", f"{result.explanation['cause']}", "", f"**Fix:** {result.explanation['fix']}",
        "", f"Source: {result.explanation.get('source', '')}", "",
        *upstream_section(result, environment, repro_text),
        "## Steps", "", *[f"- {s.stage}: {s.what}: {s.outcome}" for s in result.steps if s.outcome != "running"], "",
    ]
    return "\n".join(lines)

