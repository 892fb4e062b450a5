"""LoRA students: only the adapter trains, the loss drops, and the export merges it into plain weights."""

from __future__ import annotations

import pytest
import torch

from specialight.training.losses import DistributionMatching, SampleMatching
from specialight.training.module import SpecializationModule
from tests.helpers import RecordSteps, quiet_trainer, read_steps
from tests.training.test_training import datamodule

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
ONE_FORMAT = {"zero_shot_cot": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize(("student", "loss_name"), [("gpt2", "sample"), ("t5", "distribution")])
def test_lora_trains_only_the_adapter_and_the_export_merges_it(student, loss_name, request, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from specialight.training.export import export_checkpoint

    torch.manual_seed(0)
    model_dir = request.getfixturevalue(f"tiny_{student}_dir")
    teacher_data = str(request.getfixturevalue(f"aligned_{student}")) if loss_name == "distribution" else None
    loss = DistributionMatching() if loss_name == "distribution" else SampleMatching()
    module = SpecializationModule(str(model_dir), loss=loss, learning_rate=2e-2, warmup=2, peft=LORA)
    record = RecordSteps(str(tmp_path / "steps"))
    trainer = quiet_trainer(24, [record])
    # the same two examples every step: a tiny random model under a frozen base moves slowly
    trainer.fit(module, datamodule(model_dir, data_dir, teacher_data, limit=2, batch_size=2, formats=ONE_FORMAT))

    losses = [s["loss"] for s in read_steps(tmp_path / "steps")]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses
    trainable = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    cls = AutoModelForSeq2SeqLM if student == "t5" else AutoModelForCausalLM
    base = cls.from_pretrained(model_dir)
    frozen = dict(module.model.get_base_model().named_parameters())
    for name, parameter in base.named_parameters():  # the base weights are where they started
        owner, _, leaf = name.rpartition(".")
        key = name if name in frozen else f"{owner}.base_layer.{leaf}"  # an adapted layer keeps it in base_layer
        assert torch.equal(frozen[key], parameter), name

    checkpoint = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(checkpoint)
    exported = cls.from_pretrained(export_checkpoint(checkpoint, tmp_path / "export"))
    assert not any("lora" in name for name, _ in exported.named_parameters())
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    inputs = {"input_ids": ids} | ({"decoder_input_ids": ids[:, :4]} if student == "t5" else {})
    module.model.eval()
    with torch.no_grad():
        adapted, plain, merged = module.model(**inputs).logits, base(**inputs).logits, exported(**inputs).logits
    assert torch.allclose(merged, adapted, atol=1e-4)  # base + adapter, merged
    assert not torch.allclose(merged, plain, atol=1e-3)  # and the adapter did change the model
