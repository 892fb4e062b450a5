import json
import os
import signal
import subprocess
import sys
import time

import pytest

from specialight.data.records import read_samples
from specialight.data.stops import cut_tokens_at_stop
from specialight.data.tasks import DataError, load_examples
from specialight.teacher.completion import TeacherError, parse_chat_logprobs, parse_completion_logprobs
from specialight.teacher.distill import DistillSettings, build_prompt, repair, run_distill, sample_seed
from specialight.teacher.local import LocalTeacher
from tests.conftest import ROOT
from tests.helpers import align_and_fit


def distill_command(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), HF_HUB_OFFLINE="1")
    return [sys.executable, "-m", "specialight.cli", "distill", *args], env


# `specialight distill` whose writer stops for good once five samples are on disk, after touching argv[1]:
# the test kills it there, mid-run, whatever the machine's speed
STALL_AFTER_FIVE = """
import sys, threading
from specialight.teacher import distill
append = distill.SampleWriter.append
def stalling(self, samples):
    append(self, samples)
    if self.written >= 5:
        open(sys.argv[1], "w").close()
        threading.Event().wait()
distill.SampleWriter.append = stalling
from specialight.cli import cli_main
sys.exit(cli_main(sys.argv[2:]))
"""


def records(folder):
    return sorted(
        (json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()),
        key=lambda r: (r["question_id"], r["sample_index"]),
    )


def test_both_completion_logprob_forms_and_the_chat_form_parse():
    legacy = {
        "tokens": [" 4", "2"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{" 4": -0.1, " 5": -2.0}, {"2": -0.2, "3": -1.9}],
    }
    per_token = {
        "content": [
            {
                "token": " 4",
                "logprob": -0.1,
                "top_logprobs": [{"token": " 4", "logprob": -0.1}, {"token": " 5", "logprob": -2.0}],
            },
            {
                "token": "2",
                "logprob": -0.2,
                "top_logprobs": [{"token": "2", "logprob": -0.2}, {"token": "3", "logprob": -1.9}],
            },
        ]
    }
    expected = ([" 4", "2"], [[" 4", " 5"], ["2", "3"]], [[-0.1, -2.0], [-0.2, -1.9]])
    assert parse_completion_logprobs(legacy, "x") == expected
    assert parse_completion_logprobs(per_token, "x") == expected
    assert parse_chat_logprobs(per_token, "x") == expected
    with pytest.raises(TeacherError, match="no log-probs.*logprobs=k"):
        parse_completion_logprobs(None, "server")
    with pytest.raises(TeacherError, match="top_logprobs=k"):
        parse_chat_logprobs({"content": [{"token": "a", "logprob": -1.0, "top_logprobs": []}]}, "server")


def test_stop_strings_cut_tokens():
    tokens = ["The", " answer", " is", " 4", ".\n", "\n", "Question", ":"]
    kept, _, _ = cut_tokens_at_stop(tokens, [[t] for t in tokens], [[0.0]] * len(tokens), ["\n\nQuestion:"])
    assert kept == ["The", " answer", " is", " 4", ".\n", "\n"][:5]


def test_prompt_follows_the_template_style(data_dir):
    complex_prompt = (data_dir / "prompts/flan_t5_cot_specialization/prompt_complex.txt").read_text()
    prompt = build_prompt(complex_prompt, "How many?")
    assert prompt.endswith("\n\nQuestion: How many?\nLet's think step by step\n")
    assert build_prompt("Q: a\nThe answer is 1", "b").endswith("\n\nQ: b\nLet's think step by step\n")
    assert (
        sample_seed(0, "gsm8k/train/1", 3) == sample_seed(0, "gsm8k/train/1", 3) != sample_seed(0, "gsm8k/train/1", 4)
    )


def test_repair_cuts_a_torn_line_and_refuses_duplicates(tmp_path, teacher_samples):
    lines = teacher_samples.read_text().splitlines()
    path = tmp_path / "samples.jsonl"
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:50])
    assert len(repair(path)) == 2
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    path.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(DataError, match="appears twice"):
        repair(path)


