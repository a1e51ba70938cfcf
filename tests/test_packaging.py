"""What `pip install .` ships: every package of the source tree, and the bundled configs."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parent.parent


def _declared_packages() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["tool"]["setuptools"]["packages"])


def test_every_source_package_is_shipped():
    # An installed detaudit (CI installs with `pip install .`, not editable) lacks any package left out here.
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "detaudit").rglob("__init__.py")}
    assert found, "no package found: the test would pass without looking"
    missing = found - _declared_packages()
    assert not missing, f"packages missing from pyproject.toml's [tool.setuptools] packages: {sorted(missing)}"
