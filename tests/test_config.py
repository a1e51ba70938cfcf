"""config: validation messages, defaults, matrix expansion, cell ids. No TensorFlow."""

from __future__ import annotations

import copy
import math
import re

import pytest

from detaudit.core.config import (
    AXES,
    Cell,
    Settings,
    bundled_config_path,
    load_config,
    parse_config,
)
from detaudit.core.planning import expand_matrix, iter_groups
from detaudit.errors import ConfigError

MINIMAL = {
    "name": "t",
    "layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2,
                "padding": "same", "input_shape": [1, 4, 4, 2]}],
}


def _with(**changes):
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return data


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="cfg.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("cfg.yaml: ")
    return message


@pytest.mark.parametrize("name", ["quick", "nightly", "gpu-triage"])
def test_bundled_configs_validate(name):
    config = load_config(bundled_config_path(name))
    assert config.name == name and config.cells()


def test_defaults_match_the_issue():
    config = parse_config(MINIMAL)
    assert config.seeds == (0,) and config.repeats == 3 and config.timeout_s == 300
    assert config.axes == {"backend": ("tensorflow",), "device": ("cpu",), "precision": ("float32",), "determinism": ("off",), "xla": ("off",),
                           "onednn": ("default",), "threads": (0,), "tf32": ("default",)}
    assert config.baseline == Settings(determinism="on")
    params = config.layers[0].params
    assert params["kernel_size"] == [3, 3] and params["use_bias"] is True and params["output_padding"] is None


def test_a_scalar_means_a_one_element_list():
    config = parse_config(_with(seeds=7, matrix={"precision": "mixed_float16", "threads": 2}))
    assert config.seeds == (7,)
    assert config.axes["precision"] == ("mixed_float16",) and config.axes["threads"] == (2,)


def test_yaml_on_off_booleans_are_accepted():
    config = parse_config(_with(matrix={"determinism": [False, True], "xla": True}))
    assert config.axes["determinism"] == ("off", "on") and config.axes["xla"] == ("on",)


def test_typo_in_a_top_level_key_suggests_the_nearest():
    message = _error(_with(repeat=3))
    assert "unknown key `repeat`" in message and "Did you mean `repeats`?" in message


def test_typo_in_a_layer_key_names_the_path():
    data = _with()
    data["layers"][0]["kernel_sise"] = 3
    message = _error(data)
    assert "`layers[0]`" in message and "Did you mean `kernel_size`?" in message


def test_bad_axis_value_names_path_value_and_choices():
    message = _error(_with(matrix={"precision": ["float32", "mixed_bfloat"]}))
    assert "`matrix.precision[1]`" in message and "'mixed_bfloat'" in message
    assert "mixed_bfloat16" in message and "Did you mean `mixed_bfloat16`?" in message


@pytest.mark.parametrize("changes, fragment", [
    ({"repeats": 1}, "`repeats`"),
    ({"repeats": "3"}, "`repeats`"),
    ({"seeds": [-1]}, "`seeds[0]`"),
    ({"timeout_s": 0}, "`timeout_s`"),
    ({"matrix": {"device": ["tpu"]}}, "`matrix.device[0]`"),
    ({"matrix": {"threads": [-2]}}, "`matrix.threads[0]`"),
    ({"matrix": {"colour": ["red"]}}, "unknown key `colour`"),
    ({"baseline": {"device": "cpu", "xla": "maybe"}}, "`baseline.xla`"),
    ({"layers": []}, "`layers`"),
    ({"name": "a b/c"}, "`name`"),
    ({"expect": {"deterministic": {"determinism": ["sometimes"]}}}, "`expect.deterministic.determinism[0]`"),
    ({"expect": {"max_ulp": {"baseline": {"float32": -1}}}}, "`expect.max_ulp.baseline.float32`"),
])
def test_invalid_values_are_refused_with_their_path(changes, fragment):
    assert fragment in _error(_with(**changes))


@pytest.mark.parametrize("layer_changes, fragment", [
    ({"filters": -2}, "Expected a strictly positive integer and at most 65,536. Received filters=-2."),
    ({"kind": "Conv2DTransposed"}, "Did you mean `Conv2DTranspose`?"),
    ({"kernel_size": [3, 3, 3]}, "`layers[0].kernel_size`"),
    ({"input_shape": [4, 4, 2]}, "`layers[0].input_shape`"),
    ({"padding": "full"}, "`layers[0].padding`"),
    ({"output_padding": 2}, "smaller than the stride"),
    ({"dilation_rate": 2}, "`layers[0].dilation_rate`"),
    ({"kind": "os.system"}, "import path"),
])
def test_invalid_layers_are_refused(layer_changes, fragment):
    data = _with()
    data["layers"][0].update(layer_changes)
    assert fragment in _error(data)


def test_custom_layers_take_any_plain_kwargs():
    config = parse_config(_with(layers=[{"kind": "mypkg.layers:Up", "factor": 2, "input_shape": [1, 4, 4, 2]}]))
    assert config.layers[0].params == {"factor": 2} and config.layers[0].rank is None


