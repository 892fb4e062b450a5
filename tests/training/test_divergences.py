"""The divergence plugins on the (k+1)-bin partition, against a dense [B, T, V] reference written here."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specialight.core.constants import IGNORE_INDEX
from specialight.data.formats import FORMATS
from specialight.training.divergences import BinLogProbs
from specialight.training.losses import (
    DistributionMatching,
    GeneralizedJSD,
    OutputHead,
    ReverseKL,
    SkewKL,
    TotalVariation,
)
from specialight.training.module import SpecializationModule

COT, AO = FORMATS.index("zero_shot_cot"), FORMATS.index("zero_shot_answer_only")
LOSSES = {
    "forward_kl": DistributionMatching,
    "reverse_kl": ReverseKL,
    "jsd": lambda: GeneralizedJSD(beta=0.3),
    "jsd_beta_1": lambda: GeneralizedJSD(beta=1.0),
    "skew_kl": lambda: SkewKL(alpha=0.2),
    "total_variation": TotalVariation,
}
FLOOR = 1e-6


def dense_bin_divergence(name: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-bin terms of each divergence, elementwise on probabilities (the bins are summed by the caller)."""
    if name == "forward_kl":
        return torch.xlogy(p, p) - torch.xlogy(p, q)
    if name in ("reverse_kl", "jsd_beta_1"):  # p: the teacher already floored and renormalized
        return q * (q.log() - p.log())
    if name == "jsd":
        m = 0.3 * p + 0.7 * q
        return 0.3 * (torch.xlogy(p, p) - torch.xlogy(p, m)) + 0.7 * q * (q.log() - m.log())
    if name == "skew_kl":
        m = 0.2 * p + 0.8 * q
        return torch.xlogy(p, p) - torch.xlogy(p, m)
    return 0.5 * (p - q).abs()


