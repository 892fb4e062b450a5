"""Training throughput: the reproduce recipe's batches and settings against today's fixed count of examples per batch.

The real SmolLM2-135M-Instruct (resolved offline by `specialight.core.models`), sample matching, one format per
batch, the optimizer kind `specialight fit` builds (AdamW, fused on a CPU: `specialight.training.schedule.adamw`;
here one parameter group, no clipping) and the allocator setting it applies. The examples are the same in every
arm: the first ``--items`` GSM8K tuning questions (gold rationales) in each format of ``--formats`` (default:
the paper's four, in-context with one demonstration), one epoch of them. Four arms:

- *fixed*: today's default, ``--batch-size`` examples a batch, fp32, gradient checkpointing (the recipe
  ``configs/reproduce_cpu_formats.yaml`` and the earlier ``reproduce_cpu.yaml`` trained with);
- *budget*: the same settings, each batch filled up to ``--max-tokens`` tokens, padding counted
  (`FormatBatchSampler`'s ``max_tokens``; default: the padded size of the fixed arm's largest batch, so that
  no batch of the budget arm is bigger than one of the fixed arm's): the batching lever alone;
- *recipe*: the budget arm's batches as ``configs/reproduce_cpu.yaml`` trains them: its ``auto_precision``
  (bf16 autocast where this CPU multiplies bf16 natively, else fp32) and its ``gradient_checkpointing`` (off:
  the reproduce run's 8 GB cap affords the activations, and recomputing them costs time);
- *recipe_checkpointed*: the same with the fixed arm's gradient checkpointing: the recipe where memory needs
  checkpointing (``model.gradient_checkpointing: true``), at the fixed arm's memory.

All use the same seed and length grouping. Each arm runs in a fresh child process of this script, so that
none sees another's memory: it loads the model, takes one untimed warm-up step (which also creates AdamW's
state) on the arm's shortest batch, reads its resident memory, resets the kernel's peak counter
(``/proc/self/clear_refs``), then times every batch of the epoch. *Tokens/s* counts the tokens the student
reads, padding left out (prompt and target: ``num_tokens``); *target tokens/s* only the scored ones. All arms
train on the same tokens, so a ratio is the same for either count. *Peak* is the peak RSS during the timed
steps minus the RSS before them (VmHWM after the reset). The last line is JSON with
``ratio_vs_fixed_batches`` (the recipe arm against the fixed arm; target >= 1.3 at equal or lower peak
memory, ``peak_at_or_below_fixed``), ``ratio_checkpointed`` (the recipe_checkpointed arm against the fixed
arm, ``peak_checkpointed_at_or_below_fixed``) and ``batching_ratio`` (the budget arm against the fixed arm).

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
RECIPE = ROOT / "configs" / "reproduce_cpu.yaml"
ARMS = ("fixed", "budget", "recipe", "recipe_checkpointed")


def recipe_settings() -> tuple[bool, str]:
    """``(gradient_checkpointing, precision)`` as ``configs/reproduce_cpu.yaml`` trains on this CPU."""
    import yaml

    from specialight.training.cli import native_precision

    config = yaml.safe_load(RECIPE.read_text())
    fixed = config["trainer"].get("precision", "32-true")
    precision = native_precision("cpu") if config.get("auto_precision") else fixed
    return bool(config["model"].get("gradient_checkpointing", False)), str(precision)


def arm_settings(arm: str) -> tuple[bool, str]:
    """``(gradient_checkpointing, precision)`` of an arm: the fixed arm's (on, fp32), or the recipe's."""
    if not arm.startswith("recipe"):
        return True, "32-true"
    configured, precision = recipe_settings()
    return (True if arm == "recipe_checkpointed" else configured), precision


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
    from specialight.training.schedule import adamw

    return_freed_memory()
    torch.manual_seed(args.seed)
    checkpointing, precision = arm_settings(args.arm)
    bf16 = precision.startswith("bf16")
    dm = data_module(args, None if args.arm == "fixed" else args.max_tokens)
    batches = list(dm.train_dataloader())
    module = SpecializationModule(args.model, learning_rate=2e-4, gradient_checkpointing=checkpointing)
    module.configure_model()
    module.model.train()
    optimizer = adamw([{"params": [p for p in module.model.parameters() if p.requires_grad]}], 2e-4)

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as Lightning's bf16-mixed on a CPU
            loss = module.batch_loss(batch)
        loss.backward()
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
        "gradient_checkpointing": checkpointing,
        "precision": precision,
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
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("SPECIALIGHT_DATA_DIR", str(SHARED / "data"))
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0
    if args.max_tokens is None:
        args.max_tokens = largest_fixed_batch(args)
    arms = [child(args, arm) for arm in ARMS]
    fixed, budget, recipe, checkpointed = arms
    assert all(a["examples"] == fixed["examples"] and a["tokens"] == fixed["tokens"] for a in arms), arms
    print(f"{len(args.formats)} formats x {args.items} questions; budget {args.max_tokens} tokens")
    header = (
        f"{'arm':19} {'precision':>10} {'ckpt':>5} {'steps':>5} {'tokens/s':>9} {'target tok/s':>12} {'padding':>8}"
    )
    print(f"{header} {'peak MB':>8}")
    for arm in arms:
        padding = 1 - arm["tokens"] / arm["padded_tokens"]
        print(
            f"{arm['arm']:19} {arm['precision']:>10} {'on' if arm['gradient_checkpointing'] else 'off':>5} "
            f"{arm['steps']:>5} {arm['tokens'] / arm['seconds']:>9.1f} "
            f"{arm['target_tokens'] / arm['seconds']:>12.1f} {padding:>8.1%} {arm['peak_mb']:>8.0f}"
        )
    ratio, checkpointed_ratio = fixed["seconds"] / recipe["seconds"], fixed["seconds"] / checkpointed["seconds"]
    batching = fixed["seconds"] / budget["seconds"]
    print(
        f"recipe against fixed {ratio:.2f} (peak {recipe['peak_mb']:.0f} MB against {fixed['peak_mb']:.0f} MB); "
        f"with checkpointing {checkpointed_ratio:.2f} (peak {checkpointed['peak_mb']:.0f} MB); "
        f"the token budget alone {batching:.2f} (peak {budget['peak_mb']:.0f} MB)"
    )
    figures = {
        "benchmark": "train_throughput",
        "ratio_vs_fixed_batches": round(ratio, 3),
        "peak_at_or_below_fixed": recipe["peak_mb"] <= fixed["peak_mb"],
        "ratio_checkpointed": round(checkpointed_ratio, 3),
        "peak_checkpointed_at_or_below_fixed": checkpointed["peak_mb"] <= fixed["peak_mb"],
        "batching_ratio": round(batching, 3),
        "ours_tokens_per_s": round(recipe["tokens"] / recipe["seconds"], 1),
        "baseline_tokens_per_s": round(fixed["tokens"] / fixed["seconds"], 1),
        "peak_mb": {arm["arm"]: arm["peak_mb"] for arm in arms},
        "max_tokens": args.max_tokens,
        "arms": arms,
        "device": "cpu",
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
