"""Evaluation holds the caller's autocast open for a whole call: each weight is cast once per call, the
outputs are those of a cast at every forward pass, and a weight changed between calls is read anew."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from specialight.evaluation import generation, likelihood
from specialight.evaluation.generation import generate
from specialight.evaluation.likelihood import ReferenceText, token_nlls
from specialight.evaluation.mode import evaluating
from tests.helpers import tiny_llama

PROMPTS = ["Q: What is 2 + 3?\nA:", "Q: Name a colour.\nA:", "Q: How many legs has a cat?\nA:"]
TEXTS = [ReferenceText("nll_test", str(i), prompt, " five apples and a pear") for i, prompt in enumerate(PROMPTS)]


def _bf16():
    """The context `PeriodicEvaluation` passes under bf16-mixed on a CPU: Lightning's, whose autocast keeps
    no casts (``cache_enabled=False``)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return MixedPrecision("bf16-mixed", "cpu").forward_context()


def _weight_casts(run) -> int:
    """Casts of a ``[64, 32]`` tensor (the MLP's gate and up weights, 2 per layer) while ``run()`` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    return sum(1 for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[:1] == [[64, 32]])


def _unheld(monkeypatch) -> None:
    """Evaluation as before the hold: the context entered around each forward pass only."""
    unheld = lambda model, context, hold=True: evaluating(model, context, hold=False)  # noqa: E731
    monkeypatch.setattr(generation, "evaluating", unheld)
    monkeypatch.setattr(likelihood, "evaluating", unheld)


def test_a_held_autocast_casts_each_weight_once_per_call(gpt2_tokenizer, monkeypatch):
    model = tiny_llama(len(gpt2_tokenizer))
    generating = lambda: generate(model, gpt2_tokenizer, PROMPTS, 6, 2, progress=False, context=_bf16)  # noqa: E731
    scoring = lambda: token_nlls(model, gpt2_tokenizer, TEXTS, 2, progress=False, context=_bf16)  # noqa: E731
    assert _weight_casts(generating) == 4  # 2 layers x (gate, up), over 2 batches x 6 forward passes
    assert _weight_casts(scoring) == 4
    _unheld(monkeypatch)
    assert _weight_casts(generating) > 20
    assert _weight_casts(scoring) >= 8


def test_a_held_autocast_gives_the_outputs_of_a_cast_at_every_forward(gpt2_tokenizer, monkeypatch):
    model = tiny_llama(len(gpt2_tokenizer))
    held = generate(model, gpt2_tokenizer, PROMPTS, 8, 2, progress=False, context=_bf16)
    held_nlls = token_nlls(model, gpt2_tokenizer, TEXTS, 2, progress=False, context=_bf16)
    _unheld(monkeypatch)
    assert generate(model, gpt2_tokenizer, PROMPTS, 8, 2, progress=False, context=_bf16) == held
    assert token_nlls(model, gpt2_tokenizer, TEXTS, 2, progress=False, context=_bf16) == pytest.approx(held_nlls)


def test_a_weight_changed_between_calls_is_cast_anew(gpt2_tokenizer):
    model = tiny_llama(len(gpt2_tokenizer))
    before = token_nlls(model, gpt2_tokenizer, TEXTS, 3, progress=False, context=_bf16)
    with torch.no_grad():  # as an optimizer step changes the weights in place between two evaluations
        for parameter in model.model.layers[0].mlp.parameters():
            parameter.mul_(3.0)
    after = token_nlls(model, gpt2_tokenizer, TEXTS, 3, progress=False, context=_bf16)
    fresh = token_nlls(copy.deepcopy(model), gpt2_tokenizer, TEXTS, 3, progress=False, context=_bf16)
    assert after == pytest.approx(fresh)
    assert after != pytest.approx(before)


def test_a_forward_with_gradients_after_evaluating_inside_an_open_autocast_trains_every_weight(gpt2_tokenizer):
    model = tiny_llama(len(gpt2_tokenizer))
    ids = torch.tensor([gpt2_tokenizer.encode(PROMPTS[0])])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. an evaluation inside a training step's own autocast
        generate(model, gpt2_tokenizer, PROMPTS, 4, 2, progress=False, context=_bf16)
        token_nlls(model, gpt2_tokenizer, TEXTS, 2, progress=False, context=_bf16)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    gate = model.model.layers[0].mlp.gate_proj.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_restores_the_training_mode_also_on_an_error(training):
    model = tiny_llama(64).train(training)
    with evaluating(model, _bf16) as per_forward:
        assert not model.training and not torch.is_grad_enabled() and per_forward is contextlib.nullcontext
        assert torch.is_autocast_enabled("cpu") and torch.is_autocast_cache_enabled()  # on, though Lightning's is off
    assert model.training is training and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    for hold in (True, False):
        with pytest.raises(RuntimeError, match="boom"), evaluating(model, _bf16, hold=hold) as per_forward:
            assert per_forward is (contextlib.nullcontext if hold else _bf16)
            raise RuntimeError("boom")
        assert model.training is training and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
