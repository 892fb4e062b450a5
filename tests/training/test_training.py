import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from specialight.data.batching import FormatBatchSampler
from specialight.data.datamodule import SpecializationDataModule
from specialight.data.tasks import load_examples
from specialight.training.losses import DistributionMatching, SampleMatching
from specialight.training.module import SpecializationModule
from tests.conftest import ROOT
from tests.helpers import RecordSteps, quiet_trainer, read_steps
from tests.training.test_callbacks import tensorboard_scalars

FORMATS_SMALL = {
    "in_context_cot": 1.0,
    "zero_shot_cot": 1.0,
    "zero_shot_answer_only": 1.0,
    "in_context_answer_only": 1.0,
}


def datamodule(model_dir, data_dir, teacher_data=None, **kwargs):
    options = dict(limit=8, batch_size=4, formats=FORMATS_SMALL, num_demonstrations=2, max_source_length=384)
    return SpecializationDataModule(
        str(model_dir), teacher_data=teacher_data, data_dir=str(data_dir), **(options | kwargs)
    )


@pytest.mark.slow
@pytest.mark.parametrize("student", ["t5", "gpt2"])
@pytest.mark.parametrize("loss_name", ["sample", "distribution"])
def test_tiny_students_fit_and_the_loss_drops(student, loss_name, request, data_dir, tmp_path):
    torch.manual_seed(0)
    model_dir = request.getfixturevalue(f"tiny_{student}_dir")
    teacher_data = request.getfixturevalue(f"aligned_{student}") if loss_name == "distribution" else None
    loss = DistributionMatching() if loss_name == "distribution" else SampleMatching()
    module = SpecializationModule(str(model_dir), loss=loss, learning_rate=1e-2, warmup=2)
    record = RecordSteps(str(tmp_path))
    quiet_trainer(32, [record]).fit(module, datamodule(model_dir, data_dir, teacher_data))
    losses = [s["loss"] for s in read_steps(tmp_path)]
    assert len(losses) == 32
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 2.0, (first, last)  # nats per token; uniform over the vocabulary is ~10.4


def test_batches_hold_one_format_and_cover_every_unit_once(tiny_t5_dir, data_dir):
    dm = datamodule(tiny_t5_dir, data_dir)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = []
    for batch in loader:
        assert batch["format_ids"].unique().numel() == 1
        seen += batch["units"].tolist()
    assert sorted(seen) == list(range(len(dm.dataset))) == list(range(32))


@pytest.mark.parametrize("multiple", [1, 64])
def test_collate_pads_lengths_to_a_multiple(tiny_t5_dir, data_dir, aligned_t5, multiple):
    dm = datamodule(tiny_t5_dir, data_dir, teacher_data=str(aligned_t5), pad_to_multiple_of=multiple)
    dm.setup("fit")
    examples = [dm.encoder.encode(dm.dataset.items[i], "zero_shot_cot") for i in range(3)]
    batch = dm.encoder.collate(examples)
    longest = max(len(e["input_ids"]) for e in examples), max(len(e["labels"]) for e in examples)
    for length, key in zip(longest, ("input_ids", "labels")):
        size = batch[key].shape[1]
        assert size % multiple == 0 and length <= size < length + multiple
    assert batch["topk_ids"].shape[1] == batch["labels"].shape[1]
    assert int(batch["attention_mask"].sum()) == sum(len(e["input_ids"]) for e in examples)
    assert int((batch["labels"] != -100).sum()) == sum(len(e["labels"]) for e in examples)
    # a seq2seq student reads the prompt (encoder) and the target (decoder)
    assert batch["num_tokens"].tolist() == [len(e["input_ids"]) + len(e["labels"]) for e in examples]


def test_causal_labels_mask_the_prompt_and_end_with_eos(tiny_gpt2_dir, data_dir):
    dm = datamodule(tiny_gpt2_dir, data_dir)
    dm.setup("fit")
    example = dm.encoder.encode(dm.dataset.items[0], "zero_shot_cot")
    prompt_length = example["labels"].count(-100)
    assert prompt_length > 0 and all(x == -100 for x in example["labels"][:prompt_length])
    assert example["labels"][prompt_length:] == example["input_ids"][prompt_length:]
    assert example["labels"][-1] == dm.encoder.tokenizer.eos_token_id
    assert dm.encoder.tokenizer.decode(example["input_ids"][:prompt_length]).startswith("Q: ")
    # a decoder-only student reads its input, which holds the target already
    batch = dm.encoder.collate([example, dm.encoder.encode(dm.dataset.items[1], "zero_shot_answer_only")])
    assert batch["num_tokens"].tolist() == batch["attention_mask"].sum(dim=1).tolist()


