"""Evaluation under bf16 autocast: the caller's autocast held for the whole call against entered per forward.

Autocast casts each fp32 weight to bf16 when a matrix product reads it; it can keep the cast until its
outermost context exits, but Lightning's precision context opens it with the cache off, and inference mode
never caches. The evaluator used to enter that context around each forward pass under
``torch.inference_mode``: every decode step cast every weight again. Today `generate` and `token_nlls`
enter it once per call under ``torch.no_grad`` with one more autocast whose cache is on
(`specialight.evaluation.mode.evaluating`). Both arms run here on the same model (the real
SmolLM2-135M-Instruct by default) and prompts (a math suite's 4-shot CoT prompts, greedy), each timed
twice, the better kept; the script exits with status 1 where any completion differs. The last line is JSON
with ``held_vs_per_forward`` (examples/s of today's against the previous way).

    python benchmarks/eval_autocast.py [--suite gsm8k_dev] [--examples 32] [--max-new-tokens 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def bf16():
    """The context the evaluation callback passes under bf16-mixed: Lightning's (its cast cache off)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return MixedPrecision("bf16-mixed", "cpu").forward_context()


@contextlib.contextmanager
def per_forward():
    """`generate` as before: inference mode, the context entered around each forward pass only."""
    from specialight.evaluation import generation
    from specialight.evaluation.mode import evaluating

    generation.evaluating = lambda model, context, hold=True: evaluating(model, context, hold=False)
    try:
        with torch.inference_mode():
            yield
    finally:
        generation.evaluating = evaluating


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="gsm8k_dev")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=None, help="a random SmolLM2-shaped decoder of this depth")
    args = parser.parse_args()

    from benchmarks.evaluate import smollm2_shaped
    from specialight.core.models import load_student, load_tokenizer, resolve_model
    from specialight.evaluation.generation import generate
    from specialight.evaluation.suites import build_items

    data_dir = os.environ.get("SPECIALIGHT_DATA_DIR", str(SHARED / "data"))
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    if args.layers:
        model = smollm2_shaped(len(tokenizer), args.layers)
        what = f"random SmolLM2-shaped decoder ({args.layers} layers)"
    else:
        model, what = load_student(resolve_model("smollm2-135m-instruct")).eval(), "SmolLM2-135M-Instruct"
    prompts = [i.prompt for i in build_items(args.suite, data_dir, limit=args.examples)]

    def run() -> list[str]:
        return generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, progress=False, context=bf16)

    arms = {"per forward": per_forward, "held": contextlib.nullcontext}
    outputs, seconds = {}, {name: float("inf") for name in arms}
    for _ in range(2):
        for name, way in arms.items():
            with way():
                start = time.perf_counter()
                outputs[name] = run()
                seconds[name] = min(seconds[name], time.perf_counter() - start)
    same = sum(a == b for a, b in zip(outputs["held"], outputs["per forward"], strict=True))
    print(f"{len(prompts)} {args.suite} prompts, {args.max_new_tokens} new tokens, batch {args.batch_size}, {what}")
    print(f"{'arm':<12} {'examples/s':>10} {'s':>8}")
    for name in arms:
        print(f"{name:<12} {len(prompts) / seconds[name]:>10.2f} {seconds[name]:>8.1f}")
    ratio = seconds["per forward"] / seconds["held"]
    print(f"held against per forward: {ratio:.2f}x; identical completions {same} of {len(prompts)}")
    figures = {
        "benchmark": "eval_autocast",
        "held_vs_per_forward": round(ratio, 3),
        "held_per_s": round(len(prompts) / seconds["held"], 3),
        "per_forward_per_s": round(len(prompts) / seconds["per forward"], 3),
        "identical": same,
        "examples": len(prompts),
        "model": what,
        "device": f"cpu ({os.cpu_count()} cores)",
    }
    print(json.dumps(figures))
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
