"""The typed vocabulary (core/vocabulary, core/thresholds), the theme and the view models built on them. No TensorFlow."""

from __future__ import annotations

import json
import math

import pytest

from detaudit.analysis.run_facts import RunFacts
from detaudit.analysis.triage_view import TriageView
from detaudit.arguments import build_parser
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.thresholds import Measure, UlpThreshold, ulp_thresholds
from detaudit.core.vocabulary import (
    ExitCode,
    OneDnnState,
    RunStatus,
    Status,
    ToggleOutcome,
    TriageMode,
    Verdict,
    exit_codes_help,
)
from detaudit.errors import ConfigError, DiskFullError, UsageError, WorkerError
from detaudit.render import theme

# The strings stored in run directories by every detaudit so far: an enum that renames one breaks old runs.
STORED_STATUSES = ["ok", "skipped", "unsupported", "error", "crash", "timeout"]
STORED_VERDICTS = ["CRASH", "TIMEOUT", "ERROR", "NONDETERMINISTIC", "UNSUPPORTED", "SKIPPED", "DETERMINISTIC"]


def test_the_enums_keep_the_stored_strings():
    assert [s.value for s in Status] == STORED_STATUSES
    assert [v.value for v in Verdict] == STORED_VERDICTS
    assert [s.value for s in RunStatus] == ["PASS", "FAIL", "INCOMPLETE"]
    assert Status.OK == "ok" and Verdict.SKIPPED == "SKIPPED" and f"{RunStatus.FAIL}" == "FAIL"
    assert json.dumps({"s": Status.CRASH, "o": ToggleOutcome.FIXES}) == '{"s": "crash", "o": "fixes"}'


@pytest.mark.parametrize(("status", "verdict"), [
    ("ok", Verdict.DETERMINISTIC), ("skipped", Verdict.SKIPPED), ("unsupported", Verdict.UNSUPPORTED),
    ("error", Verdict.ERROR), ("crash", Verdict.CRASH), ("timeout", Verdict.TIMEOUT),
    ("a status of a later version", Verdict.ERROR)])
def test_each_status_gives_its_verdict_and_an_unknown_one_is_an_error(status, verdict):
    assert Verdict.of_status(status) is verdict


def test_only_a_worker_that_died_or_hung_counts_as_failed():
    assert {s for s in Status if s.failed} == {Status.CRASH, Status.TIMEOUT}
    assert {v for v in Verdict if v.failed_to_run} == {Verdict.CRASH, Verdict.TIMEOUT, Verdict.ERROR}
    assert sorted(Verdict, key=lambda v: v.severity)[0] is Verdict.CRASH


def test_the_error_classes_carry_their_exit_codes():
    assert (UsageError.exit_code, ConfigError.exit_code) == (ExitCode.BAD_INPUT, ExitCode.BAD_INPUT) == (2, 2)
    assert DiskFullError.exit_code is ExitCode.FAILED and WorkerError.exit_code is ExitCode.WORKER_FAILED == 3
    assert ExitCode.TERMINATED == 128 + 15


def test_the_help_lists_every_exit_code_from_the_enum():
    text = exit_codes_help()
    listed = [int(line.split()[0]) for line in text.splitlines()[1:] if line[2:3].isdigit()]
    assert listed == [int(code) for code in ExitCode]
    assert all(len(line) <= 96 for line in text.splitlines())
    assert build_parser().format_help().rstrip("\n").endswith(text)


def test_compare_help_lists_every_mark_the_code_uses():
    from detaudit.analysis.compare import Category

    sub = build_parser()._subparsers._group_actions[0].choices["compare"]  # type: ignore[union-attr]
    text = " ".join(sub.format_help().split())
    for category in Category:
        assert f"{category.mark} {category.label}" in text
    assert "s newly skipped" in text  # the mark the hand-written help had lost


@pytest.mark.parametrize(("text", "on", "word", "reason"), [
    ("on (TF_ENABLE_ONEDNN_OPTS=1)", True, "on", "TF_ENABLE_ONEDNN_OPTS=1"),
    ("off (default: the CPU lacks AVX512_VNNI (and more))", False, "off",
     "default: the CPU lacks AVX512_VNNI (and more)"),
    ("off", False, "off", ""),
    ("", None, "", ""), (None, None, "", ""), ("maybe (who knows)", None, "", "maybe (who knows)")])
def test_the_onednn_state_is_read_back_from_its_prose(text, on, word, reason):
    state = OneDnnState.parse(text)
    assert (state.on, state.word, state.reason) == (on, word, reason)
    assert state.or_word("default") == (word or "default")
    if on is not None:
        assert OneDnnState.parse(str(state)) == state