@pytest.mark.slow
def test_local_teacher_samples_are_seeded_and_valid(tiny_gpt2_dir, data_dir, tmp_path):
    teacher = LocalTeacher.from_pretrained(str(tiny_gpt2_dir))
    questions = load_examples("gsm8k", "tune", data_dir)[:2]
    settings = DistillSettings(num_samples=2, max_tokens=10, top_k=3, concurrency=1)
    summary = run_distill(
        questions,
        teacher,
        "Q: 1+1?\nLet's think step by step\nThe answer is 2.",
        tmp_path / "a",
        settings,
        progress=False,
    )
    assert summary["samples"] == 4 and 0 <= summary["acceptance"] <= 1
    samples = list(read_samples(tmp_path / "a"))
    assert {s.key for s in samples} == {(q.id, i) for q in questions for i in range(2)}
    assert all(len(s.top_tokens[0]) == 3 and s.text == "".join(s.tokens) for s in samples)
    run_distill(
        questions,
        teacher,
        "Q: 1+1?\nLet's think step by step\nThe answer is 2.",
        tmp_path / "b",
        settings,
        progress=False,
    )
    assert records(tmp_path / "a") == records(tmp_path / "b")
    assert samples[0].text != samples[1].text  # two draws of one question differ


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_equals_an_uninterrupted_run(tiny_gpt2_dir, data_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"  # the tiny model's 1,024 positions do not hold prompt_complex.txt
    prompt.write_text("Question: 1 + 1?\nLet's think step by step\n1 + 1 = 2.\nThe answer is 2.")
    common = [
        "--teacher",
        f"local:{tiny_gpt2_dir}",
        "--data_dir",
        str(data_dir),
        "--limit",
        "4",
        "--prompt",
        str(prompt),
        "--num_samples",
        "4",
        "--max_tokens",
        "24",
        "--top_k",
        "3",
        "--seed",
        "7",
    ]
    command, env = distill_command(*common, "--out", str(tmp_path / "whole"))
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)

    marker = tmp_path / "five-written"
    command, env = distill_command(*common, "--out", str(tmp_path / "killed"))
    stalled = [sys.executable, "-c", STALL_AFTER_FIVE, str(marker), *command[3:]]
    process = subprocess.Popen(stalled, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never wrote its fifth sample"
    process.send_signal(signal.SIGKILL)
    process.wait()
    target = tmp_path / "killed" / "samples.jsonl"
    assert target.read_text().count("\n") == 5
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    assert records(tmp_path / "killed") == records(tmp_path / "whole")
    assert len(records(tmp_path / "whole")) == 16


def test_distill_command_refuses_bad_teachers(data_dir, tmp_path, capsys):
    from specialight.cli import cli_main

    assert cli_main(["distill", "--teacher", "gpt:x", "--out", str(tmp_path), "--data_dir", str(data_dir)]) == 2
    assert "openai:MODEL or local:PATH_OR_ID" in capsys.readouterr().err
    assert cli_main(["distill", "--teacher", "openai:x", "--out", str(tmp_path), "--data_dir", str(data_dir)]) == 2
    assert "needs --base_url" in capsys.readouterr().err


@pytest.mark.slow
def test_local_teacher_samples_feed_align_and_distribution_matching(tiny_gpt2_dir, tiny_t5_dir, data_dir, tmp_path):
    teacher = LocalTeacher.from_pretrained(str(tiny_gpt2_dir))
    questions = load_examples("gsm8k", "tune", data_dir)[:3]
    run_distill(
        questions,
        teacher,
        "Q: 1+1?\nLet's think step by step\nThe answer is 2.",
        tmp_path / "samples",
        DistillSettings(num_samples=2, max_tokens=16, concurrency=1),
        progress=False,
    )
    summary, trainer = align_and_fit(tmp_path / "samples", tmp_path / "aligned", tiny_t5_dir, data_dir)
    assert summary["kept"] == 6
    assert trainer.global_step == 3


@pytest.mark.slow
def test_score_mode_records_gold_rationales_once(tiny_gpt2_dir, data_dir, tmp_path):
    from specialight.cli import cli_main
    from specialight.data.records import prompt_hash

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Q: 1 + 1?\nLet's think step by step\nThe answer is 2.")
    args = [
        "distill",
        "--teacher",
        f"local:{tiny_gpt2_dir}",
        "--score",
        "--limit",
        "2",
        "--top_k",
        "3",
        "--prompt",
        str(prompt),
        "--out",
        str(tmp_path / "scored"),
        "--data_dir",
        str(data_dir),
    ]
    assert cli_main(args) == 0
    assert cli_main(args) == 0  # a rerun finds both on disk and adds nothing
    samples = list(read_samples(tmp_path / "scored"))
    gold = load_examples("gsm8k", "tune", data_dir)[:2]
    assert [s.key for s in samples] == [(e.id, 0) for e in gold]
    assert all(s.finish_reason == "scored" and s.prompt_hash == prompt_hash(prompt.read_text()) for s in samples)
    assert samples[0].text.startswith(gold[0].rationale.split("\n")[0])
