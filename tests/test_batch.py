"""The `batch` comparison: its numerics (pure, property-tested), its config, its view, and real runs that catch a
deliberately batch-dependent layer and measure Conv2DTranspose on both oneDNN paths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detaudit.analysis.batch_view import batch_dependent, batch_failures, batch_section
from detaudit.analysis.compare import Category, compare_runs
from detaudit.analysis.runs import load_run
from detaudit.analysis.summary import build_summary
from detaudit.core import batch
from detaudit.core.config import Cell, parse_config
from detaudit.errors import ConfigError
from tests.helpers import runs as fab

# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------


@given(st.integers(1, 64), st.integers(1, 64))
def test_a_pass_plan_runs_every_sample_in_full_passes(own, size):
    plan = batch.pass_plan(own, size)
    assert plan.shape == (-(-own // size), size)
    assert set(plan.ravel()) == set(range(own))
    counts = np.bincount(plan.ravel(), minlength=own)
    assert counts.max() - counts.min() <= 1  # the samples are taken round-robin


def test_a_pass_plan_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="batch=0"):
        batch.pass_plan(0, 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_compare_samples_counts_the_samples_that_differ_and_names_the_worst(own, size, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    mine = rng.standard_normal((own, 3, 2)).astype(np.float32)
    plan = batch.pass_plan(own, size).ravel()
    other = mine[plan].copy()
    nudged = data.draw(st.lists(st.integers(0, plan.size - 1), unique=True, max_size=plan.size))
    ulps = {}
    for k, position in enumerate(nudged):
        bits = other[position].reshape(-1).view(np.uint32)
        bits[0] += k + 1  # position `position` moved by k + 1 ULP in its first element
        ulps[position] = k + 1
    result = batch.compare_samples(other, plan, mine)
    assert result.n_samples_differ == len({int(plan[p]) for p in nudged})
    if nudged:
        worst = max(ulps, key=ulps.get)
        assert result.sample == plan[worst] and result.comparison.max_ulp == ulps[worst]
    else:
        assert result.sample is None and result.comparison.bitwise_equal


def test_compare_samples_counts_a_sign_of_zero_as_a_difference():
    mine = np.zeros((2, 3), np.float32)
    other = mine.copy()
    other[1, 2] = -0.0
    result = batch.compare_samples(other, np.arange(2), mine)
    assert (result.n_samples_differ, result.sample, result.comparison.max_ulp) == (1, 1, 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_a_summed_gradient_computed_exactly_matches_the_per_sample_sum(own, size, seed):
    rng = np.random.default_rng(seed)
    alone = [rng.standard_normal(4).astype(np.float32) for _ in range(own)]
    plan = batch.pass_plan(own, size)
    # Each pass's gradient is the float64 sum of its samples' gradients: the two sides agree bit for bit.
    exact = [np.sum([alone[i].astype(np.float64) for i in samples], axis=0) for samples in plan]
    result = batch.compare_summed(exact, alone, plan)
    assert result.comparison.bitwise_equal
    assert result.ref_scale == pytest.approx(np.abs(np.sum(
        [c * a.astype(np.float64) for c, a in zip(np.bincount(plan.ravel(), minlength=own), alone)], axis=0)).max())


def test_a_summed_gradient_names_the_side_closer_to_float64():
    alone = [np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)]
    plan = batch.pass_plan(2, 2)
    truth = np.array([4.0, 6.0])
    off = [np.array([4.0, 6.0 + 2 ** -20], np.float32)]  # the batched sum is off; the per-sample sum is exact
    result = batch.compare_summed(off, alone, plan, truth)
    assert result.closer_batch == 1 and result.comparison.n_mismatch == 1
    truth_off = np.array([4.0, 6.0 + 2 ** -20])  # now the batched side is the exact one
    assert batch.compare_summed(off, alone, plan, truth_off).closer_batch == 2
    assert batch.compare_summed([np.array([4.0, 6.0], np.float32)], alone, plan, truth).closer_batch is None


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

_LAYER = {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "input_shape": [2, 4, 4, 2]}


def test_batch_sizes_reach_every_cell_without_changing_its_id():
    plain = parse_config({"layers": [_LAYER]})
    sized = parse_config({"layers": [_LAYER], "batch_sizes": [4, 1, 4]})
    assert sized.batch_sizes == (1, 4)
    assert [c.cell_id for c in plain.cells()] == [c.cell_id for c in sized.cells()]
    cell = sized.cells()[0]
    assert cell.batch_sizes == (1, 4) and Cell.from_dict(cell.to_dict()) == cell
    assert parse_config(sized.to_dict()) == sized


@pytest.mark.parametrize("data, fragment", [
    ({"batch_sizes": [0, "x"]}, "`batch_sizes[1]`"),
    ({"batch_sizes": []}, "`batch_sizes`"),
    ({"batch_sizes": [2000]}, "at most 1,024"),
    ({"expect": {"batch_invariant": "all"}}, "without batch_sizes"),
    ({"batch_sizes": [1], "expect": {"batch_invariant": {"onednn": "of"}}}, "Did you mean `off`"),
])
def test_bad_batch_settings_are_refused_with_their_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config({"layers": [_LAYER], **data})
    assert fragment in str(info.value)


def test_batch_invariant_selects_cells_like_deterministic():
    config = parse_config({"layers": [_LAYER], "batch_sizes": [1], "matrix": {"onednn": ["off", "on"]},
                           "expect": {"batch_invariant": {"onednn": "off"}}})
    chosen = {c.settings.onednn: config.expect.selects("batch_invariant", c.settings) for c in config.cells()}
    assert chosen == {"off": True, "on": False, "default": False}
    assert not parse_config({"layers": [_LAYER]}).expect.selects("batch_invariant", config.cells()[0].settings)


# ---------------------------------------------------------------------------
# view, expectation and compare, on fabricated runs made the way the worker makes its records
# ---------------------------------------------------------------------------

_FAB = parse_config({**fab.CONFIG.to_dict(), "batch_sizes": [1], "replay_process": False,
                     "expect": {"batch_invariant": {"determinism": "on"}}})


def _with_batch(differ: bool, ms: float = 2.0):
    def extend(record: dict, first: dict) -> dict:
        own = first["output"]  # the fabricated cell's batch is 1; its sample as if computed in a batch of 2
        other = fab.nudge(own, 5) if differ else own
        rows = [batch.row("output", 2, batch.compare_samples(other, np.arange(1), own))]
        return {**record, "ms_per_pass": ms, "batch": {"rows": rows}}
    return extend


def _run(root, run_id, differ, ms=2.0):
    cells = [(fab.cell(_FAB, determinism=d, xla=x), fab.tensors(0), None, "ok")
             for d in ("off", "on") for x in ("off", "on")]
    return fab.make_run(root, run_id, "2026-01-01T00:00:00", cells, config=_FAB, extend=_with_batch(differ, ms))


def test_a_batch_dependent_sample_fails_only_where_invariance_is_expected(tmp_path):
    stored = load_run(_run(tmp_path, "r", differ=True).path)
    failures = batch_failures(stored.table, _FAB)
    expected = {fab.cell(_FAB, determinism="on", xla=x).cell_id for x in ("off", "on")}
    assert set(failures) == expected
    assert all("output of sample 0 differs between batch 1 and batch 2 (1/1 samples, max 5 ULP)" in f[0]
               for f in failures.values())
    summary = build_summary(stored)
    assert summary.status.value == "FAIL" and len(summary.failures) == 2
    section = next(s for s in summary.sections if s.key == "batch")
    assert all(line.notable and "output 1/1 samples differ, max 5 ULP (sample 0)" in line.text
               for line in section.lines)
    assert summary.to_dict()["sections"][0]["key"] == "batch"


def test_an_invariant_run_passes_and_says_identical(tmp_path):
    stored = load_run(_run(tmp_path, "r", differ=False).path)
    assert not batch_failures(stored.table, _FAB)
    assert set(batch_dependent(stored.table).values()) == {False}
    section = batch_section(stored.table)
    assert section is not None and all("output identical" in line.text and not line.notable
                                       for line in section.lines)


def test_compare_marks_a_newly_batch_dependent_cell_and_a_slowdown(tmp_path):
    base = load_run(_run(tmp_path, "base", differ=False, ms=2.0).path)
    new = load_run(_run(tmp_path, "new", differ=True, ms=4.4).path)
    result = compare_runs(base, new)
    marks = {c.category for c in result.changes}
    assert marks == {Category.NEWLY_BATCH_DEPENDENT, Category.SLOWER}
    slower = [c for c in result.changes if c.category is Category.SLOWER]
    assert len(slower) == 4 and "2 -> 4.4 ms per pass (2.20x)" in slower[0].detail
    assert not Category.SLOWER.regression and Category.NEWLY_BATCH_DEPENDENT.regression
    same = compare_runs(base, load_run(_run(tmp_path, "again", differ=False, ms=3.9).path))
    assert not same.changes  # 1.95x is within the measured noise


def test_a_batch_threshold_failure_names_the_batch_sizes_it_compares(tmp_path):
    config = parse_config({**fab.CONFIG.to_dict(), "batch_sizes": [2, 3], "replay_process": False,
                           "expect": {"max_ulp": {"batch": 0}}})

    def extend(record: dict, first: dict) -> dict:
        own, bias = first["output"], first["grad_bias"]  # the fabricated cell's batch is 1
        rows = [batch.row("output", size, batch.compare_samples(fab.nudge(np.concatenate([own] * size), 5),
                                                                batch.pass_plan(1, size).ravel(), own))
                for size in (2, 3)]
        summed = batch.compare_summed([fab.nudge(2 * bias, 3)], [bias], batch.pass_plan(1, 2))
        return {**record, "batch": {"rows": [*rows, batch.row("grad_bias", 2, summed)]}}

    cells = [(fab.cell(config, determinism=d, xla=x), fab.tensors(0), None, "ok")
             for d in ("off", "on") for x in ("off", "on")]
    stored = load_run(fab.make_run(tmp_path, "r", "2026-01-01T00:00:00", cells, config=config, extend=extend).path)
    failures = build_summary(stored).failures
    for sentence in ("output batch 1 vs 2: max_ulp 5 > 0", "output batch 1 vs 3: max_ulp 5 > 0",
                     "grad_bias batch 2 vs the per-sample sum: max_ulp 3 > 0"):
        assert sum(f.endswith(sentence) for f in failures) == 4, (sentence, failures)
    assert len(failures) == 12


def test_compare_flags_a_breach_at_a_batch_size_that_held_before(tmp_path):
    config = parse_config({**fab.CONFIG.to_dict(), "batch_sizes": [2, 3], "replay_process": False,
                           "expect": {"max_ulp": {"batch": 0}}})

    def breaking(sizes: tuple[int, ...]):
        def extend(record: dict, first: dict) -> dict:
            own = first["output"]
            rows = [batch.row("output", size, batch.compare_samples(
                fab.nudge(np.concatenate([own] * size), 5 if size in sizes else 0), batch.pass_plan(1, size).ravel(),
                own)) for size in (2, 3)]
            return {**record, "batch": {"rows": rows}}
        return extend

    cells = [(fab.cell(config, determinism="off", xla="off"), fab.tensors(0), None, "ok")]
    runs = [load_run(fab.make_run(tmp_path / name, name, "2026-01-01T00:00:00", cells, config=config,
                                  extend=breaking(sizes)).path) for name, sizes in (("a", (2,)), ("b", (2, 3)))]
    result = compare_runs(*runs)
    assert [c.category for c in result.changes] == [Category.ULP_REGRESSION]
    assert "batch 1 vs 3" in result.changes[0].detail and "batch 1 vs 2" not in result.changes[0].detail


# ---------------------------------------------------------------------------
# real runs (TensorFlow workers)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    from detaudit.engine.runner import run

    config = parse_config({
        "name": "batch", "seeds": [0], "repeats": 2, "batch_sizes": [1, 3],
        "layers": [{"kind": "tests.batch_layers:BatchDependentSum", "units": 2, "input_shape": [2, 4, 4, 2]},
                   {"kind": "tests.batch_layers:BatchInvariantSum", "units": 2, "input_shape": [2, 4, 4, 2]},
                   {"kind": "tests.batch_layers:OnlyItsOwnBatchSize", "units": 2, "batch": 2,
                    "input_shape": [2, 4, 4, 2]},
                   {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
                    "input_shape": [2, 4, 4, 2]}],
        "matrix": {"onednn": ["off", "on"]}, "baseline": {"onednn": "off"},
        "expect": {"batch_invariant": "all"}}, source="batch.yaml")
    table = run(config, out=tmp_path_factory.mktemp("runs"), workers=2)
    return table, build_summary(load_run(table.attrs["run_dir"]))


@pytest.mark.tf
@pytest.mark.slow
def test_a_batch_dependent_layer_is_caught_and_its_control_passes(batch_run):
    table, summary = batch_run
    failing = [f for f in summary.failures if "expected batch-invariant" in f]
    assert any(f.startswith("BatchDependentSum [2, 4, 4, 2] [") and "output of sample" in f for f in failing)
    assert not any(f.startswith("BatchInvariantSum") for f in failing)
    # A layer that cannot run at another size: the comparison is an error row, the cell itself stands.
    refused = table[table["layer"].str.endswith("OnlyItsOwnBatchSize")]
    errors = refused[refused["comparison"] == "batch"]
    assert list(errors["status"].unique()) == ["error"] and errors["message"].str.contains("only at batch size 2").all()
    assert (refused[refused["comparison"] == "repeat"]["status"] == "ok").all()
    assert any(f.startswith("OnlyItsOwnBatchSize") and "not measured" in f for f in failing)
    rows = table[(table["comparison"] == "batch") & table["layer"].str.endswith("BatchDependentSum")]
    output = rows[rows["tensor"] == "output"]
    assert set(output["batch_size"]) == {1, 3} and not output["bitwise_equal"].any()
    assert (output["n_samples_differ"] >= 1).all()
    assert rows[rows["tensor"] == "grad_input"]["bitwise_equal"].all()  # no sum in the input gradient
    kernel = rows[rows["tensor"] == "grad_kernel"]
    assert set(kernel["batch_size"]) == {2, 3} and (kernel["max_abs"] / kernel["ref_scale"] < 1e-5).all()


@pytest.mark.tf
@pytest.mark.slow
def test_conv2d_transpose_is_measured_on_both_onednn_paths(batch_run):
    table, summary = batch_run
    rows = table[(table["comparison"] == "batch") & (table["layer"] == "Conv2DTranspose")]
    assert (rows["status"] == "ok").all()
    for path in ("off", "on"):
        mine = rows[rows["onednn"] == path]
        assert set(zip(mine["tensor"], mine["batch_size"])) == {
            ("output", 1), ("grad_input", 1), ("output", 3), ("grad_input", 3),
            ("grad_kernel", 2), ("grad_kernel", 3), ("grad_bias", 2), ("grad_bias", 3)}
        # Built-in kinds have a float64 truth: the summed gradients say which batch size is closer to it.
        summed = mine[mine["tensor"].isin(["grad_kernel", "grad_bias"]) & (mine["batch_size"] == 2)]
        assert summed["closer_batch"].notna().any() or summed["bitwise_equal"].all()
    timed = table[(table["comparison"] == "repeat") & table["tensor"].notna()]
    assert (timed["ms_per_pass"] > 0).all()
    texts = [line.text for line in next(s for s in summary.sections if s.key == "time").lines]
    start = next(i for i, t in enumerate(texts) if t.startswith("Conv2DTranspose"))
    assert texts[start].endswith(" ms per pass")
    assert [t.split(":")[0] for t in texts[start + 1:start + 3]] == ["  onednn=off", "  onednn=on"]


def test_the_bundled_batch_config_validates_against_the_schema():
    import jsonschema
    import yaml

    from detaudit.core.config import bundled_config_path, load_config
    from detaudit.core.schema import config_schema

    path = bundled_config_path("batch")
    assert path.read_text().startswith("# yaml-language-server: $schema=detaudit.schema.json")
    jsonschema.validate(yaml.safe_load(path.read_text()), config_schema())
    config = load_config(path)
    assert config.batch_sizes == (1, 4) and dict(config.matrix)["onednn"] == ("off", "on")


def test_every_declared_comparison_view_has_a_section_and_failures():
    import importlib

    from detaudit.core.comparisons import ComparisonKind

    views = [kind.spec.view for kind in ComparisonKind if kind.spec.view]
    assert views == ["detaudit.analysis.batch_view"]
    for name in views:
        module = importlib.import_module(name)
        assert callable(module.section) and callable(module.failures)
