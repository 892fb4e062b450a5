"""Divergences between the teacher's top-k and the student, on the (k+1)-bin partition.

A position's teacher target is a list of k ids with probabilities ``p``. Both distributions are
coarse-grained onto k + 1 bins: one per distinct top-k id, and one for the rest of the vocabulary. The
teacher's rest is ``1 - sum p``, clamped at 0 (a list summing above one is first scaled down to one); the
student's rest is its exact probability outside the top-k ids, a log-sum-exp over the other logits (never
``1 - sum q``, which loses its precision where the top-k hold nearly all the mass). Each divergence here is
then a true divergence of two distributions on k + 1 bins: never negative, zero only where they agree. A
repeated id (`specialight align` pads with the student's own id at probability 0) is one bin holding the
sum of its probabilities.

Memory: `BinLogProbs` is the only function that sees the logits ``[..., V]``; its hand-written backward
builds the gradient in one ``[..., V]`` buffer, as plain cross-entropy does. The divergences themselves work
on ``[..., k + 1]`` bin tensors, with autograd.

Shapes: ``teacher`` ``[..., k + 1]`` (bin probabilities, rest last), ``log_student`` ``[..., k + 1]``
(bin log-probabilities, rest last), ``valid`` ``[..., k + 1]`` (False on a repeated id's later copies);
each divergence returns ``[...]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def wide_float(tensor: Tensor) -> Tensor:
    """``tensor`` in at least float32 (bf16/fp16 logits are summed in fp32; fp64 stays fp64)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def teacher_bins(ids: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher bin probabilities ``[..., k + 1]`` (rest last) and the bins that count ``[..., k + 1]``,
    from top-k ``ids``/``probs`` ``[..., k]``: a repeated id's first copy holds the sum, later copies are
    not bins."""
    same = ids.unsqueeze(-1) == ids.unsqueeze(-2)  # [..., k, k]: same[i, j] = ids[i] == ids[j]
    first = ~same.tril(-1).any(-1)  # [..., k]: no earlier copy
    probs = probs.clamp_min(0)
    merged = (same * probs.unsqueeze(-2)).sum(-1)  # [..., k]: each id's total probability
    top = torch.where(first, merged, 0) / probs.sum(-1, keepdim=True).clamp_min(1)
    rest = (1 - top.sum(-1, keepdim=True)).clamp_min(0)
    return torch.cat([top, rest], -1), torch.cat([first, torch.ones_like(first[..., :1])], -1)


class BinLogProbs(torch.autograd.Function):
    """The student's log-probabilities of the k + 1 bins and of the label, from logits.

    ``logits`` ``[..., V]``, ``ids`` ``[..., k]``, ``labels`` ``[...]`` -> ``[..., k + 2]``: the k top-k
    ids (a repeated id repeats its value), the rest of the vocabulary (all ids outside ``ids``), the label.
    Backward, with ``g`` the output's gradient, ``G`` its sum, ``pi`` the softmax and ``rho`` the softmax
    restricted to the rest: ``scatter(g_top) + scatter(g_label) + [v in rest] g_rest rho_v - G pi_v``;
    on the rest, ``pi_v = rho_v q_rest``, so one buffer of ``rho`` serves both terms.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, labels: Tensor) -> Tensor:  # noqa: ANN001 (autograd API)
        wide = wide_float(logits)
        log_normalizer = torch.logsumexp(wide, -1, keepdim=True)  # [..., 1]
        picked = torch.gather(wide, -1, torch.cat([ids, labels.unsqueeze(-1)], -1))  # [..., k + 1]
        # the top-k masked out: in place where widening made a copy already (bf16/fp16 logits), else in a copy
        masked = wide.scatter_(-1, ids, -math.inf) if wide is not logits else wide.scatter(-1, ids, -math.inf)
        rest = torch.logsumexp(masked, -1, keepdim=True)  # [..., 1]
        out = torch.cat([picked[..., :-1], rest, picked[..., -1:]], -1) - log_normalizer
        ctx.save_for_backward(logits, ids, labels, out, rest)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001 (autograd API)
        logits, ids, labels, out, rest = ctx.saved_tensors
        grad = grad.to(out.dtype)
        total = grad.sum(-1, keepdim=True)  # [..., 1]
        buffer = logits.to(out.dtype, copy=True).sub_(rest).exp_()  # rho on the rest; top-k entries replaced
        buffer.mul_(grad[..., -2:-1] - total * out[..., -2:-1].exp())
        buffer.scatter_(-1, ids, -total * out[..., :-2].exp())  # -G pi at the top-k ids (a copy writes the same)
        buffer.scatter_add_(-1, ids, grad[..., :-2])
        buffer.scatter_add_(-1, labels.unsqueeze(-1), grad[..., -1:])
        return buffer.to(logits.dtype), None, None


