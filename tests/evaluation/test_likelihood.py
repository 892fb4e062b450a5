from __future__ import annotations

import pytest
import torch

from specialight.data.formats import newline_separator
from specialight.evaluation.likelihood import (
    LIKELIHOOD_SUITES,
    ReferenceText,
    build_texts,
    paired_difference,
    summarize,
    token_nlls,
)


def _direct_nll(model, tokenizer, text) -> float:
    """One text alone, no padding: the mean cross-entropy of its target tokens."""
    prompt = tokenizer.encode(text.prompt, add_special_tokens=True)
    target = tokenizer.encode(text.target, add_special_tokens=False)
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return float(model(input_ids=torch.tensor([prompt]), labels=torch.tensor([target])).loss)
        ids = torch.tensor([prompt + target])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(target)))


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    except ValueError:
        model = AutoModelForCausalLM.from_pretrained(folder)
    return model.eval(), tokenizer


def test_every_suite_builds_from_the_real_files(data_dir, t5_tokenizer):
    newline = newline_separator(t5_tokenizer)
    for suite in LIKELIHOOD_SUITES:
        texts = build_texts(suite, data_dir, newline, limit=2, bbh_tasks=["snarks", "navigate"])
        assert texts and all(t.target.strip() for t in texts)
        assert all("\n" not in t.prompt + t.target for t in texts)  # T5's newline stand-in
    import json

    cot = build_texts("nll_bbh_cot", data_dir, None, bbh_tasks=["boolean_expressions"])
    # only completions the BBH scorer grades correct are reference text: as many as the official accuracy says
    official = json.loads((data_dir / "bbh-reference-outputs" / "official_accuracy.json").read_text())
    assert abs(len(cot) - official["cot"]["boolean_expressions"] * 250 / 100) <= 1
    assert all("the answer is" in t.target for t in cot)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2_dir", pytest.param("tiny_t5_dir", marks=pytest.mark.slow)])
def test_batched_nll_equals_one_text_at_a_time(model_fixture, data_dir, request):
    model, tokenizer = _load(request.getfixturevalue(model_fixture))
    newline = newline_separator(tokenizer)
    texts = build_texts("nll_gsm8k_dev_zero_shot", data_dir, newline, limit=3)
    texts += build_texts("nll_bbh_ao", data_dir, newline, limit=2, bbh_tasks=["navigate"])
    batched = token_nlls(model, tokenizer, texts, batch_size=5, progress=False)
    assert batched == pytest.approx([_direct_nll(model, tokenizer, t) for t in texts], rel=1e-4)


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_loses_its_left_edge(tiny_gpt2_dir, data_dir):
    model, tokenizer = _load(tiny_gpt2_dir)
    texts = build_texts("nll_bbh_cot", data_dir, None, limit=3, bbh_tasks=["multistep_arithmetic_two"])
    lengths = [len(tokenizer.encode(t.prompt + t.target)) for t in texts]
    assert max(lengths) > model.config.n_positions  # 3-shot CoT prompts overflow GPT-2's 1,024 positions
    values = token_nlls(model, tokenizer, texts, batch_size=3, progress=False)
    # the prompt keeps its last tokens (the question and the answer cue), the target is whole
    limit = model.config.n_positions
    for text, value in zip(texts, values):
        target = tokenizer.encode(text.target, add_special_tokens=False)
        prompt = tokenizer.encode(text.prompt)[-(limit - len(target)) :]
        kept = ReferenceText(text.suite, text.id, tokenizer.decode(prompt), text.target)
        assert tokenizer.encode(kept.prompt) == prompt
        assert value == pytest.approx(_direct_nll(model, tokenizer, kept), rel=1e-4)


class _BosTokenizer:
    """GPT-2's tokenizer with a BOS token before every prompt, as Llama-style tokenizers add one."""

    def __init__(self, inner, bos: int) -> None:
        self.inner, self.bos_token_id = inner, bos
        self.pad_token_id = self.eos_token_id = inner.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.inner.encode(text)
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.slow
def test_a_shortened_prompt_keeps_its_leading_bos_as_generation_does(tiny_gpt2_dir, data_dir):
    from specialight.evaluation.generation import cut_left

    model, inner = _load(tiny_gpt2_dir)
    bos = 31  # "@": any id; the point is that it leads every prompt
    tokenizer = _BosTokenizer(inner, bos)
    texts = build_texts("nll_bbh_cot", data_dir, None, limit=2, bbh_tasks=["multistep_arithmetic_two"])
    limit = model.config.n_positions
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    values = token_nlls(model, tokenizer, texts, batch_size=2, progress=False)
    hook.remove()
    assert seen[0][0, 0] == bos  # the shared prefix's prefill starts at BOS
    for text, value in zip(texts, values):
        prompt, target = tokenizer.encode(text.prompt), tokenizer.encode(text.target, add_special_tokens=False)
        assert len(prompt) + len(target) > limit
        kept = [bos, *prompt[len(prompt) - (limit - len(target)) + 1 :]]
        assert kept == cut_left(prompt, limit - len(target), bos)  # generation's cut keeps the same tokens
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([kept + target])).logits[0, len(kept) - 1 : -1]
        assert value == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor(target))), rel=1e-4)


@pytest.mark.slow
def test_paired_difference_is_zero_for_the_same_model_and_moves_when_trained_on_the_text(tiny_gpt2_dir, data_dir):
    model, tokenizer = _load(tiny_gpt2_dir)
    texts = build_texts("nll_gsm8k_dev_zero_shot", data_dir, None, limit=12)
    before = dict(zip([t.id for t in texts], token_nlls(model, tokenizer, texts, progress=False)))
    # the same model scored again, in another batching: the paired change is nothing
    again = dict(zip([t.id for t in texts], token_nlls(model, tokenizer, texts, batch_size=5, progress=False)))
    same = paired_difference(before, again)
    assert abs(same["mean"]) < 1e-5 and same["low"] <= 0 <= same["high"] and same["n"] == 12
    assert same["high"] - same["low"] < 1e-4

    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text.prompt + text.target)])
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    after = dict(zip([t.id for t in texts], token_nlls(model, tokenizer, texts, progress=False)))
    moved = paired_difference(before, after)
    assert moved["high"] < 0  # the interval excludes no change: likelihood of the trained text rose
    summary = summarize(list(after.values()))
    assert summary["n"] == 12 and summary["low"] <= summary["mean"] <= summary["high"]


def test_batches_keep_the_logits_of_a_forward_pass_within_the_budget(monkeypatch):
    from types import SimpleNamespace

    from specialight.evaluation import likelihood

    monkeypatch.setattr(likelihood, "LOGITS_BUDGET", 1000)
    config = SimpleNamespace(vocab_size=10)
    lengths = [49, 9, 9, 9, 9, 9, 9, 99]  # targets of 50, 10, ..., 100 positions x 10 logits
    batches = likelihood._batches(list(range(8)), lengths, batch_size=4, config=config)
    assert [i for batch in batches for i in batch] == list(range(8))
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(lengths[i] + 1 for i in batch) * 10 <= 1000
    assert batches == [[0, 1], [2, 3, 4, 5], [6], [7]]
