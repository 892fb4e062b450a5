import re

import pytest

from specialight.data.formats import (
    FORMATS,
    NEWLINE_STAND_IN,
    FormatBuilder,
    is_cot,
    newline_separator,
    render,
)
from specialight.data.tasks import DataError, load_examples


@pytest.fixture(scope="module")
def pool(data_dir):
    return load_examples("gsm8k", "tune", data_dir)


def test_templates_of_the_four_formats(pool):
    builder = FormatBuilder(pool, num_demonstrations=4, seed=1)
    example = pool[0]
    zs_cot = builder.build(example, "zero_shot_cot")
    assert zs_cot.prompt == f"Q: {example.question}\nLet's think step by step\n"
    assert zs_cot.target.endswith(f"\nThe answer is {example.answer}.")
    assert zs_cot.target.startswith(example.rationale.split("\n")[0])
    zs_ao = builder.build(example, "zero_shot_answer_only")
    assert zs_ao.prompt == f"Q: {example.question}\n" and zs_ao.target == f"The answer is {example.answer}."
    ic_cot = builder.build(example, "in_context_cot")
    blocks = ic_cot.prompt.split("\n\n")
    assert len(blocks) == 5 and blocks[-1] == zs_cot.prompt
    assert all(b.startswith("Q: ") and "Let's think step by step\n" in b and "The answer is" in b for b in blocks[:4])
    ic_ao = builder.build(example, "in_context_answer_only")
    assert all("Let's think" not in b for b in ic_ao.prompt.split("\n\n"))
    assert [is_cot(f) for f in FORMATS] == [False, True, False, True]


def test_demonstrations_are_seeded_and_never_the_question(pool):
    small = pool[:6]
    builder = FormatBuilder(small, num_demonstrations=4, seed=3)
    for example in small:
        blocks = builder.demonstrations(example.id, cot=True)
        assert len(blocks) == 4
        assert all(example.question not in b for b in blocks)
    again = FormatBuilder(small, num_demonstrations=4, seed=3)
    assert builder.demonstrations(small[0].id, True) == again.demonstrations(small[0].id, True)
    other = FormatBuilder(pool, num_demonstrations=4, seed=4)
    assert other.demonstrations(pool[0].id, True) != FormatBuilder(pool, seed=3).demonstrations(pool[0].id, True)


def test_teacher_rationale_replaces_gold(pool):
    formatted = FormatBuilder(pool).build(pool[0], "zero_shot_cot", rationale="48 / 2 = 24.\nThe answer is 72.")
    assert formatted.target == "48 / 2 = 24.\nThe answer is 72."


def test_small_pool_and_missing_rationale_are_refused(pool, data_dir):
    with pytest.raises(DataError, match="at least 5"):
        FormatBuilder(pool[:4], num_demonstrations=4)
    svamp = load_examples("svamp", "dev", data_dir)[0]
    with pytest.raises(DataError, match="needs a rationale"):
        FormatBuilder(pool).build(svamp, "zero_shot_cot")
    with pytest.raises(DataError, match="unknown format"):
        FormatBuilder(pool).build(pool[0], "few_shot")


def test_newline_mapping_follows_the_tokenizer(t5_tokenizer, gpt2_tokenizer):
    assert newline_separator(gpt2_tokenizer) is None
    assert newline_separator(t5_tokenizer) == NEWLINE_STAND_IN
    assert render("a\n\nb\nc", NEWLINE_STAND_IN) == "a | b | c"
    assert render("a\nb", None) == "a\nb"


def test_t5_formats_survive_the_t5_tokenizer(pool, t5_tokenizer):
    builder = FormatBuilder(pool, newline=newline_separator(t5_tokenizer))
    unk = t5_tokenizer.unk_token_id
    checked = 0
    for example in pool[:40]:
        for fmt in FORMATS:
            formatted = builder.build(example, fmt)
            for text in (formatted.prompt, formatted.target):
                assert "\n" not in text
                ids = t5_tokenizer.encode(text, add_special_tokens=False)
                if unk in ids:
                    continue
                decoded = t5_tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                assert re.sub(r"\s+", " ", decoded).strip() == re.sub(r"\s+", " ", text).strip()
                checked += 1
    assert checked > 200


def test_gpt2_formats_round_trip_exactly(pool, gpt2_tokenizer):
    builder = FormatBuilder(pool, newline=newline_separator(gpt2_tokenizer))
    for example in pool[:20]:
        formatted = builder.build(example, "in_context_cot")
        ids = gpt2_tokenizer.encode(formatted.prompt + formatted.target)
        assert gpt2_tokenizer.decode(ids) == formatted.prompt + formatted.target
