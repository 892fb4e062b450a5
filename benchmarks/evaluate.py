"""Evaluation throughput: today's `generate` against the previous one, same model, prompts and completions.

The model is a random decoder with SmolLM2-135M's shapes (LlamaConfig: hidden 576, 30 layers, 9 heads, 3
key/value heads, intermediate 1536, vocabulary 49,152, tied embeddings) on SmolLM2's real tokenizer; the
prompts are a real math suite's (GSM8K dev by default) with the paper's 4-shot prompt, greedy, one token
budget. The baseline, ``previous_generate`` below, is the evaluator's generation before the shared-prefix
cache: left-padded batches through ``transformers``' ``generate`` with ``stop_strings``. Today's own loop
(reserved KV cache, the CPU default) and the static loop (fixed buffers, `specialight.evaluation.static`,
captured in CUDA graphs on a GPU, where it is the default and sizes its batch from free memory) run beside
it in this process on the same prompts; the script prints examples/s of each and exits with status 1 when
any completion differs. The last line is JSON with ``ratio_vs_previous`` (the device's default against the
previous; target >= 2 on the 2-core CPU) and ``static_per_s`` / ``static_vs_own_loop``.

    python benchmarks/evaluate.py [--suite gsm8k_dev] [--examples 24] [--max-new-tokens 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


@torch.inference_mode()
def previous_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """The evaluator's generation before this benchmark's change (decoder-only path, one budget)."""
    from specialight.evaluation.generation import cut_at_stop

    encoded = [tokenizer.encode(p, add_special_tokens=True) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    completions = [""] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids = encoded[i]
            input_ids[r, width - len(ids) :], attention[r, width - len(ids) :] = torch.tensor(ids), 1
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            stop_strings=["Q:"],
            tokenizer=tokenizer,
        )
        for r, i in enumerate(rows):
            ids = output[r, width:].tolist()[:max_new_tokens]
            completions[i] = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True))
    return completions


def smollm2_shaped(vocab_size: int, layers: int = 30):
    """A random decoder with SmolLM2-135M's shapes (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="gsm8k_dev")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=30, help="fewer for a quick check (the test uses 2)")
    parser.add_argument(
        "--model", default=None, help="a real decoder instead (e.g. smollm2: it stops at Q: and EOS, so rows finish)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from specialight.core.models import load_student, load_tokenizer, resolve_model
    from specialight.evaluation.generation import generate
    from specialight.evaluation.suites import build_items

    data_dir = os.environ.get("SPECIALIGHT_DATA_DIR", str(SHARED / "data"))
    tokenizer = load_tokenizer(resolve_model(args.model or "smollm2"))
    if args.model:
        model, what = load_student(resolve_model(args.model)).eval(), args.model
    else:
        model, what = (
            smollm2_shaped(len(tokenizer), args.layers),
            f"random SmolLM2-shaped decoder ({args.layers} layers)",
        )
    model.to(args.device)
    prompts = [i.prompt for i in build_items(args.suite, data_dir, limit=args.examples)]
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up
    timed = {"previous": lambda: previous_generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)}
    for name, static in (("own loop", False), ("static", True)):
        timed[name] = partial(
            generate, model, tokenizer, prompts, args.max_new_tokens, args.batch_size, progress=False, static=static
        )
    runs = {}
    for name, run in timed.items():
        start = time.perf_counter()
        runs[name] = (run(), time.perf_counter() - start)
    default = "static" if args.device.startswith("cuda") else "own loop"  # what `generate` picks there
    return report(args, what, prompts, tokenizer, runs, default)


def report(args, what: str, prompts: list[str], tokenizer, runs: dict, default: str) -> int:
    """Print the table and the JSON line; 1 when any completion differs from the previous generation's."""
    baseline = runs["previous"][0]
    rates = {name: len(prompts) / seconds for name, (_, seconds) in runs.items()}
    same = {name: sum(a == b for a, b in zip(out, baseline, strict=True)) for name, (out, _) in runs.items()}
    tokens = sum(len(tokenizer.encode(p)) for p in prompts) / len(prompts)
    print(
        f"{len(prompts)} {args.suite} prompts (4-shot, {tokens:.0f} tokens on average), {args.max_new_tokens} new "
        f"tokens, batch {args.batch_size}, {what}, {args.device}"
    )
    labels = {
        "previous": "previous: HF generate, left-padded batches",
        "own loop": "own loop: shared-prefix KV cache",
        "static": "static: fixed buffers (+ CUDA graphs on GPU)",
    }
    print(f"{'what':<46} {'examples/s':>10} {'s':>8} {'identical':>9}")
    for name, (_, seconds) in runs.items():
        mark = " (default here)" if name == default else ""
        print(f"{labels[name]:<46} {rates[name]:>10.2f} {seconds:>8.1f} {same[name]:>9}{mark}")
    ratio = rates[default] / rates["previous"]
    print(f"ratio: {ratio:.2f}x (target >= 2x); static vs own loop: {rates['static'] / rates['own loop']:.2f}x")
    print(json.dumps(figures(args, what, len(prompts), rates, same, default)))
    worst = len(prompts) - min(same["own loop"], same["static"])
    if worst:
        print(f"completions differ on {worst} of {len(prompts)} prompts", file=sys.stderr)
        return 1
    return 0


def figures(args, what: str, examples: int, rates: dict, same: dict, default: str) -> dict:
    """The JSON line's figures."""
    return {
        "benchmark": "evaluate",
        "ours_per_s": round(rates[default], 3),
        "previous_per_s": round(rates["previous"], 3),
        "own_loop_per_s": round(rates["own loop"], 3),
        "static_per_s": round(rates["static"], 3),
        "identical": same[default],
        "static_identical": same["static"],
        "examples": examples,
        "model": what,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
        "ratio_vs_previous": round(rates[default] / rates["previous"], 2),
        "static_vs_own_loop": round(rates["static"] / rates["own loop"], 2),
    }


if __name__ == "__main__":
    sys.exit(main())
