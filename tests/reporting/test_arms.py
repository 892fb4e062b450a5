"""comparison.md: arms of one experiment compared by paired intervals, on synthetic runs whose outcome is known."""

import json

import pytest

from specialight.data.jsonl import DataError
from specialight.reporting.arms import comparison_markdown, probe_rows


def _write_run(run, final_right: int, final_nll: float, n: int = 40, step: int = 30):
    """A run whose step 0 gets 2 of ``n`` right at NLL 1.0, and whose last step ``final_right`` at ``final_nll``."""
    records = []
    for at, right, nll in ((0, 2, 1.0), (step, final_right, final_nll)):
        folder = run / "evaluations" / f"step-{at}"
        folder.mkdir(parents=True)
        rows = [json.dumps({"suite": "gsm8k_dev", "id": f"g{i}", "correct": i < right}) for i in range(n)]
        (folder / "gsm8k_dev.jsonl").write_text("\n".join(rows) + "\n")
        texts = [
            json.dumps({"suite": "nll_gsm8k_dev_zero_shot", "id": f"g{i}", "nll": nll + i / 1000}) for i in range(n)
        ]
        (folder / "nll.jsonl").write_text("\n".join(texts) + "\n")
        records.append(
            {
                "step": at,
                "examples": 8 * at,
                "scores": {"gsm8k_dev": 100 * right / n},
                "n": {"gsm8k_dev": n},
                "ci95": {"gsm8k_dev": [0.0, 100.0]},
                "nll": {"nll_gsm8k_dev_zero_shot": {"mean": nll, "n": n, "low": nll, "high": nll}},
            }
        )
    (run / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _row(text: str, arm: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {arm} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_arm_is_compared_with_step_0_and_with_the_reference_arm(tmp_path):
    arms = {
        "off": _write_run(tmp_path / "off", final_right=2, final_nll=0.9),
        "on": _write_run(tmp_path / "on", final_right=22, final_nll=0.7),
    }
    text = comparison_markdown(arms, "off")
    off, on = _row(text, "off"), _row(text, "on")
    assert off[1:3] == ["30", "240"] and off[3].startswith("5.0 ")  # 2 of 40
    assert off[4] == "+0.0 [+0.0, +0.0]" and off[5] == "-"  # no change; the reference has no comparison
    assert on[3].startswith("55.0 ") and on[4].startswith("+50.0 [") and on[5].startswith("+50.0 [")
    low = float(on[5].split("[")[1].split(",")[0])
    assert low > 30  # 20 more right of 40, every one of them paired: the interval excludes 0 by far
    assert on[7] == "-0.300 [-0.300, -0.300]" and on[8] == "-0.200 [-0.200, -0.200]"  # every text 0.3 / 0.2 lower


def test_the_divergence_table_gives_each_model_its_mean_and_its_paired_change_from_the_reference():
    probe = {
        "untrained": {"reverse_kl": {"q1": 1.0, "q2": 1.0, "q3": 1.0}},
        "arm": {"reverse_kl": {"q1": 0.2, "q2": 0.4}},  # q3's sample did not survive alignment
    }
    header, rows = probe_rows(probe, "untrained")
    assert header[0] == "| model | samples | reverse_kl |"
    assert rows[0] == "| untrained | 3 | 1.000 [1.000, 1.000] |"
    assert rows[1].startswith("| arm | 2 | 0.300 [0.200, 0.400]; -0.700 [-0.800, -0.600] from untrained (n=2)")


def test_a_run_without_evaluations_fails_naming_the_file(tmp_path):
    run = _write_run(tmp_path / "off", final_right=2, final_nll=0.9)
    (run / "evaluations.jsonl").unlink()
    with pytest.raises(DataError, match="evaluations.jsonl"):
        comparison_markdown({"off": run}, "off")
