"""Shared fixtures. TensorFlow integration tests carry the `tf` marker and run real workers on tiny shapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _run_from_the_repository_root():
    # Workers import test-only layers as "tests.support_layers:..." relative to the working directory.
    previous = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(previous)
