"""Shared fixtures and options.

Markers (pyproject.toml): `tf` runs TensorFlow (workers, or in-process), on tiny shapes; `onednn` depends on the
oneDNN path and runs again with oneDNN on in CI (tests/test_onednn.py); `slow` takes about 15 s or more on 2 cores.
Golden files (tests/golden/) hold the text of commands and pages; `pytest --update-golden` rewrites them from
the current output, for review in the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from the current output instead of comparing with it")


@pytest.fixture()
def golden(request: pytest.FixtureRequest):
    """``golden(name, text)``: assert ``text`` equals tests/golden/NAME (or rewrite it with --update-golden)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"no golden file {path}: run pytest --update-golden, review the file, commit it"
        assert text == path.read_text(encoding="utf-8"), f"{name}: pytest --update-golden rewrites it; review the diff"

    return check


@pytest.fixture(autouse=True, scope="session")
def _run_from_the_repository_root():
    # Workers import test-only layers as "tests.support_layers:..." relative to the working directory.
    previous = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(previous)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # pytest exits 5 when a selection (-m, -k, a path) runs no test: CI would fail on an exit code that reads
    # like an infrastructure problem. Say what happened and fail as a failed test does.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        selection = session.config.option.markexpr or session.config.option.keyword or session.config.args
        session.config.get_terminal_writer().line(f"detaudit tests: the selection {selection!r} ran no test; "
                                                  "a marker lost its tests? (see tests/README.md)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


#: The files that take longest (measured with --durations on 2 cores), longest first. The two test processes take
#: whole files in collection order (--dist loadfile), so the long ones start first and the short ones fill in
#: at the end, instead of one long file running alone after everything else has finished.
_LONGEST_FIRST = ("test_audit.py", "test_triage.py", "test_trust.py", "test_nightly.py", "test_safe_input.py",
                  "test_runner.py", "test_cli.py", "test_examples.py", "test_backends.py", "test_ops.py",
                  "test_repro.py", "test_batch.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
