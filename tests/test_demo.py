"""The demo's closing table: every score with its 95% interval and n."""

import pytest

from specialight.demo import closing_table
from specialight.evaluation.intervals import accuracy_interval, mean_interval, wilson


def _record(step: int, correct: int) -> dict:
    parts = {"multiarith_dev": correct, "asdiv_dev": 6, "svamp_dev": 0}
    scores = {name: 100 * k / 12 for name, k in parts.items()}
    scores["mas_dev"] = sum(scores.values()) / 3
    ci95 = {name: list(accuracy_interval(k, 12)) for name, k in parts.items()}
    ci95["mas_dev"] = list(mean_interval([(scores[name], 12) for name in parts]))
    n = {**dict.fromkeys(parts, 12), "mas_dev": 36}
    return {"step": step, "examples": 8 * step, "scores": scores, "ci95": ci95, "n": n}


def test_closing_table_shows_n_and_intervals():
    first, chosen, last = _record(0, 0), _record(15, 3), _record(30, 2)
    table = closing_table(
        {"first": first, "last": last, "monitor": "eval/mas_dev", "selections": {"eval/mas_dev": chosen}}
    )
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "n", "before", "selected", "end"]
    assert lines[1].split() == ["(step)", "0", "15", "30"]
    svamp = next(line for line in lines if line.startswith("svamp_dev")).split()
    assert svamp[:3] == ["svamp_dev", "12", "0.0"] and svamp[3] == "[0.0-24.2]"  # Wilson, 0 of 12
    mas = next(line for line in lines if line.startswith("mas_dev")).split()
    assert mas[1] == "36" and mas[4] == "25.0"  # selected: (25 + 50 + 0) / 3
    assert "95% interval" in lines[-1]
    assert "gsm8k_dev" not in table  # only the metrics that were evaluated


def test_closing_table_adds_the_likelihood_before_after_and_paired_change():
    first, last = _record(0, 0), _record(30, 2)
    first["nll"] = {"nll_bbh_cot": {"mean": 0.55, "n": 16, "low": 0.51, "high": 0.59}}
    last["nll"] = {"nll_bbh_cot": {"mean": 0.666, "n": 16, "low": 0.624, "high": 0.716}}
    last["nll_change"] = {"nll_bbh_cot": {"mean": 0.116, "n": 16, "low": 0.07, "high": 0.16}}
    table = closing_table({"first": first, "last": last, "monitor": "eval/mas_dev", "selections": {}})
    row = next(line for line in table.splitlines() if line.startswith("nll_bbh_cot")).split()
    assert row == ["nll_bbh_cot", "16", "0.550", "[0.510-0.590]", "0.666", "[0.624-0.716]", "0.116", "[0.070-0.160]"]
    assert "paired" in table and "bootstrap" in table.splitlines()[-1]


def test_closing_table_reads_records_without_intervals():
    old = {"step": 0, "examples": 0, "scores": {"mas_dev": 10.0}}
    table = closing_table({"first": old, "last": old, "monitor": "eval/mas_dev", "selections": {}})
    assert table.splitlines()[2].split() == ["mas_dev", "?", "10.0", "10.0", "10.0"]


def test_closing_table_of_a_run_first_evaluated_after_training_says_first_not_before():
    end = _record(60, 2)
    table = closing_table({"first": end, "last": end, "monitor": "eval/mas_dev", "selections": {}})
    assert table.splitlines()[0].split() == ["metric", "n", "first", "selected", "end"]


def test_intervals():
    low, high = accuracy_interval(0, 12)
    assert low == pytest.approx(0.0, abs=1e-9) and 24.0 < high < 24.5  # Wilson: not degenerate at 0 of n
    assert accuracy_interval(12, 12)[0] > 75.0
    # equal parts: the mean's interval is the Wilson interval of the pooled count
    assert mean_interval([(50.0, 100), (50.0, 100)]) == accuracy_interval(100, 200)
    # unequal parts: Wilson at n_eff = K^2 / sum(1/n_i) = 4 / (1/10 + 1/1000) = 39.6
    low, high = mean_interval([(40.0, 10), (40.0, 1000)])
    expected = wilson(0.4, 4 / (1 / 10 + 1 / 1000))
    assert (low, high) == pytest.approx((100 * expected[0], 100 * expected[1]))
    assert 26.0 < low < 26.5 and 55.0 < high < 56.0
