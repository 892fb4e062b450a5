"""`make gpu-check`: the GPU figures of issue 22 in one run of at most 8 minutes on a lent machine.

Prints, and appends to ``$OUT/gpu_check.log`` (or ``--log``) line by line as each is measured, so that a
run stopped by its time limit still leaves what it measured:

1. decode, fp32, the benchmark case (64 GSM8K prompts, 128 new tokens): tokens/s of the static path
   against today's loop (ratio), identical completions, and the fraction of the bandwidth bound;
2. decode, bf16, a large batch (512 prompts): the same figures where the batch is sized from memory;
3. training tokens/s and MFU, bf16 autocast, SDPA, fused AdamW: SmolLM2-135M and a FlanT5-Base-shaped T5;
4. a before/after table of ``configs/demo_gpu.yaml``'s step-0 evaluation: a sample of each suite group
   through today's loop and the static path (bf16 autocast, as in training), projected to the full
   suite, the sample sized to the time left.

The machine has no network: the model folder (config and tokenizer; weights when they can travel) and the
data folder come as carried paths (``.carry/smollm2``, ``.carry/data``: docs/benchmarks.md says how).
Without weights the decoder is random with SmolLM2's shapes (same speed; its rows rarely stop early).
``--dry-run`` runs every section at tiny sizes on a CPU.

    python scripts/gpu_check.py [--dry-run] [--budget-s 450] [--model .carry/smollm2] [--data-dir .carry/data]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from benchmarks import gpu  # noqa: E402

DEMO_CONFIG = ROOT / "configs" / "demo_gpu.yaml"


class Clock:
    """Seconds since the start and before the deadline; each logged line carries the former."""

    def __init__(self, budget_s: float, log: Path) -> None:
        self.start, self.budget, self.log = time.monotonic(), budget_s, log

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def say(self, line: str) -> None:
        gpu.log(f"[{time.monotonic() - self.start:6.1f}s] {line}", str(self.log))


def parse() -> argparse.Namespace:
    carried = ROOT / ".carry"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting sections after this")
    parser.add_argument("--model", default=str(carried / "smollm2") if (carried / "smollm2").is_dir() else None)
    default_data = carried / "data" if (carried / "data").is_dir() else gpu.SHARED / "data"
    parser.add_argument("--data-dir", default=os.environ.get("SPECIALIGHT_DATA_DIR", str(default_data)))
    parser.add_argument("--demo-items", type=int, default=64, help="sample per suite group (fewer if time is short)")
    parser.add_argument("--log", default=None)
    args = parser.parse_args()
    out = os.environ.get("OUT")
    args.log = Path(args.log or (Path(out) / "gpu_check.log" if out else ROOT / "runs" / "gpu_check.log"))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    return args


def section(clock: Clock, title: str, needs_s: float, work) -> dict | None:
    """Run one section unless fewer than ``needs_s`` seconds are left; a failure is logged, not raised."""
    if clock.left() < needs_s:
        clock.say(f"{title}: skipped, {clock.left():.0f} s left (needs about {needs_s:.0f})")
        return None
    clock.say(f"{title}: start")
    try:
        result = work()
    except Exception as error:  # every section's failure is reported and the next one still runs
        clock.say(f"{title}: FAILED {type(error).__name__}: {error}")
        clock.say(traceback.format_exc().replace("\n", " | "))
        return None
    clock.say(f"{title}: {json.dumps(result)}")
    return result


def gpu_args(args, *extra: str) -> argparse.Namespace:
    common = ["--data-dir", args.data_dir, *(["--model", args.model] if args.model else [])]
    return gpu.parse([*common, *(["--dry-run"] if args.dry_run else []), *extra])


def environment() -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info |= {"device": torch.cuda.get_device_name(), "free_gib": round(free / 2**30, 1)}
        info["total_gib"] = round(total / 2**30, 1)
    return info


def main() -> int:
    args = parse()
    clock = Clock(args.budget_s, args.log)
    clock.say(f"gpu_check: {json.dumps(environment())}")
    decode = gpu_args(args, "--parts", "decode", "--dtype", "fp32", "--examples", "64", "--max-new-tokens", "128")
    large = gpu_args(args, "--parts", "decode", "--dtype", "bf16", "--examples", "512", "--max-new-tokens", "128")
    results = {
        "decode_fp32": section(clock, "decode fp32, 64 x 128", 60, lambda: gpu.run(decode)["decode"]),
        "decode_bf16": section(clock, "decode bf16, 512 x 128", 90, lambda: gpu.run(large)["decode"]),
        "train": section(clock, "train bf16-mixed", 60, lambda: gpu.run(gpu_args(args, "--parts", "train"))),
    }
    results["demo"] = section(clock, "demo_gpu step-0 evaluation", 45, lambda: demo_table(args, clock))
    clock.say("summary: " + json.dumps(summary(results)))
    identical = (results["decode_fp32"] or {}).get("identical") == (2 if args.dry_run else 64)
    return 0 if identical else 1


def demo_table(args, clock: Clock) -> dict:
    """configs/demo_gpu.yaml's evaluation settings on a sample of each suite group, today's loop (batch
    64) against the static path, under bf16 autocast with fp32 weights as in training; each group's
    time projected to its full size."""
    import torch

    from specialight.evaluation.evaluator import Evaluator

    settings = demo_settings(args)
    g = gpu_args(args)
    tokenizer = gpu.load_tokenizer(g)
    model = gpu.decoder_model(g, tokenizer)[0].to(g.device)
    cuda = g.device.startswith("cuda")
    context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    groups: dict[str, list] = {}
    for item in Evaluator(model, tokenizer, settings).items():
        groups.setdefault(item.suite.split("/")[0], []).append(item)
    rows = []
    for name, items in groups.items():
        if clock.left() < 20:
            clock.say(f"demo: {name} and later groups skipped, {clock.left():.0f} s left")
            break
        size = args.demo_items if clock.left() > 120 else max(args.demo_items // 4, 2)
        rows.append(demo_group(name, items, size, model, tokenizer, settings, context))
        clock.say(f"demo {name}: {json.dumps(rows[-1])}")
    before, after = sum(r["projected_before_s"] for r in rows), sum(r["projected_after_s"] for r in rows)
    clock.say(f"{'group':<16} {'items':>6} {'sample':>6} {'before s':>9} {'after s':>9} (projected to all items)")
    for r in rows:
        projected = f"{r['projected_before_s']:>9.0f} {r['projected_after_s']:>9.0f}"
        clock.say(f"{r['group']:<16} {r['items']:>6} {r['sample']:>6} {projected}")
    return {"groups": len(rows), "projected_before_s": round(before), "projected_after_s": round(after)}


def demo_settings(args):
    """The PeriodicEvaluation settings of configs/demo_gpu.yaml (tiny budgets and caps in a dry run)."""
    import yaml

    from specialight.evaluation.settings import EvalSettings

    config = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    callbacks = config["trainer"]["callbacks"]
    init = next(c["init_args"] for c in callbacks if c["class_path"].endswith("PeriodicEvaluation"))
    settings = EvalSettings(**init["settings"], data_dir=args.data_dir)
    if args.dry_run:
        settings.limit, settings.max_new_tokens, settings.answer_only_max_new_tokens = 1, 8, 4
        settings.suites, settings.bbh_tasks = ["gsm8k_dev", "bbh_cot"], ["navigate"]
    return settings


def demo_group(name: str, items: list, size: int, model, tokenizer, settings, context) -> dict:
    """One suite group: a spread sample of ``size`` items timed both ways, projected to all items."""
    import torch

    from specialight.evaluation.context import context_length, fit_prompt
    from specialight.evaluation.generation import generate

    sample = items[:: max(len(items) // size, 1)][:size]
    fitted = [fit_prompt(item, tokenizer, context_length(model.config)) for item in sample]
    seconds = {}
    for label, static in (("before", False), ("after", True)):
        start = time.perf_counter()
        generate(
            model,
            tokenizer,
            [f.text for f in fitted],
            [item.max_new_tokens for item in sample],
            settings.batch_size,
            progress=False,
            context=context,
            max_prompt_tokens=[f.max_tokens for f in fitted],
            static=static,
        )
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds[label] = time.perf_counter() - start
    scale = len(items) / len(sample)
    return {
        "group": name,
        "items": len(items),
        "sample": len(sample),
        "before_s": round(seconds["before"], 2),
        "after_s": round(seconds["after"], 2),
        "projected_before_s": round(seconds["before"] * scale, 1),
        "projected_after_s": round(seconds["after"] * scale, 1),
    }


def summary(results: dict) -> dict:
    """The figures the README quotes, from whatever sections ran."""
    decode, large, train = results["decode_fp32"] or {}, results["decode_bf16"] or {}, results["train"] or {}
    return {
        "decode_ratio_fp32": decode.get("ratio"),
        "identical_fp32": decode.get("identical"),
        "static_examples_per_s_fp32": decode.get("static_examples_per_s"),
        "fraction_of_bound_bf16": large.get("fraction_of_bound"),
        "batch_bf16": large.get("batch"),
        "mfu_smollm2": (train.get("train_smollm2") or {}).get("mfu"),
        "mfu_t5_base": (train.get("train_t5_base") or {}).get("mfu"),
        "demo": results["demo"],
    }


if __name__ == "__main__":
    sys.exit(main())
