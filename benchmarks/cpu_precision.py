"""Training-step time in fp32 against bf16 autocast on this machine's CPU, same model and batch.

bf16 autocast pays on CPUs with bf16 instructions (avx512_bf16, AMX); without them the bf16 matrix
products are emulated. The model is a random decoder with SmolLM2-135M's shapes, gradient checkpointing
on, a batch of 8 x 384 tokens (a zero-shot CoT batch), forward and backward through the trunk. Prints
seconds per step of each (the better of two) and the CPU's bf16 flags; the last line is JSON with
``bf16_over_fp32`` (above 1: bf16 autocast is slower here; the CPU configs then train in fp32).

    python benchmarks/cpu_precision.py [--layers 30] [--tokens 384]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def step_seconds(model, ids: torch.Tensor, bf16: bool) -> float:
    """The better of two forward+backward passes, in seconds."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = model.model(input_ids=ids).last_hidden_state
        hidden.float().pow(2).mean().backward()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=384)
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=args.layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, config.vocab_size, (8, args.tokens))
    fp32, bf16 = step_seconds(model, ids, False), step_seconds(model, ids, True)
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    found = sorted({f for f in flags if "bf16" in f or f.startswith("amx")})
    threads = torch.get_num_threads()
    print(f"8 x {args.tokens} tokens, {args.layers} layers, {threads} threads; bf16 flags: {found or 'none'}")
    print(f"fp32 {fp32:.1f} s/step, bf16 autocast {bf16:.1f} s/step")
    print(
        json.dumps(
            {
                "benchmark": "cpu_precision",
                "fp32_s": round(fp32, 2),
                "bf16_s": round(bf16, 2),
                "bf16_flags": found,
                "bf16_over_fp32": round(bf16 / fp32, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
