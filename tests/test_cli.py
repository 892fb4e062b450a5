"""``specialight <stage>``: one typed CLI (configs that round-trip, help without torch) and ``validate``
running the config's evaluation suites on a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from specialight.cli import LIGHTNING_COMMANDS, cli_main
from specialight.commands import STAGES
from tests.conftest import ROOT

DEMO = str(ROOT / "configs" / "demo.yaml")
# the fewest options each stage needs to print its config
REQUIRED = {
    "data": [],
    "distill": ["--teacher", "local:teacher", "--out", "samples"],
    "align": ["--samples", "samples", "--student_tokenizer", "t5", "--out", "aligned"],
    "evaluate": ["--model", "m", "--suites", "[gsm8k_dev,bbh_cot]", "--limits", "{bbh_cot: 2}", "--out", "e"],
    "plot": ["--logdir", "[a, b]", "--out", "c.png"],
    "plan": ["--configs", f"[{DEMO}]"],
    "export": ["--ckpt", "best.ckpt", "--out", "model", "--dtype", "bfloat16"],
    "claims": ["--run", "runs/x", "--in_context_run", "runs/a", "--zero_shot_run", "runs/b"],
    "fit": ["--config", DEMO],
    "validate": ["--config", DEMO, "--ckpt_path", "best.ckpt"],
}


def printed(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_every_stage_is_covered():
    assert set(REQUIRED) == set(STAGES) | {"fit", "validate"}


@pytest.mark.parametrize("stage", sorted(REQUIRED))
def test_print_config_feeds_back_through_config_unchanged(stage, capsys, tmp_path):
    first = printed(capsys, [stage, *REQUIRED[stage]])
    config = tmp_path / "config.yaml"
    config.write_text(first)
    assert printed(capsys, [stage, "--config", str(config)]) == first
    assert yaml.safe_load(first)


def test_settings_fields_are_options_and_old_spellings_still_read(capsys):
    config = yaml.safe_load(printed(capsys, ["evaluate", *REQUIRED["evaluate"], "--max-new-tokens", "8"]))
    assert config["max_new_tokens"] == 8 and config["suites"] == ["gsm8k_dev", "bbh_cot"]
    assert config["limits"] == {"bbh_cot": 2} and config["data_dir"] is None
    config = yaml.safe_load(
        printed(capsys, ["align", "--only-correct", *REQUIRED["align"], "--teacher-scheme", "byte_level"])
    )
    assert config["teacher_scheme"] == "byte_level" and config["student_tokenizer"] == "t5" and config["only_correct"]
    config = yaml.safe_load(printed(capsys, ["export", *REQUIRED["export"], "--overwrite"]))
    assert config["overwrite"] is True and config["dtype"] == "bfloat16"
    assert yaml.safe_load(printed(capsys, ["distill", *REQUIRED["distill"], "--score", "false"]))["score"] is False
    with pytest.raises(SystemExit):  # the settings' Literal types are the choices
        cli_main(["align", *REQUIRED["align"], "--method", "guess"])


@pytest.mark.slow
def test_help_imports_neither_torch_nor_transformers():
    stages = [[]] + [[stage] for stage in STAGES]
    script = (
        "import sys, contextlib, io\n"
        "from specialight.cli import cli_main\n"
        f"for args in {stages!r}:\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli_main([*args, '--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_top_level_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert all(stage in out for stage in [*STAGES, *LIGHTNING_COMMANDS])


@pytest.mark.slow
def test_fit_then_validate_evaluates_the_checkpoint(tiny_gpt2_dir, data_dir, tmp_path):
    from specialight.core.constants import EVALUATIONS_FILE
    from specialight.training.cli import run_lightning_cli

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"model_name_or_path": str(tiny_gpt2_dir), "learning_rate": 0.01},
                "data": {"data_dir": str(data_dir), "limit": 4, "batch_size": 2, "num_demonstrations": 1},
                "trainer": {
                    "max_steps": 4,
                    "accelerator": "cpu",
                    "limit_val_batches": 0,  # as the configs keep the loss out of fit
                    "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [
                        {
                            "class_path": "specialight.training.callbacks.PeriodicEvaluation",
                            "init_args": {
                                "every_n_examples": 4,
                                "before_training": False,
                                "settings": {
                                    "suites": ["svamp_dev", "nll_bbh_ao"],
                                    "limit": 2,
                                    "bbh_tasks": ["navigate"],
                                    "max_new_tokens": 4,
                                    "data_dir": str(data_dir),
                                },
                            },
                        },
                        {
                            "class_path": "specialight.training.callbacks.ModelSelection",
                            "init_args": {"monitor": "eval/svamp_dev", "compare": []},
                        },
                    ],
                },
            }
        )
    )
    fit = run_lightning_cli(["fit", "--config", str(config)])
    run = Path(fit.trainer.log_dir)
    best = json.loads((run / "selection.json").read_text())["best_checkpoint"]
    trained = {r["step"]: r for r in map(json.loads, (run / EVALUATIONS_FILE).read_text().splitlines())}

    validate = run_lightning_cli(["validate", "--config", str(config), "--ckpt_path", best["path"]])
    folder = Path(validate.trainer.log_dir)
    assert folder != run
    [record] = [json.loads(line) for line in (folder / EVALUATIONS_FILE).read_text().splitlines()]
    assert record["step"] == best["step"] and record["examples"] == trained[best["step"]]["examples"]
    assert record["scores"] == trained[best["step"]]["scores"]  # the same weights, greedy: the same answers
    assert record["n"]["svamp_dev"] == 2 and len(record["ci95"]["svamp_dev"]) == 2
    assert record["nll"]["nll_bbh_ao"]["n"] == 2 and "nll_bbh_ao" in record["nll_change"]
    assert (folder / "evaluations" / f"step-{best['step']}" / "svamp_dev.jsonl").is_file()
    metrics = validate.trainer.callback_metrics
    assert {"val/loss", "eval/svamp_dev", "eval/nll_bbh_ao"} <= set(metrics)
    assert float(metrics["eval/svamp_dev"]) == pytest.approx(record["scores"]["svamp_dev"])


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_takes_bf16_only_where_the_cpu_multiplies_it(
    has_bf16, expected, tiny_gpt2_dir, data_dir, tmp_path, monkeypatch
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.training import cli
    from specialight.training.module import SpecializationModule

    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: has_bf16)
    args = [
        f"--model.model_name_or_path={tiny_gpt2_dir}",
        f"--data.data_dir={data_dir}",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        f"--trainer.default_root_dir={tmp_path}",
        "--auto_precision=true",
    ]
    built = cli.SpecializationCLI(SpecializationModule, SpecializationDataModule, args=args, run=False)
    assert built.trainer.precision == expected
    assert isinstance(built.trainer.strategy.checkpoint_io, cli.StreamingCheckpointIO)
    assert f"precision: {expected}" in built.model.run_config["yaml"]  # the run's config keeps the choice


def test_a_local_checkpoint_is_written_whole_without_a_copy_in_memory(tmp_path, monkeypatch):
    import torch
    from lightning.fabric.utilities import cloud_io

    from specialight.training.cli import StreamingCheckpointIO

    def in_memory(*args, **kwargs):
        raise AssertionError("Lightning's _atomic_save serializes the whole checkpoint into memory first")

    monkeypatch.setattr(cloud_io, "_atomic_save", in_memory)
    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", in_memory)
    io = StreamingCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}, path)
    assert torch.load(path)["global_step"] == 3 and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    io.save_checkpoint({"global_step": 4}, f"file://{path}")
    assert torch.load(path)["global_step"] == 4


def test_a_checkpoint_that_fails_midway_leaves_the_last_one_whole(tmp_path, monkeypatch):
    import torch

    from specialight.training.cli import StreamingCheckpointIO

    path = tmp_path / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint({"global_step": 1}, path)

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        StreamingCheckpointIO().save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["global_step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_remote_checkpoints_go_lightnings_way(monkeypatch):
    from lightning.fabric.plugins.io import torch_io

    from specialight.training.cli import StreamingCheckpointIO

    saved = []
    monkeypatch.setattr(torch_io, "_atomic_save", lambda checkpoint, path: saved.append(path))
    monkeypatch.setattr(torch_io, "get_filesystem", lambda path: __import__("fsspec").filesystem("memory"))
    StreamingCheckpointIO().save_checkpoint({"global_step": 1}, "memory://run/last.ckpt")
    assert saved == ["memory://run/last.ckpt"]
