"""The BBH scorer against the BBH authors' own grading: their code-davinci-002 completions (CoT and
answer-only, 27 tasks, 6,511 each) must score within 0.5 points of each official per-task accuracy."""

import json
from collections import defaultdict

import pytest

from specialight.data.answers import is_correct
from specialight.data.tasks import BBH_TASKS

FILES = {"cot": "code-davinci-002-cot.jsonl", "answer_only": "code-davinci-002-answer_only.jsonl"}


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("mode", sorted(FILES))
def test_every_official_bbh_accuracy_is_reproduced(data_dir, mode):
    folder = data_dir / "bbh-reference-outputs"
    official = json.loads((folder / "official_accuracy.json").read_text())[mode]
    rows = _rows(folder / FILES[mode])
    assert len(rows) == 6511
    flags = defaultdict(list)
    for row in rows:
        flags[row["task"]].append(is_correct(row["prediction"], row["target"], f"bbh/{row['task']}", mode == "cot"))
    assert sorted(flags) == sorted(BBH_TASKS) == sorted(official)
    differences = {task: 100 * sum(v) / len(v) - official[task] for task, v in flags.items()}
    assert max(abs(d) for d in differences.values()) <= 0.5, differences


def test_the_cases_the_lenient_scorer_credited_get_no_credit():
    assert not is_correct("Both fit. So the answer is (A) or (B).", "(A)", "bbh/snarks")
    assert not is_correct("So the answer is (None of the above).", "(A)", "bbh/ruin_names")
    assert not is_correct("Option (A) is sarcastic because", "(A)", "bbh/snarks")  # cut before an answer
    assert is_correct("(A)", "(A)", "bbh/snarks", cot=False)  # answer-only needs no "the answer is"
    assert not is_correct("(A) or (B)", "(A)", "bbh/snarks", cot=False)
