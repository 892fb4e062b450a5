"""Every bad input a user may give earns one line on stderr, exit status 2, and no half-written file: the
stages are driven in-process through `specialight.cli.cli_main`."""

from __future__ import annotations

import errno
import json
import pickle
import re
from pathlib import Path

import pytest

from specialight.cli import build_parser, cli_main, old_spellings
from specialight.core.errors import DataError
from specialight.data.records import TeacherSample, sample_from_row
from tests.conftest import TOKENIZERS
from tests.loopback import Answer, completions_answer
from tests.teacher.test_distill import records
from tests.teacher.test_requests import TEMPLATE, TeacherServer


def one_line_error(capsys, stage: str) -> str:
    """The error line of a failed stage: the last line of stderr, the only one of its kind, no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    prefix = f"specialight {stage}: error: "
    assert lines and lines[-1].startswith(prefix), err[-2000:]
    assert sum(line.startswith(prefix) for line in lines) == 1 and "Traceback" not in err
    return lines[-1][len(prefix) :]


# --- align: malformed teacher samples ---------------------------------------------------------------------


def good_sample(**change) -> dict:
    """A valid record for GSM8K question 0 whose tokens spell its text; ``change`` overrides fields."""
    tokens = ["Natalia", " sold", " 48", " clips", "."]
    sample = TeacherSample(
        "gsm8k/train/0", 0, "".join(tokens), tokens, [[t, " x"] for t in tokens], [[-0.1, -3.0]] * len(tokens)
    )
    return json.loads(sample.to_json()) | change


def align(tmp_path: Path, data_dir: Path, bad: dict) -> tuple[int, Path]:
    """`specialight align` on a good line followed by ``bad``; the status and the output folder."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps(good_sample()) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "aligned"
    args = ["align", "--samples", str(samples), "--out", str(out), "--data_dir", str(data_dir)]
    return cli_main([*args, "--student_tokenizer", str(TOKENIZERS / "t5")]), out


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_a_good_sample_file_aligns(tmp_path, data_dir, capsys):
    status, out = align(tmp_path, data_dir, good_sample(sample_index=1))
    assert status == 0 and (out / "targets.arrow").is_file()
    assert json.loads(capsys.readouterr().out)["kept"] == 2


def test_a_sample_index_that_is_no_integer(tmp_path, data_dir, capsys):
    status, out = align(tmp_path, data_dir, good_sample(sample_index="one"))
    assert status == 2
    line = one_line_error(capsys, "align")
    assert line.endswith("samples.jsonl:2: field sample_index must be an integer >= 0, got 'one'")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sample_index": 1.5}, "field sample_index must be an integer >= 0, got 1.5"),
        ({"sample_index": True}, "field sample_index must be an integer >= 0, got True"),
        ({"question_id": 7}, "field question_id must be a string, got 7"),
        ({"tokens": "Natalia"}, "field tokens must be a list of strings"),
        ({"top_tokens": [["a", 1]] * 5}, "field top_tokens must be a list of lists of strings"),
        ({"top_logprobs": [["-0.1", -3.0]] * 5}, "sample ('gsm8k/train/0', 0) position 0: log-probs must be finite"),
    ],
)
def test_every_field_is_checked_for_its_type(change, message):
    with pytest.raises(DataError, match=re.escape(f"f.jsonl:2: {message}")) as error:
        sample_from_row(good_sample(**change), "f.jsonl:2")
    assert "\n" not in str(error.value)


def test_tokens_that_do_not_spell_the_text(tmp_path, data_dir, capsys):
    status, out = align(tmp_path, data_dir, good_sample(sample_index=1, text="Natalia sold 84 clips."))
    assert status == 2
    line = one_line_error(capsys, "align")
    assert "samples.jsonl:2: sample ('gsm8k/train/0', 1): its tokens do not spell its text" in line
    assert "from character 13 the tokens read '48 clips.', the text '84 clips.'" in line
    assert_nothing_written(out)


def test_an_unknown_question_id(tmp_path, data_dir, capsys):
    status, out = align(tmp_path, data_dir, good_sample(question_id="gsm8k/train/999999"))
    assert status == 2
    line = one_line_error(capsys, "align")
    assert f"samples.jsonl:2: question_id 'gsm8k/train/999999' is not a GSM8K question of {data_dir}" in line
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ((["x"] * 1000, [-1.0] * 1000), "position 0: the top-k lists token(s) ['x'] more than once"),
        ((["Natalia", "a", "b"], [-0.1, -0.2, -0.3]), "position 0: the top-k probabilities sum to 2.464, more than 1"),
    ],
)
def test_a_top_k_that_is_no_distribution(tmp_path, data_dir, capsys, top, message):
    bad = good_sample(sample_index=1)
    bad["top_tokens"][0], bad["top_logprobs"][0] = top
    status, out = align(tmp_path, data_dir, bad)
    assert status == 2
    line = one_line_error(capsys, "align")
    assert "samples.jsonl:2: sample ('gsm8k/train/0', 1) " + message in line
    assert_nothing_written(out)


