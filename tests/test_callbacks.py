import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from specialight.callbacks import ModelSelection, PeriodicEvaluation
from specialight.data.datamodule import SpecializationDataModule
from specialight.module import SpecializationModule


def tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def short_run(tiny_gpt2_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    evaluation = PeriodicEvaluation(
        suites=["gsm8k_dev", "mas_dev", "bbh_cot"],
        every_n_examples=8,
        limit=1,
        bbh_tasks=["navigate"],
        max_new_tokens=4,
        data_dir=str(data_dir),
    )
    selection = ModelSelection(monitor="eval/mas_dev", compare=["eval/gsm8k_dev"])
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="tb"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[evaluation, selection],
        log_every_n_steps=1,
    )
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir),
        data_dir=str(data_dir),
        limit=8,
        batch_size=4,
        num_demonstrations=1,
        formats={"zero_shot_cot": 1.0, "in_context_cot": 1.0},
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    return trainer, evaluation, selection


def test_evaluations_happen_at_step_zero_and_every_n_examples(short_run):
    trainer, evaluation, _ = short_run
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


def test_selection_writes_the_best_checkpoint_and_table_3(short_run):
    trainer, evaluation, selection = short_run
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
