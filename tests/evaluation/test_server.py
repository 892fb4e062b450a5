"""Evaluation through an OpenAI-compatible server: a loopback server that answers /v1/completions with the
tiny GPT-2's own greedy `generate` (so its completions must equal in-process evaluation's), then the real
llama-server serving the SmolLM2 GGUF (skipped, or failed under SPECIALIGHT_REQUIRE_LLAMA_SERVER=1, when it
is not built)."""

import json
import threading
from pathlib import Path

import pytest

from specialight.cli import cli_main
from specialight.evaluation.evaluator import Evaluator
from specialight.evaluation.generation import generate
from specialight.evaluation.server import ServerCompleter
from specialight.evaluation.settings import EvalSettings
from specialight.teacher.backends import TeacherError
from tests.loopback import Answer, Loopback, completions_answer
from tests.teacher.test_llama_server import free_port, running_server

SUITES = ["gsm8k_dev", "bbh_cot"]


class ModelServer(Loopback):
    """/v1/completions on loopback from a model in this process; fails the first ``failures`` requests
    with 503 and records every prompt it is asked."""

    def __init__(self, model, tokenizer, failures: int = 0) -> None:
        self.model, self.tokenizer, self.failures = model, tokenizer, failures
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        super().__init__(self.answer)

    def answer(self, body: dict) -> Answer:
        with self.lock:
            failing = self.failures > 0
            self.failures -= failing
            if failing:
                return 503, {}, None
            self.prompts.append(body["prompt"])
            text = generate(self.model, self.tokenizer, [body["prompt"]], body["max_tokens"], progress=False)[0]
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return completions_answer(body["model"], [choice])


def settings(data_dir) -> EvalSettings:
    return EvalSettings(suites=SUITES, limit=2, bbh_tasks=["navigate"], max_new_tokens=10, data_dir=str(data_dir))


@pytest.mark.slow
def test_server_evaluation_equals_in_process_retries_and_resumes(gpt2, data_dir, tmp_path):
    model, tokenizer = gpt2
    local = Evaluator(model, tokenizer, settings(data_dir)).run(tmp_path / "local", progress=False)
    server = ModelServer(model, tokenizer, failures=2)
    try:
        completer = ServerCompleter("tiny", server.base_url, tmp_path / "served", concurrency=3)
        evaluator = Evaluator(None, tokenizer, settings(data_dir), completer, model.config)
        served = evaluator.run(tmp_path / "served", progress=False)
        assert served.summary() == local.summary()
        assert server.failures == 0 and len(server.prompts) == 4  # two 503s retried, each example asked once
        for family in ("gsm8k_dev", "bbh_cot"):
            mine = (tmp_path / "local" / f"{family}.jsonl").read_text()
            assert (tmp_path / "served" / f"{family}.jsonl").read_text() == mine

        saved = tmp_path / "served" / "completions" / "gsm8k_dev.jsonl"
        lines = saved.read_text().splitlines(keepends=True)
        saved.write_text(lines[0] + lines[1][:7])  # a crash mid-write: one whole line, one torn
        again = Evaluator(None, tokenizer, settings(data_dir), completer, model.config).run(progress=False)
        assert again.summary() == local.summary()
        assert len(server.prompts) == 5  # only the torn example was asked again
        assert len(saved.read_text().splitlines()) == 2
    finally:
        server.close()


@pytest.mark.slow
def test_an_unreachable_server_fails_after_its_retries(gpt2, data_dir):
    model, tokenizer = gpt2
    completer = ServerCompleter("tiny", f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    evaluator = Evaluator(None, tokenizer, settings(data_dir), completer, model.config)
    with pytest.raises(TeacherError, match=r"after 2 tries .*check --base-url"):
        evaluator.run(progress=False)


@pytest.fixture(scope="module")
def llama_server():
    yield from running_server()


@pytest.mark.slow
def test_evaluate_command_against_llama_server_is_resumable(llama_server, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    command = [
        "evaluate",
        "--base_url",
        llama_server.base_url,
        "--served_model",
        "smollm2",
        "--suites",
        "[multiarith_dev]",
        "--limit",
        "3",
        "--max_new_tokens",
        "48",
        "--data_dir",
        str(data_dir),
        "--out",
        str(out),
    ]
    assert cli_main(command) == 0
    assert "multiarith_dev" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"]["multiarith_dev"] == 3
    saved = [json.loads(line) for line in (out / "completions" / "multiarith_dev.jsonl").read_text().splitlines()]
    assert len(saved) == 3 and all(row["completion"] and "Q:" not in row["completion"] for row in saved)
    records = [json.loads(line) for line in (out / "multiarith_dev.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in records] == [
        {r["id"]: r["completion"] for r in saved}[record["id"]] for record in records
    ]
    llama_server.stop()  # a rerun with everything on disk needs no server
    try:
        assert cli_main(command) == 0
    finally:
        llama_server.start()
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len(Path(out / "completions" / "multiarith_dev.jsonl").read_text().splitlines()) == 3
