"""Loss plugins: a `SpecializationLoss` maps ``(hidden, head, batch)`` to a scalar; pick one by ``class_path``.

A plugin is a small `nn.Module` that writes only its per-position math, `SpecializationLoss.per_position`
on logits ``[..., V]``, and the targets it reads from a batch, `SpecializationLoss.position_targets`.
The base class does the rest once: masking of ignored positions, the token mean and memory.

Memory: the student's logits ``[B, T, V]`` are never held whole. `SpecializationLoss.forward` takes the
final hidden states ``hidden`` ``[B, T, D]`` and the output layer `OutputHead`, keeps only the scored
positions and walks them in chunks of about `SpecializationLoss.chunk_elements` logits: per chunk it
projects, computes the loss, and (in backward, recomputing the chunk's logits) the gradient with
respect to the hidden states and the projection's weight and bias, as torchtune's chunked-output losses
and cut-cross-entropy do. `SpecializationLoss.from_logits` is the dense path on whole logits, for
logits one already has (and tests of the math).

Shapes: ``hidden`` ``[B, T, D]`` (or logits ``[B, T, V]``) already aligned with ``batch["labels"]``
``[B, T]`` (the module shifts decoder-only positions by one); ignored positions hold ``IGNORE_INDEX``.
Sparse teacher targets, where the batch has them: ``batch["topk_ids"]`` ``[B, T, k]`` and
``batch["topk_probs"]`` ``[B, T, k]`` (from ``specialight align``; one-hot rows where the alignment was
not one-to-one). ``batch["format_ids"]`` ``[B]`` indexes `specialight.data.formats.FORMATS`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from specialight.core.constants import FORMATS, IGNORE_INDEX


def _wide(tensor: Tensor) -> Tensor:
    """``tensor`` in at least float32 (bf16/fp16 logits are summed in fp32; fp64 stays fp64)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the unmasked positions of ``[B, T]`` values (0 when nothing is unmasked)."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


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


