"""What the HTTP teacher sends and how often: building teachers from their spec, several samples per request
(the API's ``n``) against loopback servers that give, refuse or ignore ``n``, resuming a partial run, the
token usage in the summary, and the openai client's retries after ``Retry-After``."""

from __future__ import annotations

import json
import logging
import random
import threading
from email.utils import formatdate
from types import SimpleNamespace

import pytest

from specialight.cli import cli_main
from specialight.data.tasks import DataError, load_examples
from specialight.teacher.backends import OpenAITeacher, TeacherError
from specialight.teacher.build import build_teacher
from specialight.teacher.distill import DistillSettings, repair, run_distill
from tests.loopback import Answer, Loopback, completions_answer
from tests.teacher.test_distill import records

PROMPT_TOKENS = 100
TEMPLATE = "Question: 1 + 1?\nLet's think step by step\nThe answer is 2."


def choice(seed: int, index: int) -> dict:
    """Choice ``index`` of a request with ``seed``: the same for the same pair, as a server honouring seeds."""
    tokens = [" The", " answer", " is", f" {random.Random(f'{seed}:{index}').randint(0, 20)}", "."]
    top = [{token: -0.1, " x": -3.0} for token in tokens]
    logprobs = {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens), "top_logprobs": top}
    return {"index": index, "text": "".join(tokens), "finish_reason": "stop", "logprobs": logprobs}


class TeacherServer(Loopback):
    """``/v1/completions`` with seeded choices and ``usage``. ``n``: ``"give"`` n choices, ``"refuse"`` n > 1
    with a 400 (as llama-server), or ``"ignore"`` it (one choice); ``busy``: answer the first that many
    requests with 429 and ``Retry-After: 1``."""

    def __init__(self, n: str = "give", busy: int = 0) -> None:
        self.n, self.busy, self.lock = n, busy, threading.Lock()
        super().__init__(self.answer)

    def answer(self, body: dict) -> Answer:
        with self.lock:
            busy, self.busy = self.busy > 0, self.busy - 1
        if busy:
            return 429, {"Retry-After": "1"}, {"error": {"message": "slow down", "type": "rate_limit"}}
        n = body.get("n", 1)
        if n > 1 and self.n == "refuse":
            message = f"Field 'n': Value must be between 1 <= value <= 1, but got {n}"
            return 400, {}, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}}
        choices = [choice(body["seed"], j) for j in range(1 if self.n == "ignore" else n)]
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5 * len(choices), "total_tokens": 0}
        return completions_answer(body["model"], choices, usage)


@pytest.fixture(scope="module")
def questions(data_dir):
    return load_examples("gsm8k", "tune", data_dir)[:2]


def distill(server: TeacherServer, questions, out, per_request: int, num_samples: int = 5) -> dict:
    settings = DistillSettings(num_samples=num_samples, samples_per_request=per_request, concurrency=2)
    return run_distill(questions, OpenAITeacher("fake", server.base_url), TEMPLATE, out, settings, progress=False)


def unnamed(folder) -> list[dict]:
    """The records of a run without the teacher's name (which holds the server's port)."""
    return [{k: v for k, v in r.items() if k != "teacher"} for r in records(folder)]


def keys(folder) -> list[tuple[str, int]]:
    return [(r["question_id"], r["sample_index"]) for r in records(folder)]


def test_bad_teacher_specs_fail_in_one_line():
    for spec, message in [
        ("gpt:x", "openai:MODEL or local:PATH_OR_ID"),
        ("openai:", "openai:MODEL or local:PATH_OR_ID"),
        ("local", "openai:MODEL or local:PATH_OR_ID"),
    ]:
        with pytest.raises(DataError, match=message) as error:
            build_teacher(spec)
        assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="needs --base_url"):
        build_teacher("openai:m")
    scorer = build_teacher("openai:m", base_url="http://127.0.0.1:1/v1", score=True)
    assert type(scorer).__name__ == "ServerScorer" and scorer.base_url == "http://127.0.0.1:1/v1"
    teacher = build_teacher("openai:m", base_url="http://127.0.0.1:1/v1", endpoint="chat", max_retries=2)
    assert (teacher.name, teacher.endpoint, teacher.max_retries, teacher.concurrent) == (
        "m@http://127.0.0.1:1/v1",
        "chat",
        2,
        True,
    )