def test_aligned_targets_feed_their_exact_tokens(tiny_t5_dir, data_dir, aligned_t5):
    from specialight.core.targets import load_targets

    dm = datamodule(tiny_t5_dir, data_dir, teacher_data=str(aligned_t5))
    dm.setup("fit")
    assert dm.has_teacher_distributions
    row = load_targets(aligned_t5)[0]
    example = dm.encoder.encode(dm.dataset.items[0], "zero_shot_cot")
    assert example["labels"][:-1] == row["input_ids"][: len(example["labels"]) - 1]
    assert example["topk_ids"].shape == (len(example["labels"]), row["target_width"]) == (len(example["labels"]), 6)
    assert (example["topk_probs"].sum(-1) <= 1 + 1e-5).all()
    answer_only = dm.encoder.encode(dm.dataset.items[0], "zero_shot_answer_only")
    assert (answer_only["topk_probs"][:, 0] == 1).all()  # answer-only: one-hot on its own tokens


@pytest.mark.slow
def test_distribution_matching_without_aligned_targets_is_refused(tiny_t5_dir, data_dir):
    module = SpecializationModule(str(tiny_t5_dir), loss=DistributionMatching())
    with pytest.raises(ValueError, match="teacher_data"):
        quiet_trainer(2).fit(module, datamodule(tiny_t5_dir, data_dir))


def test_shards_are_disjoint_and_equal():
    formats, lengths = [i % 4 for i in range(103)], [i * 7 % 31 for i in range(103)]
    shards = [FormatBatchSampler(formats, lengths, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    units = [[u for b in s for u in b] for s in shards]
    assert not set(units[0]) & set(units[1])
    assert len(list(shards[0])) == len(list(shards[1]))
    again = FormatBatchSampler(formats, lengths, 4, rank=0, world_size=2, seed=5)
    assert list(again) == list(shards[0])
    again.set_epoch(1)
    assert list(again) != list(shards[0])


@pytest.mark.slow
def test_checkpoint_reloads_loss_plugin_and_resume_keeps_data_order(tiny_t5_dir, data_dir, aligned_t5, tmp_path):
    def run(steps, out, ckpt_path=None, every=None):
        module = SpecializationModule(str(tiny_t5_dir), loss=DistributionMatching(formats=("zero_shot_cot",)))
        callbacks = [RecordSteps(str(out))]
        if every:
            callbacks.append(
                L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1)
            )
        t = quiet_trainer(steps, callbacks, enable_checkpointing=bool(every))
        t.fit(module, datamodule(tiny_t5_dir, data_dir, teacher_data=str(aligned_t5)), ckpt_path=ckpt_path)
        return t

    run(12, tmp_path / "whole")  # 8 batches an epoch: the resumed run crosses into epoch 1
    run(3, tmp_path / "first", every=3)
    checkpoint = next((tmp_path / "ckpt").glob("*.ckpt"))
    run(12, tmp_path / "second", ckpt_path=checkpoint)
    whole = [s["units"] for s in read_steps(tmp_path / "whole")]
    resumed = [s["units"] for s in read_steps(tmp_path / "first") + read_steps(tmp_path / "second")]
    assert resumed == whole
    assert [s["step"] for s in read_steps(tmp_path / "second")] == list(range(4, 13))
    assert whole[:8] != whole[8:]  # a new order each epoch

    reloaded = SpecializationModule.load_from_checkpoint(checkpoint)
    assert isinstance(reloaded.loss, DistributionMatching) and reloaded.loss.formats == ("zero_shot_cot",)
    stored = torch.load(checkpoint, weights_only=False)["SpecializationDataModule"]  # the data module's state_dict
    assert any(path.endswith("targets.arrow") for path in stored["data_sha256"])
    assert all(len(digest) == 64 for digest in stored["data_sha256"].values())


@pytest.mark.slow
def test_throughput_monitor_counts_the_tokens_of_our_batches(tiny_gpt2_dir, data_dir, tmp_path):
    import csv

    from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor
    from lightning.pytorch.loggers import CSVLogger

    from specialight.data.encoding import batch_examples, batch_tokens

    def monitor():
        return ThroughputMonitor(batch_size_fn=batch_examples, length_fn=batch_tokens, window_size=2)

    # validation every 2 steps: Lightning's monitor keeps its time out of the training rate
    trainer = quiet_trainer(
        4,
        [monitor(), LearningRateMonitor(logging_interval="step")],
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        limit_val_batches=1,
        val_check_interval=2,
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir)), datamodule(tiny_gpt2_dir, data_dir))
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/device/items_per_sec", "train/device/samples_per_sec", "validate/lengths"} <= logged
    assert any(key.startswith("lr-AdamW") for key in logged)
    dm = datamodule(tiny_gpt2_dir, data_dir)
    dm.setup("fit")
    first = [batch for _, batch in zip(range(4), dm.train_dataloader())]
    assert max(float(row["train/lengths"]) for row in rows if row.get("train/lengths")) == sum(map(batch_tokens, first))
    assert max(float(row["train/samples"]) for row in rows if row.get("train/samples")) == 4 * 4

    quiet_trainer(2, [monitor()]).fit(SpecializationModule(str(tiny_gpt2_dir)), datamodule(tiny_gpt2_dir, data_dir))


