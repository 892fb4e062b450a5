"""A benchmark added through the registry alone is loaded, listed, graded, evaluated and evaluated in training."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specialight.cli import cli_main
from specialight.data.answers import extract_answer, is_correct
from specialight.data.registry import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    Benchmark,
    jsonl_benchmark,
    register,
    register_entry_points,
    unregister,
)
from specialight.data.tasks import DataError, load_examples
from tests.conftest import ROOT

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


@pytest.mark.slow
def test_a_registered_benchmark_suite_runs_in_periodic_evaluation(toy_dir, tiny_gpt2_dir, data_dir, tmp_path_factory):
    import lightning as L

    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import PeriodicEvaluation
    from specialight.training.module import SpecializationModule

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


def install_plugin(folder: Path, module: str, source: str, entry_points: dict[str, str], group: str) -> None:
    """A distribution ``<module>`` on ``folder`` as pip leaves it: its module, and a dist-info folder whose
    ``entry_points.txt`` declares ``entry_points`` under ``group``."""
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


TOY_PLUGIN = """
from specialight.data.registry import jsonl_benchmark
from specialight.data.tasks import load_examples  # a plugin may use the loaders: registered after them

TOY = jsonl_benchmark("toy", {"dev": "toy/dev.jsonl", "test": "toy/test.jsonl"})
"""


@pytest.mark.slow
def test_the_command_knows_a_benchmark_an_installed_package_declares(toy_dir, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install_plugin(site, "toy_bench", TOY_PLUGIN, {"toy": "toy_bench:TOY"}, ENTRY_POINT_GROUP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "src")]))
    command = [sys.executable, "-m", "specialight.cli", "data", "--data-dir", str(toy_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.split() == ["toy", "dev", "3"] for line in lines)
    assert any(line.split() == ["toy", "test", "1"] for line in lines)


PLUGIN_KINDS = """
from specialight.data.registry import jsonl_benchmark

ONE = jsonl_benchmark("plug_one", {"test": "one.jsonl"})
NUMBER = 3
TAKEN = jsonl_benchmark("gsm8k", {"test": "x.jsonl"})


def several():
    return (jsonl_benchmark(name, {"test": name + ".jsonl"}) for name in ("plug_two", "plug_three"))
"""


@pytest.mark.parametrize(
    ("entry_points", "error"),
    [
        ({"one": "{module}:ONE", "several": "{module}:several"}, None),
        ({"number": "{module}:NUMBER"}, r"entry point number = '{module}:NUMBER' .* gave int"),
        ({"gone": "{module}:GONE"}, "entry point gone = .* failed to load: AttributeError"),
        ({"taken": "{module}:TAKEN"}, "entry point taken = .*: a benchmark named 'gsm8k' is already"),
    ],
)
def test_entry_points_register_a_benchmark_or_several_and_a_bad_one_is_named(
    entry_points, error, tmp_path, monkeypatch
):
    module = "plugin_" + re.sub(r"\W", "_", tmp_path.name)  # a module name of its own for each case
    group = "specialight.test_benchmarks"
    install_plugin(tmp_path, module, PLUGIN_KINDS, {k: v.format(module=module) for k, v in entry_points.items()}, group)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = dict(REGISTRY)
    try:
        if error is None:
            assert register_entry_points(group) == ["plug_one", "plug_two", "plug_three"]
            assert REGISTRY["plug_three"].splits == ("test",)
        else:
            with pytest.raises(ValueError, match=error.format(module=module)):
                register_entry_points(group)
            assert REGISTRY == before
    finally:
        for name in set(REGISTRY) - set(before):
            unregister(name)
