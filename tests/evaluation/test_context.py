"""Prompts longer than a model's context: shortened by the rule, counted, and never past the positions."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialight.evaluation.context import context_length, fit_prompt
from specialight.evaluation.evaluator import Evaluator
from specialight.evaluation.generation import generate
from specialight.evaluation.settings import EvalSettings
from specialight.evaluation.suites import EvalItem, build_items

BUDGET = 256


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.pad_token = tokenizer.eos_token
    assert context_length(model.config) == 1024
    return model, tokenizer


def _length(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text))


@pytest.mark.slow
def test_every_bbh_cot_prompt_fits_by_dropping_leading_demonstrations(gpt2, data_dir):
    _, tokenizer = gpt2
    items = build_items("bbh_cot", data_dir, max_new_tokens=BUDGET)
    fitted = [fit_prompt(item, tokenizer, 1024) for item in items]
    too_long = [_length(tokenizer, item.prompt) + BUDGET > 1024 for item in items]
    assert sum(too_long) > 4000  # most 3-shot CoT prompts do not fit GPT-2's 1,024 positions
    for item, fit, long in zip(items, fitted, too_long, strict=True):
        assert fit.shortened == long
        assert _length(tokenizer, fit.text) + BUDGET <= 1024
        assert fit.text == item.prompt_without(fit.dropped_demonstrations)  # whole demonstrations, from the front
        if fit.dropped_demonstrations:  # the fewest: one demonstration more would not fit
            assert _length(tokenizer, item.prompt_without(fit.dropped_demonstrations - 1)) + BUDGET > 1024
    gsm8k = build_items("gsm8k_dev", data_dir, max_new_tokens=BUDGET)
    assert not any(fit_prompt(item, tokenizer, 1024).shortened for item in gsm8k)  # 4-shot simple prompt fits


@pytest.mark.slow
def test_a_long_4_shot_prompt_is_shortened_counted_and_generates(gpt2, data_dir, tmp_path):
    model, tokenizer = gpt2
    complex_prompt = (data_dir / "prompts/flan_t5_cot_specialization/prompt_complex.txt").read_text()
    cases = [c for c in complex_prompt.strip().split("\n\n") if c.startswith("Question:") or c.startswith("Q:")]
    four_shot = tmp_path / "four_shot.txt"
    four_shot.write_text("\n\n".join(cases[:4]).replace("Question:", "Q:"))
    settings = EvalSettings(
        suites=["gsm8k_dev", "bbh_cot"],
        limit=1,
        bbh_tasks=["web_of_lies", "word_sorting"],
        prompt_file=str(four_shot),
        max_new_tokens=BUDGET,
        batch_size=3,
        data_dir=str(data_dir),
    )
    evaluator = Evaluator(model, tokenizer, settings)
    items = evaluator.items()
    assert all(len(i.demonstrations) == 4 for i in items if i.suite == "gsm8k_dev")
    assert all(_length(tokenizer, i.prompt) + BUDGET > 1024 for i in items)
    with pytest.raises(ValueError, match="needs .* positions; the model has 1024"):
        generate(model, tokenizer, [items[0].prompt], BUDGET, progress=False)
    results = evaluator.run(tmp_path / "out", progress=False)
    assert results.shortened == {
        "gsm8k_dev": 1,
        "bbh_cot/web_of_lies": 1,
        "bbh_cot/word_sorting": 1,
        "bbh_cot": 2,
    }
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["shortened"]["gsm8k_dev"] == 1 and summary["n"]["gsm8k_dev"] == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "gsm8k_dev.jsonl").read_text().splitlines()]
    assert all(row["shortened"] for row in rows)


@pytest.mark.slow
def test_a_question_longer_than_the_context_loses_its_left_edge(gpt2):
    model, tokenizer = gpt2
    words = " ".join(f"w{i}" for i in range(1500))
    item = EvalItem("gsm8k_dev", "x", "gsm8k", "p", "1", query=f"Q: {words}\nA:", demonstrations=("Q: 1\nA: 1",))
    fit = fit_prompt(item, tokenizer, 1024)
    assert fit.dropped_demonstrations == 1 and fit.max_tokens == 1024 - BUDGET
    completion = generate(model, tokenizer, [fit.text], BUDGET, max_prompt_tokens=[fit.max_tokens], progress=False)
    assert isinstance(completion[0], str)


def test_t5_names_no_position_limit_so_nothing_is_shortened(tiny_t5_dir, data_dir, t5_tokenizer):
    from transformers import AutoConfig

    assert context_length(AutoConfig.from_pretrained(tiny_t5_dir)) is None
    item = build_items("bbh_cot", data_dir, limit=1, bbh_tasks=["word_sorting"])[0]
    assert not fit_prompt(item, t5_tokenizer, None, encoder_decoder=True).shortened
