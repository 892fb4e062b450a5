"""Batched greedy generation for encoder-decoder and decoder-only students.

Decoder-only models run their own greedy loop over the KV cache, built so that prefill is paid once per
shared text rather than once per question:

* prompts are clustered by their longest shared token prefix (every math question follows the same
  4-shot prompt, every BBH question its task's 3-shot prompt); the prefix's KV cache is computed once per
  cluster and copied into each batch of the cluster, so a question pays prefill only for its own tokens;
* a batch is ``[prefix][left padding][question]``, one generation budget per batch, questions sorted by
  length so padding stays small;
* each step takes the argmax (as ``generate(do_sample=False)``), a row stops at EOS or when the text of its
  last few tokens holds the stop string (``Q:``), and finished rows leave the batch and its cache.

A model whose generation config asks for more than plain greedy decoding (a repetition penalty, banned
words...) and every encoder-decoder model go through ``transformers``' ``generate`` instead (its
``stop_strings`` criterion stops at ``Q:``), batched the same way without a shared prefix. Completions come
back in the prompts' order, cut at the stop string.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from specialight.data.stops import EVALUATION_STOP, cut_at_stop
from specialight.evaluation.cache import reserve

POSITION_LIMITS = ("n_positions", "max_position_embeddings")
MIN_SHARED_PREFIX = 32  # tokens; a shorter common prefix is not worth its own prefill
_GREEDY_DEFAULTS = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
}


def context_length(config) -> int | None:
    """The most positions a model's config allows (None: no hard limit, as T5's relative positions)."""
    for name in POSITION_LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int | list[int] = 256,
    batch_size: int = 16,
    stop: str = EVALUATION_STOP,
    progress: bool = True,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    description: str = "generate",
    max_prompt_tokens: list[int | None] | None = None,
    share_prefix: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts`` (a per-prompt ``max_new_tokens`` list is allowed).

    ``context`` wraps every forward pass (Lightning's precision context, for bf16 autocast).
    ``max_prompt_tokens`` keeps at most that many of a prompt's last tokens (its left edge is cut; a
    leading BOS is kept). A decoder-only prompt whose tokens plus budget exceed the model's positions
    raises ValueError rather than index past the position embeddings (`specialight.evaluation.context`
    fits prompts beforehand). ``share_prefix=False`` gives every prompt its own prefill.
    """
    if not prompts:
        return []
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    caps = max_prompt_tokens or [None] * len(prompts)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    encoded = [
        cut_left(tokenizer.encode(p, add_special_tokens=True), cap, tokenizer.bos_token_id)
        for p, cap in zip(prompts, caps, strict=True)
    ]
    _check_positions(model.config, encoded, limits, encoder_decoder)
    own_loop = not encoder_decoder and _plain_greedy(model)
    minimum = MIN_SHARED_PREFIX if own_loop and share_prefix else None
    completions: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=description, unit="ex", disable=not progress, leave=False)
    decoder = Decoder(model, tokenizer, stop, context)
    try:
        for prefix, group in prefix_clusters(encoded, minimum):
            cache = decoder.prefill(encoded[group[0]][:prefix]) if prefix else None
            for rows in _batches(group, encoded, limits, prefix, batch_size):
                if own_loop:
                    new = decoder.decode([encoded[i] for i in rows], prefix, cache, limits[rows[0]])
                else:
                    new = decoder.hf_generate([encoded[i] for i in rows], limits[rows[0]], encoder_decoder)
                for i, ids in zip(rows, new, strict=True):
                    completions[i] = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
                bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return completions


def prefix_clusters(encoded: list[list[int]], minimum: int | None) -> list[tuple[int, list[int]]]:
    """``(prefix tokens, prompt indices)``: prompts sorted by their tokens, cut where neighbours share
    fewer than ``minimum`` leading tokens (None: one cluster without a prefix). A prefix leaves every
    prompt at least one token of its own, whose logits give the first new token."""
    if minimum is None:
        return [(0, list(range(len(encoded))))]
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    clusters: list[tuple[int, list[int]]] = []
    prefix, members = len(encoded[order[0]]) - 1, [order[0]]
    for previous, index in zip(order, order[1:]):
        shared = min(_common_length(encoded[previous], encoded[index]), len(encoded[index]) - 1, prefix)
        if shared >= minimum:
            prefix, members = shared, [*members, index]
            continue
        clusters.append((prefix if len(members) > 1 else 0, members))
        prefix, members = len(encoded[index]) - 1, [index]
    clusters.append((prefix if len(members) > 1 else 0, members))
    return clusters


