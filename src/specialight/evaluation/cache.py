"""A KV cache layer for greedy generation that does not copy itself at every new token.

transformers' `DynamicLayer` grows by concatenation: each decoding step allocates the whole cache anew
and copies it, ``[B, heads, positions, head_dim]`` per layer, which on a CPU with ~700-token few-shot
prompts costs as much as the forward pass itself. `reserve` swaps each full-attention layer of a cache,
after the prompt's prefill, for a `ReservedLayer` that holds buffers for the whole generation budget.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


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

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``[B, heads, n, head_dim]`` new states after the filled part; the filled part's views."""
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def reserve(cache, budget: int) -> None:
    """Give each full-attention layer of ``cache`` room for ``budget`` more positions (sliding-window and
    other layer kinds keep their own growth)."""
    layers = getattr(cache, "layers", None) or []
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            layers[index] = ReservedLayer(layer, layer.keys.shape[-2] + budget)