def dense_reference(name: str, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss the plain way: a dense teacher [B, T, V] on the top-k ids, the rest as one bin, the student's
    softmax summed over the rest; cross-entropy at one-hot rows and answer-only formats; the token mean."""
    ids, probs, labels = batch["topk_ids"], batch["topk_probs"].to(logits.dtype), batch["labels"]
    q = logits.softmax(-1)  # [B, T, V]
    in_top = torch.zeros_like(q).scatter(-1, ids, 1.0) > 0
    p = torch.zeros_like(q).scatter_add(-1, ids, probs) / probs.sum(-1, keepdim=True).clamp_min(1)
    p_rest, q_rest = (1 - p.sum(-1)).clamp_min(0), (q * ~in_top).sum(-1)
    if name in ("reverse_kl", "jsd_beta_1"):
        p, p_rest = torch.where(in_top, p.clamp_min(FLOOR), 0), p_rest.clamp_min(FLOOR)
        total = p.sum(-1) + p_rest
        p, p_rest = p / total.unsqueeze(-1), p_rest / total
    dummy = torch.where(in_top, p, 1.0)  # outside the top-k: any finite stand-in, its terms are dropped
    top_terms = torch.where(in_top, dense_bin_divergence(name, dummy, q), 0).sum(-1)
    value = top_terms + dense_bin_divergence(name, p_rest, q_rest)
    cross_entropy = -q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1).log()
    matched = (batch["format_ids"] != AO).unsqueeze(-1) & ~(probs >= 1).any(-1)
    per_position = torch.where(matched, value, cross_entropy)
    mask = labels != IGNORE_INDEX
    return per_position[mask].sum() / mask.sum()


def targets(shape: tuple[int, int], vocab: int, k: int, generator: torch.Generator, labels: torch.Tensor):
    """Teacher top-k rows of every kind `specialight align` writes: distinct ids led by the label, the
    label repeated as padding at probability 0, one-hot rows (label, then id 0), and a top-k summing to one."""
    rows = shape[0] * shape[1]
    ids = torch.rand(rows, vocab, generator=generator).argsort(-1)[:, :k]
    flat = labels.clamp_min(0).reshape(rows)
    ids[:, 0] = flat
    ids[:, 1:] = torch.where(ids[:, 1:] == flat.unsqueeze(-1), (flat.unsqueeze(-1) + 1) % vocab, ids[:, 1:])
    probs = torch.rand(rows, k, generator=generator) ** 3
    probs = probs / probs.sum(-1, keepdim=True) * torch.rand(rows, 1, generator=generator)
    ids[1::4, k - 2 :] = ids[1::4, :1]  # align's padding: the label again at probability 0
    probs[1::4, k - 2 :] = 0
    ids[2::4, 1:], probs[2::4] = 0, torch.tensor([1.0] + [0.0] * (k - 1))  # one-hot: no teacher distribution
    probs[3::4] /= probs[3::4].sum(-1, keepdim=True)  # a renormalized top-k: the teacher's rest is empty
    return ids.view(*shape, k), probs.view(*shape, k)


def logits_batch(dtype=torch.float64, b=3, t=8, vocab=13, k=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, vocab, generator=generator, dtype=dtype)).requires_grad_(True)
    labels = torch.randint(0, vocab, (b, t), generator=generator)
    labels[0, 5:] = IGNORE_INDEX
    ids, probs = targets((b, t), vocab, k, generator, labels)
    probs = probs.to(dtype)  # the teacher's bins in the logits' precision, as the reference computes them
    return logits, {"labels": labels, "topk_ids": ids, "topk_probs": probs, "format_ids": torch.tensor([COT, AO, COT])}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_values_and_gradients_equal_the_dense_reference(name):
    logits, batch = logits_batch()
    ours = LOSSES[name]().from_logits(logits, batch)
    (grad,) = torch.autograd.grad(ours, logits)
    reference = dense_reference(name, logits, batch)
    (expected,) = torch.autograd.grad(reference, logits)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-10)
    torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_chunked_path_equals_the_dense_reference(name):
    generator = torch.Generator().manual_seed(3)
    logits, batch = logits_batch(seed=3)
    hidden = torch.randn(3, 8, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = LOSSES[name]()
    loss.chunk_elements = 3 * 13  # three positions per chunk
    ours = loss(hidden, OutputHead(weight), batch)
    reference = dense_reference(name, OutputHead(weight).logits(hidden), batch)
    grads = torch.autograd.grad(ours, (hidden, weight))
    expected = torch.autograd.grad(reference, (hidden, weight))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-10)
    for mine, theirs in zip(grads, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-12)


def test_bin_log_probs_pass_gradcheck_with_repeated_ids_and_labels_in_and_out_of_the_top_k():
    torch.manual_seed(4)
    logits = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 1, 2], [3, 3, 3], [4, 0, 4], [8, 7, 6], [1, 2, 5]])
    labels = torch.tensor([0, 3, 5, 2, 8])
    assert torch.autograd.gradcheck(lambda z: BinLogProbs.apply(z, ids, labels), (logits,))
    bins = BinLogProbs.apply(logits, ids, labels).exp()
    distinct = torch.tensor([3, 1, 2, 3, 3])
    top = torch.stack([bins[i, : distinct[i]].sum() for i in range(5)])  # the repeated ids counted once
    torch.testing.assert_close(top + bins[:, -2], torch.ones(5, dtype=torch.float64))


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    vocab=st.integers(6, 40),
    k=st.integers(2, 5),
    sharpness=st.floats(0.01, 30.0),
)
def test_every_divergence_is_never_negative(seed, vocab, k, sharpness):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (2, 6), generator=generator)
    ids, probs = targets((2, 6), vocab, k, generator, labels)
    logits = sharpness * torch.randn(2, 6, vocab, generator=generator, dtype=torch.float64)
    lift = sharpness * torch.rand(2, 6, 1, generator=generator, dtype=torch.float64)
    logits = logits.scatter_add(-1, ids[..., :1], lift)  # the teacher's first id often the student's too
    batch = {"labels": labels, "topk_ids": ids, "topk_probs": probs, "format_ids": torch.tensor([COT, COT])}
    for make in LOSSES.values():
        loss = make()
        values = loss.per_position(logits, loss.position_targets(batch))
        assert torch.isfinite(values).all() and (values >= -1e-12).all(), (type(loss).__name__, values.min())


def matching_student(vocab: int = 13):
    """A teacher on 4 top-k ids (one repeated at probability 0) with mass 0.2 on the rest, and a student
    whose logits put exactly the teacher's mass on each of the 5 bins (the rest spread over 10 ids)."""
    ids = torch.tensor([[[2, 7, 5, 2]]])
    probs = torch.tensor([[[0.5, 0.2, 0.1, 0.0]]], dtype=torch.float64)
    logits = torch.full((1, 1, vocab), math.log(0.2 / (vocab - 3)), dtype=torch.float64)
    logits[0, 0, [2, 7, 5]] = probs[0, 0, :3].log()
    batch = {"labels": torch.tensor([[7]]), "topk_ids": ids, "topk_probs": probs, "format_ids": torch.tensor([COT])}
    return logits + 1.7, batch  # a shift of every logit changes nothing


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_where_the_bins_agree_and_positive_where_they_do_not(name):
    logits, batch = matching_student()
    loss = LOSSES[name]()
    assert loss.from_logits(logits, batch).item() == pytest.approx(0.0, abs=1e-12)
    rest = torch.ones(logits.shape[-1], dtype=torch.bool)
    rest[[2, 7, 5]] = False
    within_rest = logits.clone()  # the same bins, the rest's mass spread unevenly: the coarse-grained agree
    within_rest[0, 0, rest] = (0.2 * torch.rand(int(rest.sum()), dtype=torch.float64).softmax(-1)).log()
    within_rest[0, 0, ~rest] = logits[0, 0, ~rest] - 1.7
    assert loss.from_logits(within_rest, batch).item() == pytest.approx(0.0, abs=1e-12)
    assert loss.from_logits(logits + torch.randn_like(logits), batch).item() > 1e-4
    moved = logits.clone()
    moved[0, 0, 2] += 0.3  # more on the first top-k id
    assert loss.from_logits(moved, batch).item() > 1e-4


def test_one_hot_rows_and_answer_only_formats_get_cross_entropy():
    logits, batch = logits_batch()
    one_hot = batch["topk_probs"][..., 0] >= 1
    for make in LOSSES.values():
        loss = make()
        values = loss.per_position(logits, loss.position_targets(batch))
        cross_entropy = -logits.log_softmax(-1).gather(-1, batch["labels"].clamp_min(0).unsqueeze(-1)).squeeze(-1)
        ce_rows = one_hot | (batch["format_ids"] == AO).unsqueeze(-1)
        torch.testing.assert_close(values[ce_rows], cross_entropy[ce_rows])


def test_the_parameters_are_checked():
    for bad in (lambda: GeneralizedJSD(beta=1.5), lambda: SkewKL(alpha=1.0), lambda: ReverseKL(teacher_floor=0)):
        with pytest.raises(ValueError, match="must be in"):
            bad()


def test_teacher_topk_mass_is_the_mean_over_matched_positions():
    _, batch = logits_batch()
    matched = (batch["format_ids"] != AO).unsqueeze(-1) & (batch["topk_probs"] < 1).all(-1)
    matched &= batch["labels"] != IGNORE_INDEX
    expected = batch["topk_probs"].sum(-1)[matched].clamp_max(1).mean()
    assert ReverseKL().teacher_topk_mass(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    answer_only = {**batch, "format_ids": torch.full((3,), AO)}
    assert ReverseKL().teacher_topk_mass(answer_only) is None


def model_batch(module: SpecializationModule, vocab: int) -> dict[str, torch.Tensor]:
    """Two rows (one CoT, one answer-only), right-padded, with every kind of teacher row."""
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, vocab, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    if module.encoder_decoder:
        labels = torch.randint(3, vocab, (2, 6), generator=generator)
        labels[1, 4:] = IGNORE_INDEX
    else:
        labels = input_ids.clone()
        labels[0, :3], labels[1, :4] = IGNORE_INDEX, IGNORE_INDEX
        labels[attention_mask == 0] = IGNORE_INDEX
    ids, probs = targets(tuple(labels.shape), vocab, 5, generator, labels)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return batch | {"topk_ids": ids, "topk_probs": probs, "format_ids": torch.tensor([COT, AO])}


@pytest.mark.slow
@pytest.mark.parametrize("student", ["gpt2", "t5"])
def test_model_gradients_equal_the_dense_reference(student, request):
    module = SpecializationModule(str(request.getfixturevalue(f"tiny_{student}_dir")))
    module.configure_model()
    module.model.eval()  # no dropout: both paths see the same network
    with torch.no_grad():  # logits that spread, so that the divergences differ from one another
        module.model.get_output_embeddings().weight.mul_(20.0)
    vocab = module.model.config.vocab_size
    batch = model_batch(module, vocab)
    params = [p for p in module.model.parameters() if p.requires_grad]
    for name, make in LOSSES.items():
        module.loss = make()
        module.loss.chunk_elements = 4 * vocab  # several chunks per batch
        ours = module.batch_loss(batch)
        grads = torch.autograd.grad(ours, params, allow_unused=True)
        reference = dense_reference(name, module.logits(batch).double(), module.targets(batch))
        expected = torch.autograd.grad(reference, params, allow_unused=True)
        assert ours.item() == pytest.approx(reference.item(), rel=1e-4), name
        for mine, theirs in zip(grads, expected):
            if theirs is None:
                assert mine is None or mine.abs().max() == 0
                continue
            torch.testing.assert_close(mine, theirs.to(mine.dtype), rtol=1e-4, atol=1e-4, msg=name)
