"""The evaluation benchmark fails loudly when our completions differ from the baseline's; the GPU benchmark
runs on a CPU in its dry-run mode."""

import sys

import pytest

import specialight.evaluation.generation as generation

pytestmark = pytest.mark.slow  # runs a whole benchmark (both arms) in process


@pytest.mark.parametrize("broken", [False, True])
def test_evaluate_benchmark_exit_status_follows_the_completions(monkeypatch, capsys, broken):
    from benchmarks import evaluate

    if broken:
        real = generation.generate
        monkeypatch.setattr(generation, "generate", lambda *a, **k: ["different"] * len(real(*a, **k)))
    monkeypatch.setattr(
        sys, "argv", ["evaluate.py", "--examples", "2", "--max-new-tokens", "2", "--batch-size", "2", "--layers", "2"]
    )
    assert evaluate.main() == (1 if broken else 0)
    captured = capsys.readouterr()
    assert ("completions differ on 2 of 2 prompts" in captured.err) is broken
    assert '"benchmark": "evaluate"' in captured.out and '"static_per_s"' in captured.out


@pytest.mark.slow
def test_gpu_benchmark_dry_run_measures_every_part_on_a_cpu(capsys):
    """benchmarks/gpu.py --dry-run: decode (static vs today's loop, identical), training of both models."""
    import json

    from benchmarks import gpu

    assert gpu.main(["--dry-run"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    decode = result["decode"]
    assert decode["identical"] == decode["examples"] == 2 and decode["ratio"] > 0
    assert 0 < decode["fraction_of_bound"] < 1 and decode["bytes_per_step"] > 0
    for name in ("train_smollm2", "train_t5_base"):
        assert result[name]["tokens_per_s"] > 0 and 0 < result[name]["mfu"] < 1


def test_train_throughput_recipe_arms_train_as_the_reproduce_config():
    """The recipe arms read configs/reproduce_cpu.yaml: its auto precision here, and (the recipe arm) its
    checkpointing, none; the baselines train in fp32 with checkpointing, as the recipe before it."""
    from benchmarks import train_throughput
    from specialight.training.cli import native_precision

    native = native_precision("cpu")
    settings = {arm: train_throughput.arm_settings(arm) for arm in train_throughput.ARMS}
    assert settings == {
        "fixed": (True, "32-true"),
        "budget": (True, "32-true"),
        "recipe": (False, native),
        "recipe_checkpointed": (True, native),
    }


def test_eval_autocast_benchmark_compares_identical_completions(monkeypatch, capsys):
    import json

    from benchmarks import eval_autocast

    argv = ["eval_autocast.py", "--examples", "3", "--max-new-tokens", "3", "--batch-size", "2", "--layers", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    assert eval_autocast.main() == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["identical"] == figures["examples"] == 3
    assert figures["held_vs_per_forward"] > 0
    assert generation.evaluating.__name__ == "evaluating"  # the previous way's patch is undone
