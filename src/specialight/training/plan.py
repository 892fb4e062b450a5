"""``specialight plan``: the memory one rank needs for a training config, before any GPU is rented.

The model is built from its config on the meta device (exact parameter count, no memory). Per rank, with
full sharding over ``devices x num_nodes`` ranks (`ModelParallelStrategy`), or whole on one device otherwise:

- parameters, gradients: fp32, divided by the ranks;
- AdamW state: two fp32 moments, divided by the ranks;
- gathered blocks: under sharding, the whole parameters of the block in compute and the one prefetched
  (``shard_param_dtype``, bf16 by default);
- evaluation, between steps: parameters, gradients (zeroed only in the next step) and optimizer state stay,
  activations are gone, and a sharded model is gathered whole on every rank in its compute dtype while it
  generates (KV caches of the evaluation batch are not counted);
- activations of the config's heaviest batch: each format at its own batch size, with the longest prompt
  and target among 64 GSM8K tuning questions in that format (the student's tokenizer; offline, the shared
  T5 tokenizer for a T5-family hub id), capped at the config's maximum lengths: with gradient checkpointing,
  the input of every block (kept) plus one block recomputed; without, every block's intermediates. Attention
  scores are counted in fp32 (T5 computes its softmax in fp32), the loss's logits and their gradient in fp32
  ``[B, T, V]``.

The activation figures are estimates from the tensor shapes of one transformer block (documented in
`_block_activation_bytes`), not measurements; parameters, gradients and optimizer state are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

GIB = 1024**3
# the T5 family's published architectures, for planning without the hub (AutoConfig is used when it answers)
T5_ARCHITECTURES = {
    "t5-base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu"),
    "t5-large": dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16, feed_forward_proj="relu"),
    "t5-3b": dict(d_model=1024, d_ff=16384, num_layers=24, num_heads=32, feed_forward_proj="relu"),
    "t5-11b": dict(d_model=1024, d_ff=65536, num_layers=24, num_heads=128, feed_forward_proj="relu"),
    "flan-t5-small": dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, feed_forward_proj="gated-gelu"),
    "flan-t5-base": dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, feed_forward_proj="gated-gelu"),
    "flan-t5-large": dict(d_model=1024, d_ff=2816, num_layers=24, num_heads=16, feed_forward_proj="gated-gelu"),
    "flan-t5-xl": dict(d_model=2048, d_ff=5120, num_layers=24, num_heads=32, feed_forward_proj="gated-gelu"),
    "flan-t5-xxl": dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"),
}
D_KV = {"t5-3b": 128, "t5-11b": 128}


def load_config(paths: list[str | os.PathLike]) -> dict:
    """The configs merged in order (later files override, dicts merge key by key), as LightningCLI merges them."""
    merged: dict = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        merged = _merge(merged, loaded)
    return merged


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_config(name_or_path: str):
    """The transformers config of a student: from its folder or the hub, else the T5 table above."""
    from transformers import AutoConfig, T5Config

    short = name_or_path.rstrip("/").rsplit("/", 1)[-1].lower()
    try:
        from specialight.core.models import resolve_model

        return AutoConfig.from_pretrained(resolve_model(name_or_path))
    except (OSError, ValueError):
        if short not in T5_ARCHITECTURES:
            raise ValueError(
                f"no config for {name_or_path!r} offline; known without the hub: {', '.join(T5_ARCHITECTURES)}"
            ) from None
    arch = T5_ARCHITECTURES[short]
    gated = arch["feed_forward_proj"] == "gated-gelu"
    return T5Config(
        vocab_size=32128,
        d_kv=D_KV.get(short, 64),
        num_decoder_layers=arch["num_layers"],
        tie_word_embeddings=not gated,
        **arch,
    )


@dataclass
class Shape:
    """What one training step holds: ``batch`` rows of ``source`` prompt and ``target`` label tokens."""

    batch: int
    source: int
    target: int


def _block_activation_bytes(config, shape: Shape, compute_bytes: int) -> tuple[float, float, float]:
    """Bytes a block saves for backward: (one encoder block, one decoder block, block input) at ``shape``.

    Per token of width d: the input, the normed input, q/k/v/output projections (5 d), the FFN's hidden
    (2 d_ff gated, else d_ff, plus its activation) in the compute dtype; per head, the scores and the softmax
    in fp32 and the dropout mask. Decoder blocks add cross-attention over the source.
    """
    d, heads = _width(config), getattr(config, "num_heads", None) or config.num_attention_heads
    ff = getattr(config, "d_ff", None) or getattr(config, "intermediate_size", None) or 4 * d
    gated = "gated" in getattr(config, "feed_forward_proj", "") or getattr(config, "hidden_act", "") == "silu"
    inner = heads * (getattr(config, "d_kv", None) or d // heads)
    per_token = (2 * d + 4 * inner + (3 if gated else 2) * ff) * compute_bytes
    b, s, t = shape.batch, shape.source, shape.target
    encoder = b * s * per_token + b * heads * s * s * (4 + 4 + 1)
    decoder = b * t * (per_token + 4 * inner * compute_bytes) + b * heads * t * (t + s) * (4 + 4 + 1)
    return encoder, decoder, b * max(s, t) * d * compute_bytes


LENGTH_SAMPLE = 64  # questions per format whose prompt and target lengths are measured


def _tokenizer(name_or_path: str):
    """The student's tokenizer; offline, a T5-family hub id falls back to the shared T5 tokenizer (every T5
    and FlanT5 size has the same vocabulary). None when neither is at hand."""
    from specialight.core.models import load_tokenizer

    try:
        return load_tokenizer(name_or_path)
    except (OSError, ValueError):
        local = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", "")) / "t5"
        return load_tokenizer(str(local)) if "t5" in name_or_path.lower() and local.is_dir() else None


def format_shapes(data: dict, tokenizer) -> dict[str, Shape]:
    """Per tuning format, its batch size and the longest prompt and target among `LENGTH_SAMPLE` GSM8K tuning
    questions with their gold rationales (capped at the config's maximum lengths). Without a tokenizer (or the
    data) every format is taken at the maximum lengths."""
    from specialight.data.formats import FORMATS, FormatBuilder, newline_separator
    from specialight.data.tasks import DataError, load_examples

    sizes = data.get("batch_sizes") or {}
    source, target = int(data.get("max_source_length", 1024)), int(data.get("max_target_length", 256))
    formats = [f for f, weight in (data.get("formats") or dict.fromkeys(FORMATS, 1.0)).items() if weight]
    batch = {f: int(sizes.get(f, data.get("batch_size", 8))) for f in formats}
    try:
        pool = load_examples("gsm8k", "tune", data.get("data_dir")) if tokenizer is not None else None
    except DataError:
        pool = None
    if pool is None:
        return {f: Shape(batch[f], source, target) for f in formats}
    builder = FormatBuilder(
        pool, num_demonstrations=int(data.get("num_demonstrations", 4)), seed=0, newline=newline_separator(tokenizer)
    )
    shapes = {}
    for fmt in formats:
        built = [builder.build(example, fmt) for example in pool[:LENGTH_SAMPLE]]
        tokenizer.model_max_length = 1 << 30  # measuring lengths, not feeding a model: no length warning
        prompts = tokenizer([b.prompt for b in built])["input_ids"]
        targets = tokenizer([b.target for b in built])["input_ids"]
        shapes[fmt] = Shape(batch[fmt], min(source, max(map(len, prompts))), min(target, max(map(len, targets)) + 1))
    return shapes


def _width(config) -> int:
    return getattr(config, "d_model", None) or config.hidden_size


def plan(config: dict, device_memory_gib: float) -> tuple[int, list[tuple[str, float]]]:
    """The parameter count and the per-rank memory ``[(what, GiB)]``, ending with the total, of a merged
    training config."""
    model_args, data, trainer = config.get("model", {}), config.get("data", {}), config.get("trainer", {})
    hf_config = model_config(model_args["model_name_or_path"])
    model, parameters = _meta_model(hf_config)
    ranks, compute_bytes = _ranks_and_compute_bytes(model_args, trainer)
    shapes = format_shapes(data, _tokenizer(model_args["model_name_or_path"]))
    fmt, shape, activations, logits = _heaviest_step(
        hf_config, shapes, compute_bytes, bool(model_args.get("gradient_checkpointing", False))
    )
    from specialight.training.sharding import block_classes

    classes = block_classes(model)
    block_params = max(sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, classes))
    rows = [
        ("parameters (fp32)", 4 * parameters / ranks),
        ("gradients (fp32)", 4 * parameters / ranks),
        ("AdamW state (2 x fp32)", 8 * parameters / ranks),
        ("gathered blocks (compute + prefetch)", 2 * block_params * compute_bytes if ranks > 1 else 0.0),
        (f"activations ({fmt}: B={shape.batch}, S={shape.source}, T={shape.target})", activations),
        ("logits + their gradient (fp32)", logits),
    ]
    return parameters, _with_totals(rows, parameters * compute_bytes if ranks > 1 else 0.0, ranks)


def _meta_model(hf_config):
    """The student built on the meta device from ``hf_config`` (no memory), and its exact parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    encoder_decoder = bool(getattr(hf_config, "is_encoder_decoder", False))
    with torch.device("meta"):
        model = (AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM).from_config(hf_config)
    parameters = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    if getattr(hf_config, "scale_decoder_outputs", True) is False and tied:
        # transformers 5 builds every T5 with a tied head; v1.1 / FlanT5 checkpoints carry a separate one
        parameters += head.weight.numel()
    return model, parameters


