import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from specialight.cli import cli_main
from specialight.data.tasks import DataError
from specialight.evaluation.evaluator import Evaluator
from specialight.evaluation.generation import generate
from specialight.evaluation.results import score
from specialight.evaluation.settings import EvalSettings
from specialight.evaluation.suites import build_items, expand


def test_math_prompts_are_the_paper_4_shot_plus_the_zero_shot_format(data_dir, t5_tokenizer):
    item = build_items("gsm8k_dev", data_dir)[0]
    assert item.prompt.startswith("Q: Ivan has a bird feeder")
    assert item.prompt.count("Q: ") == 5 and item.prompt.endswith("Let's think step by step\n")
    assert item.prompt_id == "prompt_simple_4_cases"
    zero = build_items("gsm8k_dev_zero_shot", data_dir)[0]
    assert zero.prompt.count("Q: ") == 1 and zero.prompt_id == "zero_shot_cot"
    t5_item = build_items("gsm8k_dev", data_dir, newline=" | ")[0]
    assert "\n" not in t5_item.prompt and " | Q: " in t5_item.prompt


def test_bbh_prompts(data_dir):
    cot = build_items("bbh_cot", data_dir, limit=1, bbh_tasks=["navigate"])[0]
    assert cot.prompt.endswith("\nA: Let's think step by step.") and cot.prompt.count("Q: ") == 4
    ao = build_items("bbh_ao", data_dir, limit=1, bbh_tasks=["navigate"], answer_only_max_new_tokens=8)[0]
    assert ao.prompt.endswith("\nA:") and ao.max_new_tokens == 8
    assert len(build_items("bbh_cot", data_dir, limit=2)) == 54


def test_suites_expand_and_unknown_ones_are_refused():
    assert expand(["mas_dev", "svamp_dev"]) == ["multiarith_dev", "asdiv_dev", "svamp_dev"]
    with pytest.raises(DataError, match="unknown suite 'gsm8k_train'"):
        expand(["gsm8k_train"])


def test_scores_are_computed_from_extracted_answers(data_dir):
    math = build_items("gsm8k_dev", data_dir, limit=4)
    bbh = build_items("bbh_cot", data_dir, limit=2, bbh_tasks=["navigate", "word_sorting"])
    items = math + bbh
    completions = [
        f"so {math[0].gold} in all. The answer is {math[0].gold}.",  # right
        "The answer is 1,000,001.",  # wrong
        f"The total is {math[2].gold}",  # right, by the last number
        f"The answer is {math[3].gold}.\n\nQ: next question. The answer is 0",  # right, cut at Q:
        f"So the answer is {bbh[0].gold}.",  # navigate right
        "So the answer is Maybe.",  # navigate wrong
        f"So the answer is {bbh[2].gold}.",  # word_sorting right
        f"So the answer is {bbh[3].gold}.",  # word_sorting right
    ]
    results, records = score(items, completions)
    scores = results.scores
    assert results.counts["gsm8k_dev"] == 4 and results.counts["bbh_cot"] == 4
    low, high = results.intervals["gsm8k_dev"]
    assert low == pytest.approx(30.06, abs=0.01) and high == pytest.approx(95.44, abs=0.01)  # Wilson, 3 of 4
    assert scores["gsm8k_dev"] == pytest.approx(75.0)
    assert scores["bbh_cot/navigate"] == pytest.approx(50.0)
    assert scores["bbh_cot/word_sorting"] == pytest.approx(100.0)
    assert scores["bbh_cot"] == pytest.approx(75.0)  # unweighted mean over tasks
    assert [r["correct"] for r in records] == [True, False, True, True, True, False, True, True]
    assert records[1]["extracted"] == "1000001"


