"""`ServerScorer`: teacher-forced top-k through a server, in both of the ways servers offer it, against a
loopback server answering as vLLM (``echo``) or llama.cpp (``forced``) would, and against a real
llama-server compared with the same model scoring in process."""

from __future__ import annotations

import json
import math
import re

import pytest

from specialight.teacher.completion import TeacherError
from specialight.teacher.server_scoring import ServerScorer
from tests.loopback import Loopback, completions_answer

PROMPT = "Q: 2+2?\nA:"
TEXT = " 2 plus 2 is 4."
PIECES = [" 2", " plus", " 2", " is", " 4", "."]


def vllm_answer(body: dict):
    """``/v1/completions`` with echo, legacy log-prob form: the prompt's tokens, then the text's."""
    if not body.get("echo"):
        return 400, {}, {"error": {"message": "expected echo"}}
    pieces = ["Q", ":", " 2", "+", "2", "?", "\n", "A", ":"] + PIECES
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    tops = [None] + [{p: -0.1, "x": -2.5} for p in pieces[1:]]
    logprobs = {"tokens": pieces, "token_logprobs": [None] + [-0.1] * (len(pieces) - 1)}
    logprobs |= {"top_logprobs": tops, "text_offset": offsets}
    return completions_answer("m", [{"index": 0, "text": body["prompt"], "logprobs": logprobs}])


def llama_cpp_answer(body: dict):
    """llama-server: refuses echo; ``/tokenize`` and a token-id grammar on ``/completion``."""
    if body.get("echo"):
        return 500, {}, {"error": {"code": 500, "message": "Only no echo is supported", "type": "server_error"}}
    if "content" in body:
        return 200, {}, {"tokens": [100 + i for i in range(len(PIECES))]}
    ids = [int(part.strip("<[]>")) for part in body["grammar"].removeprefix("root ::= ").split()]
    entries = [
        {
            "id": i,
            "token": PIECES[i - 100],
            "logprob": -0.2,
            "top_logprobs": [
                {"id": i, "token": PIECES[i - 100], "logprob": -0.2},
                {"id": 7, "token": " x", "logprob": -1.9},
            ],
        }
        for i in ids
    ]
    return 200, {}, {"content": TEXT, "completion_probabilities": entries}


@pytest.mark.parametrize(("answer", "how"), [(vllm_answer, "echo"), (llama_cpp_answer, "forced")])
def test_both_ways_give_the_texts_tokens_and_top_k(answer, how):
    with Loopback(answer) as server:
        scorer = ServerScorer(server.base_url, "m")
        scored = scorer.score(PROMPT, TEXT, top_k=2)
        assert scorer.how == how
        assert scored.tokens == PIECES and scored.text == TEXT
        assert [top[0] for top in scored.top_tokens] == PIECES
        assert all(len(top) == 2 and top[0] > top[1] for top in scored.top_logprobs)
        assert scored.finish_reason == "scored" and len(scored.token_logprobs) == len(PIECES)


def test_the_forced_way_sends_the_texts_ids_as_a_grammar():
    with Loopback(llama_cpp_answer) as server:
        ServerScorer(server.base_url, "m", how="forced").score(PROMPT, TEXT, top_k=2)
        completion = server.bodies[-1]
        assert completion["grammar"] == "root ::= " + " ".join(f"<[{100 + i}]>" for i in range(len(PIECES)))
        assert completion["n_predict"] == len(PIECES) and completion["n_probs"] == 2
        assert completion["prompt"] == PROMPT and completion["post_sampling_probs"] is False


def test_a_server_that_cannot_score_is_refused_in_one_line():
    def plain(body):  # samples, but neither echoes nor tokenizes
        return 400, {}, {"error": {"message": "unsupported parameter"}}

    with Loopback(plain) as server:
        with pytest.raises(TeacherError) as caught:
            ServerScorer(server.base_url, "m").score(PROMPT, TEXT)
    message = str(caught.value)
    assert "\n" not in message and "cannot score a given text" in message
    assert "echo:" in message and "forced:" in message


