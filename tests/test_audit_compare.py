"""Two stored audits compared (no TensorFlow): names stay with their values, ULP per variable, exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detaudit.analysis.audit_compare import compare_audits
from detaudit.analysis.audit_view import AuditView
from detaudit.analysis.runs import load_run
from detaudit.core.audit_outcome import Answer, AuditVerdict, Question, compare_traces, verdict_of
from detaudit.core.numerics import digest
from detaudit.engine.store import RunKind, RunStore
from detaudit.errors import UsageError


def _audit(root: Path, run_id: str, finals: dict[str, np.ndarray], onednn: str) -> Path:
    store = RunStore.create(root, None, "audit-t", run_id=run_id, kind=RunKind.AUDIT)
    # Names deliberately out of alphabetical order: stored JSON sorts mapping keys.
    result = {"model": "m:f", "seed": 0, "steps": 2, "verdict": "REPRODUCIBLE",
              "losses": [{"loss": 0.5}, {"loss": 0.25}],
              "final_digests": [[name, digest(value)] for name, value in finals.items()],
              "answers": [Answer(q, True, "ok").to_dict() for q in Question]}
    store.write_meta({"run_id": run_id, "kind": "audit", "config_name": "audit-t", "started": "2026-01-01T00:00:00",
                      "host": {"onednn_state": onednn}})
    store.write_json("audit.json", result)
    np.savez(store.path / "final_weights.npz", **{f"v{i}": v for i, v in enumerate(finals.values())})
    return store.path


def test_each_variable_keeps_its_name_and_its_ulp(tmp_path):
    base = {"zeta/kernel": np.ones(4, np.float32), "alpha/bias": np.full(2, 2.0, np.float32)}
    moved = {"zeta/kernel": np.ones(4, np.float32),
             "alpha/bias": np.nextafter(np.full(2, 2.0, np.float32), np.float32(3))}
    a = load_run(_audit(tmp_path, "a", base, "off"))
    b = load_run(_audit(tmp_path, "b", moved, "on"))
    comparison = compare_audits(a, b)
    assert not comparison.reproduced and comparison.losses_equal and not comparison.weights_equal
    assert [(v["variable"], v["max_ulp"], v["n_differ"]) for v in comparison.variables] == [("alpha/bias", 1, 2)]
    assert ("host.onednn_state", "off", "on") in comparison.environment
    assert compare_audits(a, load_run(_audit(tmp_path, "c", base, "off"))).reproduced


def test_compare_refuses_a_matrix_run_beside_an_audit(tmp_path):
    from detaudit.analysis.runs import StoredRun

    a = load_run(_audit(tmp_path, "a", {"w": np.ones(1, np.float32)}, "off"))
    matrix = StoredRun(RunStore.create(tmp_path, None, "x", run_id="m"), RunKind.MATRIX, {"run_id": "m"})
    with pytest.raises(UsageError, match="not an audit"):
        compare_audits(matrix, a)


def test_the_verdict_follows_the_first_failing_question():
    answers = [Answer(Question.RERUN, True, ""), Answer(Question.REPEATS, False, ""), Answer(Question.RESUME, False, "")]
    assert verdict_of(answers) is AuditVerdict.NONDETERMINISTIC
    assert verdict_of([Answer(Question.RESUME, None, "")]) is AuditVerdict.REPRODUCIBLE
    assert verdict_of([Answer(Question.RESUME, False, "")]) is AuditVerdict.NOT_RESUMABLE


def test_traces_part_at_the_first_differing_step_in_step_order():
    a = {"keys": [["data", "batch[0]"], ["forward", "up"]], "hashes": [["1", "2"], ["3", "4"]], "final": ["f"]}
    b = {"keys": [["data", "batch[0]"], ["forward", "up_1"]], "hashes": [["1", "2"], ["3", "5"]], "final": ["g"]}
    assert compare_traces(a, b) == {"step": 2, "stage": "forward", "name": "up"}
    assert compare_traces(a, a) is None


def test_an_audit_stored_before_the_training_audit_still_renders():
    legacy = {"model": "m.keras", "verdict": "NOT RESTART-REPRODUCIBLE", "restart": {"final_weights": False},
              "layers": [{"layer": "up", "class": "Conv2DTranspose", "forward": "ok", "backward": "ok",
                          "max_ulp": 0, "first_step": None}], "checks": []}
    view = AuditView.from_result(legacy)
    assert view.verdict is AuditVerdict.NOT_RERUN_REPRODUCIBLE
    assert [a.holds for a in view.answers] == [False, True, None]
