"""Loss plugins: a `SpecializationLoss` maps ``(logits, batch)`` to a scalar; pick one by ``class_path``.

Shapes: ``logits`` ``[B, T, V]`` already aligned with ``batch["labels"]`` ``[B, T]`` (the module shifts
decoder-only logits by one), ignored positions hold ``IGNORE_INDEX``. Sparse teacher targets, where the
batch has them: ``batch["topk_ids"]`` ``[B, T, k]`` and ``batch["topk_probs"]`` ``[B, T, k]`` (from
``specialight align``; one-hot rows where the alignment was not one-to-one). ``batch["format_ids"]``
``[B]`` indexes `specialight.data.formats.FORMATS`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from specialight.data.formats import FORMATS, check_format

IGNORE_INDEX = -100


def _wide(tensor: Tensor) -> Tensor:
    """``tensor`` in at least float32 (bf16/fp16 logits are summed in fp32; fp64 stays fp64)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the unmasked positions of ``[B, T]`` values (0 when nothing is unmasked)."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


class SpecializationLoss(nn.Module):
    """Base class of loss plugins: masking of ignored positions lives here, once.

    Every plugin remembers the arguments it was built with (`init_args`), so a checkpoint rebuilds the
    same plugin whatever its ``__init__`` takes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__dict__["__init__"])

    @property
    def init_args(self) -> dict[str, Any]:
        """The arguments of the outermost ``__init__`` call, defaults filled in (empty when it takes none)."""
        return dict(self.__dict__.get("_init_args") or {})

    def forward(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        labels = batch["labels"]
        mask = (labels != IGNORE_INDEX).to(logits.dtype)
        return _token_mean(self.per_token(logits, batch, labels.clamp_min(0)), mask)

    def per_token(self, logits: Tensor, batch: dict[str, Tensor], labels: Tensor) -> Tensor:
        """Loss at every position, ``[B, T]``; ``labels`` has ignored positions clamped to 0."""
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


class SampleMatching(SpecializationLoss):
    """Token cross-entropy on the target text (a teacher sample or a gold rationale)."""

    def per_token(self, logits: Tensor, batch: dict[str, Tensor], labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(_wide(logits).transpose(1, 2), labels, reduction="none")


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
            chosen[FORMATS.index(check_format(fmt))] = True
        self.formats = tuple(formats)
        self.register_buffer("chosen", chosen, persistent=False)

    @property
    def needs_teacher_distributions(self) -> bool:
        return True

    def per_token(self, logits: Tensor, batch: dict[str, Tensor], labels: Tensor) -> Tensor:
        if "topk_ids" not in batch:
            raise ValueError(
                "DistributionMatching needs teacher top-k targets in the batch: give the data module aligned "
                "targets from `specialight align` (teacher_data: DIR), or use SampleMatching"
            )
        use_kl = self.chosen[batch["format_ids"]].unsqueeze(-1).expand_as(labels)  # [B, T]
        return SparseKL.apply(logits, batch["topk_ids"], batch["topk_probs"].detach(), labels, use_kl)


class SparseKL(torch.autograd.Function):
    """Per-position KL to sparse top-k targets (where ``use_kl``) or cross-entropy on ``labels`` (elsewhere).

    A hand-written backward keeps the memory of plain cross-entropy: the gradient
    ``(sum_k p_k) softmax(z) - scatter(p)`` (KL) or ``softmax(z) - onehot(label)`` (CE) is built in one
    ``[B, T, V]`` buffer, where autograd through ``logsumexp`` and ``gather`` would hold two or three.
    Shapes: ``logits`` ``[B, T, V]``, ``ids``/``probs`` ``[B, T, k]``, ``labels``/``use_kl`` ``[B, T]``;
    returns ``[B, T]``. The teacher ``probs`` get no gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, probs: Tensor, labels: Tensor, use_kl: Tensor) -> Tensor:
        log_normalizer = torch.logsumexp(_wide(logits), dim=-1)  # [B, T]
        probs = probs.to(log_normalizer.dtype)
        student = _wide(torch.gather(logits, -1, ids)) - log_normalizer.unsqueeze(-1)  # [B, T, k]
        teacher_log = torch.where(probs > 0, probs.clamp_min(1e-30).log(), torch.zeros_like(probs))
        kl = (probs * (teacher_log - student)).sum(-1)
        cross_entropy = log_normalizer - _wide(torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1))
        ctx.save_for_backward(logits, ids, probs, labels, use_kl, log_normalizer)
        return torch.where(use_kl, kl, cross_entropy)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        logits, ids, probs, labels, use_kl, log_normalizer = ctx.saved_tensors
        grad_output = grad_output.to(log_normalizer.dtype)
        mass = torch.where(use_kl, probs.sum(-1), torch.ones_like(grad_output))  # [B, T]
        grad = (_wide(logits) - log_normalizer.unsqueeze(-1)).exp_()  # softmax, [B, T, V]
        grad.mul_((grad_output * mass).unsqueeze(-1))
        kl_weight = torch.where(use_kl, grad_output, torch.zeros_like(grad_output)).unsqueeze(-1)
        grad.scatter_add_(-1, ids, -(probs * kl_weight))
        ce_weight = torch.where(use_kl, torch.zeros_like(grad_output), grad_output).unsqueeze(-1)
        grad.scatter_add_(-1, labels.unsqueeze(-1), -ce_weight)
        return grad.to(logits.dtype), None, None, None, None
