"""The data-stage subcommands of ``specialight``: their options and what they run.

Each entry of `COMMANDS` is ``name -> (help, add_arguments(parser), run(namespace) -> exit status)``.
Heavy imports stay inside ``run`` so ``specialight --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from specialight.data.tasks import DATA_DIR_ENV

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The ``--data-dir`` option every command that reads the benchmarks takes."""
    parser.add_argument(
        "--data-dir", default=None, help=f"benchmark folder laid out like shared/data (default: ${DATA_DIR_ENV} or ./data)"
    )


def run_data(args: argparse.Namespace) -> int:
    """Print every task and split with its count."""
    from specialight.data.tasks import BBH_TASKS, split_table

    rows = split_table(args.data_dir)
    width = max(len(task) for task, _, _ in rows)
    lines = [f"{'task':<{width}}  {'split':<5}  {'count':>6}"]
    lines += [f"{task:<{width}}  {split:<5}  {count:>6,}" for task, split, count in rows]
    bbh = sum(count for task, _, count in rows if task.startswith("bbh/"))
    lines.append(f"{'bbh (all)':<{width}}  {'test':<5}  {bbh:>6,}  ({len(BBH_TASKS)} tasks)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


COMMANDS: dict[str, Command] = {
    "data": ("print every task and split with its count", add_data_dir, run_data),
}
