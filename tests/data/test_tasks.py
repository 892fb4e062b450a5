import json

import pytest

from specialight.cli import cli_main
from specialight.data.tasks import BBH_TASKS, DataError, load_bbh_prompt, load_examples, split_table


def test_split_counts_match_the_paper(data_dir):
    counts = {(task, split): n for task, split, n in split_table(data_dir)}
    assert counts[("gsm8k", "tune")] == 7273
    assert counts[("gsm8k", "dev")] == 200
    assert counts[("gsm8k", "test")] == 1319
    assert counts[("multiarith", "dev")] == 200
    assert counts[("multiarith", "test")] == 400
    assert counts[("asdiv", "all")] == 2305
    assert counts[("asdiv", "a")] == 1218
    assert counts[("svamp", "all")] == 1000
    assert sum(n for (task, _), n in counts.items() if task.startswith("bbh/")) == 6511
    assert len([t for t, _ in counts if t.startswith("bbh/")]) == 27


def test_gsm8k_splits_are_disjoint_and_dev_is_the_paper_index(data_dir):
    import numpy as np

    tune = {e.id for e in load_examples("gsm8k", "tune", data_dir)}
    dev = load_examples("gsm8k", "dev", data_dir)
    index = np.load(data_dir / "gsm8k" / "validation_index.npy")
    assert [e.id for e in dev] == [f"gsm8k/train/{i}" for i in index]
    assert not tune & {e.id for e in dev}


def test_heldout_is_the_end_of_tune_and_outside_a_limited_runs_items(data_dir):
    tune = load_examples("gsm8k", "tune", data_dir)
    heldout = load_examples("gsm8k", "heldout", data_dir)
    dev = {e.id for e in load_examples("gsm8k", "dev", data_dir)}
    assert [e.id for e in heldout] == [e.id for e in tune[-200:]]
    assert not dev & {e.id for e in heldout}
    assert not {e.id for e in tune[:7073]} & {e.id for e in heldout}  # data.limit: 7073 keeps them unseen


@pytest.mark.parametrize("limit", [7073, None])
def test_a_run_never_draws_the_heldout_rows_it_leaves_out_as_demonstrations(tiny_gpt2_dir, data_dir, limit):
    from specialight.data.datamodule import SpecializationDataModule

    module = SpecializationDataModule(str(tiny_gpt2_dir), data_dir=str(data_dir), limit=limit)
    module.setup("fit")
    heldout = {e.id for e in load_examples("gsm8k", "heldout", data_dir)}
    assert module.encoder.builder.exclude == (heldout if limit else frozenset())


def test_excluded_rows_are_never_demonstrations_and_the_other_draws_stay_the_same(data_dir):
    from specialight.data.formats import FormatBuilder, question_prompt

    pool = load_examples("gsm8k", "tune", data_dir)
    heldout = load_examples("gsm8k", "heldout", data_dir)
    plain = FormatBuilder(pool, 4, seed=0)
    guarded = FormatBuilder(pool, 4, seed=0, exclude=frozenset(e.id for e in heldout))
    starts = tuple(question_prompt(e.question, True) for e in heldout)
    changed = 0
    for example in pool[:600]:
        before, after = plain.demonstrations(example.id, True), guarded.demonstrations(example.id, True)
        assert len(after) == 4 and not any(block.startswith(starts) for block in after)
        if any(block.startswith(starts) for block in before):
            changed += 1
            kept = [block for block in before if not block.startswith(starts)]
            assert after[: len(kept)] == kept  # the rest of the draw is kept, in order; the draw goes on past it
        else:
            assert after == before  # a draw that avoided the excluded rows is the same draw
    assert changed > 0  # 600 examples x 4 draws from 7,273 rows hit the 200 heldout rows somewhere