def test_dropped_entries_are_refused_not_misaligned():
    def dropping(body):
        status, headers, payload = llama_cpp_answer(body)
        if payload and "completion_probabilities" in payload:
            payload["completion_probabilities"].pop(2)
        return status, headers, payload

    with Loopback(dropping) as server:
        with pytest.raises(TeacherError, match="5 of the text's 6 tokens"):
            ServerScorer(server.base_url, "m", how="forced").score(PROMPT, TEXT)


def word_echo(body: dict):
    """``/v1/completions`` with echo for any prompt: words (with their leading space) as tokens."""
    pieces = re.findall(r"\s*\S+|\s+", body["prompt"])
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    tops = [{p: -0.2, " and": -2.0} if p != " and" else {p: -0.2, " or": -2.0} for p in pieces]
    logprobs = {"tokens": pieces, "token_logprobs": [-0.2] * len(pieces), "top_logprobs": tops, "text_offset": offsets}
    return completions_answer("m", [{"index": 0, "text": body["prompt"], "logprobs": logprobs}])


@pytest.mark.slow
def test_distill_score_through_a_server_writes_samples_that_align(tmp_path, data_dir, t5_tokenizer):
    from specialight.cli import cli_main
    from tests.conftest import TOKENIZERS

    with Loopback(word_echo) as server:
        args = ["distill", "--teacher", "openai:m", "--base_url", server.base_url, "--score", "--limit", "2"]
        assert cli_main([*args, "--out", str(tmp_path / "scored"), "--data_dir", str(data_dir)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "scored" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["finish_reason"] for r in rows} == {"scored"}
    assert all("The answer is" in r["text"] and len(r["tokens"]) == len(r["top_tokens"]) for r in rows)
    aligned = ["align", "--samples", str(tmp_path / "scored"), "--out", str(tmp_path / "aligned")]
    assert cli_main([*aligned, "--student_tokenizer", str(TOKENIZERS / "t5"), "--data_dir", str(data_dir)]) == 0
    assert (tmp_path / "aligned" / "targets.arrow").is_file()


@pytest.fixture(scope="module")
def llama():
    from tests.teacher.test_llama_server import running_server

    yield from running_server()


@pytest.mark.slow
def test_llama_server_scores_as_the_same_model_in_process(llama):
    """The forced way on a real llama-server: the same tokens, and log-probs within quantization noise of
    the in-process model (the GGUF's Q4_1 weights, dequantized exactly; fp32 here, llama.cpp's kernels there)."""
    from specialight.teacher.local import LocalTeacher

    local = LocalTeacher.from_pretrained("smollm2-135m-instruct")
    prompt, text = (
        "Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer:",
        " 3 + 4 = 7. The answer is 7.",
    )
    ours = local.score(prompt, text, top_k=5)
    theirs = ServerScorer(llama.base_url, "smollm2", how="forced").score(prompt, text, top_k=5)
    assert theirs.tokens == ours.tokens
    # llama.cpp multiplies Q4_1 weights by activations quantized to 8 bits: log-prob gaps of ~0.02 nats, larger
    # on unlikely tokens (measured: 0.25 at p = 0.15 against 0.19 in process), so compare probabilities
    gaps = [abs(a - b) for a, b in zip(theirs.token_logprobs, ours.token_logprobs)]
    assert sum(gaps) / len(gaps) < 0.05, gaps
    assert max(abs(math.exp(a) - math.exp(b)) for a, b in zip(theirs.token_logprobs, ours.token_logprobs)) < 0.06

    # near-ties swap places under that noise (measured: top-1 the same at 13 of 15 positions); a token that
    # is part of a character reads "\ufffd" in process and "" from the server
    def same(piece: str) -> str:
        return piece.replace("\ufffd", "")

    pairs = [([same(p) for p in t], [same(p) for p in o]) for t, o in zip(theirs.top_tokens, ours.top_tokens)]
    assert all(o[0] in t for t, o in pairs)
    assert sum(t[0] == o[0] for t, o in pairs) >= 0.8 * len(pairs)
    assert all(math.isfinite(v) for row in theirs.top_logprobs for v in row)
