"""``make demo`` / ``make reproduce-cpu``: specialize a real model offline on 2 CPU cores and show the trade-off.

Runs ``specialight fit`` on the config(s) (default ``configs/demo.yaml``: SmolLM2-135M-Instruct on the gold
GSM8K rationales, evaluated before training and at the end), draws the curves with ``specialight
plot``, writes ``claims.md`` (`specialight.reporting.claims`), and prints each metric before training, at the
checkpoint selected on M-A-S dev and at the end, then the likelihood suites before and after with the
paired change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from specialight.cli import setup_logging
from specialight.core.models import resolve_model
from specialight.reporting.claims import claims_markdown

METRICS = ("gsm8k_dev", "multiarith_dev", "asdiv_dev", "svamp_dev", "mas_dev", "bbh_ao", "bbh_cot")


def _cell(record: dict, metric: str) -> str:
    """``"25.0 [8.9-53.2]"``: a score and its 95% interval (the score alone where none was logged)."""
    if metric not in record["scores"]:
        return "-"
    interval = record.get("ci95", {}).get(metric)
    value = f"{record['scores'][metric]:.1f}"
    return value if interval is None else f"{value} [{interval[0]:.1f}-{interval[1]:.1f}]"


def closing_table(selection: dict) -> str:
    """Each headline metric before training, at the selected checkpoint and at the end: accuracy % with
    its 95% interval, and n, the examples behind it."""
    first, last = selection["first"], selection["last"]
    chosen = selection["selections"].get(selection["monitor"], last)
    before = "before" if first["step"] == 0 else "first"
    lines = [
        f"{'metric':<16} {'n':>5} {before:>18} {'selected':>18} {'end':>18}",
        f"{'(step)':<16} {'':>5} {first['step']:>18} {chosen['step']:>18} {last['step']:>18}",
    ]
    for metric in METRICS:
        if metric in last["scores"]:
            count = last.get("n", {}).get(metric, "?")
            cells = " ".join(f"{_cell(r, metric):>18}" for r in (first, chosen, last))
            lines.append(f"{metric:<16} {count:>5} {cells}")
    lines.append("accuracy % [95% interval]; n examples per evaluation")
    likelihood = sorted(last.get("nll", {}))
    if likelihood:
        lines += ["", f"{'likelihood':<24} {'n':>4} {before:>22} {'end':>22} {'change (paired)':>24}"]
        for suite in likelihood:
            change = last.get("nll_change", {}).get(suite)
            cells = [_nll_cell(r.get("nll", {}).get(suite)) for r in (first, last)] + [_nll_cell(change)]
            lines.append(f"{suite:<24} {last['nll'][suite]['n']:>4} " + " ".join(f"{c:>22}" for c in cells))
        lines.append("mean NLL per token of reference text [95% bootstrap interval]; change: end minus before")
    return "\n".join(lines)


def _nll_cell(stats: dict | None) -> str:
    """``"1.250 [1.188-1.311]"``: a likelihood summary with its interval."""
    if not stats:
        return "-"
    return f"{stats['mean']:.3f} [{stats['low']:.3f}-{stats['high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", action="append", help="config file; repeat to overlay (default: configs/demo.yaml)")
    parser.epilog = "Other arguments go to LightningCLI, e.g. --trainer.max_steps=10."
    args, overrides = parser.parse_known_args(argv)
    setup_logging()
    started = time.perf_counter()
    from specialight.training.cli import run_lightning_cli

    resolve_model("smollm2-135m-instruct")  # the one-time GGUF conversion, before the clock of the run
    cli = run_lightning_cli(["fit", *(f"--config={c}" for c in args.config or ["configs/demo.yaml"]), *overrides])
    run = Path(cli.trainer.log_dir)
    from specialight.reporting.plots import plot_runs

    curves = plot_runs([run], run / "curves.png")
    selection = json.loads((run / "selection.json").read_text())
    (run / "claims.md").write_text(claims_markdown(run))
    minutes = (time.perf_counter() - started) / 60
    sys.stdout.write(
        "\n" + closing_table(selection) + "\n\n"
        f"run folder       {run}\n"
        f"curves           {', '.join(str(c) for c in curves)}\n"
        f"selection table  {run / 'selection.md'}\n"
        f"claims           {run / 'claims.md'} (the paper's claims, judged by paired intervals)\n"
        f"best checkpoint  {selection['best_checkpoint']['path']}\n"
        f"completions      {run / 'evaluations'}/step-*/\n"
        f"TensorBoard      tensorboard --logdir {run}\n"
        f"took             {minutes:.1f} minutes\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