def _ranks_and_compute_bytes(model_args: dict, trainer: dict) -> tuple[int, int]:
    """The ranks the states are sharded over (1 unless `ModelParallelStrategy`), and the bytes of one value in
    the compute dtype (2 for bf16/fp16 shards or mixed precision, else 4)."""
    strategy = trainer.get("strategy")
    sharded = isinstance(strategy, dict) and "ModelParallel" in strategy.get("class_path", "")
    devices = trainer.get("devices", 1)
    ranks = (devices if isinstance(devices, int) else 1) * int(trainer.get("num_nodes", 1)) if sharded else 1
    param_dtype = model_args.get("shard_param_dtype", "bfloat16") if sharded else None
    mixed = "16" in str(trainer.get("precision", "32"))
    return ranks, 2 if (param_dtype in ("bfloat16", "float16") or mixed) else 4


def _heaviest_step(
    hf_config, shapes: dict[str, Shape], compute_bytes: int, checkpointing: bool
) -> tuple[str, Shape, float, float]:
    """The format whose step holds the most: ``(format, shape, activation bytes, logits bytes)``."""
    encoder_decoder = bool(getattr(hf_config, "is_encoder_decoder", False))
    if encoder_decoder:
        layers, decoder_layers = hf_config.num_layers, getattr(hf_config, "num_decoder_layers", None) or 0
    else:  # a decoder-only block counts as an "encoder" block over prompt + target
        layers, decoder_layers = hf_config.num_hidden_layers, 0

    def step_bytes(shape: Shape) -> tuple[float, float]:
        if not encoder_decoder:
            shape = Shape(shape.batch, shape.source + shape.target, shape.target)
        encoder, decoder, boundary = _block_activation_bytes(hf_config, shape, compute_bytes)
        if checkpointing:
            activations = (layers + decoder_layers) * boundary + max(encoder, decoder)
        else:
            activations = layers * encoder + decoder_layers * decoder
        return activations, 2 * shape.batch * shape.target * hf_config.vocab_size * 4

    fmt = max(shapes, key=lambda f: sum(step_bytes(shapes[f])))
    return (fmt, shapes[fmt], *step_bytes(shapes[fmt]))


