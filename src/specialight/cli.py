"""The one entry point ``specialight <stage>``: every stage is typed, takes ``--config FILE`` and prints its
whole config with ``--print_config``.

    specialight data     --data_dir DIR                            every task and split with its count
    specialight distill  --teacher openai:MODEL --base_url URL --out DIR
    specialight align    --samples JSONL --student_tokenizer T --out DIR
    specialight fit      --config configs/demo.yaml [--ckpt_path last]
    specialight validate --config configs/demo.yaml --ckpt_path RUN/best.ckpt
    specialight evaluate --model PATH --suites [gsm8k_dev,bbh_cot] --out DIR
    specialight plot     --logdir [RUN,RUN2] --out FILE.png
    specialight plan     --configs [configs/paper/recipe.yaml,configs/paper/flan_t5_xl.yaml]
    specialight export   --ckpt RUN/best.ckpt --out DIR

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (`specialight.training.cli`); the other
stages are the typed functions of `specialight.commands`, their parameters and docstrings read by
jsonargparse (a settings dataclass's fields become options beside the function's). Lists are written
``--suites [a,b]``, ``--suites a`` (one value) or ``--suites+ a``, booleans ``--score`` or ``--score false``;
``--max-new-tokens`` is read as ``--max_new_tokens``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import re
import sys
import typing
from collections.abc import Callable, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

from specialight.commands import STAGES
from specialight.core.errors import DataError
from specialight.teacher.backends import TeacherError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
DASHED_OPTION = re.compile(r"^--([a-z][a-z0-9_]*-[a-z0-9_-]*)(?==|$)")
OPENAI_LOGGER = "openai._base_client"
logger = logging.getLogger("specialight")


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, the description's lines kept as written."""


def settings_parameters(stage: Callable[..., int]) -> dict[str, type]:
    """The parameters of ``stage`` typed with a dataclass, whose fields are options of their own."""
    return {name: hint for name, hint in typing.get_type_hints(stage).items() if dataclasses.is_dataclass(hint)}


def stage_parser(stage: Callable[..., int]) -> ArgumentParser:
    """The parser of one stage: its function's parameters, and its settings dataclasses' fields beside them."""
    summary = inspect.getdoc(stage).split("\n\n", 1)[0]
    parser = ArgumentParser(prog=f"specialight {stage.__name__}", description=summary)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    settings = settings_parameters(stage)
    parser.add_function_arguments(stage, skip=set(settings))
    for settings_class in settings.values():
        parser.add_class_arguments(settings_class)
    return parser


def call_stage(stage: Callable[..., int], config: Namespace) -> int:
    """Run ``stage`` on a parsed config, its settings dataclasses built from their fields."""
    settings = settings_parameters(stage)
    kwargs = {name: config[name] for name in inspect.signature(stage).parameters if name not in settings}
    for name, settings_class in settings.items():
        fields = [f.name for f in dataclasses.fields(settings_class) if f.init]
        kwargs[name] = settings_class(**{field: config[field] for field in fields})
    return stage(**kwargs)


def stage_hints(stage: Callable[..., int]) -> dict[str, object]:
    """The type of every option of ``stage``: its parameters' and its settings dataclasses' fields."""
    hints = typing.get_type_hints(stage)
    for settings_class in settings_parameters(stage).values():
        hints |= typing.get_type_hints(settings_class)
    return hints


def list_item(hint: object) -> type | None:
    """The item type of a list option (``list[str]``, ``list[str] | None``, ``list[str] | str``), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is list:
            return (typing.get_args(candidate) or (str,))[0]
    return None


def old_spellings(argv: list[str]) -> list[str]:
    """The options as users write them, read as jsonargparse reads them: ``--max-new-tokens`` as
    ``--max_new_tokens``, a boolean given bare (``--score``) as ``--score true``, and a single value of a list
    option (``--suites gsm8k_dev``) as a list of one (``--suites ["gsm8k_dev"]``)."""
    argv = [DASHED_OPTION.sub(lambda m: "--" + m.group(1).replace("-", "_"), arg) for arg in argv]
    stage = STAGES.get(argv[0]) if argv else None
    if stage is None:
        return argv
    hints = stage_hints(stage)
    flags = {f"--{name}" for name, hint in hints.items() if hint is bool}
    bare = [i for i, arg in enumerate(argv) if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--"))]
    for i in reversed(bare):
        argv.insert(i + 1, "true")
    lists = {f"--{name}": item for name, hint in hints.items() if (item := list_item(hint)) is not None}
    return [argv[0], *(_single_values(argv[1:], lists))]


def _single_values(args: list[str], lists: dict[str, type]) -> list[str]:
    """``args`` with each single value of a list option wrapped as a YAML list of one."""
    out: list[str] = []
    for arg in args:
        option, equals, value = arg.partition("=")
        if equals and option in lists:
            out.append(f"{option}={_as_list(value, lists[option])}")
        elif out and out[-1] in lists and not arg.startswith("--"):
            out.append(_as_list(arg, lists[out[-1]]))
        else:
            out.append(arg)
    return out


def _as_list(value: str, item: type) -> str:
    """A list option's value as given where it is a list (``[a, b]``) or ``null``; else a list of one."""
    if value.lstrip().startswith("[") or value.strip() in ("null", "None", ""):
        return value
    return json.dumps([value]) if item is str else f"[{value}]"


def build_parser() -> ArgumentParser:
    """The ``specialight`` parser: each stage a subcommand (LightningCLI's listed, parsed by LightningCLI)."""
    parser = ArgumentParser(prog="specialight", description=__doc__, formatter_class=HelpFormatter)
    subcommands = parser.add_subcommands(dest="command")
    for name, stage in STAGES.items():
        subcommands.add_subcommand(name, stage_parser(stage), help=inspect.getdoc(stage).split("\n", 1)[0])
    for name in LIGHTNING_COMMANDS:
        help_text = f"LightningCLI {name} (see `specialight {name} --help`)"
        subcommands.add_subcommand(name, ArgumentParser(prog=f"specialight {name}"), help=help_text)
    return parser


class StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a record comes (a test or a caller may have
    replaced it since the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        return


def setup_logging() -> None:
    """INFO messages of ``specialight.*`` and the openai client's retries to stderr (Lightning's own logging
    is left as Lightning sets it)."""
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        sdk = logging.getLogger(OPENAI_LOGGER)  # the openai client's notice of each retry, and only that
        sdk.addHandler(handler)
        sdk.addFilter(lambda record: record.getMessage().startswith("Retrying"))
        sdk.setLevel(logging.INFO)


def cli_main(args: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (also used by the console script)."""
    argv = list(sys.argv[1:] if args is None else args)
    setup_logging()
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from specialight.training.cli import run_lightning_cli

        run_lightning_cli(argv)
        return 0
    config = build_parser().parse_args(old_spellings(argv))
    try:
        return call_stage(STAGES[config.command], config[config.command])
    except (DataError, FileNotFoundError, FileExistsError, TeacherError) as err:
        sys.stderr.write(f"specialight {config.command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(cli_main())
