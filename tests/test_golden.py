"""Golden files: the text of `compare`, `history`, `shapes --no-tf`, `adjoint` and an audit (`show`, and its
Markdown report), as the command prints it.

Each command runs in-process (cli.main) at a fixed width on fabricated runs, audits or measurements, so no
TensorFlow starts. `pytest --update-golden` rewrites tests/golden/ from the current output; review the diff.
The run summary's golden files are in test_summary.py.
"""

from __future__ import annotations

import pytest

from tests.helpers import audits
from tests.helpers import runs as fab
from tests.helpers.cli import detaudit_main

WIDTH = 100


@pytest.fixture(autouse=True)
def _fixed_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.setenv("NO_COLOR", "1")


def _text(result, *paths) -> str:
    text = result.stdout
    for i, path in enumerate(paths):
        text = text.replace(str(path), f"RUN_ROOT{i or ''}")
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def test_compare(tmp_path, golden):
    base, new = fab.make_pair(tmp_path)
    result = detaudit_main("compare", str(base.path), str(new.path))
    assert result.returncode == 1, result.stderr  # regressions
    text = _text(result, tmp_path)
    golden("compare.txt", text)
    assert all(len(line) <= WIDTH for line in text.splitlines())


def test_history(tmp_path, golden):
    fab.make_pair(tmp_path)
    result = detaudit_main("history", str(tmp_path))
    assert result.returncode == 0, result.stderr
    golden("history.txt", _text(result, tmp_path))


@pytest.mark.parametrize("onednn", ["0", "1"], ids=["onednn-off", "onednn-on"])
def test_shapes_predicted_on_each_path(monkeypatch, golden, onednn):
    """The prediction for either path, whatever this machine's default: the rows that differ say so."""
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    result = detaudit_main("shapes", "--no-tf", "--rank", "1", "--kernel", "4", "--stride", "2", "--padding", "same",
                           "--output-padding", "0", "--input", "1", "2", "3", "4", "5")
    assert result.returncode == 0, result.stderr
    golden(f"shapes-onednn-{'on' if onednn == '1' else 'off'}.txt", _text(result))


def _measured_adjoint(items):
    """What the adjoint probe measures, made up: one spec per outcome (pass, refused, known bug, failure)."""
    rows = []
    for item in items:
        eps = {"float32": 0.6, "float64": 0.4}
        if item["rank"] == 3:
            eps["float64"] = 900.0  # the known conv3d 1x1x1 stride-3 SAME bug
        if item["kernel"] == 4:
            eps["float32"] = 120.0  # a failure nothing explains
        results = {dtype: {"error": None, "adjoint_eps": value, "reconstruction": 0.5} for dtype, value in eps.items()}
        if item["kernel"] == 2:
            results["float32"] = {"error": "InvalidArgumentError: refused"}
        rows.append({**item, "results": results})
    return {"specs": rows, "onednn": "off (TF_ENABLE_ONEDNN_OPTS=0)", "tensorflow": "2.21.0"}


@pytest.mark.parametrize("with_failure", [False, True], ids=["known-bug-only", "failure"])
def test_adjoint(tmp_path, monkeypatch, golden, with_failure):
    import yaml

    import detaudit.workflows.adjoint as adjoint

    monkeypatch.setattr(adjoint, "run_probe", lambda name, items, **kwargs: _measured_adjoint(items))
    layers = [{"kind": "Conv1DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
               "input_shape": [1, 5, 2]},
              {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 2, "strides": 2, "padding": "valid",
               "input_shape": [1, 5, 5, 2]},
              {"kind": "Conv3DTranspose", "filters": 2, "kernel_size": 1, "strides": 3, "padding": "same",
               "input_shape": [1, 9, 9, 9, 2]}]
    if with_failure:
        layers.append({"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 4, "strides": 2, "padding": "same",
                       "input_shape": [1, 5, 5, 2]})
    config = tmp_path / "adj.yaml"
    config.write_text(yaml.safe_dump({"name": "adj", "layers": layers}))
    result = detaudit_main("adjoint", str(config), "--all")
    assert result.returncode == (1 if with_failure else 0), result.stdout + result.stderr
    golden(f"adjoint-{'failure' if with_failure else 'known'}.txt", _text(result, tmp_path))


@pytest.mark.parametrize("name, all_rows", [("gradients", False), ("gradients", True), ("data", False)],
                         ids=["gradients", "gradients-all", "data"])
def test_audit(tmp_path, golden, name, all_rows):
    """A stored audit as `detaudit show` prints it: the answers, the culprit, what differs, the checks that apply."""
    result = audits.audit_result() if name == "gradients" else audits.data_audit_result()
    store = audits.make_audit_run(tmp_path, "audit-1", result)
    shown = detaudit_main("show", str(store.path), *(["--all"] if all_rows else []))
    assert shown.returncode == 1, shown.stdout + shown.stderr  # NONDETERMINISTIC
    golden(f"audit-{name}{'-all' if all_rows else ''}.txt", _text(shown, tmp_path))


def test_audit_markdown(golden):
    from detaudit.render.tools import audit_markdown

    golden("audit-gradients.md", audit_markdown(audits.audit_result()))
