"""Fitting prompts into a model's context: never index past the position embeddings.

A model with learned absolute positions (GPT-2's ``n_positions``, ``max_position_embeddings`` elsewhere)
cannot read past its last position. A decoder-only model must hold prompt and generated tokens, so a
prompt gets ``context - max_new_tokens`` tokens; an encoder-decoder model with such a limit gives it to the
encoder alone. T5 has relative positions and names no limit: its prompts are never shortened (the
paper fed FlanT5 its prompts whole).

The rule for a prompt over its budget: drop whole leading demonstrations, one at a time, until it fits;
with every demonstration gone and still too long, keep its last ``budget`` tokens (cut the left edge,
`generate` does it on the token ids), so the question and the answer cue always survive.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from specialight.data.formats import render
from specialight.evaluation.generation import context_length
from specialight.evaluation.suites import EvalItem

__all__ = ["FittedPrompt", "context_length", "fit_prompt", "prompt_budget"]


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt as it will be run: its text, the token cap `generate` applies from the left (None: no
    cut), how many leading demonstrations were dropped, and whether it was shortened at all."""

    text: str
    max_tokens: int | None = None
    dropped_demonstrations: int = 0

    @property
    def shortened(self) -> bool:
        return self.dropped_demonstrations > 0 or self.max_tokens is not None


def prompt_budget(item: EvalItem, context: int | None, encoder_decoder: bool) -> int | None:
    """Tokens the prompt of ``item`` may take (None: any number)."""
    if context is None:
        return None
    if item.max_new_tokens >= context:
        raise ValueError(
            f"{item.suite}: a generation budget of {item.max_new_tokens} tokens does not fit the model's "
            f"context of {context} positions; lower max_new_tokens"
        )
    return context if encoder_decoder else context - item.max_new_tokens


@lru_cache(maxsize=4096)
def _demonstration_tokens(tokenizer, demonstration: str, newline: str | None) -> int:
    return len(tokenizer.encode(render(demonstration + "\n\n", newline), add_special_tokens=False))


def fit_prompt(item: EvalItem, tokenizer, context: int | None, encoder_decoder: bool = False) -> FittedPrompt:
    """``item``'s prompt within its budget by the module's rule (token counts as `generate` encodes).

        Dropping a demonstration is first estimated to save its own token count (cached per demonstration),
        then the prompt is encoded again to check (and once more to confirm one demonstration fewer would not
    fit), so a shortened prompt costs about three encodings."""
    budget = prompt_budget(item, context, encoder_decoder)
    text = item.prompt
    if budget is None:
        return FittedPrompt(text)
    length = len(tokenizer.encode(text, add_special_tokens=True))
    dropped = 0
    while length > budget and dropped < len(item.demonstrations):
        estimate = length
        while estimate > budget and dropped < len(item.demonstrations):
            estimate -= _demonstration_tokens(tokenizer, item.demonstrations[dropped], item.newline)
            dropped += 1
        text = item.prompt_without(dropped)
        length = len(tokenizer.encode(text, add_special_tokens=True))
    while 0 < dropped and length <= budget:  # the estimate may overshoot by a token: keep what fits
        fuller = item.prompt_without(dropped - 1)
        fuller_length = len(tokenizer.encode(fuller, add_special_tokens=True))
        if fuller_length > budget:
            break
        text, length, dropped = fuller, fuller_length, dropped - 1
    return FittedPrompt(text, budget if length > budget else None, dropped)
