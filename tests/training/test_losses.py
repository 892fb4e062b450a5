import pytest
import torch

from specialight.core.constants import IGNORE_INDEX
from specialight.data.formats import FORMATS
from specialight.training.losses import DistributionMatching, OutputHead, SampleMatching

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
    assert SampleMatching().from_logits(logits, {"labels": labels}) == pytest.approx(expected.item(), rel=1e-5)
    assert DistributionMatching().from_logits(logits, one_hot_batch(labels)) == pytest.approx(expected.item(), rel=1e-5)


def test_zero_when_student_equals_teacher_on_the_top_k_support():
    torch.manual_seed(1)
    logits = torch.randn(B, T, V)
    student = logits.softmax(-1)
    top = student.topk(K, dim=-1)
    labels = top.indices[..., 0]
    loss = DistributionMatching().from_logits(logits, batch(labels, top.indices, top.values))  # zero tail: unnormalized
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    shifted = DistributionMatching().from_logits(logits + torch.randn(B, T, V), batch(labels, top.indices, top.values))
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
        assert loss.from_logits(garbage, data).item() == pytest.approx(loss.from_logits(logits, data).item(), rel=1e-5)


def test_gradients_flow_only_into_the_student():
    torch.manual_seed(3)
    logits = torch.randn(B, T, V, requires_grad=True)
    teacher_logits = torch.randn(B, T, V, requires_grad=True)
    top = teacher_logits.softmax(-1).topk(K, dim=-1)
    DistributionMatching().from_logits(logits, batch(top.indices[..., 0], top.indices, top.values)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert teacher_logits.grad is None  # the teacher's targets are detached data


def test_answer_only_formats_use_cross_entropy_by_default():
    torch.manual_seed(4)
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    ids = torch.randint(0, V, (B, T, K))
    probs = torch.full((B, T, K), 0.25)
    ce = SampleMatching().from_logits(logits, {"labels": labels})
    answer_only = DistributionMatching().from_logits(logits, batch(labels, ids, probs, AO))
    assert answer_only.item() == pytest.approx(ce.item(), rel=1e-5)
    kl = DistributionMatching().from_logits(logits, batch(labels, ids, probs, COT))
    assert kl.item() != pytest.approx(ce.item(), rel=1e-3)
    everywhere = DistributionMatching(formats=FORMATS)
    assert everywhere.from_logits(logits, batch(labels, ids, probs, AO)).item() == pytest.approx(kl.item(), rel=1e-5)


def test_distribution_matching_refuses_batches_without_teacher_targets():
    with pytest.raises(ValueError, match="specialight align"):
        DistributionMatching().from_logits(torch.randn(B, T, V), {"labels": torch.zeros(B, T, dtype=torch.long)})


def test_the_zero_tail_option_is_the_papers_kl_on_the_top_k_alone():
    torch.manual_seed(5)
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    ids = torch.rand(B, T, V).argsort(-1)[..., :K]  # distinct ids: the paper's targets
    probs = torch.rand(B, T, K, dtype=torch.float64) / K
    labels = torch.randint(0, V, (B, T))
    labels[1, 2:] = IGNORE_INDEX
    formats = torch.tensor([COT, AO, COT])
    data = {"labels": labels, "topk_ids": ids, "topk_probs": probs, "format_ids": formats}
    DistributionMatching(zero_tail=True).from_logits(logits, data).backward()
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
        lambda z: DistributionMatching(zero_tail=True).from_logits(z, data),
        (logits.detach().clone().requires_grad_(True),),
    )


def test_the_zero_tail_can_go_negative_and_the_rest_bin_cannot():
    logits = torch.zeros(1, 1, V)
    logits[0, 0, 0] = 5.0  # the student gives id 0 about 0.93
    ids = torch.arange(K).view(1, 1, K)
    probs = torch.tensor([[[0.5, 0.0, 0.0, 0.0]]])  # the teacher gives it 0.5 and the rest of its mass elsewhere
    data = {"labels": torch.zeros(1, 1, dtype=torch.long), "topk_ids": ids, "topk_probs": probs}
    data["format_ids"] = torch.tensor([COT])
    assert DistributionMatching(zero_tail=True).from_logits(logits, data).item() < -0.1
    assert DistributionMatching().from_logits(logits, data).item() > 0.1


def chunked_case(dtype=torch.float64, d=6, t=9):
    """Hidden states, an output head and a batch of mixed formats with ignored positions."""
    torch.manual_seed(6)
    hidden = torch.randn(B, t, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, d, dtype=dtype, requires_grad=True)
    bias = torch.randn(V, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, V, (B, t))
    labels[0, :3] = IGNORE_INDEX
    labels[2, 6:] = IGNORE_INDEX
    probs = torch.rand(B, t, K, dtype=dtype) / K
    data = {"labels": labels, "topk_ids": torch.randint(0, V, (B, t, K)), "topk_probs": probs}
    data["format_ids"] = torch.tensor([COT, AO, COT])
    return hidden, weight, bias, data


@pytest.mark.parametrize("loss_class", [SampleMatching, DistributionMatching])
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("chunk_positions", [1, 4, 1000])
def test_chunked_loss_equals_the_dense_loss_and_its_gradients(loss_class, softcap, chunk_positions):
    hidden, weight, bias, data = chunked_case()
    dense_loss = loss_class()
    dense = dense_loss.from_logits(OutputHead(weight, bias, softcap).logits(hidden), data)
    expected = torch.autograd.grad(dense, (hidden, weight, bias))
    chunked_loss = loss_class()
    chunked_loss.chunk_elements = chunk_positions * V  # 1 and 4 positions per chunk: many chunks
    ours = chunked_loss(hidden, OutputHead(weight, bias, softcap), data)
    grads = torch.autograd.grad(ours, (hidden, weight, bias))
    assert ours.item() == pytest.approx(dense.item(), rel=1e-10)
    for mine, reference in zip(grads, expected):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)
    assert grads[0][0, :3].abs().sum() == 0  # ignored positions get no gradient


def test_chunked_loss_passes_gradcheck_and_handles_no_bias_and_no_scored_position():
    hidden, weight, _, data = chunked_case(d=3, t=4)
    loss = DistributionMatching()
    loss.chunk_elements = 2 * V
    assert torch.autograd.gradcheck(lambda h, w: loss(h, OutputHead(w), data), (hidden, weight))
    nothing = {**data, "labels": torch.full_like(data["labels"], IGNORE_INDEX)}
    empty = SampleMatching()(hidden, OutputHead(weight), nothing)
    empty.backward()
    assert empty.item() == 0.0 and hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


def test_chunked_loss_under_bfloat16_autocast_is_close_to_the_dense_one():
    hidden, weight, bias, data = chunked_case(dtype=torch.float32, d=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = DistributionMatching().from_logits(OutputHead(weight, bias).logits(hidden), data)
        ours = DistributionMatching()(hidden, OutputHead(weight, bias), data)
    expected = torch.autograd.grad(dense, (hidden, weight))
    grads = torch.autograd.grad(ours, (hidden, weight))
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(dense.item(), rel=1e-3)
    for mine, reference in zip(grads, expected):
        torch.testing.assert_close(mine, reference, rtol=2e-2, atol=2e-3)
