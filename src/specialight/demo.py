"""``make demo``: specialize a real model offline on 2 CPU cores and show the trade-off.

Runs ``specialight fit --config configs/demo.yaml`` (SmolLM2-135M-Instruct on the gold GSM8K rationales,
evaluated before training and every 120 examples), draws the curves with ``specialight plot`` and prints
each metric before training, at the checkpoint selected on M-A-S dev, and at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from specialight.cli import setup_logging
from specialight.models import resolve_model

METRICS = ("gsm8k_dev", "multiarith_dev", "asdiv_dev", "svamp_dev", "mas_dev", "bbh_ao", "bbh_cot")


def closing_table(selection: dict) -> str:
    """Each headline metric before training, at the selected checkpoint and at the end."""
    first, last = selection["first"], selection["last"]
    chosen = selection["selections"].get(selection["monitor"], last)
    lines = [
        f"{'metric':<16} {'before':>8} {'selected':>9} {'end':>8}",
        f"{'(step)':<16} {first['step']:>8} {chosen['step']:>9} {last['step']:>8}",
    ]
    for metric in METRICS:
        if metric in last["scores"]:
            values = [r["scores"].get(metric, float("nan")) for r in (first, chosen, last)]
            lines.append(f"{metric:<16} {values[0]:>8.1f} {values[1]:>9.1f} {values[2]:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="extra LightningCLI arguments, e.g. --trainer.max_steps=10")
    args = parser.parse_args(argv)
    setup_logging()
    started = time.perf_counter()
    from specialight.training import run_lightning_cli

    resolve_model("smollm2-135m-instruct")  # the one-time GGUF conversion, before the clock of the run
    cli = run_lightning_cli(["fit", "--config", args.config, *args.overrides])
    run = Path(cli.trainer.log_dir)
    from specialight.plots import plot_runs

    curves = plot_runs([run], run / "curves.png")
    selection = json.loads((run / "selection.json").read_text())
    minutes = (time.perf_counter() - started) / 60
    sys.stdout.write(
        "\n" + closing_table(selection) + "\n\n"
        f"run folder       {run}\n"
        f"curves           {', '.join(str(c) for c in curves)}\n"
        f"selection table  {run / 'selection.md'}\n"
        f"best checkpoint  {selection['best_checkpoint']['path']}\n"
        f"completions      {run / 'evaluations'}/step-*/\n"
        f"TensorBoard      tensorboard --logdir {run}\n"
        f"took             {minutes:.1f} minutes\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
