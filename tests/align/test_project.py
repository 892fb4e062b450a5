import json
import math

import numpy as np
import pytest

from specialight.align.project import VocabularyMap, one_to_one_pairs, project
from specialight.align.run import AlignSettings, load_targets, run_align
from specialight.cli import cli_main
from specialight.data.records import TeacherSample, read_samples
from specialight.data.tasks import DataError


@pytest.fixture(scope="module")
def t5_vocabulary(t5_tokenizer):
    return VocabularyMap(t5_tokenizer)


def test_vocabulary_map_compares_surfaces(t5_tokenizer, gpt2_tokenizer, t5_vocabulary):
    assert t5_vocabulary.lookup(" The") == t5_tokenizer.convert_tokens_to_ids("▁The")
    assert t5_vocabulary.lookup("{") == -1
    table = t5_vocabulary.teacher_table(gpt2_tokenizer)
    assert table[gpt2_tokenizer.convert_tokens_to_ids("ĠThe")] == t5_tokenizer.convert_tokens_to_ids("▁The")
    assert table[gpt2_tokenizer.convert_tokens_to_ids("{")] == -1
    assert (table >= 0).mean() > 0.2


def test_one_to_one_pairs():
    path = np.array([[0, 0], [0, 1], [1, 2], [2, 2], [3, 3]])
    assert one_to_one_pairs(path, 4, 4) == {3: 3}


def test_projection_one_to_one_top_k_and_one_hot_elsewhere(t5_tokenizer, t5_vocabulary):
    student = t5_tokenizer.encode("The answer is 42", add_special_tokens=False)
    pieces = t5_tokenizer.convert_ids_to_tokens(student)
    assert pieces == ["▁The", "▁answer", "▁is", "▁42"]
    teacher_top = [[" The", " A", "{"], [" answer", " result", " total"], [" is", " was", " be"], [" 4", " 42", " 7"]]
    logprobs = [[math.log(0.7), math.log(0.2), math.log(0.05)]] * 4
    path = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    zero = project(student, path, teacher_top, logprobs, t5_vocabulary, k=3, tail="zero")
    assert zero.one_to_one.tolist() == [True, True, True, True]
    assert zero.ids[0].tolist() == [student[0], t5_vocabulary.lookup(" A"), student[0]]  # "{" has no T5 piece
    assert zero.probs[0].tolist() == pytest.approx([0.7, 0.2, 0.0])
    renormalized = project(student, path, teacher_top, logprobs, t5_vocabulary, k=3, tail="renormalize")
    assert renormalized.probs[0].sum() == pytest.approx(1.0)
    assert renormalized.probs[1].tolist() == pytest.approx([0.7 / 0.95, 0.2 / 0.95, 0.05 / 0.95])
    many = np.array([[0, 0], [1, 1], [2, 2], [3, 2], [3, 3]])
    partial = project(student, many, teacher_top, logprobs, t5_vocabulary, k=3)
    assert partial.one_to_one.tolist() == [True, True, False, False]
    assert partial.ids[2].tolist() == [student[2]] * 3 and partial.probs[2].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="tail policy"):
        project(student, path, teacher_top, logprobs, t5_vocabulary, k=3, tail="spread")


def test_align_command_writes_arrow_targets(teacher_samples, tmp_path, capsys):
    from tests.conftest import TOKENIZERS

    out = tmp_path / "aligned"
    status = cli_main(
        ["align", "--samples", str(teacher_samples), "--student-tokenizer", str(TOKENIZERS / "t5"), "--out", str(out)]
    )
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["kept"] == 12 and summary["dropped"] == {}
    assert 0.3 < summary["one_to_one_share"] < 1.0
    targets = load_targets(out)
    assert len(targets) == 12
    row = targets[0]
    length = len(row["input_ids"])
    assert len(row["topk_ids"]) == length * 5 == len(row["topk_probs"])
    probs = np.asarray(row["topk_probs"]).reshape(length, 5)
    assert (probs.sum(axis=1) <= 1.0 + 1e-5).all() and (probs >= 0).all()
    one_hot = ~np.asarray(row["one_to_one"])
    ids = np.asarray(row["topk_ids"]).reshape(length, 5)
    assert (ids[one_hot, 0] == np.asarray(row["input_ids"])[one_hot]).all()
    assert "\n" not in row["text"]  # T5 sees the newline stand-in
    assert json.loads(capsys.readouterr().out)["kept"] == 12


def test_parallel_alignment_equals_serial(teacher_samples, tmp_path):
    from tests.conftest import TOKENIZERS

    settings = AlignSettings(student_tokenizer=str(TOKENIZERS / "t5"), max_length=40)
    serial = run_align(teacher_samples, tmp_path / "one", settings, num_proc=1)
    parallel = run_align(teacher_samples, tmp_path / "two", settings, num_proc=2)
    assert serial["dropped"] == parallel["dropped"] and serial["dropped"]
    assert list(serial["dropped"]) == ["longer than max_length=40"]
    assert load_targets(tmp_path / "one").to_dict() == load_targets(tmp_path / "two").to_dict()


def _bad_line(tmp_path, **change):
    sample = next(iter(read_samples(_good_file(tmp_path))))
    record = json.loads(sample.to_json()) | change
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record, allow_nan=True) + "\n")
    return path


def _good_file(tmp_path):
    sample = TeacherSample("q/1", 0, "a b", ["a", " b"], [["a", "x"], [" b", " y"]], [[-0.1, -2.0], [-0.2, -3.0]])
    path = tmp_path / "good.jsonl"
    path.write_text(sample.to_json() + "\n")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokens": [], "top_tokens": [], "top_logprobs": []}, "has no tokens"),
        ({"top_tokens": [["a", "x"]]}, "2 tokens but 1 top-k token lists"),
        ({"top_logprobs": [[-0.1, float("nan")], [-0.2, -3.0]]}, "must be finite"),
        ({"top_logprobs": [[-0.1, float("-inf")], [-0.2, -3.0]]}, "must be finite"),
    ],
)
def test_bad_samples_fail_naming_the_sample(tmp_path, change, message):
    path = _bad_line(tmp_path, **change)
    with pytest.raises(DataError, match=rf"bad\.jsonl:1: sample \('q/1', 0\).*{message}"):
        list(read_samples(path))


def test_missing_field_and_malformed_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_good_file(tmp_path).read_text() + '{"question_id": "q"}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: missing field\(s\) sample_index, text"):
        list(read_samples(path))
    path.write_text("{oops\n")
    with pytest.raises(DataError, match=r"s\.jsonl:1: malformed JSON"):
        list(read_samples(path))
