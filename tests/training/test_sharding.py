"""Sharded training (FSDP2 via Lightning's ModelParallelStrategy) on 2 CPU processes with gloo.

Lightning's FSDPStrategy (FSDP1) refuses a CPU accelerator; ModelParallelStrategy runs here. The reference is
one process with gradient accumulation 2: its micro-batches are the two ranks' batches of the same step, so the
objective is the same and the per-batch losses must agree to float32 round-off.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import read_steps
from tests.training.test_training import MONITORS, cli

ACCUMULATE = 2
EVALUATE = [
    "--trainer.callbacks+=specialight.training.callbacks.PeriodicEvaluation",
    "--trainer.callbacks.settings.suites=[svamp_dev, nll_gsm8k_dev_zero_shot]",
    "--trainer.callbacks.every_n_examples=1000",
    "--trainer.callbacks.at_end=false",
    "--trainer.callbacks.settings.limit=3",
    "--trainer.callbacks.settings.max_new_tokens=6",
]
# float32 sums in another order (reduce-scatter vs accumulation), amplified by Adam's normalization
TOLERANCE = 1e-3

SHARDED = [
    "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
    "--trainer.strategy.data_parallel_size=2",
    "--trainer.strategy.tensor_parallel_size=1",
    "--trainer.devices=2",
    "--model.shard_param_dtype=null",
]


def _fit(model_dir, data_dir, root, steps_out, *extra):
    return cli(
        "fit",
        f"--model.model_name_or_path={model_dir}",
        "--model.learning_rate=0.001",
        "--model.gradient_checkpointing=true",
        f"--data.data_dir={data_dir}",
        "--data.limit=16",
        "--data.batch_size=2",
        "--data.num_demonstrations=1",
        "--data.formats={zero_shot_cot: 1.0, zero_shot_answer_only: 1.0}",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
        "--trainer.callbacks+=tests.helpers.RecordSteps",
        f"--trainer.callbacks.out={steps_out}",
        *MONITORS[2:],  # without a logger (LearningRateMonitor needs one): the monitor must not fail
        *extra,
        cwd=root.parent,
    )


@pytest.fixture(scope="module")
def deterministic_t5_dir(tiny_t5_dir, tmp_path_factory):
    """The tiny random T5 without dropout, so two runs differ only by how they are distributed, and with an
    output head of its own, as FlanT5 (T5 v1.1) has."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir, dropout_rate=0.0)
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(model.lm_head.weight.shape, generator=generator) * 0.05
    model.lm_head.weight = torch.nn.Parameter(head)
    folder = tmp_path_factory.mktemp("t5-no-dropout")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_t5_dir).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_sharded_training_matches_one_process_and_resumes(deterministic_t5_dir, data_dir, tmp_path):
    tiny_t5_dir = deterministic_t5_dir
    (tmp_path / "one").mkdir()
    single = _fit(
        tiny_t5_dir,
        data_dir,
        tmp_path / "one" / "runs",
        tmp_path / "one-steps",
        "--trainer.devices=1",
        f"--trainer.accumulate_grad_batches={ACCUMULATE}",
        "--trainer.max_steps=4",
        "--trainer.enable_checkpointing=false",
        *EVALUATE,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    # with accumulation, Lightning reports each micro-batch's loss divided by the accumulation
    reference = [s["loss"] * ACCUMULATE for s in read_steps(tmp_path / "one-steps")]
    assert len(reference) == 8

    (tmp_path / "fsdp").mkdir()
    sharded = _fit(
        tiny_t5_dir,
        data_dir,
        tmp_path / "fsdp" / "runs",
        tmp_path / "fsdp-steps",
        *SHARDED,
        "--trainer.max_steps=4",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks.save_top_k=-1",
        *EVALUATE,
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    ranks = [[s["loss"] for s in read_steps(tmp_path / "fsdp-steps", r)] for r in (0, 1)]
    # step k: rank r trained on the batch the single process saw as micro-batch 2k + r
    assert ranks[0] == pytest.approx(reference[0::2], rel=TOLERANCE)
    assert ranks[1] == pytest.approx(reference[1::2], rel=TOLERANCE)

    # the step-0 evaluation: each rank generated its share with the sharded model gathered whole
    first = [
        json.loads(next((tmp_path / run).rglob("evaluations.jsonl")).read_text().splitlines()[0])
        for run in ("one", "fsdp")
    ]
    assert first[0]["scores"] == first[1]["scores"] and first[1]["n"]["svamp_dev"] == 3
    nll = [f["nll"]["nll_gsm8k_dev_zero_shot"]["mean"] for f in first]
    assert nll[1] == pytest.approx(nll[0], rel=1e-5)
    completions = [
        [json.loads(line)["completion"] for line in next((tmp_path / run).rglob("svamp_dev.jsonl")).open()]
        for run in ("one", "fsdp")
    ]
    assert completions[0] == completions[1]

    checkpoint = next((tmp_path / "ckpt").glob("*step=2.ckpt"))
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2  # one shard file per rank

    # the sharded checkpoint exports (gathered into one file first) with its own output head intact
    from transformers import T5ForConditionalGeneration

    from specialight.training.export import export_checkpoint

    exported = T5ForConditionalGeneration.from_pretrained(export_checkpoint(checkpoint, tmp_path / "export"))
    start = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    assert exported.lm_head.weight is not exported.shared.weight
    assert not torch.equal(exported.lm_head.weight, exported.shared.weight)
    assert not torch.equal(exported.lm_head.weight, start.lm_head.weight)  # two steps of training moved it
    assert torch.allclose(exported.lm_head.weight, start.lm_head.weight, atol=0.05)  # from where it started

    (tmp_path / "resumed").mkdir()
    resumed = _fit(
        tiny_t5_dir,
        data_dir,
        tmp_path / "resumed" / "runs",
        tmp_path / "resumed-steps",
        *SHARDED,
        "--trainer.max_steps=4",
        "--trainer.enable_checkpointing=false",
        f"--ckpt_path={checkpoint}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = [read_steps(tmp_path / "resumed-steps", r) for r in (0, 1)]
    assert [s["step"] for s in again[0]] == [3, 4]
    assert [s["loss"] for s in again[0]] == pytest.approx(ranks[0][2:], rel=1e-4)
    assert [s["loss"] for s in again[1]] == pytest.approx(ranks[1][2:], rel=1e-4)
