"""A KV cache layer for greedy generation that does not copy itself at every new token.

transformers' `DynamicLayer` grows by concatenation: each decoding step allocates the whole cache anew
and copies it, ``[B, heads, positions, head_dim]`` per layer, which on a CPU with ~700-token few-shot
prompts costs as much as the forward pass itself. `reserve` swaps each full-attention layer of a cache,
after the prompt's prefill, for a `ReservedLayer` that holds buffers for the whole generation budget.

`ReservedLayer` overrides every method of `DynamicLayer` that changes its state, so that ``keys`` and
``values`` stay views of the reserved buffers (an inherited one would rebind them to fresh tensors, and the
next `update` would write into buffers attention no longer reads). `STATE_METHODS` lists them and
`READ_ONLY_METHODS` the inherited ones that only read; tests/evaluation/test_cache.py fails when the
installed transformers gives the layer a public method in neither list, since transformers' requirement
has no upper bound.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

STATE_METHODS = (
    "update",
    "lazy_initialization",
    "crop",
    "reset",
    "batch_repeat_interleave",
    "batch_select_indices",
    "reorder_cache",
    "offload",
    "prefetch",
)
READ_ONLY_METHODS = ("get_seq_length", "get_mask_sizes", "get_max_length")


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in buffers reserved for the whole generation
    ``[B, heads, capacity, head_dim]``: a step writes its new position in place and attention reads a view
    of the filled part, where `DynamicLayer` copies the whole cache into a new tensor at every step."""

    def __init__(self, layer: DynamicLayer, capacity: int) -> None:
        super().__init__()
        length = layer.keys.shape[-2]
        self.device, self.is_initialized, self.length = layer.device, True, length
        self.key_buffer = layer.keys.new_empty((*layer.keys.shape[:2], capacity, layer.keys.shape[-1]))
        self.value_buffer = layer.values.new_empty((*layer.values.shape[:2], capacity, layer.values.shape[-1]))
        self.key_buffer[:, :, :length] = layer.keys
        self.value_buffer[:, :, :length] = layer.values
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def _rebuffer(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = keys, values
        self._views()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a ReservedLayer is built from a filled DynamicLayer and is never lazily initialized")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``[B, heads, n, head_dim]`` new states after the filled part; the filled part's views."""
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"the reserved cache holds {self.key_buffer.shape[-2]} positions; {end} were asked")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` positions (a negative count, as `DynamicLayer.crop`)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of positions to remove, got {tokens_to_remove}")
        self.length = max(self.length - abs(tokens_to_remove), 0)
        self._views()

    def reset(self) -> None:
        """Empty the cache; the buffers stay reserved for the next `update`."""
        self.length = 0
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuffer(
            self.key_buffer.repeat_interleave(repeats, dim=0), self.value_buffer.repeat_interleave(repeats, dim=0)
        )

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuffer(self.key_buffer[indices], self.value_buffer[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        index = beam_idx.to(self.key_buffer.device)
        self._rebuffer(self.key_buffer.index_select(0, index), self.value_buffer.index_select(0, index))

    def offload(self) -> None:
        self._rebuffer(self.key_buffer.to("cpu", non_blocking=True), self.value_buffer.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.key_buffer.device != self.device:
            self._rebuffer(
                self.key_buffer.to(self.device, non_blocking=True), self.value_buffer.to(self.device, non_blocking=True)
            )


def reserve(cache, budget: int) -> None:
    """Give each full-attention layer of ``cache`` room for ``budget`` more positions (sliding-window and
    other layer kinds keep their own growth)."""
    layers = getattr(cache, "layers", None) or []
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            layers[index] = ReservedLayer(layer, layer.keys.shape[-2] + budget)
