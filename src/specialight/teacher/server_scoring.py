"""A served teacher scoring a given text teacher-forced: the top-k log-probs at every token of ``text`` after
``prompt``, from an OpenAI-compatible server rather than a model in process (`LocalTeacher.score`).

Servers offer this in one of two ways, and `ServerScorer` finds out which (``how="auto"``):

- ``echo``: ``/v1/completions`` with ``echo: true``, ``logprobs: k``, ``max_tokens: 0`` returns the prompt's
  own tokens with their top-k (the legacy OpenAI form; vLLM, and OpenAI's older models). The tokens whose
  ``text_offset`` falls inside ``text`` are kept.
- ``forced`` (llama.cpp's llama-server, which refuses ``echo``): the server tokenizes ``text``
  (``/tokenize``), then ``/completion`` generates exactly those token ids under a grammar
  ``root ::= <[id1]> <[id2]> ...`` with ``n_probs: k``. llama-server reads each position's log-probs from
  the raw logits before sampling and grammar, so the forced token's entry is the model's own
  ``log p(token | prefix)`` and its top-k the model's alternatives. It costs what generating the text
  costs (one decode step per token; the prompt is cached across texts that share it).

A server that can do neither is refused with one line naming what is missing.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Literal

from specialight.data.records import TeacherSample, prompt_hash
from specialight.teacher.completion import Completion, TeacherError, TokenUsage

logger = logging.getLogger(__name__)
How = Literal["auto", "echo", "forced"]


class ServerScorer:
    """Teacher-forced scoring through an OpenAI-compatible server (see the module docstring).

    Args:
        base_url: the server's OpenAI base URL (``http://host:port/v1``).
        model: the model name to send (llama-server ignores it).
        api_key: sent as a bearer token where given.
        how: ``auto`` (probe once: ``echo``, then ``forced``), ``echo`` or ``forced``.
        timeout: seconds per request.
    """

    concurrent = True

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, how: How = "auto", timeout: float = 120.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = self.base_url.removesuffix("/v1")
        self.model = model
        self.name = f"openai:{model}"
        self.how: How = how
        self.usage = TokenUsage()
        self.headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {api_key}"} if api_key else {}
        )
        self.timeout = timeout

    def score(self, prompt: str, text: str, top_k: int = 5) -> Completion:
        """Top-k log-probs at every token of ``text`` when it follows ``prompt`` (finish reason ``scored``)."""
        if not text:
            raise ValueError("cannot score an empty text")
        if self.how == "auto":
            self.how = self._probe(prompt, text, top_k)
            logger.info("%s scores given texts by %s", self.base_url, self.how)
        return self._echo(prompt, text, top_k) if self.how == "echo" else self._forced(prompt, text, top_k)

    def score_sample(
        self, question_id: str, prompt: str, text: str, answer: str | None, top_k: int = 5, prompt_id: str | None = None
    ) -> TeacherSample:
        """`score` as a `TeacherSample` record (sample index 0, finish reason ``scored``)."""
        scored = self.score(prompt, text, top_k)
        return scored.to_sample(question_id, 0, prompt_id or prompt_hash(prompt), self.name, answer, True)

    def _probe(self, prompt: str, text: str, top_k: int) -> How:
        """The first way this server scores a given text; `TeacherError` naming both when neither works."""
        reasons = []
        for how, method in (("echo", self._echo), ("forced", self._forced)):
            try:
                method(prompt, text, top_k)
                return how
            except TeacherError as err:
                reasons.append(f"{how}: {err}")
        raise TeacherError(f"{self.base_url} cannot score a given text ({'; '.join(reasons)})")

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(url, json.dumps(body).encode(), self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise TeacherError(f"{url} answered {err.code}: {_message(err)}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise TeacherError(f"{url}: {type(err).__name__}: {err}") from None

    def _echo(self, prompt: str, text: str, top_k: int) -> Completion:
        """The ``echo`` way: the prompt's own log-probs, the tokens of ``text`` kept by their offsets."""
        body = {"model": self.model, "prompt": prompt + text, "echo": True, "logprobs": top_k, "max_tokens": 0}
        answer = self._post(f"{self.base_url}/completions", body)
        logprobs = (answer.get("choices") or [{}])[0].get("logprobs") or {}
        offsets, tokens = logprobs.get("text_offset"), logprobs.get("tokens")
        if not offsets or not tokens or logprobs.get("top_logprobs") is None:
            raise TeacherError("no prompt log-probs in the answer (needs echo with logprobs, legacy form)")
        start = len(prompt)
        keep = [i for i, offset in enumerate(offsets) if offset >= start and i < len(tokens)]
        tops = [logprobs["top_logprobs"][i] or {} for i in keep]
        if not keep or any(not top for top in tops):
            raise TeacherError("the answer has no top-k alternatives for the text's tokens")
        self.usage.add(len(offsets), 0)
        return Completion(
            text="".join(tokens[i] for i in keep),
            tokens=[tokens[i] for i in keep],
            top_tokens=[list(top) for top in tops],
            top_logprobs=[[float(v) for v in top.values()] for top in tops],
            finish_reason="scored",
            token_logprobs=[min(float(logprobs["token_logprobs"][i]), 0.0) for i in keep],
        )

    def _forced(self, prompt: str, text: str, top_k: int) -> Completion:
        """The ``forced`` way (llama.cpp): generate exactly the text's token ids under a token-id grammar."""
        ids = self._tokenize(text)
        body = {
            "prompt": prompt,
            "grammar": "root ::= " + " ".join(f"<[{i}]>" for i in ids),
            "n_predict": len(ids),
            "n_probs": top_k,
            "temperature": 0.0,
            "cache_prompt": True,
            "post_sampling_probs": False,
        }
        entries = self._post(f"{self.root}/completion", body).get("completion_probabilities") or []
        got = [entry.get("id") for entry in entries]
        if got != ids:
            raise TeacherError(
                f"the server gave log-probs for {len(got)} of the text's {len(ids)} tokens "
                "(llama-server leaves out tokens that end inside a multi-byte character)"
            )
        self.usage.add(0, len(ids))
        tokens = [entry["token"] for entry in entries]
        return Completion(
            text="".join(tokens),
            tokens=tokens,
            top_tokens=[[alt["token"] for alt in entry["top_logprobs"]] for entry in entries],
            top_logprobs=[[float(alt["logprob"]) for alt in entry["top_logprobs"]] for entry in entries],
            finish_reason="scored",
            token_logprobs=[min(float(entry["logprob"]), 0.0) for entry in entries],
        )

    def _tokenize(self, text: str) -> list[int]:
        answer = self._post(f"{self.root}/tokenize", {"content": text, "add_special": False})
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not tokens:
            raise TeacherError("no token ids from /tokenize (the forced way needs llama-server)")
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]


def _message(err: urllib.error.HTTPError) -> str:
    """A server's error message in one line."""
    raw = err.read().decode(errors="replace")
    try:
        error = json.loads(raw).get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        text = raw
    return " ".join(str(text or err.reason).split())[:200]
