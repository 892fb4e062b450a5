import pytest

from specialight.data.answers import extract_answer, is_correct
from specialight.data.formats import FormatBuilder, answer_target
from specialight.data.tasks import DataError, load_examples


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("The answer is 1,000.", "1000"),  # the paper's extractor: 0
        ("She pays 1,234,567 dollars. The answer is 1,234,567", "1234567"),
        ("The temperature drops. The answer is -5.", "-5"),  # the paper's: 5
        ("The answer is −12", "-12"),
        ("The answer is $3.50.", "3.5"),
        ("The answer is 12.50", "12.5"),
        ("The answer is 25%.", "25"),
        ("The answer is 3/4", "0.75"),
        ("The answer is 18 apples.", "18"),
        ("The answer is: 7", "7"),
        ("so she has 5 + 3 = 8 apples left", "8"),  # no "answer is": last number
        ("First 10, then 20. The answer is 30. Then 40", "30"),  # "answer is" wins over last number
        ("The answer is 4.\n\nQ: Tom has 9 apples. The answer is 9", "4"),  # a next question is cut
        ("no number here", None),
        ("The answer is 0.", "0"),
        ("1,2,3 and 7", "7"),
    ],
)
def test_math_extraction(completion, expected):
    assert extract_answer(completion, "gsm8k") == expected


@pytest.mark.parametrize(
    ("completion", "gold", "task", "correct"),
    [
        ("The answer is 1,000.", "1000", "gsm8k", True),
        ("The answer is 1000", "1,000", "gsm8k", True),
        ("The answer is 51", "51", "svamp", True),
        ("The answer is 51.0.", "51", "multiarith", True),
        ("The answer is 5", "-5", "gsm8k", False),
        ("The answer is 0.333333", "0.3333333", "asdiv", True),
        ("The answer is 3:4.", "3:4", "asdiv", True),
        ("The answer is Mrs. Hilt.", "mrs. hilt", "asdiv", True),
        ("The answer is 3:5.", "3:4", "asdiv", False),
        ("Nothing", "3", "gsm8k", False),
    ],
)
def test_math_correctness(completion, gold, task, correct):
    assert is_correct(completion, gold, task) is correct


@pytest.mark.parametrize(
    ("completion", "task", "cot", "expected"),
    [
        ("Let's see. So the answer is (B).", "bbh/date_understanding", True, "(B)"),
        ("(C)", "bbh/date_understanding", True, None),  # CoT without "the answer is": no answer
        ("(C)", "bbh/date_understanding", False, "(C)"),
        (" (C)\n\nQ: next", "bbh/date_understanding", False, "(C)"),
        ("So the answer is B.", "bbh/hyperbaton", True, "B"),  # read as written; "(B)" would not match it
        ("Options (A) and (B) differ. So the answer is (R).", "bbh/geometric_shapes", True, "(R)"),
        ("So the answer is True.", "bbh/boolean_expressions", True, "True"),
        ("The answer is invalid.", "bbh/formal_fallacies", True, "invalid"),
        ("So the answer is -219.", "bbh/multistep_arithmetic_two", True, "-219"),
        ("So the answer is ] ) ).", "bbh/dyck_languages", True, "] ) )"),
        (" ] >\n\nQ: next", "bbh/dyck_languages", False, "] >"),
        ("So the answer is (A) or (B).", "bbh/snarks", True, "(A) or (B)"),
    ],
)
def test_bbh_extraction(completion, task, cot, expected):
    assert extract_answer(completion, task, cot) == expected


def test_bbh_correctness_cases():
    assert is_correct("So the answer is Yes.", "Yes", "bbh/web_of_lies")
    assert not is_correct("So the answer is No.", "Yes", "bbh/web_of_lies")
    assert not is_correct("So the answer is yes.", "Yes", "bbh/web_of_lies")  # exact match, as the authors
    assert is_correct("So the answer is (A).", "(A)", "bbh/snarks")
    assert not is_correct("So the answer is (B).", "(A)", "bbh/snarks")
    assert is_correct("So the answer is valid.", "valid", "bbh/formal_fallacies")
    assert not is_correct("So the answer is invalid.", "valid", "bbh/formal_fallacies")
    assert is_correct("So the answer is ] ) ).", "] ) )", "bbh/dyck_languages")
    assert is_correct("So the answer is -219.", "-219", "bbh/multistep_arithmetic_two")
    assert is_correct("-219", "-219", "bbh/multistep_arithmetic_two", cot=False)


def test_unknown_task_is_refused():
    with pytest.raises(DataError, match="unknown task"):
        extract_answer("The answer is 3", "bbh/not_a_task")


def test_every_gsm8k_cot_target_extracts_to_its_gold(data_dir):
    train = load_examples("gsm8k", "train", data_dir)
    assert len(train) == 7473
    wrong = [e.id for e in train if not is_correct(answer_target(e.answer, e.rationale), e.answer, "gsm8k")]
    assert wrong == []


def test_every_bbh_gold_target_is_correct_against_itself(data_dir):
    from specialight.data.tasks import BBH_TASKS

    for name in BBH_TASKS:
        for example in load_examples(f"bbh/{name}", "test", data_dir):
            completion = f"So the answer is {example.answer}."
            assert is_correct(completion, example.answer, example.task), example.id


def test_formatted_targets_extract_to_gold_through_the_t5_newline_mapping(data_dir, t5_tokenizer):
    from specialight.data.formats import FORMATS, newline_separator

    pool = load_examples("gsm8k", "tune", data_dir)
    builder = FormatBuilder(pool, newline=newline_separator(t5_tokenizer))
    for example in pool[:50]:
        for fmt in FORMATS:
            formatted = builder.build(example, fmt)
            assert is_correct(formatted.target, example.answer, "gsm8k"), (example.id, fmt)
