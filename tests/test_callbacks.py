import json
from pathlib import Path

import pytest

from specialight.callbacks import ModelSelection
from specialight.module import SpecializationModule


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_evaluations_happen_at_step_zero_and_every_n_examples(logged_run):
    trainer, evaluation, _ = logged_run
    assert [r["step"] for r in evaluation.history] == [0, 2, 4, 6]
    assert [r["examples"] for r in evaluation.history] == [0, 8, 16, 24]
    scalars = tensorboard_scalars(trainer.log_dir)
    for suite in ("gsm8k_dev", "mas_dev", "multiarith_dev", "bbh_cot", "bbh_cot/navigate"):
        assert [step for step, _ in scalars[f"eval/{suite}"]] == [0, 2, 4, 6]
    assert "train/loss" in scalars
    folder = Path(trainer.log_dir)
    lines = (folder / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2, 4, 6]
    assert (folder / "evaluations" / "step-4" / "gsm8k_dev.jsonl").is_file()


def test_selection_writes_the_best_checkpoint_and_table_3(logged_run):
    trainer, evaluation, selection = logged_run
    folder = Path(trainer.log_dir)
    summary = json.loads((folder / "selection.json").read_text())
    best_value = max(r["scores"]["mas_dev"] for r in evaluation.history)
    first_best = next(r for r in evaluation.history if r["scores"]["mas_dev"] == best_value)
    assert summary["selections"]["eval/mas_dev"]["step"] == first_best["step"]
    assert summary["best_checkpoint"]["step"] == first_best["step"]
    assert Path(summary["best_checkpoint"]["path"]).is_file()
    assert "eval/gsm8k_dev" in summary["selections"]
    table = (folder / "selection.md").read_text()
    assert "| selected by mas_dev |" in table and "| selected by gsm8k_dev |" in table
    assert "| before training | 0 | 0 |" in table and "| end of training | 6 | 24 |" in table
    reloaded = SpecializationModule.load_from_checkpoint(summary["best_checkpoint"]["path"])
    assert type(reloaded.loss).__name__ == "SampleMatching"


def test_selection_refuses_a_metric_that_is_not_evaluated():
    selection = ModelSelection(monitor="eval/svamp_test")
    with pytest.raises(ValueError, match="monitors eval/svamp_test"):
        selection.on_evaluation(None, None, {"step": 0, "examples": 0, "scores": {"mas_dev": 1.0}})
