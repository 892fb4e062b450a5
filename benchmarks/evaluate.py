"""Evaluation throughput: our batched, length-sorted generation against one-example-at-a-time ``generate``.

Same process, same model (a random decoder-only model on the real GPT-2 tokenizer: 4 layers, width 256),
same prompts (GSM8K dev, zero-shot CoT), same greedy decoding and token budget; a random model never
emits EOS, so both sides generate every token of the budget. Prints examples/s and the ratio (target >= 3x
on CPU), and checks both produce the same completions: any difference makes it exit with status 1.

    python benchmarks/evaluate.py [--examples 32] [--max-new-tokens 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from specialight.evaluation.generation import cut_at_stop, generate
    from specialight.evaluation.suites import build_items

    torch.manual_seed(0)
    tokenizers = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", SHARED / "tokenizers"))
    data_dir = os.environ.get("SPECIALIGHT_DATA_DIR", str(SHARED / "data"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizers / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=256, n_layer=4, n_head=4, n_positions=1024)
    model = GPT2LMHeadModel(config).eval()
    prompts = [i.prompt for i in build_items("gsm8k_dev_zero_shot", data_dir, limit=args.examples)]
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up

    start = time.perf_counter()
    ours = generate(
        model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False
    )
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    baseline = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            output = model.generate(
                **ids,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
                stop_strings=["Q:"],
                tokenizer=tokenizer,
            )
            baseline.append(
                cut_at_stop(tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
            )
    baseline_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(ours, baseline))
    ours_rate, baseline_rate = len(prompts) / ours_s, len(prompts) / baseline_s
    print(f"{len(prompts)} GSM8K dev prompts, {args.max_new_tokens} new tokens each, random GPT-2 (4x256), CPU")
    print(f"{'what':<36} {'examples/s':>10} {'s':>8}")
    print(f"{'one example at a time (generate)':<36} {baseline_rate:>10.2f} {baseline_s:>8.1f}")
    print(f"{'ours, batch ' + str(args.batch_size) + ', length-sorted':<36} {ours_rate:>10.2f} {ours_s:>8.1f}")
    print(f"ratio: {ours_rate / baseline_rate:.2f}x (target >= 3x); identical completions: {same}/{len(prompts)}")
    print(
        json.dumps(
            {
                "benchmark": "evaluate",
                "ours_per_s": round(ours_rate, 3),
                "baseline_per_s": round(baseline_rate, 3),
                "ratio": round(ours_rate / baseline_rate, 2),
                "identical": same,
                "examples": len(prompts),
                "device": f"cpu ({os.cpu_count()} cores)",
            }
        )
    )
    if same != len(prompts):
        print(f"completions differ on {len(prompts) - same} of {len(prompts)} prompts", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