def test_matrix_expansion_adds_the_baseline_once_per_layer_and_seed():
    config = parse_config(_with(seeds=[0, 1], matrix={"precision": ["float32", "mixed_bfloat16"], "xla": ["off", "on"]}))
    cells = expand_matrix(config)
    assert len(cells) == (4 + 1) * 2  # 2x2 matrix, plus the baseline (determinism on), for 2 seeds
    assert sum(c.settings == config.baseline for c in cells) == 2
    assert len({c.cell_id for c in cells}) == len(cells)


def test_baseline_inside_the_matrix_is_not_duplicated():
    config = parse_config(_with(matrix={"determinism": ["off", "on"]}))
    assert len(expand_matrix(config)) == 2


def test_cells_group_by_process_wide_settings_only():
    config = parse_config(_with(matrix={"device": ["cpu", "gpu"], "xla": ["off", "on"], "threads": [1, 2]}))
    groups = list(iter_groups(expand_matrix(config)))
    # device and xla share a process; threads and the baseline's determinism do not.
    assert len(groups) == 3
    assert all(len({c.settings.process_key() for c in cells}) == 1 for _, cells in groups)


def test_cell_ids_are_stable_and_safe():
    cell = expand_matrix(parse_config(MINIMAL))[0]
    # A golden value: cell ids key compare, resume and merge across runs and versions.
    assert cell.cell_id == Cell.from_dict(cell.to_dict()).cell_id
    assert cell.cell_id == "conv2dtranspose-970425c421e1"


def test_to_dict_round_trips():
    config = parse_config(_with(matrix={"precision": ["float32", "bfloat16"]},
                                expect={"deterministic": {"determinism": ["on"]}, "max_ulp": {"baseline": 4}}))
    again = parse_config(config.to_dict(), source=config.source)
    assert again == config


def test_expectations_select_cells():
    config = parse_config(_with(expect={"deterministic": {"determinism": ["on", "env"]},
                                        "max_ulp": {"baseline": {"float32": 4, "*": 100}}}))
    assert config.expect.must_be_deterministic(Settings(determinism="on"))
    assert not config.expect.must_be_deterministic(Settings(determinism="off"))
    assert config.expect.threshold("max_ulp", "baseline", "float32") == 4
    assert config.expect.threshold("max_ulp", "baseline", "bfloat16") == 100
    assert config.expect.threshold("max_ulp", "repeat", "float32") is None
    assert not parse_config(_with(expect={"deterministic": "none"})).expect.must_be_deterministic(Settings())


def test_load_config_reports_files_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [\n  - kind: x\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="Expected a mapping"):
        load_config(scalar)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(evil)


def test_every_axis_has_a_default():
    assert set(AXES) == set(Settings().as_dict())


def test_a_bundled_config_is_found_by_its_name_from_anywhere(tmp_path, monkeypatch):
    from detaudit.core.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("nightly").name == "nightly"
    from detaudit.core.config import bundled_config_names

    with pytest.raises(ConfigError, match=r"nightlly: config file not found \(bundled configs, by name alone: "
                                          + re.escape(", ".join(bundled_config_names())) + r"\)"):
        load_config("nightlly")
    (tmp_path / "nightly").write_text("name: mine\nlayers: [{kind: Conv1DTranspose, filters: 2, kernel_size: 3, "
                                      "input_shape: [1, 4, 2]}]\n")
    assert load_config("nightly").name == "mine"  # a file of that name wins


# ---------------------------------------------------------------------------
# selectors, the baseline, memory and backends: refused up front, every error at once
# ---------------------------------------------------------------------------

_SELECTOR = "Expected all, none, or a mapping of axis -> values."


@pytest.mark.parametrize("name", ["deterministic", "batch_invariant"])
@pytest.mark.parametrize("value", [1, 1.0, 0, 0.0, [], None, {}, "sometimes"])
def test_a_selector_is_all_none_or_a_mapping_never_a_number(name, value):
    # 1 == True and 0 == False in Python: a number once passed as all or none.
    message = _error(_with(batch_sizes=[1], expect={name: value}))
    assert f"`expect.{name}`" in message and _SELECTOR in message


@pytest.mark.parametrize("name", ["deterministic", "batch_invariant"])
def test_a_selector_takes_yaml_booleans_and_the_words(name):
    for value, selected in ((True, True), ("all", True), (False, False), ("none", False)):
        config = parse_config(_with(batch_sizes=[1], expect={name: value}))
        assert config.expect.selects(name, config.baseline) is selected
    assert "Did you mean `all`?" in _error(_with(batch_sizes=[1], expect={name: "al"}))


def test_a_selector_that_no_cell_matches_is_refused_with_what_the_cells_have():
    message = _error(_with(batch_sizes=[1], matrix={"xla": "off"}, expect={"batch_invariant": {"xla": "on"}}))
    assert "`expect.batch_invariant.xla`" in message and "no cell has xla=on" in message
    assert "xla: [off]" in message
    # A list names alternatives: refused only when no cell has any of them.
    parse_config(_with(matrix={"determinism": "off"}, expect={"deterministic": {"determinism": ["on", "env"]}}))
    # The baseline is a cell too (determinism on, added beside the matrix).
    parse_config(_with(matrix={"determinism": "off"}, expect={"deterministic": {"determinism": "on"}}))