def test_a_threshold_says_why_a_row_fails():
    threshold = UlpThreshold(Measure.MAX_ULP, ComparisonKind.BASELINE, {"*": 4.0, "mixed_bfloat16": 40.0})
    row = {"comparison": "baseline", "tensor": "grad_bias", "precision": "float32", "max_ulp": 9}
    assert threshold.failure(row) == "grad_bias baseline max_ulp 9 > 4"
    assert threshold.fails(row)
    assert not threshold.fails({**row, "precision": "mixed_bfloat16"})  # its own limit wins over "*"
    assert not threshold.fails({**row, "max_ulp": 4})  # at the limit holds
    assert not threshold.fails({**row, "comparison": "reference"})
    assert not threshold.fails({**row, "max_ulp": math.nan})
    assert UlpThreshold(Measure.MAX_ULP, ComparisonKind.BASELINE, {"float16": 1.0}).failure(row) is None


def test_thresholds_come_from_a_configs_expectations():
    from detaudit.core.config import parse_config

    config = parse_config({"name": "t", "layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3,
                                                    "strides": 2, "padding": "same", "input_shape": [1, 4, 4, 2]}],
                           "expect": {"max_ulp": {"baseline": 8}, "max_ulp_scaled": {"reference": 2}}})
    found = [(t.measure, t.comparison, t.limit_for("float32")) for t in ulp_thresholds(config.expect)]
    assert found == [(Measure.MAX_ULP, ComparisonKind.BASELINE, 8), (Measure.MAX_ULP_SCALED,
                                                                    ComparisonKind.REFERENCE, 2)]


def test_every_verdict_and_run_status_has_a_look_of_its_own():
    for verdict in Verdict:
        assert theme.name_of("verdict", verdict) in theme.THEME
    for status in RunStatus:
        assert theme.name_of("status", status) in theme.THEME
    for outcome in ToggleOutcome:
        assert theme.name_of("toggle", outcome) in theme.THEME
    for kind in ComparisonKind:
        assert theme.name_of("comparison", kind) in theme.THEME
    assert theme.style("verdict", Verdict.NONDETERMINISTIC) != theme.style("verdict", Verdict.DETERMINISTIC)
    assert theme.look("no such name") == theme.look("status", "a word no theme knows")


def test_run_facts_read_any_meta_json():
    facts = RunFacts.from_meta({"run_id": "r", "config_name": "quick", "started": "2026-12-01T00:00:00",
                                "tensorflow": {"tensorflow_version": "2.21.0", "keras_version": "3.15.1",
                                               "gpus": [{"name": "H100"}, {"device": "/GPU:1"}]},
                                "host": {"cpu_model": "EPYC", "onednn_state": "off (TF_ENABLE_ONEDNN_OPTS=0)"}})
    assert (facts.gpus, facts.devices, facts.frameworks) == (("H100", "/GPU:1"), "H100, /GPU:1", "2.21.0 / Keras 3.15.1")
    assert facts.onednn.word == "off" and facts.cpu_model == "EPYC" and facts.has_tensorflow
    bare = RunFacts.from_meta({"tensorflow": None, "host": "not a mapping"})
    assert (bare.devices, bare.tensorflow_version, bare.onednn.on, bare.has_tensorflow) == ("CPU only", None, None,
                                                                                            False)


def _triaged(mode: str, **extra):
    return {"cell_id": "c1", "reproduced": True, "mode": mode, "tensor": "grad_bias",
            "confirmed": {"detail": "9% off"}, "explanation": {"cause": "c", "fix": "f", "known": "tf#1",
                                                                "reported": False},
            "toggles": [{"axis": "xla", "value": "on", "outcome": "fixes", "max_ulp": 2},
                        {"axis": "threads", "value": 1, "outcome": "reduced", "max_ulp": 1}], **extra}


def test_the_triage_view_answers_each_modes_question_once():
    view = TriageView.from_result({"source_run": "runs/x", "cells": [
        _triaged("accuracy", removed_by=["xla=on"]), _triaged("drift"), _triaged("repeat"),
        {"cell_id": "c2", "reproduced": False, "mode": "repeat"}],
        "other_findings": [{"line": "c3: drift"}]})
    accuracy, drift, repeat, gone = view.cells
    assert (accuracy.answer_label, accuracy.answer) == ("Fixed by (precision and device kept)", "xla=on")
    assert (drift.answer_label, drift.answer) == ("Closer to float64", "not known (no float64 reference)")
    assert (repeat.answer_label, repeat.answer) == ("Removed by", "no single setting")
    assert accuracy.upstream == "not yet reported" and accuracy.mode is TriageMode.ACCURACY
    assert accuracy.finding == "error against float64 in grad_bias: 9% off"
    assert [t.outcome for t in accuracy.toggles] == [ToggleOutcome.FIXES, "reduced"]  # an older word kept as is
    assert not gone.reproduced and view.reproduced == 3
    assert view.status is RunStatus.INCOMPLETE and view.other_findings == ("c3: drift",)
    assert TriageView.from_result({"cells": [_triaged("adjoint")]}).status is RunStatus.PASS
    assert TriageView.from_result({}).status is RunStatus.INCOMPLETE  # nothing triaged is not a pass