def test_a_t5_student_writing_the_newline_stand_in_is_graded_line_by_line(data_dir):
    from specialight.data.formats import NEWLINE_STAND_IN

    cot = build_items("bbh_cot", data_dir, NEWLINE_STAND_IN, limit=1, bbh_tasks=["snarks"])[0]
    answer_only = build_items("bbh_ao", data_dir, NEWLINE_STAND_IN, limit=1, bbh_tasks=["snarks"])[0]
    completions = [f"Sarcasm is ironic. So the answer is {cot.gold}. | | Q: next", f"{answer_only.gold} | |"]
    results, records = score([cot, answer_only], completions)
    assert [r["correct"] for r in records] == [True, True]
    assert records[0]["completion"] == completions[0]  # the record keeps what the model wrote
    # the same answers run past their line: no credit, as the BBH authors grade
    _, records = score([cot, answer_only], [f"So the answer is {cot.gold} or (C).", f"{answer_only.gold} maybe"])
    assert [r["correct"] for r in records] == [False, False]


@pytest.mark.parametrize("kind", ["gpt2", pytest.param("t5", marks=pytest.mark.slow)])
def test_batched_generation_equals_one_at_a_time(kind, request, data_dir):
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    cls = AutoModelForCausalLM if kind == "gpt2" else AutoModelForSeq2SeqLM
    model = cls.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [i.prompt for i in build_items("gsm8k_dev_zero_shot", data_dir, limit=6)]
    batched = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=4, progress=False)
    single = [generate(model, tokenizer, [p], max_new_tokens=12, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single
    assert all("Q:" not in c for c in batched)


@pytest.mark.slow
def test_evaluator_writes_traceable_results(tiny_gpt2_dir, data_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.pad_token = tokenizer.eos_token
    settings = EvalSettings(
        suites=["gsm8k_dev", "mas_dev", "bbh_ao"],
        limit=2,
        bbh_tasks=["navigate", "snarks"],
        max_new_tokens=8,
        data_dir=str(data_dir),
    )
    results = Evaluator(model, tokenizer, settings).run(tmp_path, progress=False)
    scores = results.scores
    assert set(scores) >= {
        "gsm8k_dev",
        "multiarith_dev",
        "asdiv_dev",
        "svamp_dev",
        "mas_dev",
        "bbh_ao",
        "bbh_ao/navigate",
        "bbh_ao/snarks",
    }
    assert scores["mas_dev"] == pytest.approx(
        (scores["multiarith_dev"] + scores["asdiv_dev"] + scores["svamp_dev"]) / 3
    )
    rows = [json.loads(line) for line in (tmp_path / "gsm8k_dev.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert set(rows[0]) == {"suite", "id", "prompt_id", "completion", "extracted", "gold", "correct", "shortened"}
    assert scores["gsm8k_dev"] == pytest.approx(100.0 * sum(r["correct"] for r in rows) / 2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["scores"] == pytest.approx(scores)
    assert summary["n"]["mas_dev"] == 6 and summary["n"]["bbh_ao"] == 4 and summary["shortened"]["gsm8k_dev"] == 0
    assert set(summary["ci95"]) == set(scores)
    assert all(low <= scores[k] <= high for k, (low, high) in summary["ci95"].items())


@pytest.mark.slow
def test_evaluate_command(tiny_t5_dir, data_dir, tmp_path, capsys):
    status = cli_main(
        [
            "evaluate",
            "--model",
            str(tiny_t5_dir),
            "--suites",
            "[svamp_dev,bbh_cot]",
            "--limit",
            "1",
            "--bbh_tasks",
            "[web_of_lies]",
            "--max_new_tokens",
            "4",
            "--out",
            str(tmp_path),
            "--data_dir",
            str(data_dir),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "svamp_dev" in out and "bbh_cot/web_of_lies" in out
    assert (tmp_path / "svamp_dev.jsonl").is_file() and (tmp_path / "bbh_cot.jsonl").is_file()
    assert cli_main(["evaluate", "--model", str(tiny_t5_dir), "--suites", "[nope]", "--out", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_no_dev_suite_shares_an_example_with_its_test_suite(data_dir):
    from specialight.evaluation.suites import COMPOSITES, MATH_SUITES

    def ids(suite: str) -> set[str]:
        return {item.id for item in build_items(suite, data_dir)}

    dev_suites = [s for s in [*MATH_SUITES, *COMPOSITES] if s.endswith("_dev")]
    assert dev_suites == ["gsm8k_dev", "multiarith_dev", "asdiv_dev", "svamp_dev", "mas_dev"]
    for dev in dev_suites:
        test = dev.removesuffix("_dev") + "_test"
        dev_parts, test_parts = COMPOSITES.get(dev, (dev,)), COMPOSITES.get(test, (test,))
        dev_ids = set().union(*(ids(s) for s in dev_parts))
        test_ids = set().union(*(ids(s) for s in test_parts))
        assert dev_ids and test_ids and not dev_ids & test_ids, dev
    all_ids = set().union(*(ids(s) for s in COMPOSITES["mas_all"]))
    assert len(all_ids) == 400 + 2305 + 1000  # Table 1's rows: MultiArith test, ASDiv all, SVAMP all


@pytest.mark.parametrize("model", ["/nonexistent", "./no/such/model", "missing.ckpt"])
def test_evaluate_names_a_missing_model_in_one_line(model, tmp_path, capsys):
    status = cli_main(["evaluate", "--model", model, "--suites", "[gsm8k_dev]", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and model in err
    assert "Traceback" not in err
    if not model.endswith(".ckpt"):
        assert "neither a folder, a .ckpt file, nor a known alias" in err


def test_prompts_cluster_by_their_shared_few_shot_prefix(data_dir, gpt2_tokenizer):
    from specialight.evaluation.generation import MIN_SHARED_PREFIX, prefix_clusters

    items = build_items("gsm8k_dev", data_dir, limit=3) + build_items(
        "bbh_cot", data_dir, limit=2, bbh_tasks=["navigate", "word_sorting"]
    )
    encoded = [gpt2_tokenizer.encode(i.prompt) for i in items]
    clusters = prefix_clusters(encoded, MIN_SHARED_PREFIX)
    assert sorted(sorted(members) for _, members in clusters) == [[0, 1, 2], [3, 4], [5, 6]]
    demonstrations = {i: len(gpt2_tokenizer.encode(items[i].prompt_without(99))) for i in range(7)}
    for prefix, members in clusters:
        prompts = [encoded[i] for i in members]
        assert all(p[:prefix] == prompts[0][:prefix] for p in prompts)
        assert len({p[prefix] for p in prompts}) > 1  # the longest shared prefix
        assert all(len(p) - prefix <= demonstrations[i] + 8 for p, i in zip(prompts, members))
    assert prefix_clusters(encoded, None) == [(0, list(range(7)))]


def test_prompts_that_share_no_prefix_are_batched_together_not_one_by_one():
    from specialight.evaluation.generation import prefix_clusters

    shared = [7] * 40
    encoded = [[1, 2, 3], shared + [4], [9, 9], shared + [5], [8]]  # two share 40 tokens; three share none
    assert prefix_clusters(encoded, 32) == [(40, [1, 3]), (0, [0, 2, 4])]
    assert prefix_clusters([[1, 2], [3, 4]], 32) == [(0, [0, 1])]


@pytest.mark.slow
def test_shared_prefix_generation_equals_one_prompt_at_a_time(tiny_gpt2_dir, data_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.pad_token = tokenizer.eos_token
    prompts = [i.prompt for i in build_items("gsm8k_dev", data_dir, limit=5)]
    budgets = [12, 12, 12, 6, 6]
    shared = generate(model, tokenizer, prompts, max_new_tokens=budgets, batch_size=2, progress=False)
    alone = [
        generate(model, tokenizer, [p], max_new_tokens=b, share_prefix=False, progress=False)[0]
        for p, b in zip(prompts, budgets)
    ]
    assert shared == alone and len(set(shared)) > 1
