"""A local transformers model as the teacher: per-position top-k log-probs, teacher-forced.

`LocalTeacher.score` runs a given text (for example a gold GSM8K rationale) after its prompt and records,
at every position of the text, the token and the model's top-k alternatives with log-probs: the
distribution a local teacher supplies for human-written chains of thought.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from specialight.align.markers import surface, tokenizer_scheme
from specialight.data.records import TeacherSample


def prompt_hash(prompt: str) -> str:
    """A short stable hash of a prompt (recorded with every sample)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass
class ScoredText:
    """Teacher-forced top-k of one text: ``tokens[i]`` and its ``top_tokens[i]``/``top_logprobs[i]``."""

    tokens: list[str]
    top_tokens: list[list[str]]
    top_logprobs: list[list[float]]


class LocalTeacher:
    """A causal LM from transformers used as a teacher on CPU or GPU."""

    def __init__(self, model, tokenizer, name: str = "local") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.scheme = tokenizer_scheme(tokenizer)

    def _surface(self, token_id: int) -> str:
        return surface(self.tokenizer.convert_ids_to_tokens(int(token_id)), self.scheme)

    @torch.inference_mode()
    def score(self, prompt: str, text: str, top_k: int = 5) -> ScoredText:
        """Top-k log-probs at every token of ``text`` when it follows ``prompt``."""
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        text_ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not text_ids:
            raise ValueError("cannot score an empty text")
        bos = [self.tokenizer.bos_token_id] if not prompt_ids and self.tokenizer.bos_token_id is not None else []
        context = bos + prompt_ids
        if not context:
            raise ValueError("scoring needs a prompt or a BOS token before the text")
        ids = torch.tensor([context + text_ids], device=self.model.device)
        logits = self.model(ids).logits[0, len(context) - 1 : -1].float()  # [len(text_ids), vocab]
        logprobs = torch.log_softmax(logits, dim=-1)
        top = logprobs.topk(top_k, dim=-1)
        return ScoredText(
            tokens=[self._surface(i) for i in text_ids],
            top_tokens=[[self._surface(i) for i in row] for row in top.indices.tolist()],
            top_logprobs=top.values.tolist(),
        )

    def score_sample(
        self, question_id: str, prompt: str, text: str, answer: str | None, top_k: int = 5
    ) -> TeacherSample:
        """`score` as a `TeacherSample` record (sample index 0, finish reason ``scored``)."""
        scored = self.score(prompt, text, top_k)
        return TeacherSample(
            question_id=question_id,
            sample_index=0,
            text="".join(scored.tokens),
            tokens=scored.tokens,
            top_tokens=scored.top_tokens,
            top_logprobs=scored.top_logprobs,
            prompt_hash=prompt_hash(prompt),
            teacher=self.name,
            finish_reason="scored",
            answer=answer,
            correct=True,
        )
