import logging
import re
from pathlib import Path

import pytest

from specialight.core.constants import IGNORE_INDEX
from specialight.data.batching import FormatBatchSampler
from specialight.data.datamodule import SpecializationDataModule
from specialight.data.formats import FORMATS, answer_target, newline_separator, render
from specialight.data.mixing import EpochMix, epoch_units
from specialight.data.records import TeacherSample
from specialight.data.tasks import DataError, load_examples

ALL_FORMATS = {fmt: 1.0 for fmt in FORMATS}


def test_epoch_units_answer_only_once_per_question():
    questions = ["a", "a", "a", "b", "c", "c"]
    units = epoch_units(questions, {"zero_shot_cot": 1.0, "zero_shot_answer_only": 2.0}, seed=0)
    cot = [i for i, f in units if FORMATS[f] == "zero_shot_cot"]
    answer_only = [i for i, f in units if FORMATS[f] == "zero_shot_answer_only"]
    assert cot == [0, 1, 2, 3, 4, 5]
    assert answer_only == [0, 3, 4, 0, 3, 4]  # the first sample of each question, weight 2
    half = epoch_units(questions, {"in_context_answer_only": 0.5}, seed=0)
    assert len(half) == 2 and {i for i, _ in half} <= {0, 3, 4}


@pytest.fixture
def samples_file(tmp_path, data_dir):
    """Three questions with 3, 2 (and one wrong) and 1 correct teacher samples."""
    examples = load_examples("gsm8k", "tune", data_dir)[:3]
    path = tmp_path / "samples.jsonl"
    lines = []
    for example, correct, wrong in zip(examples, (3, 2, 1), (0, 1, 0)):
        for index in range(correct + wrong):
            right = index < correct
            text = answer_target(example.answer if right else "-1", example.rationale) + " " * index
            sample = TeacherSample(example.id, index, text, [text], [[text]], [[0.0]], correct=right)
            lines.append(sample.to_json())
    path.write_text("\n".join(lines) + "\n")
    return path, examples


def test_data_mix_counts_batches_and_cut_targets(tiny_t5_dir, data_dir, samples_file, caplog, t5_tokenizer):
    path, examples = samples_file
    dm = SpecializationDataModule(
        str(tiny_t5_dir),
        teacher_data=str(path),
        data_dir=str(data_dir),
        formats=ALL_FORMATS,
        num_demonstrations=2,
        batch_size=4,
        batch_sizes={"zero_shot_cot": 2, "in_context_cot": 1},
        max_target_length=40,
    )
    with caplog.at_level(logging.INFO, logger="specialight.data.datamodule"):
        dm.setup("fit")
    rows = {row.format: row for row in dm.format_rows()}
    assert {f: r.examples for f, r in rows.items()} == {
        "zero_shot_cot": 6,
        "in_context_cot": 6,
        "zero_shot_answer_only": 3,
        "in_context_answer_only": 3,
    }
    assert {f: (r.batch_size, r.batches) for f, r in rows.items()} == {
        "zero_shot_cot": (2, 3),
        "in_context_cot": (1, 6),
        "zero_shot_answer_only": (4, 1),
        "in_context_answer_only": (4, 1),
    }
    newline = newline_separator(t5_tokenizer)
    lengths = [len(t5_tokenizer.encode(render(answer_target(e.answer, e.rationale), newline))) - 1 for e in examples]
    expected_cut = sum(n for n, length in zip((3, 2, 1), lengths) if length > 39)
    assert expected_cut > 0
    assert rows["zero_shot_cot"].targets_cut == rows["in_context_cot"].targets_cut == expected_cut
    assert rows["zero_shot_answer_only"].targets_cut == 0
    assert rows["in_context_cot"].mean_tokens > rows["zero_shot_cot"].mean_tokens > 40
    logged = caplog.text
    assert "examples/epoch" in logged and "targets cut" in logged and "zero_shot_answer_only" in logged
    seen = []
    for batch in dm.train_dataloader():
        fmt = FORMATS[int(batch["format_ids"][0])]
        assert batch["format_ids"].unique().numel() == 1 and len(batch["units"]) <= dm.size_of(fmt)
        # every target cut at max_target_length (the tensor itself is padded to a multiple of 64)
        assert int((batch["labels"] != IGNORE_INDEX).sum(dim=1).max()) <= 40
        seen += batch["units"].tolist()
    assert sorted(seen) == list(range(18))


