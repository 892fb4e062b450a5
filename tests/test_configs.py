"""Every paper config parses (``--print_config``) and says what the authors ran."""

import pytest
import yaml

from specialight.cli import cli_main
from tests.conftest import ROOT

PAPER = ROOT / "configs" / "paper"
# name, epochs, ranks (XL and XXL fully sharded over 8 GPUs), per-rank batch sizes
SIZES = {
    "flan_t5_base": ("google/flan-t5-base", 3, 1, {"in_context_cot": 25, "zero_shot_answer_only": 60}),
    "flan_t5_large": ("google/flan-t5-large", 3, 1, {"in_context_cot": 8, "zero_shot_answer_only": 30}),
    "flan_t5_xl": ("google/flan-t5-xl", 2, 8, {"in_context_cot": 2, "zero_shot_answer_only": 20}),
    "flan_t5_xxl": ("google/flan-t5-xxl", 2, 8, {"in_context_cot": 4, "zero_shot_answer_only": 40}),
}
RAW = {"t5_base": "flan_t5_base", "t5_large": "flan_t5_large", "t5_3b": "flan_t5_xl", "t5_11b": "flan_t5_xxl"}


def printed(capsys, *configs) -> dict:
    args = ["fit"] + [part for config in configs for part in ("--config", str(config))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_paper_recipe_per_size(size, capsys):
    name, epochs, ranks, batch_sizes = SIZES[size]
    config = printed(capsys, PAPER / "recipe.yaml", PAPER / f"{size}.yaml")
    model, data, trainer = config["model"], config["data"], config["trainer"]
    assert model["model_name_or_path"] == name
    assert model["loss"]["class_path"] == "specialight.training.losses.DistributionMatching"
    assert (model["learning_rate"], model["weight_decay"], model["warmup"], model["cosine_horizon"]) == (
        5e-4,
        0.01,
        10,
        10,
    )
    assert trainer["max_epochs"] == epochs and trainer["precision"] == "32-true"
    # the authors' 15 batches per optimizer step; sharded over 8 ranks, 8 x 2 = 16
    assert trainer["gradient_clip_val"] is None and trainer["accumulate_grad_batches"] == (15 if ranks == 1 else 2)
    if ranks > 1:
        assert trainer["devices"] == ranks and trainer["strategy"]["class_path"].endswith("ModelParallelStrategy")
        assert trainer["strategy"]["init_args"]["data_parallel_size"] == ranks
        assert model["gradient_checkpointing"] is True and model["shard_param_dtype"] == "bfloat16"
    assert batch_sizes.items() <= data["batch_sizes"].items() and len(data["batch_sizes"]) == 4
    assert data["max_target_length"] == 256 and data["one_format_per_batch"] is True
    assert [c["class_path"].rsplit(".", 1)[1] for c in trainer["callbacks"]] == [
        "PeriodicEvaluation",
        "ModelSelection",
        "LearningRateMonitor",
        "ThroughputMonitor",
    ]
    assert trainer["default_root_dir"] == f"runs/{size}"


@pytest.mark.parametrize("raw", sorted(RAW))
def test_raw_t5_start_checkpoints(raw, capsys):
    config = printed(capsys, PAPER / "recipe.yaml", PAPER / f"{RAW[raw]}.yaml", PAPER / "raw_t5" / f"{raw}.yaml")
    assert config["model"]["model_name_or_path"] == raw.replace("_", "-")
    assert config["trainer"]["max_epochs"] == SIZES[RAW[raw]][1]


@pytest.mark.parametrize(
    ("overlay", "formats"),
    [
        ("in_context_only", {"in_context_cot", "in_context_answer_only"}),
        ("zero_shot_only", {"zero_shot_cot", "zero_shot_answer_only"}),
        ("cot_only", {"in_context_cot", "zero_shot_cot"}),
    ],
)
def test_data_overlays_replace_the_formats(overlay, formats, capsys):
    overlay_file = ROOT / "configs" / "data" / f"{overlay}.yaml"
    config = printed(capsys, PAPER / "recipe.yaml", PAPER / "flan_t5_base.yaml", overlay_file)
    assert set(config["data"]["formats"]) == formats


def test_mixed_formats_overlay_clears_per_format_batch_sizes(capsys):
    overlay = ROOT / "configs" / "data" / "mixed_formats.yaml"
    config = printed(capsys, PAPER / "recipe.yaml", PAPER / "flan_t5_base.yaml", overlay)
    assert config["data"]["one_format_per_batch"] is False and config["data"]["batch_sizes"] is None


def test_reproduce_cpu_evaluates_the_full_dev_sets_at_start_middle_and_end(capsys):
    config = printed(capsys, ROOT / "configs" / "reproduce_cpu.yaml")
    classes = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]
    evaluation = config["trainer"]["callbacks"][classes.index("PeriodicEvaluation")]["init_args"]
    # the time guard's clock starts before the step-0 evaluation (tests/training/test_callbacks.py)
    assert classes.index("TimeBudget") < classes.index("PeriodicEvaluation")
    # batches of <= 3,072 tokens hold ~12 examples: the first evaluation mid-run falls within the ~115 steps
    # that the slower CPU measured (a 2-core AMD EPYC, docs/results.md) reaches in its time budget (whether it
    # runs there is the skip estimate's call); it runs only what selection reads, the BBH suites at both ends
    assert config["data"]["max_tokens_per_batch"] == 3072 and config["auto_precision"]
    (budget,) = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("TimeBudget")]
    assert budget["minutes"] <= 70  # the last evaluation (~20 minutes on that CPU) ends within 90
    assert evaluation["before_training"] and evaluation["every_n_examples"] <= 100 * 12
    settings = evaluation["settings"]
    assert settings["limit"] is None and not {"gsm8k_dev", "mas_dev"} & set(settings["limits"])
    assert {"bbh_ao", "bbh_cot", "nll_gsm8k_dev_zero_shot", "nll_bbh_cot"} <= set(settings["suites"])
    assert set(evaluation["interim_suites"]) == {"gsm8k_dev", "mas_dev", "nll_gsm8k_dev_zero_shot"}