def test_ood_dev_splits_are_seeded_disjoint_and_cover_all(data_dir):
    for task in ("asdiv", "svamp"):
        dev = load_examples(task, "dev", data_dir)
        test = load_examples(task, "test", data_dir)
        everything = load_examples(task, "all", data_dir)
        assert len(dev) == 200
        assert {e.id for e in dev} | {e.id for e in test} == {e.id for e in everything}
        assert not {e.id for e in dev} & {e.id for e in test}
        assert [e.id for e in load_examples(task, "dev", data_dir)] == [e.id for e in dev]
    assert len(load_examples("svamp", "dev", data_dir, ood_dev_size=50)) == 50


def test_records_are_clean(data_dir):
    first = load_examples("gsm8k", "train", data_dir)[0]
    assert first.answer == "72"
    assert "<<" not in first.rationale and "48/2 = 24 clips" in first.rationale
    assert "####" not in first.rationale
    assert load_examples("svamp", "all", data_dir)[0].answer == "51"
    asdiv = load_examples("asdiv", "all", data_dir)[0]
    assert asdiv.answer == "9" and asdiv.question.startswith("Seven red apples")
    multiarith = load_examples("multiarith", "all", data_dir)[0]
    assert multiarith.answer == "39" and not multiarith.question.startswith(" ")
    date = load_examples("bbh/date_understanding", "test", data_dir)[0]
    assert date.options and set(date.options) <= set("ABCDEF")
    assert date.answer.startswith("(")


def test_bbh_prompts_both_styles_for_every_task(data_dir):
    for name in BBH_TASKS:
        cot, ao = load_bbh_prompt(name, "cot", data_dir), load_bbh_prompt(name, "ao", data_dir)
        assert "canary" not in cot and "canary" not in ao
        assert cot.count("Q:") == 3 and ao.count("Q:") >= 3
        assert "Let's think step by step" in cot and "Let's think step by step" not in ao


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    (tmp_path / "gsm8k" / "test.jsonl").write_text(good + "\n" + good + "\n{not json\n")
    with pytest.raises(DataError, match=r"test\.jsonl:3: malformed JSON"):
        load_examples("gsm8k", "test", tmp_path)


def test_missing_field_is_named(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match="missing field 'answer'"):
        load_examples("gsm8k", "test", tmp_path)


def test_unknown_task_lists_known_ones(data_dir):
    with pytest.raises(DataError, match="known: gsm8k, multiarith, asdiv, svamp"):
        load_examples("gsm9k", "test", data_dir)
    with pytest.raises(DataError, match="unknown split 'dev' for bbh/navigate; known: test"):
        load_examples("bbh/navigate", "dev", data_dir)


def test_missing_folder_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECIALIGHT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="data folder not found.*--data-dir DIR or SPECIALIGHT_DATA_DIR"):
        load_examples("gsm8k", "test", tmp_path / "absent")
    with pytest.raises(DataError, match="missing data file: .*SVAMP.json"):
        load_examples("svamp", "all", tmp_path)


def test_data_command_prints_the_table(data_dir, capsys):
    assert cli_main(["data", "--data_dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "7,273" in out and "1,319" in out
    assert "6,511  (27 tasks)" in out


def test_data_command_fails_clearly_when_something_is_missing(tmp_path, capsys):
    assert cli_main(["data", "--data_dir", str(tmp_path)]) == 2
    assert "missing data file" in capsys.readouterr().err


def test_svamp_body_and_question_are_separate_sentences(data_dir):
    from specialight.data.tasks import svamp_question

    assert svamp_question("He had $ 4 at the start", "How much?") == "He had $ 4 at the start. How much?"
    assert svamp_question("He had 4.", "How many?") == "He had 4. How many?"
    raw = json.loads((data_dir / "svamp" / "SVAMP.json").read_text())
    assert sum(not row["Body"].strip().endswith(".") for row in raw) == 358
    for example, row in zip(load_examples("svamp", "all", data_dir), raw, strict=True):
        body = row["Body"].strip()
        assert example.question.startswith(body if body.endswith(".") else body + ". "), example.id