def _log(probs: Tensor) -> Tensor:
    """``log p`` where ``p > 0``, else 0 (a finite stand-in: every term it enters is zeroed there)."""
    return torch.where(probs > 0, probs, 1).log()


def forward_kl(teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
    """``KL(p || q) = sum_j p_j (log p_j - log q_j)`` over the bins (mean-seeking; the paper's loss)."""
    terms = torch.where(teacher > 0, teacher * (_log(teacher) - log_student), 0)
    return (terms * valid).sum(-1)


def reverse_kl(teacher: Tensor, log_student: Tensor, valid: Tensor, floor: float) -> Tensor:
    """``KL(q || p~) = sum_j q_j (log q_j - log p~_j)`` (mode-seeking, MiniLLM's).

    ``p~`` is the teacher with every bin raised to at least ``floor`` and renormalized: a bin the teacher
    gives no mass (its rest, where its top-k sum to one) would make the divergence infinite."""
    raised = torch.where(valid, teacher.clamp_min(floor), 0)
    raised = raised / raised.sum(-1, keepdim=True)
    terms = log_student.exp() * (log_student - _log(raised))
    return (terms * valid).sum(-1)


def generalized_jsd(teacher: Tensor, log_student: Tensor, valid: Tensor, beta: float, floor: float) -> Tensor:
    """GKD's generalized Jensen-Shannon divergence, TRL's convention (``GKDTrainer.generalized_jsd_loss``):
    ``beta KL(p || m) + (1 - beta) KL(q || m)`` with ``m = beta p + (1 - beta) q``, ``p`` the teacher.

    As in TRL, ``beta = 0`` is the forward KL ``KL(p || q)`` and ``beta = 1`` the reverse ``KL(q || p)``
    (the formula itself is 0 at both ends); the reverse KL takes the teacher ``floor`` (`reverse_kl`)."""
    if beta == 0:
        return forward_kl(teacher, log_student, valid)
    if beta == 1:
        return reverse_kl(teacher, log_student, valid, floor)
    log_teacher, student_side = _log(teacher), log_student + math.log1p(-beta)
    mixture = torch.where(teacher > 0, torch.logaddexp(log_teacher + math.log(beta), student_side), student_side)
    teacher_terms = torch.where(teacher > 0, teacher * (log_teacher - mixture), 0)
    student_terms = log_student.exp() * (log_student - mixture)
    return ((beta * teacher_terms + (1 - beta) * student_terms) * valid).sum(-1)


def skew_kl(teacher: Tensor, log_student: Tensor, valid: Tensor, alpha: float) -> Tensor:
    """DistiLLM's skew KL, ``KL(p || alpha p + (1 - alpha) q)`` (``alpha = 0``: the forward KL).

    DistiLLM's code minimizes ``-sum p log m``; that differs from this by the teacher's entropy, a constant
    with no gradient, so training is the same and the value here is 0 where the two agree."""
    if alpha == 0:
        return forward_kl(teacher, log_student, valid)
    log_teacher = _log(teacher)
    mixture = torch.logaddexp(log_teacher + math.log(alpha), log_student + math.log1p(-alpha))
    terms = torch.where(teacher > 0, teacher * (log_teacher - mixture), 0)
    return (terms * valid).sum(-1)


def total_variation(teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
    """``(1/2) sum_j |p_j - q_j|``, in [0, 1]."""
    return 0.5 * ((teacher - log_student.exp()).abs() * valid).sum(-1)