@pytest.mark.parametrize("arm", ["in_context_only", "zero_shot_only"])
def test_reproduce_cpu_format_arms_evaluate_in_context_math_once_at_the_end(arm, capsys):
    overlays = (ROOT / "configs" / "data" / f"{arm}.yaml", ROOT / "configs" / "reproduce_cpu_formats.yaml")
    config = printed(capsys, ROOT / "configs" / "reproduce_cpu.yaml", *overlays)
    assert all(name.startswith(arm.replace("_only", "")) for name in config["data"]["formats"])
    (evaluation,) = [c["init_args"] for c in config["trainer"]["callbacks"] if "PeriodicEvaluation" in c["class_path"]]
    assert not evaluation["before_training"] and evaluation["at_end"]
    assert evaluation["every_n_examples"] >= config["trainer"]["max_steps"] * config["data"]["batch_size"]
    assert config["data"]["max_tokens_per_batch"] is None and config["auto_precision"] is False
    assert evaluation["settings"]["suites"] == ["gsm8k_dev", "mas_dev"] and evaluation["settings"]["limit"] is None


def test_heldout_probe_trains_without_the_heldout_rows_and_judges_on_them(capsys):
    config = printed(
        capsys, ROOT / "configs" / "reproduce_cpu.yaml", ROOT / "configs" / "recipe" / "heldout_probe.yaml"
    )
    assert config["data"]["limit"] == 7073  # tune's last 200 rows (GSM8K heldout) stay unseen
    (evaluation,) = [c["init_args"] for c in config["trainer"]["callbacks"] if "PeriodicEvaluation" in c["class_path"]]
    suites = evaluation["settings"]["suites"]
    assert suites and all("heldout" in suite for suite in suites)  # never dev or test