def _with_totals(rows: list[tuple[str, float]], whole: float, ranks: int) -> list[tuple[str, float]]:
    """``rows`` (bytes) in GiB, followed by the training step, the evaluation and the larger of the two.

    Evaluation between steps: activations are freed, gradients not yet (Lightning zeroes them in the next
    step), and a sharded model is gathered whole (``whole`` bytes) on every rank in its compute dtype while it
    generates (`specialight.training.sharding.full_parameters`).
    """
    evaluation = rows[0][1] + rows[1][1] + rows[2][1] + whole
    rows = [(name, value / GIB) for name, value in rows]
    training = sum(value for _, value in rows)
    plural = "s" if ranks > 1 else ""
    rows.append((f"training step per rank ({ranks} rank{plural})", training))
    rows.append(("evaluation per rank (states + whole model gathered)", evaluation / GIB))
    rows.append((f"total per rank ({ranks} rank{plural}): the larger", max(training, evaluation / GIB)))
    return rows


def format_plan(name: str, parameters: int, rows: list[tuple[str, float]], device_memory_gib: float) -> str:
    """The plan as a printable table; the last line says whether it fits."""
    width = max(len(what) for what, _ in rows)
    lines = [f"{name}: {parameters / 1e9:.2f}B parameters", f"{'per rank':<{width}}  {'GiB':>8}"]
    lines += [f"{what:<{width}}  {value:8.2f}" for what, value in rows]
    total = rows[-1][1]
    verdict = "fits" if total <= device_memory_gib else "does NOT fit"
    lines.append(f"{verdict}: {total:.1f} of {device_memory_gib:g} GiB ({100 * total / device_memory_gib:.0f}%)")
    return "\n".join(lines)
