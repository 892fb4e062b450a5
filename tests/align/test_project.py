import json
import math
from pathlib import Path

import numpy as np
import pytest

from specialight.align.project import (
    DIFFERENT,
    KINDS,
    NOT_ONE_TO_ONE,
    TEACHER,
    UNKNOWN_SAMPLED,
    VocabularyMap,
    layout_spaces,
    one_to_one_pairs,
    project,
    same_token,
)
from specialight.align.run import run_align
from specialight.align.settings import AlignSettings
from specialight.cli import cli_main
from specialight.core.targets import load_targets
from specialight.data.records import TeacherSample, read_samples
from specialight.data.tasks import DataError

SMOLLM2 = Path.home() / ".cache" / "specialight" / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"


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


def test_projection_teacher_mass_only_on_the_same_token(t5_tokenizer, t5_vocabulary):
    student = t5_tokenizer.encode("The answer is 42", add_special_tokens=False)
    pieces = t5_tokenizer.convert_ids_to_tokens(student)
    assert pieces == ["▁The", "▁answer", "▁is", "▁42"]
    student_surfaces = [" The", " answer", " is", " 42"]
    # the teacher wrote " 4" where the student has " 42": one-to-one on the path, but a different token
    teacher = ["The", " answer", " is", " 4"]
    teacher_top = [["The", " A", "{"], [" answer", " result", " total"], [" was", " be", " has"], [" 4", " 42", " 7"]]
    logprobs = [[math.log(0.7), math.log(0.2), math.log(0.05)]] * 4
    own = [math.log(0.7), math.log(0.7), math.log(0.01), math.log(0.7)]
    path = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    layout = np.array([True, False, False, False])
    zero = project(
        student, student_surfaces, path, teacher, teacher_top, logprobs, t5_vocabulary, 3, "zero", own, layout
    )
    assert zero.kind.tolist() == [TEACHER, TEACHER, TEACHER, DIFFERENT]
    assert zero.ids.shape == (4, 4)
    # "The" (text start) and " The" are the same token; "{" has no T5 piece and is dropped
    assert zero.ids[0].tolist() == [student[0], t5_vocabulary.lookup(" A"), student[0], student[0]]
    assert zero.probs[0].tolist() == pytest.approx([0.7, 0.2, 0.0, 0.0])
    # the sampled token " is" is outside the teacher's top-3: it joins with its own probability
    assert zero.ids[2].tolist() == [t5_vocabulary.lookup(w) for w in (" was", " be", " has")] + [student[2]]
    assert zero.probs[2].tolist() == pytest.approx([0.7, 0.2, 0.05, 0.01])
    assert zero.added.tolist() == [False, False, True, False]
    # " 42" gets no mass on " 4": one-hot on its own token
    assert zero.ids[3].tolist() == [student[3]] * 4 and zero.probs[3].tolist() == [1.0, 0.0, 0.0, 0.0]
    renormalized = project(
        student, student_surfaces, path, teacher, teacher_top, logprobs, t5_vocabulary, 3, "renormalize", own, layout
    )
    assert renormalized.probs[1].sum() == pytest.approx(1.0)
    assert renormalized.probs[2].tolist() == pytest.approx([0.7 / 0.96, 0.2 / 0.96, 0.05 / 0.96, 0.01 / 0.96])
    # without the sampled token's log-prob it cannot join: one-hot, counted apart
    unknown = project(student, student_surfaces, path, teacher, teacher_top, logprobs, t5_vocabulary, 3)
    assert unknown.kind.tolist() == [DIFFERENT, TEACHER, UNKNOWN_SAMPLED, DIFFERENT]  # no layout: "The" != " The"
    assert unknown.probs[2].tolist() == [1.0, 0.0, 0.0, 0.0]
    many = np.array([[0, 0], [1, 1], [2, 2], [3, 2], [3, 3]])
    partial = project(student, student_surfaces, many, teacher, teacher_top, logprobs, t5_vocabulary, 3, "zero", own)
    assert partial.kind.tolist() == [DIFFERENT, TEACHER, NOT_ONE_TO_ONE, NOT_ONE_TO_ONE]
    assert partial.ids[2].tolist() == [student[2]] * 4 and partial.probs[2].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="tail policy"):
        project(student, student_surfaces, path, teacher, teacher_top, logprobs, t5_vocabulary, 3, tail="spread")


def test_same_token_and_layout_spaces():
    assert same_token(" 42", " 42") and not same_token(" 4", " 42") and not same_token("12", " $12")
    assert not same_token("She", " She") and same_token("She", " She", layout_space=True)
    assert not same_token("\n", " |", layout_space=True)
    assert layout_spaces([" a", ".", " |", " She", " x"], " | ").tolist() == [True, False, False, True, False]
    assert layout_spaces(["a", ".", "\n", "She"], None).tolist() == [True, False, False, False]