def test_per_format_batch_sizes_are_checked(tiny_t5_dir, data_dir):
    with pytest.raises(DataError, match="unknown format"):
        SpecializationDataModule(str(tiny_t5_dir), data_dir=str(data_dir), batch_sizes={"cot": 2})
    with pytest.raises(DataError, match="positive integer"):
        SpecializationDataModule(str(tiny_t5_dir), data_dir=str(data_dir), batch_sizes={"zero_shot_cot": 0})
    with pytest.raises(DataError, match="one_format_per_batch"):
        SpecializationDataModule(
            str(tiny_t5_dir), data_dir=str(data_dir), batch_sizes={"zero_shot_cot": 2}, one_format_per_batch=False
        )


def test_state_dict_holds_the_provenance_and_warns_when_resumed_data_changed(tiny_t5_dir, data_dir, caplog):
    dm = SpecializationDataModule(str(tiny_t5_dir), data_dir=str(data_dir))
    hashes = dm.state_dict()["data_sha256"]
    assert sorted(Path(path).name for path in hashes) == ["train.jsonl", "validation_index.npy"]
    assert all(len(digest) == 64 for digest in hashes.values())

    resumed = SpecializationDataModule(str(tiny_t5_dir), data_dir=str(data_dir))
    train = next(path for path in hashes if path.endswith("train.jsonl"))
    resumed.load_state_dict({"data_sha256": hashes | {train: "0" * 64, "/elsewhere/gone.jsonl": "1" * 64}})
    with caplog.at_level(logging.WARNING, logger="specialight.data.datamodule"):
        assert resumed.state_dict() == {"data_sha256": hashes}  # the files read now, not the checkpoint's
    assert f"changed since the checkpoint this run resumed from: {train}" in caplog.text
    assert "gone.jsonl" not in caplog.text  # not read by this run


