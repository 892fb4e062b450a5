import pytest
import torch

from specialight.data.formats import FORMATS
from specialight.losses import IGNORE_INDEX, DistributionMatching, SampleMatching

B, T, V, K = 3, 5, 11, 4
COT = FORMATS.index("zero_shot_cot")
AO = FORMATS.index("zero_shot_answer_only")


def batch(labels, ids, probs, format_id=COT):
    return {"labels": labels, "topk_ids": ids, "topk_probs": probs, "format_ids": torch.full((B,), format_id)}


def one_hot_batch(labels, format_id=COT):
    ids = labels.clamp_min(0).unsqueeze(-1).repeat(1, 1, K)
    probs = torch.zeros(B, T, K)
    probs[..., 0] = 1.0
    return batch(labels, ids, probs, format_id)


def test_one_hot_distribution_matching_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[0, 3:] = IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert SampleMatching()(logits, {"labels": labels}) == pytest.approx(expected.item(), rel=1e-5)
    assert DistributionMatching()(logits, one_hot_batch(labels)) == pytest.approx(expected.item(), rel=1e-5)


def test_zero_when_student_equals_teacher_on_the_top_k_support():
    torch.manual_seed(1)
    logits = torch.randn(B, T, V)
    student = logits.softmax(-1)
    top = student.topk(K, dim=-1)
    labels = top.indices[..., 0]
    loss = DistributionMatching()(logits, batch(labels, top.indices, top.values))  # zero tail: unnormalized
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    shifted = DistributionMatching()(logits + torch.randn(B, T, V), batch(labels, top.indices, top.values))
    assert shifted.item() > 0.01


def test_ignored_positions_do_not_count():
    torch.manual_seed(2)
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    masked = labels.clone()
    masked[:, 2:] = IGNORE_INDEX
    garbage = logits.clone()
    garbage[:, 2:] = 1e4 * torch.randn(B, T - 2, V)
    for loss in (SampleMatching(), DistributionMatching()):
        data = one_hot_batch(masked)
        assert loss(garbage, data).item() == pytest.approx(loss(logits, data).item(), rel=1e-5)


def test_gradients_flow_only_into_the_student():
    torch.manual_seed(3)
    logits = torch.randn(B, T, V, requires_grad=True)
    teacher_logits = torch.randn(B, T, V, requires_grad=True)
    top = teacher_logits.softmax(-1).topk(K, dim=-1)
    DistributionMatching()(logits, batch(top.indices[..., 0], top.indices, top.values)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert teacher_logits.grad is None  # the teacher's targets are detached data


def test_answer_only_formats_use_cross_entropy_by_default():
    torch.manual_seed(4)
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    ids = torch.randint(0, V, (B, T, K))
    probs = torch.full((B, T, K), 0.25)
    ce = SampleMatching()(logits, {"labels": labels})
    assert DistributionMatching()(logits, batch(labels, ids, probs, AO)).item() == pytest.approx(ce.item(), rel=1e-5)
    kl = DistributionMatching()(logits, batch(labels, ids, probs, COT))
    assert kl.item() != pytest.approx(ce.item(), rel=1e-3)
    everywhere = DistributionMatching(formats=FORMATS)
    assert everywhere(logits, batch(labels, ids, probs, AO)).item() == pytest.approx(kl.item(), rel=1e-5)


def test_distribution_matching_refuses_batches_without_teacher_targets():
    with pytest.raises(ValueError, match="specialight align"):
        DistributionMatching()(torch.randn(B, T, V), {"labels": torch.zeros(B, T, dtype=torch.long)})


def test_hand_written_backward_matches_autograd():
    torch.manual_seed(5)
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, V, (B, T, K))
    probs = torch.rand(B, T, K, dtype=torch.float64) / K
    labels = torch.randint(0, V, (B, T))
    labels[1, 2:] = IGNORE_INDEX
    formats = torch.tensor([COT, AO, COT])
    data = {"labels": labels, "topk_ids": ids, "topk_probs": probs, "format_ids": formats}
    DistributionMatching()(logits, data).backward()
    ours = logits.grad.clone()

    logits.grad = None
    log_q = logits.log_softmax(-1)
    kl = (probs * (probs.log() - log_q.gather(-1, ids))).sum(-1)
    ce = -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    per_token = torch.where((formats != AO).unsqueeze(-1), kl, ce)
    mask = (labels != IGNORE_INDEX).double()
    ((per_token * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(ours, logits.grad)
    assert torch.autograd.gradcheck(
        lambda z: DistributionMatching()(z, data), (logits.detach().clone().requires_grad_(True),)
    )
