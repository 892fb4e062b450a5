"""The HTTP teacher: `OpenAITeacher`, a model behind an OpenAI-compatible server.

It talks to any such server (a hosted API, vLLM, llama.cpp's ``llama-server``) through the official
``openai`` client, on ``/v1/completions`` (``logprobs=k``) or ``/v1/chat/completions`` (``logprobs`` +
``top_logprobs=k``), and reads both log-prob forms (`specialight.teacher.completion`). The API key is read
from an environment variable only and never stored. Failures that may pass (408, 409, 429, 5xx, timeouts,
refused connections) are retried by the ``openai`` client itself (``max_retries``): after the server's
``Retry-After`` where it asks for at most two minutes, else with exponential backoff and jitter (0.5 s
doubling to 8 s); after the last try the error is one line naming the server and the setting to check.
`OpenAITeacher.sample_many` asks for ``n`` choices in one request, so the prompt is sent and billed once; a
server that refuses ``n > 1`` (llama-server answers 400) or returns fewer choices is warned about once and
then asked one sample per request. Every response's ``usage`` adds to the teacher's `TokenUsage`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from specialight.data.stops import TEACHER_STOPS, cut_at_stop, cut_tokens_at_stop
from specialight.teacher.completion import (
    Completion,
    TeacherError,
    TokenUsage,
    parse_chat_logprobs,
    parse_completion_logprobs,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRIED = (408, 409, 429)  # besides 5xx: the statuses the openai client retries
REFUSALS = (400, 422)  # what servers answer to a request field they do not support (llama-server: n > 1)


def _tries(error: Exception, max_retries: int) -> int:
    """How many times the openai client sent the request that failed with ``error`` (it numbers its
    retries in a header; it gives up early where ``Retry-After`` asks for more than two minutes)."""
    request = getattr(error, "request", None)
    try:
        return int(request.headers["x-stainless-retry-count"]) + 1
    except (AttributeError, KeyError, TypeError, ValueError):
        return max_retries + 1


class OpenAITeacher:
    """A model behind an OpenAI-compatible HTTP API.

    Args:
        model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8080/v1`` or ``https://api.openai.com/v1``.
        endpoint: ``completions`` or ``chat``.
        api_key_env: the environment variable holding the key (unset: no key, for local servers).
        timeout: seconds per request.
        max_retries: tries after the first, on 408, 409, 429, 5xx, timeouts and refused connections (the
            ``openai`` client's own retries, honouring ``Retry-After``).
        stop: stop strings (default `specialight.data.stops.TEACHER_STOPS`).
    """

    concurrent = True

    def __init__(
        self,
        model: str,
        base_url: str,
        endpoint: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 6,
        stop: list[str] | None = None,
    ) -> None:
        import openai

        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        key = os.environ.get(api_key_env)
        self.client = openai.OpenAI(
            base_url=base_url, api_key=key or "unused", timeout=timeout, max_retries=max_retries
        )
        self.name = f"{model}@{base_url}"
        self.model = model
        self.base_url = base_url
        self.endpoint = endpoint
        self.max_retries = max_retries
        self.stop = list(stop) if stop is not None else list(TEACHER_STOPS)
        self.usage = TokenUsage()
        self.one_per_request = False  # set once the server refuses n > 1
        self._lock = threading.Lock()
        self._openai = openai

    def _transient(self, error: Exception) -> bool:
        openai = self._openai
        if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError)):
            return True
        return isinstance(error, openai.APIStatusError) and (error.status_code in RETRIED or error.status_code >= 500)

    def _request(
        self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int, n: int = 1
    ) -> dict[str, Any]:
        common = {"model": self.model, "temperature": temperature, "max_tokens": max_tokens, "seed": seed}
        common |= {"stop": self.stop, **({"n": n} if n > 1 else {})}  # n=1 as before: some servers reject n
        if self.endpoint == "chat":
            messages = [{"role": "user", "content": prompt}]
            response = self.client.chat.completions.create(
                messages=messages, logprobs=True, top_logprobs=top_k, **common
            )
        else:
            response = self.client.completions.create(prompt=prompt, logprobs=top_k, **common)
        answer = response.model_dump()
        usage = answer.get("usage") or {}
        self.usage.add(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        return answer

    def call(self, request: Callable[[], T]) -> T:
        """``request()`` (an SDK call, which retries transient failures itself), its failure turned into a
        `TeacherError` of one line (also used by server evaluation)."""
        try:
            return request()
        except self._openai.OpenAIError as error:
            if not self._transient(error):
                raise TeacherError(f"{self.base_url}: {type(error).__name__}: {error}") from error
            tries = _tries(error, self.max_retries)
            raise TeacherError(
                f"could not get a completion from {self.base_url} after {tries} tr{'y' if tries == 1 else 'ies'} "
                f"({type(error).__name__}: {error}); check --base-url and that the server is up"
            ) from error

    def sample(self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int) -> Completion:
        """One completion with its top-k log-probs; retries transient failures."""
        response = self.call(lambda: self._request(prompt, temperature, max_tokens, top_k, seed))
        return self._completion(response["choices"][0], top_k)

    def sample_many(
        self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int, n: int
    ) -> list[Completion] | None:
        """``n`` completions from one request drawn with one ``seed`` (the prompt sent and billed once), in
        choice order; None where the server refuses ``n > 1`` or returns fewer choices: then the caller asks
        one sample per request (warned once; later calls return None without asking)."""
        if self.one_per_request:
            return None
        try:
            choices = self.call(lambda: self._request(prompt, temperature, max_tokens, top_k, seed, n))["choices"]
        except TeacherError as error:
            cause = error.__cause__
            if not isinstance(cause, self._openai.APIStatusError) or cause.status_code not in REFUSALS:
                raise
            self._fall_back(n, f"{cause.status_code}: {cause}")
            return None
        if len(choices) < n:
            self._fall_back(n, f"{len(choices)} choice(s) returned")
            return None
        ordered = sorted(choices, key=lambda choice: choice.get("index") or 0)[:n]
        return [self._completion(choice, top_k) for choice in ordered]

    def _fall_back(self, n: int, reason: str) -> None:
        with self._lock:
            first, self.one_per_request = not self.one_per_request, True
        if first:
            logger.warning(
                "%s does not give %d samples per request (%s); asking one sample per request instead",
                self.base_url,
                n,
                reason,
            )

    def _completion(self, choice: dict[str, Any], top_k: int) -> Completion:
        """One choice of a response, cut at the stop strings, with the top ``top_k`` alternatives."""
        where = f"{self.base_url} ({self.endpoint})"
        if self.endpoint == "chat":
            tokens, tops, values = parse_chat_logprobs(choice.get("logprobs"), where)
            text = (choice.get("message") or {}).get("content") or ""
        else:
            tokens, tops, values = parse_completion_logprobs(choice.get("logprobs"), where)
            text = choice.get("text") or ""
        tokens, tops, values = cut_tokens_at_stop(tokens, tops, values, self.stop)
        return Completion(
            cut_at_stop(text, self.stop),
            tokens,
            [list(t[:top_k]) for t in tops],
            [list(v[:top_k]) for v in values],
            choice.get("finish_reason") or "",
        )
