"""What a teacher gives back: `Completion` (sampled or teacher-forced text with per-token top-k log-probs),
the `Teacher` protocol the sampling loop uses, the `TokenUsage` it reports, and the reading of a completion's
log-probs from an OpenAI-compatible response in either form (legacy ``tokens``/``top_logprobs`` dicts, or
llama.cpp's per-token ``content[i].token/logprob/top_logprobs``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from specialight.data.records import TeacherSample


class TeacherError(RuntimeError):
    """The teacher could not supply what a sample needs (unreachable, no log-probs, bad answer)."""


@dataclass
class Completion:
    """A teacher's continuation of a prompt: its text, tokens and per-token top-k alternatives with
    log-probs. Sampled (`Teacher.sample`), or teacher-forced on a given text (`LocalTeacher.score`, which
    also gives each token's own log-prob in ``token_logprobs``)."""

    text: str
    tokens: list[str]
    top_tokens: list[list[str]]
    top_logprobs: list[list[float]]
    finish_reason: str
    token_logprobs: list[float] | None = None

    def to_sample(
        self, question_id: str, sample_index: int, prompt_id: str, teacher: str, answer: str | None, correct: bool
    ) -> TeacherSample:
        """This completion as the `TeacherSample` record ``(question_id, sample_index)``; alternatives that
        read as one string (two byte pieces both shown as ``\ufffd``) become one, their mass added."""
        tops, values = zip(*map(merge_repeats, self.top_tokens, self.top_logprobs)) if self.tokens else ((), ())
        return TeacherSample(
            question_id=question_id,
            sample_index=sample_index,
            text=self.text,
            tokens=self.tokens,
            top_tokens=list(tops),
            top_logprobs=list(values),
            prompt_hash=prompt_id,
            teacher=teacher,
            finish_reason=self.finish_reason,
            answer=answer,
            correct=correct,
            token_logprobs=self.token_logprobs,
        )


def merge_repeats(names: list[str], values: list[float]) -> tuple[list[str], list[float]]:
    """One position's top-k with each string once, at its first place, holding the log of the summed
    probabilities of its repeats (a sample file may not list a token twice)."""
    if len(set(names)) == len(names):
        return list(names), list(values)
    merged: dict[str, float] = {}
    for name, value in zip(names, values):
        if name in merged:
            high, low = max(merged[name], value), min(merged[name], value)
            value = min(high + math.log1p(math.exp(low - high)), 0.0)
        merged[name] = value
    return list(merged), list(merged.values())


@dataclass
class TokenUsage:
    """Requests and tokens a teacher used, summed over its requests (safe across threads)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one request."""
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def totals(self) -> dict[str, int]:
        """``{"requests", "prompt_tokens", "completion_tokens"}`` so far."""
        with self._lock:
            return {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }


class Teacher(Protocol):
    """What the sampling loop needs from a backend."""

    name: str
    usage: TokenUsage
    concurrent: bool  # whether several requests may be in flight at once

    def sample(self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int) -> Completion: ...

    def sample_many(
        self, prompt: str, temperature: float, max_tokens: int, top_k: int, seed: int, n: int
    ) -> list[Completion] | None: ...


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
