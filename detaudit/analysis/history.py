"""The stored runs of a directory as rows, newest first: what ``detaudit history`` lists. Pure Python + pandas."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from detaudit.analysis.run_facts import RunFacts
from detaudit.analysis.runs import StoredRun, list_runs, load_run
from detaudit.analysis.summary import build_summary
from detaudit.analysis.triage_view import TriageView
from detaudit.engine.store import RunKind
from detaudit.errors import RunDirError

__all__ = ["history_rows", "history_runs"]


def history_rows(runs_dir: str | Path, on_skip: Callable[[Path, str], None] | None = None) -> list[dict[str, Any]]:
    """One row per readable run: id, start, kind, config, TensorFlow, device, status and verdict counts."""
    return [row for row, _ in history_runs(runs_dir, on_skip)]


def history_runs(runs_dir: str | Path,
                 on_skip: Callable[[Path, str], None] | None = None) -> Iterator[tuple[dict[str, Any], StoredRun]]:
    """:func:`history_rows` with each row's loaded run, one at a time, for callers that read runs further."""
    for store in list_runs(runs_dir, on_skip=on_skip):
        try:
            stored = load_run(store.path)
        except RunDirError as exc:
            if on_skip:
                on_skip(store.path, str(exc))
            continue
        facts = RunFacts.from_meta(stored.meta)
        row = {"run_id": stored.run_id, "started": facts.started or "", "kind": stored.kind.value,
               "config": facts.config_name or "?", "tensorflow": facts.tensorflow_version or "?",
               "device": ", ".join(facts.gpus) or "cpu", "counts": {}, "status": None, "verdict": None,
               "run_dir": str(stored.path)}
        if stored.kind is RunKind.MATRIX:
            summary = build_summary(stored)
            row.update(counts=summary.counts, status=summary.status.value)
        elif stored.kind is RunKind.AUDIT:
            row["verdict"] = (stored.result or {}).get("verdict")
        else:
            view = TriageView.from_result(stored.result or {})
            row["verdict"] = f"{view.reproduced}/{len(view.cells)} reproduced"
        yield row, stored
