"""Loss plugins: a `SpecializationLoss` maps ``(logits, batch)`` to a scalar; pick one by ``class_path``.

Shapes: ``logits`` ``[B, T, V]`` already aligned with ``batch["labels"]`` ``[B, T]`` (the module shifts
decoder-only logits by one), ignored positions hold ``IGNORE_INDEX``. Sparse teacher targets, where the
batch has them: ``batch["topk_ids"]`` ``[B, T, k]`` and ``batch["topk_probs"]`` ``[B, T, k]`` (from
``specialight align``; one-hot rows where the alignment was not one-to-one). ``batch["format_ids"]``
``[B]`` indexes `specialight.data.formats.FORMATS`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specialight.data.formats import FORMATS, check_format

IGNORE_INDEX = -100


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the unmasked positions of ``[B, T]`` values (0 when nothing is unmasked)."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


class SpecializationLoss(nn.Module):
    """Base class of loss plugins: masking of ignored positions lives here, once."""

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


class SampleMatching(SpecializationLoss):
    """Token cross-entropy on the target text (a teacher sample or a gold rationale)."""

    def per_token(self, logits: Tensor, batch: dict[str, Tensor], labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none")


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
        logits = logits.float()
        log_normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, T, 1]
        probs = batch["topk_probs"].detach().float()  # [B, T, k]; the teacher is a target, never trained
        student = torch.gather(logits, -1, batch["topk_ids"]) - log_normalizer  # [B, T, k]
        teacher_log = torch.where(probs > 0, probs.clamp_min(1e-30).log(), torch.zeros_like(probs))
        kl = (probs * (teacher_log - student)).sum(-1)  # [B, T]
        cross_entropy = log_normalizer.squeeze(-1) - torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
        use_kl = self.chosen[batch["format_ids"]].unsqueeze(-1)  # [B, 1]
        return torch.where(use_kl, kl, cross_entropy)
