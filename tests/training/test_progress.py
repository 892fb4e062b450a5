"""The expected time left of a run, evaluations included."""

import pytest

from specialight.training.progress import RunClock, describe, remaining


def test_remaining_counts_training_steps_and_the_evaluations_still_ahead():
    # 30 steps of 8 examples, evaluation every 120 examples: at step 15 (120 seen) one evaluation is ahead,
    # the one at 240 examples, which is also the end
    seconds, evaluations = remaining(15, 30, 120, 120, step_seconds=10.0, eval_seconds=180.0)
    assert evaluations == 1 and seconds == pytest.approx(15 * 10 + 180)
    # an end that is not on the cadence gets its own evaluation: 100 steps of 8, every 360 examples
    seconds, evaluations = remaining(45, 100, 360, 360, step_seconds=20.0, eval_seconds=600.0)
    assert evaluations == 2 and seconds == pytest.approx(55 * 20 + 2 * 600)


def test_no_estimate_before_the_first_step_or_without_a_step_limit():
    assert remaining(0, 30, 0, 120, 0.0, 60.0) is None
    assert remaining(10, -1, 80, 120, 5.0, 60.0) is None
    assert describe(0, 30, None) == "step 0/30"


def test_the_clock_leaves_evaluation_time_out_of_the_step_time(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("specialight.training.progress.time.perf_counter", lambda: now[0])
    clock = RunClock()
    now[0] += 100.0  # a 100 s evaluation at step 0
    assert clock.line({"step": 0, "examples": 0, "seconds": 100.0}, 30, 120) == "step 0/30"
    now[0] += 150.0 + 100.0  # 15 steps of 10 s, then a 100 s evaluation
    line = clock.line({"step": 15, "examples": 120, "seconds": 100.0}, 30, 120)
    assert line == "step 15/30, about 4 min left (1 evaluation ahead)"  # 15 x 10 s + 100 s


def test_the_estimate_uses_the_longest_evaluation_so_far(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("specialight.training.progress.time.perf_counter", lambda: now[0])
    clock = RunClock()
    now[0] += 300.0  # a full 300 s evaluation at step 0
    clock.line({"step": 0, "examples": 0, "seconds": 300.0}, 40, 160)
    now[0] += 100.0 + 10.0  # 10 steps of 10 s, then a 10 s likelihood-only evaluation
    line = clock.line({"step": 10, "examples": 80, "seconds": 10.0}, 40, 160)
    assert line == "step 10/40, about 15 min left (2 evaluations ahead)"  # 30 x 10 s + 2 x 300 s = 900 s


def test_a_time_budget_that_stops_training_first_ends_the_estimate(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("specialight.training.progress.time.perf_counter", lambda: now[0])
    clock = RunClock()
    now[0] += 300.0
    clock.line({"step": 0, "examples": 0, "seconds": 300.0}, 400, 1000)
    now[0] += 100.0 + 10.0  # 10 steps of 10 s, then a 10 s evaluation; 390 steps (65 min) would be left
    line = clock.line({"step": 10, "examples": 80, "seconds": 10.0}, 400, 1000, budget_left=600.0)
    assert line == "step 10/400, about 15 min left (the time budget, then 1 evaluation)"  # 600 s + 300 s
    assert clock.line({"step": 10, "examples": 80, "seconds": 10.0}, 400, 1000, 10**6).endswith("evaluations ahead)")


def test_the_last_evaluation_after_the_budget_stopped_training_has_no_estimate(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("specialight.training.progress.time.perf_counter", lambda: now[0])
    clock = RunClock()
    clock.line({"step": 0, "examples": 0, "seconds": 300.0}, 400, 1000)
    now[0] += 400.0
    assert clock.line({"step": 10, "examples": 80, "seconds": 10.0}, 400, 1000, budget_left=-3.0) == "step 10/400"
