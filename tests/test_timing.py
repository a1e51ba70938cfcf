"""Time per pass: measured around each warm step (a fake clock, never the wall), and shown as ratios to the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from detaudit.analysis.runs import load_run
from detaudit.analysis.summary import build_summary
from detaudit.core import repeat
from tests.helpers import runs as fab


class _Clock:
    """A perf_counter that moves only when a step says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def spend(self, ms: float) -> None:
        self.now += ms / 1000.0


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(repeat.time, "perf_counter", fake)
    return fake


def test_ms_per_pass_is_the_median_of_the_warm_steps(clock):
    durations = iter([50.0, 1.0, 3.0, 2.0, 9.0])  # the first (tracing) is left out

    def step():
        clock.spend(next(durations))
        return [np.zeros(3, np.float32)]

    outcome = repeat.repeat_and_compare(step, 5)
    assert outcome.ms_per_pass == pytest.approx(2.5)  # median of 1, 3, 2, 9


def test_a_single_pass_has_no_warm_time(clock):
    assert repeat.repeat_and_compare(lambda: [np.zeros(1)], 1).ms_per_pass is None


def test_the_device_path_divides_the_later_passes_and_their_one_sync(clock):
    class Pass:
        def first(self):
            clock.spend(40.0)
            return [np.zeros(2, np.float32)]

        def later(self):
            clock.spend(4.0)

        def results(self):
            clock.spend(2.0)
            return [(0, None)]

    outcome = repeat.repeat_on_device(Pass(), 4, names=["output"])
    assert outcome.ms_per_pass == pytest.approx((3 * 4.0 + 2.0) / 3)


def test_the_summary_gives_each_setting_its_time_against_the_baseline(tmp_path):
    times = {("on", "off"): 2.0, ("off", "off"): 3.0, ("off", "on"): 1.0, ("on", "on"): 1.2}
    drift = fab.nudge(fab.tensors(0)["output"], 4)
    cells = [(fab.cell(determinism=d, xla=x), {**fab.tensors(0), "output": drift} if x == "on" else fab.tensors(0),
              None, "ok") for d, x in times]

    def extend(record, first):
        settings = record["cell"]["settings"]
        return {**record, "ms_per_pass": times[(settings["determinism"], settings["xla"])]}

    store = fab.make_run(tmp_path, "t", "2026-01-01T00:00:00", cells, extend=extend)
    summary = build_summary(load_run(store.path))
    ratios = {c.settings_label: c.time_ratio for c in summary.cells}
    assert ratios == {"determinism=on": 1.0, "defaults": 1.5, "xla=on": 0.5, "determinism=on, xla=on": 0.6}
    lines = [line.text for line in next(s for s in summary.sections if s.key == "time").lines]
    assert lines == ["Conv2DTranspose k3 s2 same [1, 2, 2, 2]: baseline 2 ms per pass", "  defaults: 1.50x (same bits)",
                     "  xla=on: 0.50x (bits differ, max 0.25 scaled ULP)",
                     "  determinism=on, xla=on: 0.60x (bits differ, max 0.25 scaled ULP)"]
    assert summary.to_dict()["cells"][0]["ms_per_pass"] in times.values()
