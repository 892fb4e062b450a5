"""Sizes for static decoding: rows per batch from free device memory and the KV cache's bytes per
token, power-of-two buckets (a finished row's batch shrinks by buckets, so few shapes are ever captured),
and cache capacities rounded up so that batches of similar lengths share their buffers."""

from __future__ import annotations

import torch

CAPACITY_STEP = 64  # capacities round up to this, so batches of similar lengths share buffers and graphs
MAX_BATCH = 1024
MEMORY_FRACTION = 0.4  # of free device memory for the top bucket (a half-size bucket may live beside it)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values that one position adds to the cache of one row, over all layers."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def row_bytes(config, dtype: torch.dtype, capacity: int, prompt_tokens: int) -> int:
    """Device bytes one row needs: its cache, its fp32 logits (a few copies), and its prefill's activations
    (a generous 16 fp32 hidden states per prompt token)."""
    vocabulary = int(getattr(config, "vocab_size", 0) or 0)
    return capacity * kv_bytes_per_token(config, dtype) + 16 * vocabulary + 64 * config.hidden_size * prompt_tokens


def batch_for_memory(free_bytes: int, bytes_per_row: int, fraction: float = MEMORY_FRACTION, ceiling=MAX_BATCH) -> int:
    """The largest power of two of rows (at least 1, at most ``ceiling``) whose bytes fit in ``fraction`` of
    ``free_bytes``."""
    rows = max(int(free_bytes * fraction) // max(bytes_per_row, 1), 1)
    return min(1 << (rows.bit_length() - 1), ceiling)


def memory_batch(model, prompt_lengths: list[int], budget: int, device: torch.device) -> int:
    """Rows per batch for ``model`` on a CUDA ``device``, from its free memory and the longest row."""
    longest = max(prompt_lengths)
    dtype = next(model.parameters()).dtype
    bytes_per_row = row_bytes(model.config, dtype, capacity_for(longest + budget + 2), longest)
    return batch_for_memory(free_device_memory(device), bytes_per_row)


def free_device_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, counting memory the caching allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def bucket(rows: int) -> int:
    """The smallest power of two that holds ``rows``."""
    return 1 << max(rows - 1, 0).bit_length()


def capacity_for(positions: int) -> int:
    """Cache slots for ``positions`` positions, rounded up to `CAPACITY_STEP`."""
    return -(-positions // CAPACITY_STEP) * CAPACITY_STEP
