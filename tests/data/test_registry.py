"""A benchmark added through the registry alone is loaded, listed, graded, evaluated and evaluated in training."""

import json

import pytest

from specialight.cli import cli_main
from specialight.data.answers import extract_answer, is_correct
from specialight.data.registry import REGISTRY, Benchmark, jsonl_benchmark, register, unregister
from specialight.data.tasks import DataError, load_examples

TOY = {
    "dev": [("Tom has 3 apples and buys 4 more. How many apples does he have?", "7")] * 2
    + [("A box holds 6 eggs. How many eggs are in 2 boxes?", "12")],
    "test": [("Ann had 10 pens and lost 3. How many are left?", "7")],
}


@pytest.fixture
def toy_dir(tmp_path, data_dir):
    """A data folder holding the shared benchmarks (linked) and a new ``toy`` benchmark registered for the
    test alone: a JSONL file per split."""
    for entry in data_dir.iterdir():
        (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "toy").mkdir()
    for split, rows in TOY.items():
        lines = [json.dumps({"question": q, "answer": a}) for q, a in rows]
        (tmp_path / "toy" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    register(jsonl_benchmark("toy", {"dev": "toy/dev.jsonl", "test": "toy/test.jsonl"}))
    yield tmp_path
    unregister("toy")


def test_a_registered_benchmark_loads_and_grades(toy_dir):
    dev = load_examples("toy", "dev", toy_dir)
    assert [e.id for e in dev] == ["toy/dev/0", "toy/dev/1", "toy/dev/2"]
    assert dev[2].answer == "12" and dev[2].question.startswith("A box")
    assert extract_answer("2 boxes of 6. The answer is 12.", "toy") == "12"
    assert is_correct("The answer is 12", dev[2].answer, "toy")
    with pytest.raises(DataError, match="unknown split 'all' for toy; known: dev, test"):
        load_examples("toy", "all", toy_dir)


def test_registering_refuses_a_taken_name_and_a_suite_without_its_split():
    with pytest.raises(ValueError, match="already registered"):
        register(jsonl_benchmark("gsm8k", {"test": "x.jsonl"}))
    with pytest.raises(ValueError, match="splits it does not have: dev"):
        register(jsonl_benchmark("lonely", {"test": "x.jsonl"}, suites=("dev",)))
    with pytest.raises(ValueError, match="unknown answer kind"):
        register(Benchmark("odd", ("test",), REGISTRY["gsm8k"].read, answer_kind="fuzzy"))
    assert "lonely" not in REGISTRY and "odd" not in REGISTRY


def test_the_data_command_lists_a_registered_benchmark(toy_dir, capsys):
    assert cli_main(["data", "--data-dir", str(toy_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["toy", "dev", "3"] for line in lines)
    assert any(line.split() == ["toy", "test", "1"] for line in lines)


def test_a_registered_benchmark_is_evaluated(toy_dir, tiny_gpt2_dir, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("toy-eval")
    argv = ["evaluate", "--model", str(tiny_gpt2_dir), "--suites", "[toy_dev,toy_test_zero_shot]"]
    assert cli_main([*argv, "--max-new-tokens", "4", "--out", str(out), "--data-dir", str(toy_dir)]) == 0
    assert "toy_dev" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"]["toy_dev"] == 3 and summary["n"]["toy_test_zero_shot"] == 1
    rows = [json.loads(line) for line in (out / "toy_dev.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["toy/dev/0", "toy/dev/1", "toy/dev/2"]
    assert [r["gold"] for r in rows] == ["7", "7", "12"]


def test_a_registered_benchmark_suite_runs_in_periodic_evaluation(toy_dir, tiny_gpt2_dir, data_dir, tmp_path_factory):
    import lightning as L

    from specialight.callbacks import PeriodicEvaluation
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.module import SpecializationModule

    settings = EvalSettings(suites=["toy_dev"], max_new_tokens=2, data_dir=str(toy_dir))
    evaluation = PeriodicEvaluation(settings, every_n_examples=8)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path_factory.mktemp("toy-run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[evaluation],
    )
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=8, batch_size=4, formats={"zero_shot_cot": 1.0}
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    assert [r["step"] for r in evaluation.history] == [0, 2]
    assert all(r["n"]["toy_dev"] == 3 and 0 <= r["scores"]["toy_dev"] <= 100 for r in evaluation.history)