def test_a_threshold_for_a_precision_no_cell_runs_in_is_refused():
    message = _error(_with(expect={"max_ulp": {"baseline": {"float16": 4, "*": 8}}}))
    assert "`expect.max_ulp.baseline.float16`" in message and "no cell has precision=float16" in message
    parse_config(_with(matrix={"precision": ["float32", "float16"]},
                       expect={"max_ulp": {"baseline": {"float16": 4, "*": 8}}}))


def test_every_expectation_error_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config(_with(expect={"deterministic": 1, "max_ulp": {"baseline": {"float32": -1}, "reference": "x"},
                                   "max_ulp_scaled": {"baseline": {"float32": math.inf}}},
                           matrix=[], baseline=0), source="cfg.yaml")
    lines = str(info.value).splitlines()
    for where in ("`expect.deterministic`", "`expect.max_ulp.baseline.float32`", "`expect.max_ulp.reference`",
                  "`expect.max_ulp_scaled.baseline.float32`", "`matrix`", "`baseline`"):
        assert sum(where in line for line in lines) == 1, (where, lines)
    assert len(lines) == 6


_JAX_ONLY = {"matrix": {"backend": ["jax"], "xla": ["on"], "determinism": ["on"]},
             "baseline": {"backend": "jax", "xla": "off", "determinism": "on"}}


def test_a_baseline_that_cannot_run_on_its_backend_is_refused_with_the_workers_reason():
    from detaudit.core.kinds import not_applicable

    message = _error(_with(**_JAX_ONLY))
    why = not_applicable({"backend": "jax", "xla": "off"}, "Conv2DTranspose")
    assert "`baseline`" in message and why and why in message and "xla: off" in message
    runs = copy.deepcopy(_JAX_ONLY)
    runs["baseline"]["xla"] = "on"
    assert parse_config(_with(**runs)).baseline.backend == "jax"
    # A kind the backend cannot build: the same function's other reason.
    assert "conv2d_transpose is built from tf.nn ops" in _error(
        _with(**runs, layers=[{**MINIMAL["layers"][0], "kind": "conv2d_transpose"}]))


def test_a_stored_config_opens_without_the_rules_that_plan_a_new_run():
    """A run made by an older version, or on a bigger machine, must still show: its records are the truth."""
    stored = parse_config(_with(**_JAX_ONLY), stored=True)
    assert stored.baseline.backend == "jax" and stored.baseline.xla == "off"
    with pytest.raises(ConfigError, match="`repeats`"):  # each key is still checked
        parse_config(_with(**_JAX_ONLY, repeats=-1), stored=True)


def test_the_cli_refuses_such_a_baseline_in_one_line(tmp_path):
    import yaml

    from tests.helpers.cli import detaudit_main, one_clean_line

    path = tmp_path / "jax.yaml"
    path.write_text(yaml.safe_dump(_with(**_JAX_ONLY)))
    one_clean_line(detaudit_main("run", str(path), "--out", str(tmp_path / "runs")), "`baseline`",
                   "xla: off does not exist on the jax backend")
    assert not (tmp_path / "runs").exists()


def test_the_memory_check_counts_the_largest_batch_size(monkeypatch):
    import dataclasses

    from detaudit.core import layer_spec

    small = _with()
    small["layers"][0]["input_shape"] = [1, 32, 32, 8]
    spec = parse_config(small).layers[0]
    at_64 = layer_spec.cell_memory_bytes(dataclasses.replace(spec, input_shape=(64, 32, 32, 8)))
    monkeypatch.setattr(layer_spec, "machine_memory_bytes", lambda: at_64)
    parse_config(_with(layers=small["layers"], batch_sizes=[1, 64]))  # fits, just
    message = _error(_with(layers=small["layers"], batch_sizes=[1, 1024]))
    assert "`layers[0].input_shape`" in message and "at batch 1,024 (the largest of batch_sizes)" in message
    big = copy.deepcopy(small["layers"])
    big[0]["input_shape"] = [128, 32, 32, 8]  # its own batch is the largest: no batch size to name
    assert "at batch" not in _error(_with(layers=big, batch_sizes=[1]))


def test_every_missing_backend_is_named_in_one_line(monkeypatch, tmp_path):
    import importlib.util

    import yaml

    from detaudit.engine.backends import EXTRAS
    from detaudit.errors import install_hint
    from tests.helpers.cli import detaudit_main, one_clean_line

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("jax", "torch") else real(name, *args))
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(_with(matrix={"backend": ["jax", "torch"]})))
    line = one_clean_line(detaudit_main("run", str(path), "--out", str(tmp_path / "runs")),
                          "jax backend need JAX", "torch backend need PyTorch")
    assert install_hint(EXTRAS["jax"]) in line and install_hint(EXTRAS["torch"]) in line
    assert not (tmp_path / "runs").exists()
