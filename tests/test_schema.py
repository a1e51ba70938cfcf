"""schema: the config's JSON Schema is generated from the validator's declarations and matches it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from detaudit.core.config import bundled_config_path
from detaudit.core.schema import config_schema
from tests.helpers.cli import detaudit

COMMITTED = Path(__file__).resolve().parent.parent / "configs" / "detaudit.schema.json"


def test_the_committed_schema_is_the_generated_one():
    assert json.loads(COMMITTED.read_text()) == config_schema(), "regenerate: detaudit schema > configs/detaudit.schema.json"


def test_the_command_prints_it():
    result = detaudit("schema")
    assert result.returncode == 0 and json.loads(result.stdout) == config_schema()


@pytest.mark.parametrize("name", ["quick", "nightly", "gpu-triage"])
def test_bundled_configs_validate_and_name_the_schema(name):
    path = bundled_config_path(name)
    assert path.read_text().startswith("# yaml-language-server: $schema=detaudit.schema.json")
    jsonschema.validate(yaml.safe_load(path.read_text()), config_schema())


@pytest.mark.parametrize("bad", [
    {"matrix": {"precison": ["float32"]}},
    {"matrix": {"xla": ["maybe"]}},
    {"repeats": 1},
    {"layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "input_shape": [1, 4, 4, 2],
                 "kernel_sise": 3}]},
    {"expect": {"max_ulp": {"adjoint": 3}}},
])
def test_what_the_validator_refuses_the_schema_refuses(bad):
    from detaudit.core.config import parse_config
    from detaudit.errors import ConfigError

    data = {"name": "t", "layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3,
                                     "input_shape": [1, 4, 4, 2]}], **bad}
    with pytest.raises(ConfigError):
        parse_config(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, config_schema())