# --- distill: a full disk -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_distill_into_a_full_disk_stops_in_one_line_and_resumes(data_dir, tmp_path, capsys, monkeypatch):
    from specialight.teacher import distill

    prompt = tmp_path / "prompt.txt"
    prompt.write_text(TEMPLATE)
    real_write, calls = distill.write_all, []

    def full_after_five(handle, data: bytes) -> None:  # the sixth line finds the disk full halfway
        calls.append(len(data))
        if len(calls) == 6:
            real_write(handle, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, data)

    with TeacherServer() as server:
        args = ["distill", "--teacher", "openai:fake", "--base_url", server.base_url, "--prompt", str(prompt)]
        args += ["--num_samples", "4", "--limit", "2", "--data_dir", str(data_dir)]
        assert cli_main([*args, "--out", str(tmp_path / "whole")]) == 0
        capsys.readouterr()
        monkeypatch.setattr(distill, "write_all", full_after_five)
        assert cli_main([*args, "--out", str(tmp_path / "full")]) == 2
        line = one_line_error(capsys, "distill")
        assert "samples.jsonl: No space left on device after 5 sample(s) written by this run" in line
        assert "run the same command again to resume" in line
        text = (tmp_path / "full" / "samples.jsonl").read_text()
        assert text.endswith("\n") and len(text.splitlines()) == 5  # whole lines only, nothing torn
        assert all(json.loads(row)["sample_index"] in range(4) for row in text.splitlines())
        assert not (tmp_path / "full" / "summary.json").exists()
        monkeypatch.setattr(distill, "write_all", real_write)
        assert cli_main([*args, "--out", str(tmp_path / "full")]) == 0
    assert records(tmp_path / "full") == records(tmp_path / "whole") and len(records(tmp_path / "whole")) == 8


# --- evaluate and export: a pickle checkpoint ----------------------------------------------------------------


class Payload:
    """A class a pickle would import and run: what a weights-only load refuses."""


@pytest.mark.parametrize("saved_by", ["torch.save", "pickle.dumps"])
@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_a_pickle_checkpoint_is_refused_in_one_line(tmp_path, data_dir, capsys, stage, saved_by):
    import torch

    ckpt, out = tmp_path / "model.ckpt", tmp_path / "out"
    stored = {"state_dict": {}, "hyper_parameters": {"model_name_or_path": "x"}, "payload": Payload()}
    if saved_by == "torch.save":
        torch.save(stored, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(stored))
    if stage == "evaluate":
        args = ["evaluate", "--model", str(ckpt), "--suites", "gsm8k_dev", "--data_dir", str(data_dir)]
    else:
        args = ["export", "--ckpt", str(ckpt)]
    assert cli_main([*args, "--out", str(out)]) == 2
    line = one_line_error(capsys, stage)
    assert line.startswith(f"{ckpt}: refused: it ") and "a weights-only load does not run" in line
    assert ("it holds a pickled tests.test_errors.Payload" in line) == (saved_by == "torch.save")
    assert_nothing_written(out)


# --- evaluate: suites first, single values for lists --------------------------------------------------------


def test_suites_are_checked_before_the_model_is_resolved(tmp_path, capsys, monkeypatch):
    import specialight.core.models as models

    def resolve(name):
        raise AssertionError(f"resolved {name} before checking the suites")

    monkeypatch.setattr(models, "resolve_model", resolve)
    monkeypatch.setattr(models, "load_student", resolve)
    for suites in ("[nope]", "nope"):
        args = ["evaluate", "--suites", suites, "--model", "owner/absent-model", "--out", str(tmp_path / "out")]
        assert cli_main(args) == 2
        assert one_line_error(capsys, "evaluate").startswith("--suites: unknown suite 'nope'; known: gsm8k_dev")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["evaluate", "--suites", "gsm8k_dev", "--out", "o"], "suites", ["gsm8k_dev"]),
        (["evaluate", "--suites=gsm8k_dev", "--out", "o"], "suites", ["gsm8k_dev"]),
        (["evaluate", "--suites", "[gsm8k_dev,bbh_cot]", "--out", "o"], "suites", ["gsm8k_dev", "bbh_cot"]),
        (["evaluate", "--suites", "a: b", "--out", "o"], "suites", ["a: b"]),
        (["evaluate", "--suites", "x", "--bbh-tasks", "navigate", "--out", "o"], "bbh_tasks", ["navigate"]),
        (["evaluate", "--suites", "x", "--bbh_tasks", "null", "--out", "o"], "bbh_tasks", None),
        (["plot", "--logdir", "runs/a", "--out", "o.png"], "logdir", ["runs/a"]),
        (["plan", "--configs", "a.yaml"], "configs", ["a.yaml"]),
    ],
)
def test_a_single_value_is_read_as_a_list_of_one(argv, field, expected):
    config = build_parser().parse_args(old_spellings(argv))
    assert config[argv[0]][field] == expected


