"""Functions whose results change from call to call, for the tests of ``assert_deterministic``."""

from __future__ import annotations

import itertools
from typing import Any, Callable


def returning(*values: Any) -> Callable[[], Any]:
    """A function returning ``values[i]`` on call i (then the last one again)."""
    it = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)