def test_gold_rationale_targets_end_with_the_answer_line(tiny_gpt2_dir, data_dir):
    """Without teacher data, a CoT target is the gold rationale, ``The answer is X.`` and EOS, as in the
    demonstrations and in the evaluation prompt (the answer line was once missing, so tuned models never
    wrote it); the GSM8K dev loss reads the same targets."""
    dm = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), formats={"zero_shot_cot": 1.0, "in_context_cot": 1.0}, limit=6
    )
    dm.setup("fit")
    tokenizer = dm.encoder.tokenizer
    examples = [dm.dataset[i] for i in range(len(dm.dataset))] + list(dm.val_dataloader().dataset)
    assert len(examples) > 12
    for encoded in examples:
        target = [t for t in encoded["labels"] if t != IGNORE_INDEX]
        assert target[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(target[:-1])
        assert re.search(r"\nThe answer is [^\n]+\.$", text), text


def _subset(units: list[tuple[int, int]], fmt: str) -> list[int]:
    return [i for i, f in units if FORMATS[f] == fmt]


def test_fractional_weights_draw_a_fresh_subset_each_epoch_from_their_own_generator():
    questions = [f"q{i}" for i in range(40)]
    formats = {"zero_shot_cot": 1.5, "zero_shot_answer_only": 0.25}
    first, second = (epoch_units(questions, formats, seed=3, epoch=e) for e in (0, 1))
    for fmt, whole, drawn in (("zero_shot_cot", 40, 20), ("zero_shot_answer_only", 0, 10)):
        a, b = _subset(first, fmt), _subset(second, fmt)
        assert len(a) == len(b) == whole + drawn
        extra_a, extra_b = set(a[whole:]), set(b[whole:])
        assert extra_a != extra_b and len(extra_a | extra_b) > drawn  # the rest of the pool comes into view
    assert epoch_units(questions, formats, seed=3, epoch=1) == second  # a pure function: resumable
    reweighted = epoch_units(questions, {"zero_shot_cot": 1.8, "zero_shot_answer_only": 0.25}, seed=3, epoch=0)
    assert _subset(reweighted, "zero_shot_answer_only") == _subset(first, "zero_shot_answer_only")
    assert _subset(reweighted, "zero_shot_cot") != _subset(first, "zero_shot_cot")


def test_the_sampler_takes_each_epochs_draw_and_resumes_inside_it():
    mix = EpochMix([f"q{i}" for i in range(30)], {"zero_shot_cot": 0.5, "in_context_cot": 1.0}, seed=1)
    formats, lengths = [f for _, f in mix.units], [i * 7 % 23 for i in range(len(mix.units))]
    sampler = FormatBatchSampler(formats, lengths, 4, seed=2, active=mix.active)
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(u for b in batches for u in b) == mix.active(epoch).tolist()
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    resumed = FormatBatchSampler(formats, lengths, 4, seed=2, active=mix.active)
    resumed.set_epoch(1)
    resumed.resume = (1, 3)
    assert list(resumed) == epochs[1][3:]


def test_a_token_budget_fills_batches_up_to_it_padding_counted_and_shards_them():
    formats = [0] * 60 + [3] * 60  # short answer-only units and long CoT units
    lengths = [20 + i % 30 for i in range(60)] + [150 + i * 13 % 200 for i in range(60)]
    shards = [
        FormatBatchSampler(formats, lengths, 8, seed=4, rank=r, world_size=2, max_tokens=1024, pad_to_multiple_of=64)
        for r in range(2)
    ]
    everything = shards[0]._all_batches()
    assert sorted(u for b in everything for u in b) == list(range(120))
    for batch in everything:
        assert len({formats[u] for u in batch}) == 1
        longest = -(-max(lengths[u] for u in batch) // 64) * 64
        assert len(batch) * longest <= 1024
    rows = {f: [len(b) for b in everything if formats[b[0]] == f] for f in (0, 3)}
    assert min(rows[0]) > max(rows[3]) and max(rows[0]) == 16  # 64-token rows: 16 to a batch
    mine = [list(s) for s in shards]
    assert len(mine[0]) == len(mine[1]) and not {u for b in mine[0] for u in b} & {u for b in mine[1] for u in b}
    again = FormatBatchSampler(
        formats, lengths, 8, seed=4, rank=1, world_size=2, max_tokens=1024, pad_to_multiple_of=64
    )
    again.resume = (0, 2)  # a run resumed after two of its batches takes the rest of the same ones
    assert list(again) == mine[1][2:]
    per_format = FormatBatchSampler(formats, lengths, 8, seed=4, max_tokens={0: 512})  # CoT keeps its count of 8
    assert {len(b) for b in per_format._all_batches() if formats[b[0]] == 3} == {4, 8}


def test_the_data_module_batches_by_tokens_when_given_a_budget(tiny_gpt2_dir, data_dir, caplog):
    formats = {"zero_shot_answer_only": 1.0, "zero_shot_cot": 1.0}
    dm = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), formats=formats, limit=40, max_tokens_per_batch=2048
    )
    with caplog.at_level(logging.INFO, logger="specialight.data.datamodule"):
        dm.setup("fit")
    assert "2048 tokens (~" in caplog.text
    rows = {fmt: [] for fmt in formats}
    seen = []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].numel() <= 2048 or batch["input_ids"].shape[0] == 1
        rows[FORMATS[int(batch["format_ids"][0])]].append(batch["input_ids"].shape[0])
        seen += batch["units"].tolist()
    assert sorted(seen) == list(range(80))
    assert max(rows["zero_shot_answer_only"]) > max(rows["zero_shot_cot"]) >= 2  # short rows: more to a batch
    with pytest.raises(DataError, match="max_tokens_per_batch: per-format values need one_format_per_batch"):
        SpecializationDataModule(
            str(tiny_gpt2_dir), max_tokens_per_batch={"zero_shot_cot": 9}, one_format_per_batch=False
        )
    with pytest.raises(DataError, match="max_tokens_per_batch: every size must be a positive integer"):
        SpecializationDataModule(str(tiny_gpt2_dir), max_tokens_per_batch=0)