# --- evaluate --base_url: the served model's context ---------------------------------------------------------


class ServedModel(TeacherServer):
    """/v1/completions answering every prompt with one sentence, and GET endpoints answering ``gets``
    (path -> JSON) or 404."""

    def answer(self, body: dict) -> Answer:
        choice = {"index": 0, "text": " The answer is 1.", "finish_reason": "stop", "logprobs": None}
        return completions_answer(body["model"], [choice])

    def __init__(self, gets: dict[str, dict]) -> None:
        super().__init__()
        handler = self.httpd.RequestHandlerClass

        def do_GET(request) -> None:
            payload = gets.get(request.path)
            data = json.dumps(payload).encode()
            request.send_response(200 if payload is not None else 404)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)

        handler.do_GET = do_GET


@pytest.fixture
def tokenizer_only(tmp_path) -> Path:
    """A folder holding the GPT-2 tokenizer and no config.json."""
    from transformers import AutoTokenizer

    folder = tmp_path / "tokenizer-only"
    AutoTokenizer.from_pretrained(TOKENIZERS / "gpt2").save_pretrained(folder)
    assert not (folder / "config.json").exists()
    return folder


def served_args(server, folder: Path, data_dir: Path, out: Path) -> list[str]:
    args = ["evaluate", "--base_url", server.base_url, "--served_model", "fake", "--model", str(folder)]
    args += ["--suites", "gsm8k_dev", "--limit", "2", "--max_new_tokens", "16", "--data_dir", str(data_dir)]
    return [*args, "--out", str(out)]


def prompt_tokens(server) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "gpt2")
    return [len(tokenizer.encode(body["prompt"])) for body in server.bodies]


@pytest.mark.slow
def test_a_served_model_without_config_or_reported_context(tokenizer_only, tmp_path, data_dir, capsys):
    with ServedModel({}) as server:
        assert cli_main(served_args(server, tokenizer_only, data_dir, tmp_path / "out")) == 2
        line = one_line_error(capsys, "evaluate")
        assert "has no config.json" in line and "max_model_len" in line and "--context_length N" in line
        assert server.bodies == []
        given = served_args(server, tokenizer_only, data_dir, tmp_path / "given")
        assert cli_main([*given, "--context_length", "64"]) == 0
    assert json.loads((tmp_path / "given" / "summary.json").read_text())["n"]["gsm8k_dev"] == 2
    assert len(server.bodies) == 2 and max(prompt_tokens(server)) <= 64 - 16 + 1  # re-encoding may differ by one


@pytest.mark.parametrize(
    ("gets", "expected"),
    [
        ({"/v1/models": {"data": [{"id": "fake", "max_model_len": 96}]}}, 96),  # vLLM
        (
            {  # llama-server: the model's training context and, smaller, one slot's
                "/v1/models": {"data": [{"id": "x.gguf", "meta": {"n_ctx_train": 8192}}]},
                "/props": {"default_generation_settings": {"n_ctx": 2048}},
            },
            2048,
        ),
        ({"/v1/models": {"data": [{"id": "other", "max_model_len": 96}, {"id": "fake"}]}}, None),
    ],
)
def test_the_server_reports_the_context(gets, expected):
    from specialight.evaluation.served import server_context

    with ServedModel(gets) as server:
        assert server_context(server.base_url, "fake") == expected


@pytest.mark.slow
def test_a_served_model_takes_the_context_the_server_reports(tokenizer_only, tmp_path, data_dir, capsys):
    with ServedModel({"/v1/models": {"data": [{"id": "fake", "max_model_len": 300}]}}) as server:
        assert cli_main(served_args(server, tokenizer_only, data_dir, tmp_path / "out")) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"]["gsm8k_dev"] == 2
    assert len(server.bodies) == 2 and 64 < max(prompt_tokens(server)) <= 300 - 16 + 1
