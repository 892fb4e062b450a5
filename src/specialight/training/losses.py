"""Loss plugins: a `SpecializationLoss` maps ``(hidden, head, batch)`` to a scalar; pick one by ``class_path``.

A plugin is a small `nn.Module` that writes only its per-position math, `SpecializationLoss.per_position`
on logits ``[..., V]``, and the targets it reads from a batch, `SpecializationLoss.position_targets`.
The base class does the rest once: masking of ignored positions, the token mean and memory.

Plugins: `SampleMatching` (cross-entropy on the target text) and the divergences to the teacher's top-k
on the (k+1)-bin partition (`specialight.training.divergences`): `DistributionMatching` (forward KL, the
paper's), `ReverseKL`, `GeneralizedJSD`, `SkewKL` and `TotalVariation`.

Memory: the student's logits ``[B, T, V]`` are never held whole. `SpecializationLoss.forward` takes the
final hidden states ``hidden`` ``[B, T, D]`` and the output layer `OutputHead`, keeps only the scored
positions and walks them in chunks of about `SpecializationLoss.chunk_elements` logits
(`specialight.training.chunked`). `SpecializationLoss.from_logits` is the dense path on whole logits, for
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
import math
from typing import Any

import torch
from torch import Tensor, nn

from specialight.core.constants import FORMATS, IGNORE_INDEX
from specialight.training.chunked import ChunkedHeadLoss, OutputHead
from specialight.training.divergences import (
    BinLogProbs,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    teacher_bins,
    total_variation,
    wide_float,
)


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the unmasked positions of ``[B, T]`` values (0 when nothing is unmasked)."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


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
        total = ChunkedHeadLoss.apply(hidden[scored], head.weight, head.bias, head.softcap, self, targets)
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

    def teacher_topk_mass(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The teacher's mean top-k probability sum over the positions scored against it (None: none are)."""
        return None


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

    def per_position(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(wide_float(logits).movedim(-1, 1), targets["labels"], reduction="none")


COT_FORMATS = ("in_context_cot", "zero_shot_cot")  # where the paper matches distributions


def _bin_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype of the ``[..., k + 1]`` bin math: float64 (cheap at that size), float32 where the device has no
    float64 (Apple's MPS)."""
    return torch.float32 if tensor.device.type == "mps" else torch.float64


class TopKDivergence(SpecializationLoss):
    """Base of the divergences to the teacher's top-k, on the (k+1)-bin partition, on the formats in ``formats``.

    The top-k ids and one bin for the rest of the vocabulary, on both sides (`specialight.training.divergences`):
    each value is a true divergence of the two coarse-grained distributions, never negative. The student's
    bins are read by gathering ``k`` logits and two log-sum-exps: memory ``O(B T k)`` beyond the student's
    own logits, never a dense ``[B, T, V]`` teacher tensor. Positions without a teacher distribution (a
    one-hot target: outside the aligned CoT text, or not one-to-one) and examples in other formats
    (answer-only by default, as in the paper) get cross-entropy on their labels. A subclass defines
    `divergence`.
    """

    def __init__(self, formats: tuple[str, ...] = COT_FORMATS) -> None:
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
        """``labels``, ``topk_ids`` ``[B, T, k]``, the teacher's bins and the bins that count ``[B, T, k + 1]``
        (`divergences.teacher_bins`), and ``use`` ``[B, T]`` (chosen format, not one-hot)."""
        if "topk_ids" not in batch:
            raise ValueError(
                f"{type(self).__name__} needs teacher top-k targets in the batch: give the data module aligned "
                "targets from `specialight align` (teacher_data: DIR), or use SampleMatching"
            )
        labels = batch["labels"].clamp_min(0)
        probs = batch["topk_probs"].detach()
        teacher, valid = teacher_bins(batch["topk_ids"], probs.to(_bin_dtype(probs)))
        one_hot = (probs >= 1).any(-1)
        use = self.chosen[batch["format_ids"]].unsqueeze(-1).expand_as(labels) & ~one_hot
        return {"labels": labels, "topk_ids": batch["topk_ids"], "teacher": teacher, "valid": valid, "use": use}

    def per_position(self, logits: Tensor, targets: dict[str, Tensor]) -> Tensor:
        log_student = BinLogProbs.apply(logits, targets["topk_ids"], targets["labels"])  # [..., k + 2]
        bins, valid = log_student[..., :-1].to(_bin_dtype(logits)), targets["valid"]
        # k + 1 numbers in fp64, summing to one exactly (the same function of the logits, so the same gradient):
        # a divergence of two distributions then stays >= 0 beyond fp32 logits' rounding
        bins = bins - torch.logsumexp(bins.masked_fill(~valid, -math.inf), -1, keepdim=True)
        value = self.divergence(targets["teacher"], bins, valid).to(log_student.dtype)
        return torch.where(targets["use"], value, -log_student[..., -1])

    def divergence(self, teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
        """The divergence of the bins: ``teacher``, ``log_student``, ``valid`` ``[..., k + 1]`` -> ``[...]``."""
        raise NotImplementedError

    def teacher_topk_mass(self, batch: dict[str, Tensor]) -> Tensor | None:
        targets = self.position_targets(batch)
        counted = targets["use"] & (batch["labels"] != IGNORE_INDEX)
        if not bool(counted.any()):
            return None
        return (1 - targets["teacher"][..., -1])[counted].mean()


class DistributionMatching(TopKDivergence):
    """Forward KL, ``KL(teacher || student)`` on the (k+1)-bin partition (`divergences.forward_kl`; the paper's
    loss, mean-seeking).

    ``zero_tail=True`` drops the rest bin, as the paper's code did: the top-k ``p_k`` then sum to less than
    one, the rest of the vocabulary carries no target mass, and the value can be negative.
    """

    def __init__(self, formats: tuple[str, ...] = COT_FORMATS, zero_tail: bool = False) -> None:
        super().__init__(formats)
        self.zero_tail = zero_tail

    def divergence(self, teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
        if self.zero_tail:
            valid = torch.cat([valid[..., :-1], torch.zeros_like(valid[..., -1:])], -1)
        return forward_kl(teacher, log_student, valid)


class ReverseKL(TopKDivergence):
    """Reverse KL, ``KL(student || teacher)`` (MiniLLM's; mode-seeking; `divergences.reverse_kl`). Teacher bins
    below ``teacher_floor`` are raised to it (and renormalized): an empty teacher bin would make it infinite,
    and fp32 probabilities sum to one only to about 1e-7, so a smaller teacher rest is rounding noise."""

    def __init__(self, formats: tuple[str, ...] = COT_FORMATS, teacher_floor: float = 1e-6) -> None:
        super().__init__(formats)
        if not 0 < teacher_floor < 1:
            raise ValueError(f"teacher_floor must be in (0, 1), got {teacher_floor}")
        self.teacher_floor = teacher_floor

    def divergence(self, teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
        return reverse_kl(teacher, log_student, valid, self.teacher_floor)


class GeneralizedJSD(TopKDivergence):
    """GKD's generalized JSD with TRL's convention: ``beta KL(p || m) + (1 - beta) KL(q || m)``,
    ``m = beta p + (1 - beta) q``, ``p`` the teacher; ``beta = 0``: forward KL, ``1``: reverse KL
    (`divergences.generalized_jsd`; ``teacher_floor`` as in `ReverseKL`, used only at ``beta = 1``)."""

    def __init__(
        self,
        formats: tuple[str, ...] = COT_FORMATS,
        beta: float = 0.5,
        teacher_floor: float = 1e-6,
    ) -> None:
        super().__init__(formats)
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta, self.teacher_floor = beta, teacher_floor

    def divergence(self, teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
        return generalized_jsd(teacher, log_student, valid, self.beta, self.teacher_floor)


class SkewKL(TopKDivergence):
    """DistiLLM's skew KL, ``KL(p || alpha p + (1 - alpha) q)``, ``p`` the teacher (`divergences.skew_kl`;
    ``alpha = 0``: forward KL; DistiLLM's default 0.1)."""

    def __init__(self, formats: tuple[str, ...] = COT_FORMATS, alpha: float = 0.1) -> None:
        super().__init__(formats)
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha

    def divergence(self, teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
        return skew_kl(teacher, log_student, valid, self.alpha)


class TotalVariation(TopKDivergence):
    """Total variation distance, ``(1/2) sum |p - q|`` over the bins (`divergences.total_variation`)."""

    def divergence(self, teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
        return total_variation(teacher, log_student, valid)
