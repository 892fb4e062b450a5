"""LoRA students (beyond the paper): train a low-rank adapter with `peft` instead of the whole student.

``model.peft: {r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}`` in a config wraps the student
in a `peft.PeftModel`: the base weights are frozen, only the adapter's ``lora_A``/``lora_B`` matrices train
(the optimizer only sees parameters that require a gradient), and checkpoints hold base + adapter.
``specialight export`` merges the adapter into the base weights (`merged`), so the exported folder is a plain
transformers model. ``target_modules`` takes peft's names (``all-linear``: every linear layer but the
output projection; or a list such as ``[q, v]`` for T5, ``[q_proj, v_proj]`` for Llama-style models).
"""

from __future__ import annotations

from typing import Any

from torch import nn

KEYS = {"r", "alpha", "dropout", "target_modules"}


def apply_lora(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """``model`` wrapped with a fresh LoRA adapter as ``settings`` describe (see the module docstring)."""
    from peft import LoraConfig, TaskType, get_peft_model

    unknown = set(settings) - KEYS
    if unknown:
        raise ValueError(f"model.peft: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if encoder_decoder else TaskType.CAUSAL_LM,
        r=int(settings.get("r", 8)),
        lora_alpha=int(settings.get("alpha", 16)),
        lora_dropout=float(settings.get("dropout", 0.05)),
        target_modules=settings.get("target_modules", "all-linear"),
    )
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """A plain transformers model: the adapter merged into the base weights (a model without one as is)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
