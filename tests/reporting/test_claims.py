"""claims.md: verdicts come from paired intervals, on synthetic runs whose outcome is known."""

import json

import pytest

from specialight.evaluation.intervals import paired_change
from specialight.reporting.claims import Judgement, claims_markdown, judge_run


def test_paired_change_of_identical_evaluations_is_zero_with_a_zero_interval():
    outcomes = [(i % 3 == 0, i % 3 == 0) for i in range(60)]
    assert paired_change([outcomes]) == (0.0, 0.0, 0.0)


def test_paired_change_sees_a_consistent_rise_and_weighs_composite_parts_equally():
    rise = [(False, i < 30) for i in range(60)]  # 0% -> 50%
    change, low, high = paired_change([rise])
    assert change == pytest.approx(50.0) and 35 < low < 50 < high < 65
    flat = [(True, True)] * 10
    change, low, high = paired_change([rise, flat])  # unweighted mean of parts: (50 + 0) / 2
    assert change == pytest.approx(25.0) and low > 0


@pytest.mark.parametrize(
    ("low", "high", "expected", "verdict"),
    [
        (1, 5, 1, "shown"),
        (-5, -1, -1, "shown"),
        (1, 5, -1, "opposite"),
        (-5, -1, 1, "opposite"),
        (-1, 5, 1, "not shown"),
    ],
)
def test_verdicts_follow_the_interval_not_the_point_estimate(low, high, expected, verdict):
    assert Judgement("(a)", "m", "x", (low + high) / 2, low, high, 10, expected).verdict == verdict


def _write_step(run, step, math_right, bbh_right, n=40):
    folder = run / "evaluations" / f"step-{step}"
    folder.mkdir(parents=True)
    rows = {
        "gsm8k_dev": [("gsm8k_dev", f"g{i}", i < math_right) for i in range(n)],
        "multiarith_dev": [("multiarith_dev", f"m{i}", i < math_right) for i in range(n)],
        "asdiv_dev": [("asdiv_dev", f"a{i}", i < math_right) for i in range(n)],
        "svamp_dev": [("svamp_dev", f"s{i}", i < math_right) for i in range(n)],
        "bbh_ao": [(f"bbh_ao/{t}", f"{t}{i}", i < bbh_right) for t in ("navigate", "dyck") for i in range(n)],
    }
    for name, records in rows.items():
        lines = [json.dumps({"suite": s, "id": i, "correct": c}) for s, i, c in records]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    scores = {"gsm8k_dev": 100 * math_right / n, "mas_dev": 100 * math_right / n, "bbh_ao": 100 * bbh_right / n}
    return {"step": step, "scores": scores}


def test_a_run_where_math_rose_and_bbh_fell_shows_claim_a_and_the_selection_claim(tmp_path):
    records = [_write_step(tmp_path, 0, 2, 30), _write_step(tmp_path, 10, 20, 25), _write_step(tmp_path, 20, 12, 5)]
    records[-1]["nll_change"] = {"nll_bbh_cot": {"mean": 0.1, "n": 50, "low": 0.05, "high": 0.15}}
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    selections = {"eval/mas_dev": {"step": 10}, "eval/gsm8k_dev": {"step": 20}}
    (tmp_path / "selection.json").write_text(json.dumps({"selections": selections}))

    judgements, notes = judge_run(tmp_path)
    verdicts = {(j.claim, j.metric): j.verdict for j in judgements}
    assert verdicts[("(a)", "gsm8k_dev")] == "shown"  # 2/40 -> 12/40
    assert verdicts[("(a)", "mas_dev")] == "shown"
    assert verdicts[("(a)", "bbh_ao")] == "shown"  # 30/40 -> 5/40 on both tasks
    assert verdicts[("(a)", "nll_bbh_cot")] == "shown"
    assert verdicts[("(d)", "mas_dev")] == "shown"  # step 10 (20/40) beats step 20 (12/40)
    assert any("bbh_cot: not evaluated" in note for note in notes)
    text = claims_markdown(tmp_path)
    assert "(c) not tested by this run" in text and "| (a) | gsm8k_dev | step 0 -> 20 | +25.0" in text


def test_a_run_that_changed_nothing_shows_nothing(tmp_path):
    records = [_write_step(tmp_path, 0, 10, 20), _write_step(tmp_path, 5, 10, 20)]
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    judgements, _ = judge_run(tmp_path)
    assert judgements and all(j.verdict == "not shown" for j in judgements)