def cli(*args, cwd, timeout=600):
    # the checkout's own sources first, also where the venv's editable install points at another checkout
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "specialight.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# the configs' monitors, as the command line adds them
MONITORS = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
    "--trainer.callbacks.logging_interval=step",
    "--trainer.callbacks+=lightning.pytorch.callbacks.ThroughputMonitor",
    "--trainer.callbacks.batch_size_fn=specialight.data.encoding.batch_examples",
    "--trainer.callbacks.length_fn=specialight.data.encoding.batch_tokens",
    "--trainer.callbacks.window_size=4",
]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tiny_t5_dir, data_dir, tmp_path):
    result = cli(
        "fit",
        "--model.model_name_or_path",
        str(tiny_t5_dir),
        "--data.data_dir",
        str(data_dir),
        "--data.limit",
        "12",
        "--data.batch_size",
        "2",
        "--data.num_demonstrations",
        "1",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=tests.helpers.RecordSteps",
        f"--trainer.callbacks.out={tmp_path / 'steps'}",
        "--trainer.callbacks+=specialight.training.callbacks.PeriodicEvaluation",
        "--trainer.callbacks.settings.suites=[svamp_dev, nll_bbh_ao]",
        "--trainer.callbacks.settings.bbh_tasks=[navigate]",
        "--trainer.callbacks.every_n_examples=16",
        "--trainer.callbacks.likelihood_every_n_examples=8",
        "--trainer.callbacks.settings.limit=3",
        "--trainer.callbacks.settings.max_new_tokens=4",
        f"--trainer.callbacks.settings.data_dir={data_dir}",
        *MONITORS,
        "--trainer.log_every_n_steps=4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = tensorboard_scalars(next((tmp_path / "runs").rglob("events.out.tfevents.*")).parent)
    assert {"train/items_per_sec", "train/device/items_per_sec", "lr-AdamW/pg1"} <= set(scalars)
    ranks = [read_steps(tmp_path / "steps", r) for r in (0, 1)]
    units = [[u for s in steps for u in s["units"]] for steps in ranks]
    assert units[0] and units[1] and not set(units[0]) & set(units[1])
    assert len(ranks[0]) == len(ranks[1]) == 12  # 48 units / batch 2 / 2 ranks
    assert len(list((tmp_path / "runs").rglob("*.ckpt"))) == 1
    # evaluated at step 0 and every 16 examples (2 ranks x 2 per step), once each; the likelihood alone
    # every 8 examples in between
    log = next((tmp_path / "runs").rglob("evaluations.jsonl"))
    evaluations = [json.loads(line) for line in log.open()]
    assert [e["step"] for e in evaluations] == [0, 2, 4, 6, 8, 10, 12]
    assert [bool(e["scores"]) for e in evaluations] == [True, False, True, False, True, False, True]
    assert all(e["nll"]["nll_bbh_ao"]["n"] == 3 for e in evaluations)
    assert "nll_change" not in evaluations[0] and all(e["nll_change"]["nll_bbh_ao"]["n"] == 3 for e in evaluations[1:])

    # both ranks evaluated a share (3 examples: 2 and 1); together they equal one process on the same model
    single = cli(
        "evaluate",
        f"--model={tiny_t5_dir}",
        "--suites=[svamp_dev,nll_bbh_ao]",
        "--bbh_tasks=[navigate]",
        "--limit=3",
        "--max-new-tokens=4",
        f"--data-dir={data_dir}",
        f"--out={tmp_path / 'single'}",
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    step0 = log.parent / "evaluations" / "step-0"
    for name in ("svamp_dev.jsonl", "nll.jsonl"):
        ours = [json.loads(line) for line in (step0 / name).read_text().splitlines()]
        theirs = [json.loads(line) for line in (tmp_path / "single" / name).read_text().splitlines()]
        assert [r["id"] for r in ours] == [r["id"] for r in theirs] and len(ours) == 3
        if name == "nll.jsonl":
            assert [r["nll"] for r in ours] == pytest.approx([r["nll"] for r in theirs], rel=1e-5)
        else:
            assert [r["completion"] for r in ours] == [r["completion"] for r in theirs]
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert evaluations[0]["scores"] == single_summary["scores"] and evaluations[0]["n"]["svamp_dev"] == 3


@pytest.mark.slow
def test_ranks_with_batches_of_different_sizes_evaluate_at_the_same_steps(tiny_t5_dir, data_dir, tmp_path):
    # per-format batch sizes give the two ranks batches of different sizes at the same step: the examples
    # counted towards the cadence are summed over ranks, or one rank would evaluate (a collective) alone
    result = cli(
        "fit",
        f"--model.model_name_or_path={tiny_t5_dir}",
        f"--data.data_dir={data_dir}",
        "--data.limit=9",
        "--data.batch_size=1",
        "--data.batch_sizes={zero_shot_cot: 1, zero_shot_answer_only: 3}",
        "--data.formats={zero_shot_cot: 1.0, zero_shot_answer_only: 1.0}",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=tests.helpers.RecordSteps",
        f"--trainer.callbacks.out={tmp_path / 'steps'}",
        "--trainer.callbacks+=specialight.training.callbacks.PeriodicEvaluation",
        "--trainer.callbacks.settings.suites=[nll_bbh_ao]",
        "--trainer.callbacks.settings.bbh_tasks=[navigate]",
        "--trainer.callbacks.settings.limit=1",
        "--trainer.callbacks.every_n_examples=5",
        f"--trainer.callbacks.settings.data_dir={data_dir}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [read_steps(tmp_path / "steps", r) for r in (0, 1)]
    sizes = [[len(s["units"]) for s in steps] for steps in ranks]
    assert sizes[0] != sizes[1] and len(sizes[0]) == len(sizes[1])  # the ranks saw different batch sizes
    seen, expected = 0, [0]
    for step, (a, b) in enumerate(zip(*sizes), start=1):
        if (seen + a + b) // 5 > seen // 5:
            expected.append(step)
        seen += a + b
    expected += [] if expected[-1] == len(sizes[0]) else [len(sizes[0])]  # the closing evaluation
    evaluations = [json.loads(line) for line in next((tmp_path / "runs").rglob("evaluations.jsonl")).open()]
    assert [e["step"] for e in evaluations] == expected and len(expected) > 2


@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_parses(config, capsys, monkeypatch):
    from specialight.training.cli import run_lightning_cli

    monkeypatch.chdir(ROOT)
    if "loss" in config.parts or "data" in config.parts:  # overlays go on top of a whole config
        args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(config), "--print_config"]
    else:
        args = ["fit", "--config", str(config), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(args)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model_name_or_path" in printed and "class_path: specialight.training.losses." in printed
    for line in config.read_text().splitlines():
        if line.strip().startswith("class_path:"):  # the config's choices reach the parsed result
            assert line.strip() in printed


def test_teacher_samples_of_dev_questions_are_left_out(tiny_t5_dir, data_dir, confident_samples, tmp_path):
    import json as _json

    lines = confident_samples.read_text().splitlines()
    dev_question = load_examples("gsm8k", "dev", data_dir)[0].id
    leaked = _json.loads(lines[0]) | {"question_id": dev_question}
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join([*lines, _json.dumps(leaked)]) + "\n")
    dm = datamodule(tiny_t5_dir, data_dir, teacher_data=str(path), limit=None)
    dm.setup("fit")
    assert len(dm.dataset.items) == len(lines)
    assert dev_question not in {item.example.id for item in dm.dataset.items}
