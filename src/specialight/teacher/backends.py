"""Teacher backends: where samples and their per-token top-k log-probs come from.

`OpenAITeacher` talks to any OpenAI-compatible server (a hosted API, vLLM, llama.cpp's ``llama-server``)
through the official ``openai`` client, on ``/v1/completions`` (``logprobs=k``) or ``/v1/chat/completions``
(``logprobs`` + ``top_logprobs=k``). Servers answer completions log-probs in two forms, and both are read:
the legacy OpenAI form (``tokens``, ``token_logprobs``, ``top_logprobs`` as dicts) and the per-token form
that llama.cpp uses (``content[i].token/logprob/top_logprobs``). The API key is read from an environment
variable only and never stored. Failures that may pass (429, 5xx, timeouts, refused connections) are
retried with exponential backoff and jitter; after the last try the error names the server and the
setting to check.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)
STOP = ["\n\nQuestion:", "\n\nQ:"]
T = TypeVar("T")


class TeacherError(RuntimeError):
    """The teacher could not supply what a sample needs (unreachable, no log-probs, bad answer)."""


@dataclass
class Completion:
    """One sampled continuation: its text, tokens and per-token top-k alternatives with log-probs."""

    text: str
    tokens: list[str]
    top_tokens: list[list[str]]
    top_logprobs: list[list[float]]
    finish_reason: str


class Teacher(Protocol):
    """What the sampling loop needs from a backend."""

    name: str

    def sample(self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int) -> Completion: ...


def _top_from_entries(entries: list[dict[str, Any]], where: str) -> tuple[list[str], list[float]]:
    return [e["token"] for e in entries], [float(e["logprob"]) for e in entries]


def parse_completion_logprobs(
    logprobs: dict[str, Any] | None, where: str
) -> tuple[list[str], list[list[str]], list[list[float]]]:
    """Tokens and top-k of a ``/v1/completions`` choice, from either log-prob form."""
    if not logprobs:
        raise TeacherError(f"{where}: the server returned no log-probs (send logprobs=k on /v1/completions)")
    if logprobs.get("content"):
        content = logprobs["content"]
        tokens = [entry["token"] for entry in content]
        tops = [_top_from_entries(entry.get("top_logprobs") or [], where) for entry in content]
    elif logprobs.get("tokens") is not None:
        tokens = list(logprobs["tokens"])
        raw = logprobs.get("top_logprobs") or []
        tops = [(list(d), [float(v) for v in d.values()]) if d else ([], []) for d in raw]
    else:
        raise TeacherError(f"{where}: log-probs in an unknown form (keys {sorted(logprobs)})")
    if len(tops) != len(tokens) or any(not names for names, _ in tops):
        raise TeacherError(f"{where}: the server returned tokens without top-k alternatives (is logprobs > 0?)")
    return tokens, [n for n, _ in tops], [v for _, v in tops]


def parse_chat_logprobs(
    logprobs: dict[str, Any] | None, where: str
) -> tuple[list[str], list[list[str]], list[list[float]]]:
    """Tokens and top-k of a ``/v1/chat/completions`` choice."""
    content = (logprobs or {}).get("content")
    if not content:
        raise TeacherError(f"{where}: the server returned no log-probs (send logprobs=true and top_logprobs=k)")
    tokens = [entry["token"] for entry in content]
    tops = [_top_from_entries(entry.get("top_logprobs") or [], where) for entry in content]
    if any(not names for names, _ in tops):
        raise TeacherError(f"{where}: tokens without top_logprobs (send top_logprobs=k)")
    return tokens, [n for n, _ in tops], [v for _, v in tops]


def cut_tokens_at_stop(tokens: list[str], tops: list[list[str]], values: list[list[float]], stop: list[str]):
    """Keep the tokens that start before the first stop string (servers may return the stop's tokens)."""
    text = "".join(tokens)
    found = [text.find(s) for s in stop if s in text]
    if not found:
        return tokens, tops, values
    cut, start = min(found), 0
    for index, token in enumerate(tokens):
        if start >= cut:
            return tokens[:index], tops[:index], values[:index]
        start += len(token)
    return tokens, tops, values


class OpenAITeacher:
    """A model behind an OpenAI-compatible HTTP API.

    Args:
        model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8080/v1`` or ``https://api.openai.com/v1``.
        endpoint: ``completions`` or ``chat``.
        api_key_env: the environment variable holding the key (unset: no key, for local servers).
        timeout: seconds per request.
        max_retries: tries after the first, on 429, 5xx, timeouts and refused connections.
        backoff: first wait in seconds; doubles each try, with up to 50% jitter, capped at 60 s.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        endpoint: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        stop: list[str] | None = None,
    ) -> None:
        import openai

        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        key = os.environ.get(api_key_env)
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "unused", timeout=timeout, max_retries=0)
        self.name = f"{model}@{base_url}"
        self.model = model
        self.base_url = base_url
        self.endpoint = endpoint
        self.max_retries = max_retries
        self.backoff = backoff
        self.stop = list(stop) if stop is not None else list(STOP)
        self._openai = openai

    def _transient(self, error: Exception) -> bool:
        openai = self._openai
        if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
            return True
        return isinstance(error, openai.APIStatusError) and error.status_code >= 500

    def _request(self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int) -> dict[str, Any]:
        if self.endpoint == "chat":
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=temperature,
                max_tokens=max_tokens,
                logprobs=True,
                top_logprobs=top_k,
                seed=seed,
                stop=self.stop,
            )
        else:
            response = self.client.completions.create(
                model=self.model,
                prompt=prompt,
                temperature=temperature,
                max_tokens=max_tokens,
                logprobs=top_k,
                seed=seed,
                stop=self.stop,
            )
        return response.model_dump()

    def retrying(self, request: Callable[[], T]) -> T:
        """``request()``, retried with backoff on transient failures (also used by server evaluation)."""
        attempt = 0
        while True:
            try:
                return request()
            except Exception as error:  # the client raises many types; only transient ones are retried
                if not self._transient(error):
                    raise TeacherError(f"{self.base_url}: {type(error).__name__}: {error}") from error
                if attempt == self.max_retries:
                    raise TeacherError(
                        f"could not get a completion from {self.base_url} after {attempt + 1} tries "
                        f"({type(error).__name__}: {error}); check --base-url and that the server is up"
                    ) from error
                wait = min(self.backoff * 2**attempt, 60.0) * (1 + 0.5 * random.random())
                logger.warning("%s: %s; retrying in %.1f s", self.base_url, type(error).__name__, wait)
                time.sleep(wait)
                attempt += 1

    def sample(self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int) -> Completion:
        """One completion with its top-k log-probs; retries transient failures."""
        response = self.retrying(lambda: self._request(prompt, temperature, max_tokens, top_k, seed))
        choice = response["choices"][0]
        where = f"{self.base_url} ({self.endpoint})"
        if self.endpoint == "chat":
            tokens, tops, values = parse_chat_logprobs(choice.get("logprobs"), where)
        else:
            tokens, tops, values = parse_completion_logprobs(choice.get("logprobs"), where)
        tokens, tops, values = cut_tokens_at_stop(tokens, tops, values, self.stop)
        if self.endpoint == "chat":
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        for stop in self.stop:
            text = text.split(stop, 1)[0]
        return Completion(
            text,
            tokens,
            [list(t[:top_k]) for t in tops],
            [list(v[:top_k]) for v in values],
            choice.get("finish_reason") or "",
        )