class SpecializationLoss(nn.Module):
    """Base class of loss plugins: masking, the token mean and chunking live here, once.

    A subclass defines `per_position` (and `position_targets` when it reads more than the labels).
    ``chunk_elements`` bounds the logits computed at once (positions per chunk: ``chunk_elements // V``).
    Every plugin remembers the arguments it was built with (`init_args`), so a checkpoint rebuilds the
    same plugin whatever its ``__init__`` takes.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__dict__["__init__"])

    @property
    def init_args(self) -> dict[str, Any]:
        """The arguments of the outermost ``__init__`` call, defaults filled in (empty when it takes none)."""
        return dict(self.__dict__.get("_init_args") or {})

    chunk_elements: int = 2**22

    def forward(self, hidden: Tensor, head: OutputHead, batch: dict[str, Tensor]) -> Tensor:
        """Token mean of `per_position` over the scored positions, from ``hidden`` ``[B, T, D]``; scalar."""
        scored = batch["labels"] != IGNORE_INDEX  # [B, T]
        targets = {key: value[scored] for key, value in self.position_targets(batch).items()}  # [N, ...]
        total = _ChunkedHeadLoss.apply(hidden[scored], head.weight, head.bias, head.softcap, self, targets)
        return total / scored.sum().clamp_min(1)

    def from_logits(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """The same loss from whole logits ``[B, T, V]`` (dense: every position, autograd); scalar."""
        mask = (batch["labels"] != IGNORE_INDEX).to(logits.dtype)
        return _token_mean(self.per_position(logits, self.position_targets(batch)), mask)

    def position_targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What `per_position` reads, each ``[B, T, ...]``: here ``labels`` with ignored positions at 0."""
        return {"labels": batch["labels"].clamp_min(0)}

    def per_position(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        """Loss at every position: logits ``[..., V]`` and targets ``[..., ...]`` -> ``[...]``."""
        raise NotImplementedError

    @property
    def needs_teacher_distributions(self) -> bool:
        """Whether batches must carry ``topk_ids``/``topk_probs``."""
        return False


def _recording_init(init):
    """Wrap a plugin's ``__init__`` so the outermost call (the class actually built) records its arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args: Any, **kwargs: Any) -> None:
        outermost = "_init_args" not in self.__dict__
        if outermost:
            self.__dict__["_init_args"] = None  # marks the call in progress: a super().__init__ records nothing
        init(self, *args, **kwargs)
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    recorded[name] = value
            self.__dict__["_init_args"] = recorded

    return recording_init


class _ChunkedHeadLoss(torch.autograd.Function):
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
        total = hidden.new_zeros((), dtype=_wide(hidden).dtype)
        for rows in _chunks(hidden.shape[0], weight.shape[0], loss.chunk_elements):
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
        for rows in _chunks(hidden.shape[0], weight.shape[0], ctx.loss.chunk_elements):
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


def _chunks(positions: int, vocabulary: int, chunk_elements: int) -> list[slice]:
    """Slices of ``positions`` rows, each of at most ``chunk_elements // vocabulary`` rows (at least 1)."""
    size = max(chunk_elements // vocabulary, 1)
    return [slice(start, min(start + size, positions)) for start in range(0, positions, size)]


class SampleMatching(SpecializationLoss):
    """Token cross-entropy on the target text (a teacher sample or a gold rationale)."""

    def per_position(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(_wide(logits).movedim(-1, 1), targets["labels"], reduction="none")


class DistributionMatching(SpecializationLoss):
    """KL(teacher top-k || student) per position, on the formats listed in ``formats``.

    ``sum_k p_k (log p_k - log q_k)``, where ``q_k`` is the student's probability of teacher top-k id k,
    read by gathering ``k`` logits and subtracting the log-normalizer: memory ``O(B T k)`` beyond the
    student's own logits, never a dense ``[B, T, V]`` teacher tensor. With the paper's zero tail the
    ``p_k`` sum to less than one and the rest of the vocabulary carries no target mass. Examples in other
    formats (answer-only by default, as in the paper) get cross-entropy on their labels.
    """

    def __init__(self, formats: tuple[str, ...] = ("in_context_cot", "zero_shot_cot")) -> None:
        super().__init__()
        chosen = torch.zeros(len(FORMATS), dtype=torch.bool)
        for fmt in formats:
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
            chosen[FORMATS.index(fmt)] = True
        self.formats = tuple(formats)
        self.register_buffer("chosen", chosen, persistent=False)

    @property
    def needs_teacher_distributions(self) -> bool:
        return True

    def position_targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "topk_ids" not in batch:
            raise ValueError(
                "DistributionMatching needs teacher top-k targets in the batch: give the data module aligned "
                "targets from `specialight align` (teacher_data: DIR), or use SampleMatching"
            )
        labels = batch["labels"].clamp_min(0)
        use_kl = self.chosen[batch["format_ids"]].unsqueeze(-1).expand_as(labels)  # [B, T]
        ids, probs = batch["topk_ids"], batch["topk_probs"].detach()
        return {"labels": labels, "topk_ids": ids, "topk_probs": probs, "use_kl": use_kl}

    def per_position(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        ids, probs, labels, use_kl = (targets[key] for key in ("topk_ids", "topk_probs", "labels", "use_kl"))
        return SparseKL.apply(logits, ids, probs, labels, use_kl)


class SparseKL(torch.autograd.Function):
    """Per-position KL to sparse top-k targets (where ``use_kl``) or cross-entropy on ``labels`` (elsewhere).

    A hand-written backward keeps the memory of plain cross-entropy: the gradient
    ``(sum_k p_k) softmax(z) - scatter(p)`` (KL) or ``softmax(z) - onehot(label)`` (CE) is built in one
    ``[..., V]`` buffer, where autograd through ``logsumexp`` and ``gather`` would hold two or three.
    Shapes: ``logits`` ``[..., V]``, ``ids``/``probs`` ``[..., k]``, ``labels``/``use_kl`` ``[...]``;
    returns ``[...]``. The teacher ``probs`` get no gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, probs: Tensor, labels: Tensor, use_kl: Tensor) -> Tensor:
        log_normalizer = torch.logsumexp(_wide(logits), dim=-1)  # [...]
        probs = probs.to(log_normalizer.dtype)
        student = _wide(torch.gather(logits, -1, ids)) - log_normalizer.unsqueeze(-1)  # [..., k]
        teacher_log = torch.where(probs > 0, probs.clamp_min(1e-30).log(), torch.zeros_like(probs))
        kl = (probs * (teacher_log - student)).sum(-1)
        cross_entropy = log_normalizer - _wide(torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1))
        ctx.save_for_backward(logits, ids, probs, labels, use_kl, log_normalizer)
        return torch.where(use_kl, kl, cross_entropy)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        logits, ids, probs, labels, use_kl, log_normalizer = ctx.saved_tensors
        grad_output = grad_output.to(log_normalizer.dtype)
        mass = torch.where(use_kl, probs.sum(-1), torch.ones_like(grad_output))  # [...]
        grad = (_wide(logits) - log_normalizer.unsqueeze(-1)).exp_()  # softmax, [..., V]
        grad.mul_((grad_output * mass).unsqueeze(-1))
        kl_weight = torch.where(use_kl, grad_output, torch.zeros_like(grad_output)).unsqueeze(-1)
        grad.scatter_add_(-1, ids, -(probs * kl_weight))
        ce_weight = torch.where(use_kl, torch.zeros_like(grad_output), grad_output).unsqueeze(-1)
        grad.scatter_add_(-1, labels.unsqueeze(-1), -ce_weight)
        return grad.to(logits.dtype), None, None, None, None
