"""The config's JSON Schema, generated from the same declarations the validator uses.

Axes (:mod:`detaudit.core.axes`), layer kinds (:mod:`detaudit.core.kinds`) and
comparisons (:mod:`detaudit.core.comparisons`) each describe themselves; this
module only assembles them, so the schema cannot drift from the validator.
``detaudit schema`` prints it; the bundled configs point YAML editors at the
committed copy (configs/detaudit.schema.json) with a
``# yaml-language-server: $schema=`` line.
"""

from __future__ import annotations

import math
from typing import Any

from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import (
    _DESCRIPTIONS,
    MAX_REPEATS,
    MAX_SEED,
    MAX_BATCH_SIZE,
    MAX_TIMEOUT_S,
    TOP_KEYS,
)
from detaudit.core.kinds import IMPORT_PATH, KINDS, USER_LAYER

__all__ = ["SCHEMA_ID", "config_schema"]

SCHEMA_ID = "https://detaudit.invalid/config.schema.json"  # an identifier, not a download


def _one_or_many(item: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [item, {"type": "array", "items": item, "minItems": 1}]}


def _threshold_table() -> dict[str, Any]:
    precisions = list(AXES["precision"].choices or ()) + ["*"]
    number = {"type": "number", "minimum": 0}
    per_precision = {"oneOf": [number, {"type": "object", "propertyNames": {"enum": precisions},
                                        "additionalProperties": number}]}
    return {"type": "object", "propertyNames": {"enum": list(ComparisonKind.with_thresholds())},
            "additionalProperties": per_precision}


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a detaudit config."""
    axis_values = {name: axis.json_schema for name, axis in AXES.items()}
    user_layer = {"type": "object", "description": USER_LAYER.description,
                  "properties": {"kind": {"type": "string", "pattern": IMPORT_PATH.pattern},
                                 "input_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}}},
                  "required": ["kind", "input_shape"]}
    properties: dict[str, Any] = {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"},
        "description": {"type": "string"},
        "seeds": _one_or_many({"type": "integer", "minimum": 0, "maximum": MAX_SEED}),
        "repeats": {"type": "integer", "minimum": 2, "maximum": MAX_REPEATS, "default": 3},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S, "default": 300},
        "replay_process": {"type": "boolean", "default": False},
        "keep_tensors": {"type": "boolean", "default": True},
        "layers": {"type": "array", "minItems": 1,
                   "items": {"oneOf": [kind.json_schema() for kind in KINDS.values()] + [user_layer]}},
        "matrix": {"type": "object", "additionalProperties": False,
                   "properties": {name: _one_or_many(schema) for name, schema in axis_values.items()}},
        "baseline": {"type": "object", "additionalProperties": False, "properties": axis_values},
        "batch_sizes": {"type": "array", "minItems": 1,
                        "items": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_SIZE}},
        "expect": {"type": "object", "additionalProperties": False, "properties": {
            **{name: {"oneOf": [{"enum": ["all", "none", True, False]},
                                {"type": "object", "additionalProperties": False,
                                 "properties": {n: _one_or_many(s) for n, s in axis_values.items()}}]}
               for name in ComparisonKind.selector_expectations()},
            "max_ulp": _threshold_table(), "max_ulp_scaled": _threshold_table()}},
    }
    assert set(properties) == set(TOP_KEYS), "every top-level key of the validator has a schema"
    for key, schema in properties.items():
        schema.setdefault("description", _DESCRIPTIONS[key])
    assert math.isfinite(MAX_TIMEOUT_S)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "detaudit config", "type": "object", "additionalProperties": False,
            "required": ["layers"], "properties": properties}