def test_samples_per_request_sends_the_prompt_once_per_n_and_resumes(questions, tmp_path):
    with TeacherServer() as server:
        summary = distill(server, questions, tmp_path / "whole", per_request=2)
        assert sorted(body.get("n", 1) for body in server.bodies) == [1, 1, 2, 2, 2, 2]  # 0-1, 2-3, 4 per question
        assert len({body["prompt"] for body in server.bodies}) == 2
        assert keys(tmp_path / "whole") == [(q.id, i) for q in questions for i in range(5)]
        assert summary["samples"] == 10 and summary["settings"]["samples_per_request"] == 2
        assert summary["usage"] == {"requests": 6, "prompt_tokens": 6 * PROMPT_TOKENS, "completion_tokens": 50}

        lines = {(r["question_id"], r["sample_index"]): json.dumps(r) for r in records(tmp_path / "whole")}
        first = questions[0].id
        partial = tmp_path / "partial" / "samples.jsonl"
        partial.parent.mkdir()
        kept = "".join(lines[(first, i)] + "\n" for i in range(3))  # group 2-3 half written, then a torn line
        partial.write_text(kept + lines[(first, 3)][:40])
        server.bodies.clear()
        again = distill(server, questions, tmp_path / "partial", per_request=2)
        assert records(tmp_path / "partial") == records(tmp_path / "whole")
        assert len(repair(partial)) == 10  # every index once: a duplicate would raise
        assert again["usage"]["requests"] == len(server.bodies) == 5  # group 2-3 of the first question again
        assert sum(body.get("n", 1) for body in server.bodies) == 8


@pytest.mark.parametrize("n", ["refuse", "ignore"])
def test_a_server_without_n_falls_back_to_one_sample_per_request(questions, tmp_path, caplog, n):
    with TeacherServer() as server:
        distill(server, questions, tmp_path / "single", per_request=1)
    with TeacherServer(n=n) as server, caplog.at_level(logging.WARNING, logger="specialight.teacher.backends"):
        summary = distill(server, questions, tmp_path / "fallback", per_request=3)
        asked = [body.get("n", 1) for body in server.bodies]
    assert unnamed(tmp_path / "fallback") == unnamed(tmp_path / "single")
    warnings = [r.getMessage() for r in caplog.records if "samples per request" in r.getMessage()]
    assert len(warnings) == 1 and "asking one sample per request instead" in warnings[0]
    assert asked.count(1) == 10 and 1 <= len(asked) - 10 <= 2  # one refused try per request in flight at most
    assert summary["usage"]["prompt_tokens"] == PROMPT_TOKENS * summary["usage"]["requests"]


def test_distill_command_takes_samples_per_request(data_dir, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(TEMPLATE)
    with TeacherServer() as server:
        args = ["distill", "--teacher", "openai:fake", "--base-url", server.base_url, "--prompt", str(prompt)]
        args += ["--samples-per-request", "4", "--num-samples", "4", "--limit", "2", "--data-dir", str(data_dir)]
        assert cli_main([*args, "--out", str(tmp_path / "run")]) == 0
        assert [body["n"] for body in server.bodies] == [4, 4]
    brief = json.loads(capsys.readouterr().out)
    assert brief["samples"] == 8 and brief["usage"]["requests"] == 2


class Busy(Loopback):
    """Answers the first request with ``status`` and ``headers``, every later one with a completion."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.first = True
        super().__init__(lambda body: self.answer(body, status, headers))

    def answer(self, body: dict, status: int, headers: dict[str, str]) -> Answer:
        first, self.first = self.first, False
        if first:
            return status, headers, {"error": {"message": "slow down", "type": "rate_limit"}}
        return completions_answer(body["model"], [choice(body["seed"], 0)])


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The openai client's waits between tries, recorded instead of slept, its clock stopped at `NOW`."""
    import openai._base_client

    recorded: list[float] = []
    monkeypatch.setattr(openai._base_client, "time", SimpleNamespace(time=lambda: NOW, sleep=recorded.append))
    return recorded


NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, "1", 1.0),  # seconds
        (503, "2.5", 2.5),
        (429, formatdate(NOW + 5, usegmt=True), 5.0),  # an HTTP date, against the client's clock
    ],
)
def test_the_client_retries_after_what_retry_after_says(waits, status, header, expected):
    with Busy(status, {"Retry-After": header}) as server:
        completion = OpenAITeacher("fake", server.base_url).sample("Q: 1?", 0.5, 8, 2, seed=3)
    assert completion.text == choice(3, 0)["text"] and len(server.bodies) == 2
    assert waits == [expected]


def test_without_retry_after_the_client_backs_off_and_a_refused_wait_is_one_line(waits):
    with Busy(503, {}) as server:
        OpenAITeacher("fake", server.base_url).sample("Q: 1?", 0.5, 8, 2, seed=3)
    assert len(waits) == 1 and 0.375 <= waits[0] <= 0.5  # the client's first backoff, less up to 25% jitter
    with Busy(429, {"Retry-After": "3600"}) as server:  # over the client's two minutes: not retried
        with pytest.raises(TeacherError, match=r"after 1 try \(RateLimitError") as error:
            OpenAITeacher("fake", server.base_url).sample("Q: 1?", 0.5, 8, 2, seed=3)
    assert len(server.bodies) == 1 and "\n" not in str(error.value) and len(waits) == 1
