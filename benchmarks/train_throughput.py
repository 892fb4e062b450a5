"""Training throughput: batches sized by a token budget against today's fixed count of examples per batch.

The real SmolLM2-135M-Instruct (resolved offline by `specialight.core.models`), trained as the fixed-batch
recipe (``configs/reproduce_cpu_formats.yaml``) trains it: fp32, gradient checkpointing, AdamW,
sample matching, one format per batch, the allocator setting `specialight fit` applies. The examples are
the same in both arms: the first ``--items`` GSM8K tuning questions (gold rationales) in each format of
``--formats`` (default: the paper's four, in-context with one demonstration), one epoch of them. The
*fixed* arm batches them ``--batch-size`` at a time (today's default); the *budget* arm fills each batch
up to ``--max-tokens`` tokens, padding counted (`FormatBatchSampler`'s ``max_tokens``; default: the padded
size of the fixed arm's largest batch, so that no batch of the budget arm is bigger than one of the
fixed arm's). Both use the same seed and length grouping.

Each arm runs in a fresh child process of this script, so that neither sees the other's memory: it loads
the model, takes one untimed warm-up step (which also creates AdamW's state) on the arm's shortest
batch, reads its resident memory, resets the kernel's peak counter (``/proc/self/clear_refs``), then
times every batch of the epoch. *Tokens/s* counts the tokens the student reads, padding left out
(prompt and target: ``num_tokens``); *target tokens/s* only the scored ones. Both arms train on the same
tokens, so the ratio is the same for either count. *Peak* is the peak RSS during the timed steps minus
the RSS before them (VmHWM after the reset). The last line is JSON with ``ratio_vs_fixed_batches``
(target >= 1.3 at equal or lower peak memory).

    python benchmarks/train_throughput.py [--items 8] [--formats ...] [--batch-size 8] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import rss_mb  # noqa: E402  (the benchmarks share one memory probe)

SHARED = ROOT.parent / "shared"
FOUR = ["in_context_answer_only", "in_context_cot", "zero_shot_answer_only", "zero_shot_cot"]


def data_module(args: argparse.Namespace, max_tokens: int | None):
    """The reproduce config's data module on the first ``--items`` questions, set up."""
    from specialight.data.datamodule import SpecializationDataModule

    dm = SpecializationDataModule(
        args.model,
        formats={fmt: 1.0 for fmt in args.formats},
        num_demonstrations=1,
        batch_size=args.batch_size,
        max_source_length=768,
        max_target_length=192,
        limit=args.items,
        seed=args.seed,
        max_tokens_per_batch=max_tokens,
    )
    dm.setup("fit")
    return dm


def largest_fixed_batch(args: argparse.Namespace) -> int:
    """Padded tokens (rows x longest row, rounded as collated) of the fixed arm's largest batch."""
    from specialight.data.batching import token_lengths

    dm = data_module(args, None)
    lengths = token_lengths(dm.dataset, dm.encoder.encoder_decoder)
    multiple = dm.hparams.pad_to_multiple_of
    return max(len(b) * -(-max(lengths[u] for u in b) // multiple) * multiple for b in dm._sampler()._all_batches())


def run_arm(args: argparse.Namespace) -> dict:
    """One arm in this (child) process: warm-up step, then every batch of the epoch, timed."""
    import torch

    from specialight.core.memory import return_freed_memory
    from specialight.training.module import SpecializationModule

    return_freed_memory()
    torch.manual_seed(args.seed)
    dm = data_module(args, args.max_tokens if args.arm == "budget" else None)
    batches = list(dm.train_dataloader())
    module = SpecializationModule(args.model, learning_rate=2e-4, gradient_checkpointing=True)
    module.configure_model()
    module.model.train()
    optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=2e-4)

    def step(batch: dict) -> None:
        module.batch_loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(min(batches, key=lambda b: b["input_ids"].numel()))  # warm-up: AdamW's state, first allocations
    before = rss_mb()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - started
    return {
        "arm": args.arm,
        "steps": len(batches),
        "examples": sum(int(b["input_ids"].shape[0]) for b in batches),
        "tokens": sum(int(b["num_tokens"].sum()) for b in batches),
        "padded_tokens": sum(int(b["input_ids"].numel()) for b in batches),
        "target_tokens": sum(int((b["labels"] != -100).sum()) for b in batches),
        "largest_batch": max(int(b["input_ids"].numel()) for b in batches),
        "seconds": round(seconds, 2),
        "peak_mb": round(rss_mb("VmHWM") - before, 1),
        "rss_before_mb": round(before, 1),
    }


def child(args: argparse.Namespace, arm: str) -> dict:
    command = [sys.executable, __file__, "--arm", arm, "--max-tokens", str(args.max_tokens)]
    command += ["--items", str(args.items), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    command += ["--model", args.model, "--formats", *args.formats]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {arm} arm failed (exit {done.returncode})")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    sys.stderr.write(f"{arm} arm: {figures}\n")  # visible while the other arm runs
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=8, help="GSM8K tuning questions; one example per format each")
    parser.add_argument("--formats", nargs="+", default=FOUR)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the fixed arm's largest batch")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", choices=["fixed", "budget"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("SPECIALIGHT_DATA_DIR", str(SHARED / "data"))
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0
    if args.max_tokens is None:
        args.max_tokens = largest_fixed_batch(args)
    fixed, budget = child(args, "fixed"), child(args, "budget")
    assert fixed["examples"] == budget["examples"] and fixed["tokens"] == budget["tokens"], (fixed, budget)
    print(f"{len(args.formats)} formats x {args.items} questions; budget {args.max_tokens} tokens; fp32, checkpointing")
    print(f"{'arm':8} {'steps':>5} {'examples':>8} {'tokens/s':>9} {'target tok/s':>12} {'padding':>8} {'peak MB':>8}")
    for arm in (fixed, budget):
        padding = 1 - arm["tokens"] / arm["padded_tokens"]
        print(
            f"{arm['arm']:8} {arm['steps']:>5} {arm['examples']:>8} {arm['tokens'] / arm['seconds']:>9.1f} "
            f"{arm['target_tokens'] / arm['seconds']:>12.1f} {padding:>8.1%} {arm['peak_mb']:>8.0f}"
        )
    ratio = fixed["seconds"] / budget["seconds"]
    print(f"ratio {ratio:.2f}; peak memory {budget['peak_mb']:.0f} MB against {fixed['peak_mb']:.0f} MB")
    figures = {
        "benchmark": "train_throughput",
        "ratio_vs_fixed_batches": round(ratio, 3),
        "ours_tokens_per_s": round(budget["tokens"] / budget["seconds"], 1),
        "baseline_tokens_per_s": round(fixed["tokens"] / fixed["seconds"], 1),
        "peak_mb": {"budget": budget["peak_mb"], "fixed": fixed["peak_mb"]},
        "max_tokens": args.max_tokens,
        "arms": [fixed, budget],
        "device": "cpu",
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
