"""Batched greedy generation for encoder-decoder and decoder-only students.

Prompts are sorted by length (longest first, so the first batch shows the peak memory), cut into batches,
left-padded for decoder-only models, and decoded greedily with the KV cache until EOS, the start of a
next question (``Q:``) or ``max_new_tokens``. Completions come back in the prompts' order, cut at the
stop string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

STOP = "Q:"


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
) -> list[str]:
    """Greedy completions of ``prompts`` (a per-prompt ``max_new_tokens`` list is allowed).

    ``context`` wraps every forward pass (Lightning's precision context, for bf16 autocast).
    """
    if not prompts:
        return []
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    encoded = [tokenizer.encode(p, add_special_tokens=True) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), -limits[i]))
    completions: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=len(prompts), desc=description, unit="ex", disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
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
