"""Crash and resume: last.ckpt every N steps, a checkpoint on exception, `fit --ckpt_path last`, and the run's
files (evaluations.jsonl, best.ckpt, selection) in the run's own folder whatever the logger."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger

from specialight.core.constants import EVALUATIONS_FILE
from specialight.evaluation.settings import EvalSettings
from specialight.training.callbacks import ModelSelection, PeriodicEvaluation
from specialight.training.cli import find_resumable, run_lightning_cli
from tests.conftest import ROOT
from tests.helpers import read_steps


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``specialight ARGS`` in a fresh process, on this checkout's sources."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "specialight.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def fit_args(model_dir, data_dir, root, steps_out, *extra: str) -> list[str]:
    """A 10-step fit of a tiny model: last.ckpt every 4 steps, evaluation every 3 steps (6 examples)."""
    return [
        "fit",
        "--seed_everything=7",
        f"--model.model_name_or_path={model_dir}",
        "--model.learning_rate=0.001",
        f"--data.data_dir={data_dir}",
        "--data.limit=8",  # 8 questions x 4 formats = 16 batches of 2: steps 1-10 are all in epoch 0
        "--data.batch_size=2",
        "--data.num_demonstrations=1",
        "--trainer.max_steps=10",
        "--trainer.accelerator=cpu",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        "--checkpoint_every_n_steps=4",
        "--trainer.callbacks+=tests.helpers.RecordSteps",
        f"--trainer.callbacks.out={steps_out}",
        "--trainer.callbacks+=specialight.training.callbacks.PeriodicEvaluation",
        "--trainer.callbacks.settings.suites=[svamp_dev]",
        "--trainer.callbacks.every_n_examples=6",
        "--trainer.callbacks.settings.limit=1",
        "--trainer.callbacks.settings.max_new_tokens=2",
        f"--trainer.callbacks.settings.data_dir={data_dir}",
        "--trainer.callbacks+=specialight.training.callbacks.ModelSelection",
        "--trainer.callbacks.monitor=eval/svamp_dev",
        "--trainer.callbacks.compare=[]",
        *extra,
    ]


def evaluations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / EVALUATIONS_FILE).read_text().splitlines()]


def without_timing(selection: dict) -> dict:
    """selection.json less what differs between two runs of the same training (seconds, folders)."""
    text = json.dumps(selection)
    for record in [selection["first"], selection["last"], *selection["selections"].values()]:
        text = text.replace(f'"seconds": {json.dumps(record["seconds"])}', '"seconds": 0')
    loaded = json.loads(text)
    loaded["best_checkpoint"].pop("path")
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "resume_from", "resume_step"),
    [
        (6, "checkpoints/last.ckpt", 4),  # after step 6's evaluation: last.ckpt holds step 4, best.ckpt step 3
        (3, "best.ckpt", 3),  # after the first selection, before any last.ckpt: best.ckpt is the newest
    ],
)
def test_a_killed_fit_resumes_from_its_newest_checkpoint_with_the_same_batches_and_each_evaluation_once(
    tiny_gpt2_dir, data_dir, tmp_path, kill_at, resume_from, resume_step
):
    run_lightning_cli(fit_args(tiny_gpt2_dir, data_dir, tmp_path / "whole", tmp_path / "whole-steps"))
    whole_run = tmp_path / "whole" / "lightning_logs" / "version_0"

    killed = cli(
        *fit_args(tiny_gpt2_dir, data_dir, tmp_path / "runs", tmp_path / "first"),
        "--trainer.callbacks+=tests.helpers.StopAt",
        f"--trainer.callbacks.step={kill_at}",
        cwd=tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert find_resumable(tmp_path / "runs") == run / resume_from
    assert torch.load(run / resume_from, weights_only=False)["global_step"] == resume_step
    assert [e["step"] for e in evaluations(run)] == list(range(0, kill_at + 1, 3))

    resumed = cli(
        *fit_args(tiny_gpt2_dir, data_dir, tmp_path / "runs", tmp_path / "second"), "--ckpt_path", "last", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((tmp_path / "runs" / "lightning_logs").iterdir()) == [run]  # the same folder, no version_1

    first, second, whole = (read_steps(tmp_path / name) for name in ("first", "second", "whole-steps"))
    assert [s["step"] for s in first] == list(range(1, kill_at + 1))
    assert [s["step"] for s in second] == list(range(resume_step + 1, 11))
    assert [s["units"] for s in first[:resume_step] + second] == [s["units"] for s in whole]

    assert [e["step"] for e in evaluations(run)] == [0, 3, 6, 9, 10]
    assert [e["scores"] for e in evaluations(run)] == [e["scores"] for e in evaluations(whole_run)]
    selection = json.loads((run / "selection.json").read_text())
    assert without_timing(selection) == without_timing(json.loads((whole_run / "selection.json").read_text()))
    assert (run / "best.ckpt").is_file() and (run / "selection.md").is_file()


@pytest.mark.slow
def test_an_exception_saves_last_and_last_resumes_in_the_csv_run_folder(tiny_gpt2_dir, data_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    csv = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'csv'}"]
    args = fit_args(tiny_gpt2_dir, data_dir, tmp_path / "root", tmp_path / "first", *csv)
    with pytest.raises(RuntimeError, match="stopped at step 5"):
        run_lightning_cli(
            [
                *args,
                "--trainer.callbacks+=tests.helpers.StopAt",
                "--trainer.callbacks.step=5",
                "--trainer.callbacks.how=raise",
            ]
        )
    run = tmp_path / "csv" / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"  # step 4, then written again when step 5 raised
    assert torch.load(last, weights_only=False)["global_step"] == 5
    assert find_resumable(tmp_path / "csv") == last

    resumed = run_lightning_cli(
        [*fit_args(tiny_gpt2_dir, data_dir, tmp_path / "root", tmp_path / "second", *csv), "--ckpt_path", "last"]
    )
    assert Path(resumed.trainer.log_dir) == run
    assert [s["step"] for s in read_steps(tmp_path / "second")] == list(range(6, 11))
    assert [e["step"] for e in evaluations(run)] == [0, 3, 6, 9, 10]
    assert {"best.ckpt", "selection.md", "selection.json", "metrics.csv"} <= {p.name for p in run.iterdir()}
    assert not any(workdir.iterdir())  # nothing in the working directory


class FolderlessLogger(Logger):
    """A logger with no folder of its own (like W&B with save_dir None): a name and a version only."""

    name = "folderless"
    version = "run-abc"
    save_dir = None

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize("make_logger", [lambda root: CSVLogger(root / "csv"), lambda root: FolderlessLogger()])
@pytest.mark.slow
def test_run_files_go_to_the_run_folder_whatever_the_logger(
    make_logger, tiny_gpt2_dir, data_dir, tmp_path, monkeypatch
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.training.module import SpecializationModule

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    logger = make_logger(tmp_path)
    settings = EvalSettings(suites=["svamp_dev"], limit=1, max_new_tokens=2, data_dir=str(data_dir))
    evaluation = PeriodicEvaluation(settings, every_n_examples=4)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=logger,
        default_root_dir=tmp_path / "root",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[evaluation, ModelSelection(monitor="eval/svamp_dev", compare=[])],
    )
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=4, batch_size=2, num_demonstrations=1
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir)), datamodule)
    expected = (
        tmp_path / "csv" / "lightning_logs" / "version_0"
        if isinstance(logger, CSVLogger)
        else tmp_path / "root" / "folderless" / "run-abc"
    )
    assert {EVALUATIONS_FILE, "best.ckpt", "selection.md"} <= {p.name for p in expected.iterdir()}
    assert not any(workdir.iterdir())
