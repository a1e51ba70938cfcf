"""tidy: one table across stored runs (detaudit.load_runs). No TensorFlow."""

from __future__ import annotations

import pandas as pd

import detaudit
from tests.helpers import runs as fab


def _runs(tmp_path):
    t = fab.tensors(0)
    host = {**fab.BASE_META["host"], "onednn_state": "off (default)", "detaudit_version": "0.2.0"}
    meta = lambda version: {**fab.BASE_META, "host": host,  # noqa: E731
                            "tensorflow": {"tensorflow_version": version, "keras_version": "3.15", "gpus": []}}
    for i, version in enumerate(("2.20.0", "2.21.0", "2.21.0")):
        drift = {**t, "output": fab.nudge(t["output"], i + 1)}
        fab.make_run(tmp_path, f"r{i}", f"2026-01-0{i + 1}T00:00:00", [
            (fab.cell(determinism="on"), t, None, "ok"), (fab.cell(xla="on"), drift, None, "ok")], meta=meta(version))
    return tmp_path


def test_one_tidy_table_across_runs(tmp_path):
    table = detaudit.load_runs(_runs(tmp_path))
    assert set(table["run_id"]) == {"r0", "r1", "r2"}
    for column in ("started", "config", "tensorflow", "keras", "detaudit_version", "device_name", "cpu", "onednn",
                   "kind", "filters", "kernel_size", "strides", "padding", "dilation_rate", "output_padding", "role"):
        assert column in table, column
    assert isinstance(table["comparison"].dtype, pd.CategoricalDtype) and table["comparison"].dtype.ordered
    assert isinstance(table["xla"].dtype, pd.CategoricalDtype) and list(table["xla"].cat.categories) == ["off", "on"]
    assert table["kernel_size"].iloc[0] == (3, 3) and table["filters"].dtype == "Int64"
    assert set(table["onednn"]) == {"off"} and table["started"].dtype.kind == "M"


def test_a_typical_analysis_filter_group_pivot(tmp_path):
    table = detaudit.load_runs(_runs(tmp_path))
    drift = table[(table["role"] == "drift") & (table["tensor"] == "output")]
    pivot = drift.pivot_table(index="tensorflow", columns="xla", values="max_ulp", aggfunc="max", observed=True)
    assert pivot.loc["2.20.0", "on"] == 1 and pivot.loc["2.21.0", "on"] == 3


def test_a_list_of_run_directories(tmp_path):
    root = _runs(tmp_path)
    table = detaudit.load_runs([root / "r0", root / "r2"])
    assert set(table["run_id"]) == {"r0", "r2"}
