"""The chunked projection behind every loss plugin: the student's logits ``[N, V]`` are never held whole.

`ChunkedHeadLoss` takes the scored positions' final hidden states ``[N, D]`` and the output layer
`OutputHead` and walks the positions in chunks of about ``loss.chunk_elements`` logits: per chunk it
projects and computes the loss, and in backward it recomputes the chunk's logits and turns their gradient
at once into gradients of the hidden states and of the projection's weight and bias, as torchtune's
chunked-output losses and cut-cross-entropy do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from specialight.training.divergences import wide_float


@dataclass
class OutputHead:
    """The student's output layer: ``logits = softcap(hidden @ weight.T + bias)``.

    ``weight`` ``[V, D]`` and ``bias`` ``[V]`` are the model's own parameters (gradients reach them);
    ``softcap`` is ``c`` in ``c * tanh(z / c)`` (Gemma's final logit soft-capping) or None. Any scaling of
    the hidden states before the projection (T5's ``d_model ** -0.5`` with tied embeddings) is the
    caller's, already applied to ``hidden``.
    """

    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """``[..., D]`` hidden states -> ``[..., V]`` logits."""
        logits = nn.functional.linear(hidden, self.weight, self.bias)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class ChunkedHeadLoss(torch.autograd.Function):
    """Sum over positions of ``loss.per_position(head(hidden))``, chunk by chunk, never all logits at once.

    Forward keeps no logits; backward recomputes each chunk's logits, takes the gradient of the chunk's
    loss with respect to them, and turns it at once into gradients of ``hidden`` ``[N, D]``, ``weight``
    ``[V, D]`` (accumulated in place, in the weight's dtype) and ``bias`` ``[V]``. Autocast, where on in
    forward, is on again in backward, so logits are computed in the same precision both times.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, softcap, loss, targets):  # noqa: ANN001, ANN205 (autograd API)
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.softcap, ctx.loss, ctx.targets = softcap, loss, targets
        ctx.save_for_backward(hidden, weight, bias)
        head = OutputHead(weight, bias, softcap)
        total = hidden.new_zeros((), dtype=wide_float(hidden).dtype)
        for rows in chunks(hidden.shape[0], weight.shape[0], loss.chunk_elements):
            chunk = {key: value[rows] for key, value in targets.items()}
            total += loss.per_position(head.logits(hidden[rows]), chunk).sum()
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):  # noqa: ANN205 (autograd API)
        hidden, weight, bias = ctx.saved_tensors
        device, autocast, autocast_dtype = ctx.autocast
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for rows in chunks(hidden.shape[0], weight.shape[0], ctx.loss.chunk_elements):
            chunk = {key: value[rows] for key, value in ctx.targets.items()}
            inputs = hidden[rows].detach()
            with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast):
                projected = nn.functional.linear(inputs, weight.detach(), None if bias is None else bias.detach())
                projected = projected.detach().requires_grad_(True)
                logits = projected
                if ctx.softcap is not None:
                    logits = torch.tanh(projected / ctx.softcap) * ctx.softcap
                per_position = ctx.loss.per_position(logits, chunk)
                (grad_logits,) = torch.autograd.grad(per_position.sum(), projected)
            grad_logits = grad_logits.to(weight.dtype) * grad_total.to(weight.dtype)  # [n, V]
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, inputs.to(weight.dtype))
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def chunks(positions: int, vocabulary: int, chunk_elements: int) -> list[slice]:
    """Slices of ``positions`` rows, each of at most ``chunk_elements // vocabulary`` rows (at least 1)."""
    size = max(chunk_elements // vocabulary, 1)
    return [slice(start, min(start + size, positions)) for start in range(0, positions, size)]
