"""The module's chunked loss path against today's dense one (full logits from the model, then the loss)."""

from __future__ import annotations

import pytest
import torch

from specialight.core.constants import IGNORE_INDEX
from specialight.data.formats import FORMATS
from specialight.training.losses import DistributionMatching, SampleMatching
from specialight.training.module import SpecializationModule

VOCAB, B, S, K = 97, 3, 14, 4
COT, AO = FORMATS.index("zero_shot_cot"), FORMATS.index("zero_shot_answer_only")


def tiny_config(kind: str):
    """A tiny random model config of each output-layer kind the module handles."""
    import transformers as tf

    small = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "gpt2":  # tied lm_head, no bias
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    if kind == "llama":  # untied lm_head
        return tf.LlamaConfig(**small, num_key_value_heads=1, tie_word_embeddings=False)
    if kind == "gemma2":  # final logit soft-capping (small, so that it matters)
        return tf.Gemma2Config(**small, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5)
    if kind == "phi":  # lm_head with a bias
        return tf.PhiConfig(**small)
    if kind == "granite":  # divides its logits by logits_scaling: not a plain output layer
        return tf.GraniteConfig(**small, num_key_value_heads=1, logits_scaling=4.0)
    t5 = dict(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2, decoder_start_token_id=0)
    return tf.T5Config(**t5, tie_word_embeddings=kind == "t5_tied")  # tied: hidden * d_model**-0.5 first


def save_model(kind: str, folder) -> str:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    config = tiny_config(kind)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = cls.from_config(config)
    with torch.no_grad():  # random weights large enough that logits spread (and soft-capping bites)
        model.get_output_embeddings().weight.mul_(8.0)
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            model.get_output_embeddings().bias.normal_()
    model.save_pretrained(folder)
    return str(folder)


def make_batch(encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Mixed formats, uneven prompts and right padding; decoder-only labels mask the prompt."""
    torch.manual_seed(1)
    input_ids = torch.randint(2, VOCAB, (B, S))
    attention_mask = torch.ones(B, S, dtype=torch.long)
    attention_mask[1, 11:] = 0
    if encoder_decoder:
        labels = torch.randint(2, VOCAB, (B, 9))
        labels[2, 6:] = IGNORE_INDEX
    else:
        labels = input_ids.clone()
        for row, prompt in enumerate((5, 3, 7)):
            labels[row, :prompt] = IGNORE_INDEX
        labels[attention_mask == 0] = IGNORE_INDEX
    T = labels.shape[1]
    probs = torch.rand(B, T, K) / K
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "format_ids": torch.tensor([COT, AO, COT]),
        "topk_ids": torch.randint(0, VOCAB, (B, T, K)),
        "topk_probs": probs,
    }


def dense_loss(module: SpecializationModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Today's path: the model's own logits [B, T, V], then the loss on them."""
    model = module.model
    if module.encoder_decoder:
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=decoder_input_ids).logits
    else:
        start = module._first_prediction(batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, start:-1]
    return module.loss.from_logits(logits, module.targets(batch))


@pytest.mark.parametrize(
    "kind",
    ["gpt2", *(pytest.param(k, marks=pytest.mark.slow) for k in ("t5_tied", "llama", "gemma2", "phi", "t5_untied"))],
)
@pytest.mark.parametrize("loss_class", [SampleMatching, DistributionMatching])
def test_chunked_module_loss_and_gradients_equal_the_dense_path(kind, loss_class, tmp_path):
    module = SpecializationModule(save_model(kind, tmp_path), loss=loss_class())
    module.configure_model()
    module.model.eval()  # no dropout: both paths see the same network
    module.loss.chunk_elements = 5 * VOCAB  # several chunks per batch
    batch = make_batch(module.encoder_decoder)
    params = [p for p in module.model.parameters() if p.requires_grad]
    dense = dense_loss(module, batch)
    expected = torch.autograd.grad(dense, params, allow_unused=True)
    ours = module.batch_loss(batch)
    grads = torch.autograd.grad(ours, params, allow_unused=True)
    assert ours.item() == pytest.approx(dense.item(), rel=1e-4)
    assert dense.item() > 0.1
    # the module's own whole-logits path (sharded and LoRA students) gives the same loss
    module._chunked = False
    assert module.batch_loss(batch).item() == pytest.approx(dense.item(), rel=1e-5)
    module._chunked = True
    for mine, reference in zip(grads, expected):
        if reference is None:
            assert mine is None or mine.abs().sum() == 0
            continue
        scale = reference.abs().max().item()
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4 * scale + 1e-9)


def test_soft_capping_is_applied(tmp_path):
    module = SpecializationModule(save_model("gemma2", tmp_path))
    module.configure_model()
    hidden, head = module(make_batch(False))
    assert head.softcap == 0.5 and head.logits(hidden).abs().max() <= 0.5


def test_a_student_with_an_unknown_output_scale_is_refused(tmp_path):
    with pytest.raises(ValueError, match="output scale or offset"):
        SpecializationModule(save_model("granite", tmp_path)).configure_model()


def test_training_step_logs_the_teacher_top_k_mass(tmp_path):
    module = SpecializationModule(save_model("gpt2", tmp_path), loss=DistributionMatching())
    module.configure_model()
    logged = {}
    module.log = lambda name, value, **options: logged.__setitem__(name, float(value))
    batch = make_batch(False)
    module.training_step(batch, 0)
    shifted = module.targets(batch)
    matched = (shifted["labels"] != IGNORE_INDEX) & (batch["format_ids"] == COT).unsqueeze(-1)
    expected = shifted["topk_probs"].sum(-1)[matched].mean()
    assert logged["train/teacher_topk_mass"] == pytest.approx(expected.item(), rel=1e-6)
    assert 0 < logged["train/teacher_topk_mass"] < 1 and "train/loss" in logged
    logged.clear()
    module.training_step({**batch, "format_ids": torch.tensor([AO, AO, AO])}, 0)
    assert "train/teacher_topk_mass" not in logged  # nothing matched against the teacher: nothing to report