def _common_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _batches(group: list[int], encoded: list[list[int]], limits: list[int], prefix: int, size: int):
    """Batches of at most ``size`` prompts with one budget, longest budget first, each sorted by length."""
    order = sorted(group, key=lambda i: (-limits[i], -(len(encoded[i]) - prefix)))
    for budget in sorted({limits[i] for i in group}, reverse=True):
        same = [i for i in order if limits[i] == budget]
        yield from (same[s : s + size] for s in range(0, len(same), size))


class Decoder:
    """Forward passes of one model: prefix prefill, the own greedy loop, and ``transformers.generate``."""

    def __init__(self, model, tokenizer, stop: str, context) -> None:
        self.model, self.tokenizer, self.stop, self.context = model, tokenizer, stop, context
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        self.window = len(stop) + 2  # tokens whose text can hold a stop string that just appeared
        parameters = inspect.signature(model.forward).parameters
        self.keep_one = "logits_to_keep" in parameters
        self.cache_name = "cache" if "cache" in parameters else "past_key_values"  # transformers >= 5.2x: cache

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        """Logits of the last position ``[B, V]`` and the grown cache."""
        extra = {self.cache_name: cache, **({"logits_to_keep": 1} if self.keep_one else {})}
        with self.context():
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **extra,
            )
        return out.logits[:, -1], out[self.cache_name]

    def prefill(self, prefix: list[int]):
        """The KV cache of ``prefix`` (batch of one)."""
        ids = torch.tensor([prefix])
        return self._forward(ids, torch.ones_like(ids), torch.arange(len(prefix))[None], None)[1]

    def decode(self, prompts: list[list[int]], prefix: int, prefix_cache, budget: int) -> list[list[int]]:
        """New tokens of each prompt (at most ``budget``; EOS left out, stop string kept)."""
        width = max(len(p) - prefix for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for r, tokens in enumerate(prompts):
            own = tokens[prefix:]
            ids[r, width - len(own) :] = torch.tensor(own)
            mask[r, prefix + width - len(own) :] = 1
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, prefix:]
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(prompts))
        new: list[list[int]] = [[] for _ in prompts]
        alive = list(range(len(prompts)))
        for step in range(budget):
            logits, cache = self._forward(ids, mask, positions, cache)
            if step == 0:
                reserve(cache, budget)
            keep = []
            for b, token in enumerate(logits.argmax(-1).tolist()):
                row = new[alive[b]]
                if token == self.eos:
                    continue
                row.append(token)
                if self.stop not in self.tokenizer.decode(row[-self.window :]):
                    keep.append(b)
            if not keep or step == budget - 1:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep)
                cache.batch_select_indices(index.to(self.device))
                mask, positions = mask[index], positions[index]
                alive = [alive[b] for b in keep]
            ids = torch.tensor([[new[r][-1]] for r in alive])
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
        return new

    def hf_generate(self, prompts: list[list[int]], budget: int, encoder_decoder: bool) -> list[list[int]]:
        """New tokens of each prompt from ``transformers``' ``generate`` (padding right for encoders)."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, ids in enumerate(prompts):
            where = slice(0, len(ids)) if encoder_decoder else slice(width - len(ids), width)
            input_ids[r, where], attention[r, where] = torch.tensor(ids), 1
        with self.context():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=budget,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.pad,
                eos_token_id=self.eos,
                stop_strings=[self.stop],
                tokenizer=self.tokenizer,
            )
        new = output if encoder_decoder else output[:, width:]
        return [row[: budget + (1 if encoder_decoder else 0)] for row in new.tolist()]


def _plain_greedy(model) -> bool:
    """Whether the model's generation config adds nothing to argmax decoding."""
    config = getattr(model, "generation_config", None)
    return config is None or all(getattr(config, k, d) in (d, None) for k, d in _GREEDY_DEFAULTS.items())


def cut_left(ids: list[int], cap: int | None, bos: int | None) -> list[int]:
    """The last ``cap`` of ``ids`` (None: all), keeping a leading ``bos``."""
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