@pytest.mark.slow
def test_align_command_writes_arrow_targets(teacher_samples, tmp_path, capsys):
    from tests.conftest import TOKENIZERS

    out = tmp_path / "aligned"
    status = cli_main(
        ["align", "--samples", str(teacher_samples), "--student_tokenizer", str(TOKENIZERS / "t5"), "--out", str(out)]
    )
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["kept"] == 12 and summary["dropped"] == {}
    shares = summary["position_shares"]
    assert set(shares) == set(KINDS) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["teacher_distribution"] > 0.4 and shares["one_to_one_different_tokens"] > 0.0
    # gold rationales scored by a local teacher carry the sampled token's log-prob
    assert shares["sampled_token_log_prob_unknown"] == 0.0
    # with the newline stand-in the exact aligner covers T5 students (the DP only where T5 lacks a character)
    assert summary["method_shares"]["offsets"] >= 11 / 12
    targets = load_targets(out)
    assert len(targets) == 12
    row = targets[0]
    length, width = len(row["input_ids"]), row["target_width"]
    assert width == 6 and len(row["topk_ids"]) == length * width == len(row["topk_probs"])
    probs = np.asarray(row["topk_probs"]).reshape(length, width)
    assert (probs.sum(axis=1) <= 1.0 + 1e-5).all() and (probs >= 0).all()
    one_hot = np.asarray(row["target_kind"]) != TEACHER
    ids = np.asarray(row["topk_ids"]).reshape(length, width)
    assert (ids[one_hot, 0] == np.asarray(row["input_ids"])[one_hot]).all()
    assert (probs[one_hot, 0] == 1.0).all()
    assert "\n" not in row["text"]  # T5 sees the newline stand-in
    assert json.loads(capsys.readouterr().out)["kept"] == 12


@pytest.mark.parametrize("student", ["t5", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_no_teacher_mass_where_the_tokens_differ(student, confident_samples, tmp_path):
    """Property on real GSM8K text: a student position carries mass on any id but its own only where the
    path pairs it one-to-one with a teacher token of the same text."""
    from transformers import AutoTokenizer

    from specialight.align.markers import surfaces, tokenizer_scheme
    from specialight.align.paths import align_path
    from tests.conftest import TOKENIZERS

    folder = str(TOKENIZERS / "t5") if student == "t5" else str(SMOLLM2)
    if student == "smollm2" and not SMOLLM2.is_dir():
        pytest.skip(f"the converted SmolLM2 model is not at {SMOLLM2} (run `make demo` once)")
    summary = run_align(confident_samples, tmp_path, AlignSettings(student_tokenizer=folder))
    assert summary["kept"] == 12
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scheme = tokenizer_scheme(tokenizer)
    by_key = {(s.question_id, s.sample_index): s for s in read_samples(confident_samples)}
    checked = 0
    for row in load_targets(tmp_path):
        sample = by_key[(row["question_id"], row["sample_index"])]
        own = np.asarray(row["input_ids"])
        width = row["target_width"]
        ids = np.asarray(row["topk_ids"]).reshape(-1, width)
        probs = np.asarray(row["topk_probs"]).reshape(-1, width)
        student_surfaces = surfaces(tokenizer.convert_ids_to_tokens(own.tolist()), scheme)
        path = align_path(sample.tokens, student_surfaces, row["method"], " | " if student == "t5" else None)
        for j in np.nonzero(((ids != own[:, None]) & (probs > 0)).any(axis=1))[0]:
            teachers = path[path[:, 1] == j, 0]
            assert teachers.shape[0] == 1 and (path[:, 0] == teachers[0]).sum() == 1
            written, own_text = sample.tokens[teachers[0]], student_surfaces[j]
            assert written == own_text or written.strip() == own_text.strip() != ""
            checked += 1
        differ = [
            j
            for j in range(len(own))
            if (path[:, 1] == j).sum() == 1
            and sample.tokens[path[path[:, 1] == j, 0][0]].strip() != student_surfaces[j].strip()
        ]
        assert all(probs[j, 0] == 1.0 and (ids[j] == own[j]).all() for j in differ)
    assert checked > 100


def test_offsets_aligner_reads_the_newline_stand_in():
    from specialight.align.paths import align_path, choose_method

    teacher, student = ["Two", ".", "\n", "She", " ran"], [" Two", ".", " |", " She", " ran"]
    assert choose_method(teacher, student, "auto") == "dp"
    assert choose_method(teacher, student, "auto", " | ") == "offsets"
    assert align_path(teacher, student, "auto", " | ").tolist() == [[i, i] for i in range(5)]
    # blank lines and blanks around a newline read as one stand-in
    assert choose_method(["a.", " \n\n", "b"], [" a.", " |", " b"], "auto", " | ") == "offsets"


@pytest.mark.slow
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
    sample = TeacherSample("q/1", 0, "a b", ["a", " b"], [["a", "x"], [" b", " y"]], [[-0.1, -3.0], [-0.2, -3.0]])
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
