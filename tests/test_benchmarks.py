"""The evaluation benchmark fails loudly when our completions differ from the baseline's."""

import sys

import pytest

import specialight.evaluation.generation as generation

pytestmark = pytest.mark.slow  # runs a whole benchmark (both arms) in process


@pytest.mark.parametrize("broken", [False, True])
def test_evaluate_benchmark_exit_status_follows_the_completions(monkeypatch, capsys, broken):
    from benchmarks import evaluate

    if broken:
        real = generation.generate
        monkeypatch.setattr(generation, "generate", lambda *a, **k: ["different"] * len(real(*a, **k)))
    monkeypatch.setattr(
        sys, "argv", ["evaluate.py", "--examples", "2", "--max-new-tokens", "2", "--batch-size", "2", "--layers", "2"]
    )
    assert evaluate.main() == (1 if broken else 0)
    captured = capsys.readouterr()
    assert ("completions differ on 2 of 2 prompts" in captured.err) is broken
    assert '"benchmark": "evaluate"' in captured.out
