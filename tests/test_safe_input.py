"""Issue 18: safe with any input. No code runs from the working directory unless a config names it; text from
outside is shown as text; parsing is bounded; the table agrees with the records; any output encoding works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TINY = {"kind": "Conv1DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
        "input_shape": [1, 4, 2]}
#: The parent as the console script starts it: the working directory is not on its path (unlike `python -m`).
_CONSOLE_SCRIPT = "import sys; del sys.path[0]; from detaudit.cli import main; sys.exit(main())"


def detaudit_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``detaudit ARGS`` run in ``cwd`` as the installed command runs (PYTHONPATH reaches this checkout)."""
    environ = dict(os.environ if env is None else env)
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=environ)


def _plant(directory: Path) -> None:
    """Modules named like detaudit's dependencies that leave a marker file when imported."""
    for name in ("numpy", "yaml", "keras", "tensorflow", "pandas"):
        (directory / f"{name}.py").write_text(
            f"import pathlib\npathlib.Path(__file__).with_name('IMPORTED-{name}').write_text('x')\n")


def _markers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("IMPORTED-*"))


@pytest.mark.tf
@pytest.mark.parametrize("args", [["env"], ["shapes", "--kernel", "3", "--stride", "2", "--padding", "same",
                                             "--input", "4"], ["run", "c.yaml", "--out", "runs"]])
def test_workers_never_import_from_the_working_directory(tmp_path, args):
    _plant(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "seeds": [0], "repeats": 2, "layers": [TINY]}))
    result = detaudit_in(tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _markers(tmp_path) == []


@pytest.mark.tf
def test_a_layer_named_in_the_working_directory_is_imported_after_detaudits_own_dependencies(tmp_path):
    _plant(tmp_path)
    (tmp_path / "mylayers.py").write_text(
        "import keras\n\nclass Doubles(keras.layers.Layer):\n    def call(self, x):\n        return x * 2.0\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"name": "c", "seeds": [0], "repeats": 2, "layers": [{"kind": "mylayers:Doubles", "input_shape": [1, 3]}]}))
    result = detaudit_in(tmp_path, "run", "c.yaml", "--out", "runs", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _markers(tmp_path) == []
