"""The one entry point: ``specialight fit|validate|test|predict`` (LightningCLI) and the data-stage commands.

    specialight data     --data-dir DIR                           every task and split with its count
    specialight align    --samples JSONL --student-tokenizer T --out DIR
    specialight evaluate --model PATH --suites gsm8k_dev,bbh_cot --out DIR
    specialight plot     --logdir RUN [--logdir RUN2 …] --out FILE.png
    specialight distill  --teacher openai:MODEL --base-url URL --out DIR
    specialight fit      --config configs/demo.yaml [--ckpt_path last]
    specialight export   --ckpt RUN/best.ckpt --out DIR

The data-stage commands use argparse (dash-separated options, repeatable flags); training goes through
LightningCLI so every run is a config (`--print_config`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from specialight.commands import COMMANDS
from specialight.data.tasks import DataError
from specialight.teacher.backends import TeacherError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
logger = logging.getLogger("specialight")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the data-stage commands."""
    parser = argparse.ArgumentParser(
        prog="specialight", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(child)
        child.set_defaults(run=run)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see `specialight {name} --help`)", add_help=False)
    return parser


def setup_logging() -> None:
    """INFO messages of ``specialight.*`` to stderr (Lightning's own logging is left as Lightning sets it)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def cli_main(args: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (also used by the console script)."""
    argv = list(sys.argv[1:] if args is None else args)
    setup_logging()
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from specialight.training import run_lightning_cli

        run_lightning_cli(argv)
        return 0
    parsed = build_parser().parse_args(argv)
    try:
        return parsed.run(parsed)
    except (DataError, FileNotFoundError, FileExistsError, TeacherError) as err:
        sys.stderr.write(f"specialight {parsed.command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(cli_main())
