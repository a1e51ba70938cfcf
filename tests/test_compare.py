"""compare and runs: categories, environment differences, history, merge, JUnit, bad directories. No TensorFlow."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from detaudit.analysis.compare import Category, compare_runs, environment_diff
from detaudit.analysis.runs import list_runs, load_run, merge_runs, resolve_run
from detaudit.engine.store import RunStore
from detaudit.errors import RunDirError
from detaudit.render.junit import JUnitCase, write_junit
from tests.helpers import runs as fab
from tests.helpers.runs import CONFIG


@pytest.fixture()
def pair(tmp_path):
    return (tmp_path, *fab.make_pair(tmp_path))


def test_a_run_against_itself_has_no_changes(pair):
    _, base, _ = pair
    result = compare_runs(load_run(base.path), load_run(base.path))
    assert not result.changes and not result.regressions and result.matched == 4
    assert result.verdict().startswith("OK")


def test_every_category_is_found_and_the_environment_comes_first(pair):
    _, base, new = pair
    result = compare_runs(load_run(base.path), load_run(new.path))
    found = {(c.category, c.cell_id) for c in result.changes}
    assert (Category.NEWLY_NONDETERMINISTIC, fab.cell(determinism="off").cell_id) in found
    assert (Category.FIXED, fab.cell(xla="on").cell_id) in found
    assert (Category.DIGEST_CHANGED, fab.cell(xla="on").cell_id) in found
    assert (Category.NEW_FAILURE, fab.cell(xla="on", determinism="on").cell_id) in found
    assert ("tensorflow.tensorflow_version", "2.20.0", "2.21.0") in result.environment
    assert result.regressions and result.verdict().startswith("REGRESSED")
    assert json.dumps(result.to_dict())


def test_added_and_removed_cells(tmp_path):
    t = fab.tensors(0)
    on, off, xla = fab.cell(determinism="on"), fab.cell(determinism="off"), fab.cell(xla="on")
    base = fab.make_run(tmp_path, "b", "1", [(on, t, None, "ok"), (xla, t, None, "ok")])
    new = fab.make_run(tmp_path, "n", "2", [(on, t, None, "ok"), (off, t, None, "ok")])
    result = compare_runs(load_run(base.path), load_run(new.path))
    assert {c.category for c in result.changes} == {Category.ADDED, Category.REMOVED}
    assert not result.regressions


def test_a_cell_measured_before_and_skipped_now_is_a_regression(tmp_path):
    """A nightly whose GPU vanished still runs its CPU cells (the run passes): compare must not."""
    t = fab.tensors(0)
    on, off = fab.cell(determinism="on"), fab.cell(determinism="off")
    base = fab.make_run(tmp_path, "b", "1", [(on, t, None, "ok"), (off, t, None, "ok")])
    new = fab.make_run(tmp_path, "n", "2", [(on, t, None, "ok"), (off, t, None, "skipped")])
    result = compare_runs(load_run(base.path), load_run(new.path))
    assert [(c.category, c.cell_id) for c in result.changes] == [(Category.NEWLY_SKIPPED, off.cell_id)]
    assert result.regressions and "DETERMINISTIC -> SKIPPED: worker skipped" in result.changes[0].detail
    assert not compare_runs(load_run(new.path), load_run(new.path)).changes  # skipped in both: no change


def test_environment_diff_ignores_run_bookkeeping():
    diff = environment_diff({"run_id": "a", "started": "1", "host": {"env": {"X": "1"}}},
                            {"run_id": "b", "started": "2", "host": {"env": {"X": "0"}}})
    assert diff == [("host.env.X", "1", "0")]


def test_history_resolves_latest_and_previous_and_skips_broken_runs(pair):
    root, base, new = pair
    broken = root / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text("{oops")
    skipped = []
    runs = list_runs(root, on_skip=lambda path, why: skipped.append(path.name))
    assert [r.run_id for r in runs] == ["new", "base"] and skipped == ["broken"]
    assert resolve_run("latest", root) == new.path
    assert resolve_run("previous", root) == base.path
    assert resolve_run("latest", root, relative_to=new.path) == base.path
    assert resolve_run("previous", root, relative_to=new.path) == base.path  # the run before it
    with pytest.raises(RunDirError, match="no previous matrix run"):
        resolve_run("previous", root, relative_to=base.path)


def test_latest_and_previous_mean_runs_of_the_same_config(tmp_path):
    t = fab.tensors(0)
    on = fab.cell(determinism="on")
    quick = fab.make_run(tmp_path, "quick-1", "1", [(on, t, None, "ok")], meta={**fab.BASE_META, "config_name": "fab"})
    other = fab.make_run(tmp_path, "other-1", "2", [(on, t, None, "ok")], meta={**fab.BASE_META, "config_name": "other"})
    assert resolve_run("latest", tmp_path) == other.path  # no config given: the newest of all
    assert resolve_run("latest", tmp_path, config_name=CONFIG.name) == quick.path
    newer = fab.make_run(tmp_path, "quick-2", "3", [(on, t, None, "ok")], meta={**fab.BASE_META, "config_name": "fab"})
    assert resolve_run("previous", tmp_path, relative_to=newer.path) == quick.path  # not other-1, stored between
    with pytest.raises(RunDirError, match="no matrix run of config 'nightly' to take as latest"):
        resolve_run("latest", tmp_path, config_name="nightly")


def test_merge_refuses_different_configs_and_joins_shards(tmp_path, pair):
    root, base, new = pair
    other = RunStore.create(tmp_path / "other", {**CONFIG.to_dict(), "seeds": [5]}, "x", run_id="other")
    other.write_meta({"run_id": "other", "started": "0"})
    with pytest.raises(RunDirError, match="config differs"):
        merge_runs([base.path, other.path], tmp_path / "merged")
    t = fab.tensors(0)
    half_a = fab.make_run(tmp_path / "a", "a", "1", [(fab.cell(determinism="on"), t, None, "ok")])
    nudged = {**t, "output": fab.nudge(t["output"], 2)}
    half_b = fab.make_run(tmp_path / "b", "b", "1", [(fab.cell(xla="on"), nudged, None, "ok")])
    merged = merge_runs([half_a.path, half_b.path], tmp_path / "merged")
    gaps = merged.table[(merged.table["comparison"] == "baseline") & (merged.table["tensor"] == "output")]
    assert len(gaps) == 1 and gaps["max_ulp"].iloc[0] == 2  # a baseline gap across shards, computed at merge


def test_merge_refuses_a_cell_measured_in_two_runs_and_writes_nothing(tmp_path):
    t = fab.tensors(0)
    one = fab.make_run(tmp_path / "a", "a", "1", [(fab.cell(xla="on"), t, None, "ok")])
    nudged = {**t, "output": fab.nudge(t["output"], 2)}  # the same cell, other bits: which copy is right?
    two = fab.make_run(tmp_path / "b", "b", "1", [(fab.cell(xla="on"), nudged, None, "ok")])
    with pytest.raises(RunDirError, match=f"cell {fab.cell(xla='on').cell_id} was also measured in .*disjoint"):
        merge_runs([one.path, two.path], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_stored_run_whose_config_a_new_run_would_refuse_still_opens(tmp_path):
    import yaml

    base, _ = fab.make_pair(tmp_path)
    config = yaml.safe_load((base.path / "config.yaml").read_text())
    config["expect"] = {"deterministic": {"threads": [7]}}  # no cell has it: a new run is refused
    (base.path / "config.yaml").write_text(yaml.safe_dump(config))
    from detaudit.core.config import parse_config
    from detaudit.errors import ConfigError

    with pytest.raises(ConfigError, match="no cell has threads=7"):
        parse_config(config)
    assert load_run(base.path).table is not None  # an older version's run, or one made elsewhere, opens


def test_junit_parses_with_the_standard_library(tmp_path):
    path = tmp_path / "out" / "junit.xml"
    write_junit(path, "suite", [JUnitCase("Conv2DTranspose", "defaults, seed=0", 0.5),
                                JUnitCase("Conv2DTranspose", "xla=on, seed=0", failure="grad_bias differs <&>"),
                                JUnitCase("Conv2DTranspose", "device=gpu, seed=0", skipped="no GPU")])
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    assert len(root.findall("./testsuite/testcase")) == 3
    assert root.find(".//failure").text == "grad_bias differs <&>"


@pytest.mark.parametrize("make, fragment", [
    (lambda d: None, "no such run directory"),
    (lambda d: d.mkdir(), "not a detaudit run directory"),
    (lambda d: (d.mkdir(), (d / "meta.json").write_text("[]")), "expected a JSON object"),
    (lambda d: (d.mkdir(), (d / "meta.json").write_text('{"format_version": 99}')), "newer than this detaudit"),
])
def test_foreign_or_corrupted_directories_are_refused(tmp_path, make, fragment):
    target = tmp_path / "x"
    make(target)
    with pytest.raises(RunDirError, match=fragment):
        load_run(target)


def test_the_html_report_is_self_contained(pair):
    from detaudit.render.html import render_html

    _, base, new = pair
    from detaudit.analysis.summary import build_summary

    stored = load_run(new.path)
    page = render_html(stored, build_summary(stored), compare_runs(load_run(base.path), stored))
    assert page.startswith("<!doctype html>") and "Drift against base" in page
    assert page.count("data:image/png;base64,") == 1  # the histograms, inline (the heat map is a table)
    assert "http" not in page and page.count("<script") == 1 and "<script src" not in page  # only the inline sorter
    assert "NONDETERMINISTIC" in page and "tensorflow.tensorflow_version" in page
