from __future__ import annotations

import pytest
import yaml

from specialight.cli import cli_main
from specialight.training.plan import GIB, load_config, plan


def _config(tmp_path, model_dir, **trainer):
    config = {
        "model": {"model_name_or_path": str(model_dir), "gradient_checkpointing": True},
        "data": {"batch_size": 4, "max_source_length": 128, "max_target_length": 64},
        "trainer": {"precision": "bf16-mixed", **trainer},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_plan_counts_exact_states_and_divides_them_by_the_ranks(tiny_t5_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    exact = sum(p.numel() for p in AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).parameters())
    parameters, whole = plan(load_config([_config(tmp_path, tiny_t5_dir)]), 80)
    assert parameters == exact
    rows = dict(whole)
    assert rows["parameters (fp32)"] == pytest.approx(4 * exact / GIB)
    assert rows["AdamW state (2 x fp32)"] == pytest.approx(8 * exact / GIB)

    strategy = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}
    sharded = dict(plan(load_config([_config(tmp_path, tiny_t5_dir, strategy=strategy, devices=8)]), 80)[1])
    assert sharded["AdamW state (2 x fp32)"] == pytest.approx(rows["AdamW state (2 x fp32)"] / 8)
    assert sharded["gathered blocks (compute + prefetch)"] > 0


@pytest.mark.slow
def test_overlays_merge_and_the_exit_status_says_whether_it_fits(tiny_t5_dir, tmp_path, capsys):
    base = _config(tmp_path, tiny_t5_dir)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"batch_size": 64}}))
    merged = load_config([base, overlay])
    assert merged["data"] == {"batch_size": 64, "max_source_length": 128, "max_target_length": 64}
    assert cli_main(["plan", "--configs", f"[{base}, {overlay}]", "--device_memory", "80"]) == 0
    assert "fits" in capsys.readouterr().out
    assert cli_main(["plan", "--configs", str(base), "--device_memory", "0.0001"]) == 1
    assert "does NOT fit" in capsys.readouterr().out


def test_paper_sizes_without_the_hub():
    from specialight.training.plan import model_config

    assert model_config("google/flan-t5-xxl").d_model == 4096
    with pytest.raises(ValueError, match="known without the hub"):
        model_config("google/not-a-model-xyz")
