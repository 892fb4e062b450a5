"""Batched greedy generation for encoder-decoder and decoder-only students.

Prompts are grouped by generation budget and sorted by length (longest first, so the first batch shows
the peak memory), cut into batches that never mix budgets, left-padded for decoder-only models, and
decoded greedily with the KV cache until EOS, the start of a next question (``Q:``) or
``max_new_tokens``. Completions come back in the prompts' order, cut at the stop string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

STOP = "Q:"
POSITION_LIMITS = ("n_positions", "max_position_embeddings")


def context_length(config) -> int | None:
    """The most positions a model's config allows (None: no hard limit, as T5's relative positions)."""
    for name in POSITION_LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cut_at_stop(text: str, stop: str = STOP) -> str:
    """The completion up to (not including) the first stop string."""
    position = text.find(stop)
    return text if position < 0 else text[:position]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int | list[int] = 256,
    batch_size: int = 16,
    stop: str = STOP,
    progress: bool = True,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    description: str = "generate",
    max_prompt_tokens: list[int | None] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts`` (a per-prompt ``max_new_tokens`` list is allowed).

    ``context`` wraps every forward pass (Lightning's precision context, for bf16 autocast).
    ``max_prompt_tokens`` keeps at most that many of a prompt's last tokens (its left edge is cut; a
    leading BOS is kept). A decoder-only prompt whose tokens plus budget exceed the model's positions
    raises ValueError rather than index past the position embeddings (`specialight.evaluation.context`
    fits prompts beforehand).
    """
    if not prompts:
        return []
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    caps = max_prompt_tokens or [None] * len(prompts)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    encoded = [
        _cut_left(tokenizer.encode(p, add_special_tokens=True), cap, tokenizer.bos_token_id)
        for p, cap in zip(prompts, caps, strict=True)
    ]
    _check_positions(model.config, encoded, limits, encoder_decoder)
    order = sorted(range(len(prompts)), key=lambda i: (-limits[i], -len(encoded[i])))
    batches = [
        rows
        for budget in sorted(set(limits), reverse=True)
        for group in [[i for i in order if limits[i] == budget]]
        for rows in (group[s : s + batch_size] for s in range(0, len(group), batch_size))
    ]
    completions: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=len(prompts), desc=description, unit="ex", disable=not progress, leave=False)
    try:
        for rows in batches:
            width = max(len(encoded[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids = encoded[i]
                if encoder_decoder:
                    input_ids[r, : len(ids)], attention[r, : len(ids)] = torch.tensor(ids), 1
                else:
                    input_ids[r, width - len(ids) :], attention[r, width - len(ids) :] = torch.tensor(ids), 1
            with context():
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max(limits[i] for i in rows),
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                    stop_strings=[stop],
                    tokenizer=tokenizer,
                )
            new = output if encoder_decoder else output[:, width:]
            for r, i in enumerate(rows):
                ids = new[r].tolist()[: limits[i] + (1 if encoder_decoder else 0)]
                completions[i] = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return completions


def _cut_left(ids: list[int], cap: int | None, bos: int | None) -> list[int]:
    if cap is None or len(ids) <= cap:
        return ids
    if bos is not None and ids and ids[0] == bos:
        return [bos, *ids[len(ids) - cap + 1 :]]
    return ids[len(ids) - cap :]


def _check_positions(config, encoded: list[list[int]], limits: list[int], encoder_decoder: bool) -> None:
    positions = context_length(config)
    if positions is None:
        return
    for ids, limit in zip(encoded, limits, strict=True):
        needed = max(len(ids), limit) if encoder_decoder else len(ids) + limit
        if needed > positions:
            raise ValueError(
                f"a prompt of {len(ids)} tokens with {limit} new tokens needs {needed} positions; the model has "
                f"{positions} (fit prompts with specialight.evaluation.context.fit_prompt)"
            )
