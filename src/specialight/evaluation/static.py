"""Greedy decoding with buffers of fixed shape, so that one decoding step is a CUDA graph replay.

On a GPU a small model's decoding step is a few hundred short kernel launches, and the own greedy loop
(`specialight.evaluation.generation.Decoder.decode`) spends its time launching them: its shapes change at
every step (the cache grows, finished rows leave). Here a batch's state lives in buffers whose shape is
fixed for the whole generation, ``[bucket, heads, capacity, head_dim]`` keys and values per layer, the
``[bucket, 1, 1, capacity]`` attention mask, ``[bucket, 1]`` next tokens and positions, and a
``[bucket, capacity]`` history of generated tokens. One step (mask the new slot in, forward one token per
row, write its keys and values in place, argmax, advance) mutates only those buffers, so on CUDA it is
captured once per ``(bucket, capacity)`` in a `torch.cuda.CUDAGraph` and replayed; on CPU the same step
runs eagerly (the reserved-cache loop stays the CPU default: it is faster there).

* The host reads the history every `CHUNK` steps, not every step, and applies the loop's rules (stop at
  EOS, or when the last tokens' text holds the stop string); a finished row keeps computing until then,
  which changes no other row (rows attend only to their own positions).
* Rows that finish leave by bucket: when the rows still running fit a power of two at most half the
  bucket, they move into that bucket's buffers (captured once per shape, then reused by every batch).
* The batch is sized from free device memory and the KV cache's bytes per token
  (`specialight.evaluation.sizing`).

The prefill (the prompt's variable-length forward) runs as in the own loop; its cache is copied into the
buffers. Greedy tokens are the own loop's: the same forward per row, with unwritten cache slots masked.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from transformers.cache_utils import DynamicLayer

from specialight.evaluation.sizing import bucket, capacity_for

logger = logging.getLogger(__name__)

CHUNK = 8  # steps between two reads of the history (one host-device synchronization each)


class FixedLayer(DynamicLayer):
    """A cache layer over fixed buffers ``[B, heads, capacity, head_dim]``: `update` writes the new
    position at the slot ``write`` holds (a device tensor, so a graph replay writes the next slot) and
    returns the whole buffers; the attention mask hides the slots not written yet."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write: torch.Tensor, filled: int) -> None:
        super().__init__()
        self.keys, self.values, self.write, self.filled = keys, values, write, filled
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write one position ``[B, heads, 1, head_dim]`` in place; the whole buffers."""
        self.keys.index_copy_(2, self.write, key_states)
        self.values.index_copy_(2, self.write, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.filled  # fixed at load: a graph replays the step it captured

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0


def supported(model, cache) -> bool:
    """Whether the static step can run this model: an attention that takes a 4D mask (SDPA, eager) and
    a prefill cache of plain full-attention layers."""
    attention = getattr(model.config, "_attn_implementation", None)
    layers = getattr(cache, "layers", None)
    return attention in ("sdpa", "eager") and bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class Runner:
    """The buffers of one ``(bucket, capacity)`` shape, the step over them, and on CUDA its graph."""

    def __init__(self, decoder, template, rows: int, capacity: int, pool=None) -> None:
        self.decoder, self.rows, self.pool, self.graph = decoder, rows, pool, None
        device = decoder.device
        self.use_graph = device.type == "cuda"
        shape = [(layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[-1]) for layer in template.layers]
        dtype = template.layers[0].keys.dtype
        self.keys = [torch.zeros((rows, h, capacity, k), dtype=dtype, device=device) for h, k, _ in shape]
        self.values = [torch.zeros((rows, h, capacity, v), dtype=dtype, device=device) for h, _, v in shape]
        self.write = torch.zeros(1, dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.history = torch.zeros((rows, capacity), dtype=torch.long, device=device)
        if decoder.model.config._attn_implementation == "sdpa":
            self.open, self.closed, mask_dtype = True, False, torch.bool
        else:  # eager attention adds the mask to its scores
            mask_dtype = next(decoder.model.parameters()).dtype
            self.open, self.closed = 0.0, torch.finfo(mask_dtype).min
        self.mask = torch.full((rows, 1, 1, capacity), self.closed, dtype=mask_dtype, device=device)
        self.cache = _fixed_cache(template, self.keys, self.values, self.write)

    def load_prefill(self, cache, mask: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        """Take a prefill's state: its cache ``[B, heads, L, head_dim]`` per layer, its 2D mask ``[B, L]``,
        the next positions ``[B, 1]`` and the first new tokens ``[B]``; rows past B repeat row 0."""
        filled, device = mask.shape[1], self.ids.device
        index = torch.tensor(_padded(list(range(mask.shape[0])), self.rows), device=device)
        for layer, keys, values in zip(cache.layers, self.keys, self.values, strict=True):
            keys[:, :, :filled].copy_(layer.keys[index])
            values[:, :, :filled].copy_(layer.values[index])
            keys[:, :, filled:].zero_()  # masked slots must hold finite numbers (0 x NaN is NaN)
            values[:, :, filled:].zero_()
        self.mask.fill_(self.closed)
        self.mask[:, 0, 0, :filled].masked_fill_(mask.to(device)[index] == 1, self.open)
        self.positions.copy_(positions.to(device)[index])
        self.ids.copy_(tokens[index][:, None])
        self.history[:, 0] = tokens[index]
        self.write.fill_(filled)
        self.step.fill_(1)
        for layer in self.cache.layers:
            layer.filled = filled

    def load_rows(self, other: Runner, rows: list[int]) -> None:
        """Take rows ``rows`` of a larger bucket's state (rows past them repeat the first)."""
        index = torch.tensor(_padded(rows, self.rows), device=self.ids.device)
        for mine, theirs in zip([*self.keys, *self.values], [*other.keys, *other.values], strict=True):
            mine.copy_(theirs[index])
        for mine, theirs in ((self.mask, other.mask), (self.positions, other.positions), (self.ids, other.ids)):
            mine.copy_(theirs[index])
        self.history.copy_(other.history[index])
        self.write.copy_(other.write)
        self.step.copy_(other.step)
        for layer, source in zip(self.cache.layers, other.cache.layers, strict=True):
            layer.filled = source.filled

    def run(self, steps: int) -> None:
        """Advance every row ``steps`` tokens (graph replays on CUDA once captured)."""
        if self.use_graph and self.graph is None:
            self._capture()
        if self.graph is not None:
            for _ in range(steps):
                self.graph.replay()
            return
        with self._context():
            for _ in range(steps):
                self._step()

    def _step(self) -> None:
        """One token per row, in place: mask the slot in, forward, write keys and values, argmax, advance."""
        self.mask.index_fill_(-1, self.write, self.open)
        decoder = self.decoder
        extra = {decoder.cache_name: self.cache, **({"logits_to_keep": 1} if decoder.keep_one else {})}
        logits = decoder.model(
            input_ids=self.ids, attention_mask=self.mask, position_ids=self.positions, use_cache=True, **extra
        ).logits[:, -1]
        token = logits.argmax(-1, keepdim=True)
        self.history.index_copy_(1, self.step, token)
        self.ids.copy_(token)
        self.positions.add_(1)
        self.write.add_(1)
        self.step.add_(1)

    def _capture(self) -> None:
        """Warm up on a side stream, restore the state, capture one step; on failure stay eager."""
        state = [self.ids, self.positions, self.write, self.step, self.mask]
        saved = [t.clone() for t in state]
        try:
            stream = torch.cuda.Stream(self.ids.device)
            stream.wait_stream(torch.cuda.current_stream(self.ids.device))
            with torch.cuda.stream(stream), self._context():
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(self.ids.device).wait_stream(stream)
            for tensor, value in zip(state, saved, strict=True):
                tensor.copy_(value)
            graph = torch.cuda.CUDAGraph()
            with self._context(), torch.cuda.graph(graph, pool=self.pool):
                self._step()
            self.graph = graph
        except RuntimeError as error:  # a model whose forward cannot be captured decodes eagerly
            logger.warning("CUDA graph capture failed, decoding without graphs: %s", error)
            self.use_graph = False
            for tensor, value in zip(state, saved, strict=True):
                tensor.copy_(value)

    def _context(self) -> contextlib.ExitStack:
        """The caller's context (autocast), with autocast's weight cache off: a graph must not read casts
        cached outside it."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.decoder.context())
        kind = self.ids.device.type
        if torch.is_autocast_enabled(kind):
            stack.enter_context(torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False))
        return stack


class StaticDecoder:
    """The greedy loop over `Runner` buffers, for one model; its runners live while batches share a
    capacity (a new capacity frees them: buffers for every shape at once would not fit)."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self.runners: dict[int, Runner] = {}
        self.capacity: tuple | None = None
        self.pool = torch.cuda.graph_pool_handle() if decoder.device.type == "cuda" else None
        self.unsupported = False

    def decode(self, prompts: list[list[int]], prefix: int, prefix_cache, budget: int) -> list[list[int]] | None:
        """New tokens of each prompt, as `Decoder.decode` gives them; None when the model's cache or
        attention does not allow the static step (the caller then runs the own loop)."""
        if self.unsupported:
            return None
        logits, cache, mask, positions = self.decoder.start(prompts, prefix, prefix_cache)
        if not supported(self.decoder.model, cache):
            self.unsupported = True
            return None
        tokens = logits.argmax(-1)
        new: list[list[int]] = [[] for _ in prompts]
        live = [(r, r) for r, token in enumerate(tokens.tolist()) if self.decoder.take(new[r], token)]
        if not live or budget == 1:
            return new
        runner = self._runner(len(prompts), mask.shape[1] + budget + 2, cache)
        runner.load_prefill(cache, mask, positions[:, -1:] + 1, tokens)
        done = 1
        while live and done < budget:
            steps = min(CHUNK, budget - done)
            runner.run(steps)
            chunk = runner.history[:, done : done + steps].tolist()
            live = [(b, r) for b, r in live if all(self.decoder.take(new[r], t) for t in chunk[b])]
            done += steps
            if live and bucket(len(live)) < runner.rows:
                smaller = self._runner(len(live), mask.shape[1] + budget + 2, cache)
                smaller.load_rows(runner, [b for b, _ in live])
                runner, live = smaller, [(i, r) for i, (_, r) in enumerate(live)]
        return new

    def _runner(self, rows: int, positions: int, template) -> Runner:
        """The runner of ``bucket(rows)`` rows and ``capacity_for(positions)`` slots (built once)."""
        capacity = capacity_for(positions)
        key = (capacity, template.layers[0].keys.dtype)
        if key != self.capacity:
            self.runners.clear()
            self.capacity = key
        size = bucket(rows)
        if size not in self.runners:
            self.runners[size] = Runner(self.decoder, template, size, capacity, self.pool)
        return self.runners[size]


def _padded(rows: list[int], size: int) -> list[int]:
    return rows + [rows[0]] * (size - len(rows))


def _fixed_cache(template, keys: list[torch.Tensor], values: list[torch.Tensor], write: torch.Tensor):
    """A cache object of ``template``'s class whose layers are `FixedLayer` over the given buffers."""
    cache = copy.copy(template)
    cache.layers = [FixedLayer(k, v, write, 0) for k, v in zip(keys, values, strict=True)]
    return cache
