"""Batched greedy generation (or sampling at a temperature) for encoder-decoder and decoder-only students.

Decoder-only models run their own greedy loop over the KV cache, built so that prefill is paid once per
shared text rather than once per question:

* prompts are clustered by their longest shared token prefix (every math question follows the same
  4-shot prompt, every BBH question its task's 3-shot prompt); the prefix's KV cache is computed once per
  cluster and copied into each batch of the cluster, so a question pays prefill only for its own tokens;
* a batch is ``[prefix][left padding][question]``, one generation budget per batch, questions sorted by
  length so padding stays small;
* each step takes the argmax (as ``generate(do_sample=False)``; a draw at ``temperature`` > 0), a row stops
  at EOS or when the text of its last few tokens holds the stop string (``Q:``), and finished rows leave the
  batch and its cache.

On CUDA the same loop runs by default over buffers of fixed shape, one step a CUDA graph replay, the batch
sized from free memory (`specialight.evaluation.static`); on CPU the reserved-cache loop above stays the
default (`benchmarks/evaluate.py` times both).

A model whose generation config asks for more than plain greedy decoding (a repetition penalty, banned
words...) and every encoder-decoder model go through ``transformers``' ``generate`` instead (its
``stop_strings`` criterion stops at ``Q:``), batched the same way without a shared prefix, with its static
cache when static (transformers compiles it on a GPU). Completions come back in the prompts' order, cut at
the stop string.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from specialight.data.stops import EVALUATION_STOP, cut_at_stop
from specialight.evaluation.batching import MIN_SHARED_PREFIX, batches, prefix_clusters
from specialight.evaluation.cache import reserve
from specialight.evaluation.mode import evaluating
from specialight.evaluation.sizing import memory_batch
from specialight.evaluation.static import StaticDecoder

POSITION_LIMITS = ("n_positions", "max_position_embeddings")
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
    static: bool | None = None,
    temperature: float = 0.0,
) -> list[str]:
    """Greedy completions of ``prompts`` (a per-prompt ``max_new_tokens`` list is allowed), or sampled ones
    at ``temperature`` > 0 (from torch's global generator: seed it, or fork it, for repeatable samples).

    ``context`` (Lightning's precision context, for bf16 autocast) wraps every forward pass and, unless
    static, is held open for the whole call (`specialight.evaluation.mode`: each weight cast once).
    ``max_prompt_tokens`` keeps at most that many of a prompt's last tokens (its left edge is cut; a
    leading BOS is kept). A decoder-only prompt whose tokens plus budget exceed the model's positions
    raises ValueError rather than index past the position embeddings (`specialight.evaluation.context`
    fits prompts beforehand). ``share_prefix=False`` gives every prompt its own prefill. ``static``
    decodes with buffers of fixed shape (`specialight.evaluation.static`: CUDA graphs on a GPU, where the
    batch is sized from free device memory and ``batch_size`` is only its floor; ``generate`` with a
    static cache for encoder-decoders); None: static on CUDA, the reserved-cache loop elsewhere. Sampling
    (``temperature`` > 0) never decodes static: the static loop is greedy.
    """
    if not prompts:
        return []
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    encoded = _encode(tokenizer, prompts, max_prompt_tokens)
    _check_positions(model.config, encoded, limits, encoder_decoder)
    own_loop, static, batch_size = _plan(model, encoded, limits, batch_size, False if temperature > 0 else static)
    completions: list[str] = [""] * len(prompts)
    shown = {"desc": description, "unit": "ex", "disable": not progress, "leave": False}
    with evaluating(model, context, hold=not static) as per_forward, tqdm(total=len(prompts), **shown) as bar:
        decoder = Decoder(model, tokenizer, stop, per_forward, temperature)
        run = _batch_decoder(decoder, own_loop, static, encoder_decoder)
        for prefix, group in prefix_clusters(encoded, MIN_SHARED_PREFIX if own_loop and share_prefix else None):
            cache = decoder.prefill(encoded[group[0]][:prefix]) if prefix else None
            for rows in batches(group, encoded, limits, prefix, batch_size):
                new = run([encoded[i] for i in rows], prefix, cache, limits[rows[0]])
                for i, ids in zip(rows, new, strict=True):
                    completions[i] = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
                bar.update(len(rows))
    return completions


def _plan(model, encoded: list[list[int]], limits: list[int], batch_size: int, static: bool | None):
    """``(own loop, static, batch size)``: the own loop for plain-greedy decoder-only models; static by
    default on CUDA, where its batch comes from free memory (at least ``batch_size``)."""
    device = next(model.parameters()).device
    static = device.type == "cuda" if static is None else static
    own_loop = not bool(getattr(model.config, "is_encoder_decoder", False)) and _plain_greedy(model)
    if static and own_loop and device.type == "cuda":
        batch_size = max(batch_size, memory_batch(model, [len(e) for e in encoded], max(limits), device))
    return own_loop, static, batch_size


def _encode(tokenizer, prompts: list[str], caps: list[int | None] | None) -> list[list[int]]:
    """Each prompt's token ids, its left edge cut to its cap (a leading BOS kept)."""
    caps = caps or [None] * len(prompts)
    bos = tokenizer.bos_token_id
    return [cut_left(tokenizer.encode(p, add_special_tokens=True), c, bos) for p, c in zip(prompts, caps, strict=True)]


def _batch_decoder(decoder: Decoder, own_loop: bool, static: bool, encoder_decoder: bool):
    """``(prompts, prefix, prefix cache, budget) -> new tokens`` for one batch: the own loop (reserved
    cache), its static twin (falling back to it where the model does not allow), or ``generate``."""
    if not own_loop:
        return lambda prompts, prefix, cache, budget: decoder.hf_generate(prompts, budget, encoder_decoder, static)
    if not static:
        return decoder.decode
    fixed = StaticDecoder(decoder)

    def run(prompts: list[list[int]], prefix: int, cache, budget: int) -> list[list[int]]:
        new = fixed.decode(prompts, prefix, cache, budget)
        return decoder.decode(prompts, prefix, cache, budget) if new is None else new

    return run


class Decoder:
    """Forward passes of one model: prefix prefill, the own loop (greedy, or sampling at ``temperature`` > 0)
    and ``transformers.generate``."""

    def __init__(self, model, tokenizer, stop: str, context, temperature: float = 0.0) -> None:
        self.model, self.tokenizer, self.stop, self.context = model, tokenizer, stop, context
        self.temperature = temperature
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

    def start(self, prompts: list[list[int]], prefix: int, prefix_cache):
        """Prefill of a left-padded batch ``[prefix][padding][prompt]``: the last logits ``[B, V]``, the
        cache, the 2D mask ``[B, prefix + width]`` and the prompt positions ``[B, width]`` (CPU)."""
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
        logits, cache = self._forward(ids, mask, positions, cache)
        return logits, cache, mask, positions

    def pick(self, logits: torch.Tensor) -> list[int]:
        """The next token of each row from its logits ``[B, V]``: the argmax, or a draw at the temperature."""
        if self.temperature <= 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1).squeeze(-1).tolist()

    def take(self, row: list[int], token: int) -> bool:
        """Add ``token`` to ``row`` unless it is EOS; whether the row goes on (no EOS, no stop string in
        the text of its last tokens)."""
        if token == self.eos:
            return False
        row.append(token)
        return self.stop not in self.tokenizer.decode(row[-self.window :])

    def decode(self, prompts: list[list[int]], prefix: int, prefix_cache, budget: int) -> list[list[int]]:
        """New tokens of each prompt (at most ``budget``; EOS left out, stop string kept)."""
        logits, cache, mask, positions = self.start(prompts, prefix, prefix_cache)
        reserve(cache, budget)
        new: list[list[int]] = [[] for _ in prompts]
        alive = list(range(len(prompts)))
        for step in range(budget):
            keep = [b for b, token in enumerate(self.pick(logits)) if self.take(new[alive[b]], token)]
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
            logits, cache = self._forward(ids, mask, positions, cache)
        return new

    def hf_generate(
        self, prompts: list[list[int]], budget: int, encoder_decoder: bool, static: bool = False
    ) -> list[list[int]]:
        """New tokens of each prompt from ``transformers``' ``generate`` (padding right for encoders;
        ``static``: its static cache, which ``generate`` compiles with CUDA graphs on a GPU)."""
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
                do_sample=self.temperature > 0,
                **({"temperature": self.temperature, "top_k": 0, "top_p": 1.0} if self.temperature > 0 else {}),
                num_beams=1,
                pad_token_id=self.pad,
                eos_token_id=self.eos,
                stop_strings=[self.stop],
                tokenizer=self.tokenizer,
                **({"cache_implementation": "static"} if static else {}),
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
