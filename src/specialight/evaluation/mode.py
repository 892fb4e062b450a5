"""The state a model is evaluated in: eval mode, no gradients, and the caller's precision context held open
for the whole call.

Under autocast, holding the context casts each weight to the low precision once per call rather than once
per forward pass: autocast keeps its casts of leaf parameters until its outermost context exits, but only
outside inference mode, hence ``torch.no_grad`` (SmolLM2-135M, 48 new tokens of 32 prompts in bf16 on 2
cores: 9.1 s against 12.4 s; ``benchmarks/eval_autocast.py``). The per-forward ``with context()`` inside
nests at no cost. Inside an autocast the caller opened, a later forward pass with gradients casts anew:
autocast does not hand it a cast made without gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(
    model: torch.nn.Module, context: Callable[[], contextlib.AbstractContextManager], hold: bool = True
) -> Iterator[None]:
    """``model`` in eval mode under ``torch.no_grad`` with ``context`` entered once (``hold``; not for CUDA
    graphs, which must not read casts made outside their capture: `specialight.evaluation.static`); its
    training mode is restored on the way out."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), context() if hold else contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)
