"""The data-stage subcommands of ``specialight``: their options and what they run.

Each entry of `COMMANDS` is ``name -> (help, add_arguments(parser), run(namespace) -> exit status)``.
Heavy imports stay inside ``run`` so ``specialight --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from specialight.data.tasks import DATA_DIR_ENV

DEFAULT_TEACHER_PROMPT = "prompts/flan_t5_cot_specialization/prompt_complex.txt"
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The ``--data-dir`` option every command that reads the benchmarks takes."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"benchmark folder laid out like shared/data (default: ${DATA_DIR_ENV} or ./data)",
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


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``specialight align``."""
    parser.add_argument("--samples", required=True, help="teacher samples: a .jsonl file or a folder of shards")
    parser.add_argument("--student-tokenizer", required=True, help="student tokenizer: a local folder or a hub id")
    parser.add_argument("--out", required=True, help="output folder (targets.arrow, summary.json)")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--method",
        choices=("auto", "dp", "offsets"),
        default="auto",
        help="auto: exact offsets where both spell the same text, the paper's DP elsewhere",
    )
    parser.add_argument(
        "--teacher-scheme",
        choices=("text", "byte_level", "sentencepiece", "auto"),
        default="text",
        help="how the teacher's token strings are written (API samples: text)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="teacher alternatives kept per position")
    parser.add_argument(
        "--tail",
        choices=("zero", "renormalize"),
        default="zero",
        help="mass outside the top-k: zero (the paper) or renormalize",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=255,
        help="drop samples with more student tokens (255: the data module's max_target_length of 256 less EOS)",
    )
    parser.add_argument("--only-correct", action="store_true", help="keep only samples whose answer is correct")


def run_align_command(args: argparse.Namespace) -> int:
    """Align teacher samples to the student's tokenizer and write sparse targets."""
    from specialight.align.run import AlignSettings, run_align

    settings = AlignSettings(
        student_tokenizer=args.student_tokenizer,
        method=args.method,
        teacher_scheme=args.teacher_scheme,
        top_k=args.top_k,
        tail=args.tail,
        max_length=args.max_length,
        only_correct=args.only_correct,
    )
    summary = run_align(args.samples, args.out, settings, num_proc=args.num_proc)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``specialight evaluate``."""
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, hub id, alias, or a specialight .ckpt (with --base-url: where the served model's "
        "tokenizer and context come from; default --served-model)",
    )
    parser.add_argument("--suites", required=True, help="comma-separated: gsm8k_test,mas_dev,bbh_cot,...")
    parser.add_argument("--out", required=True, help="folder for per-example JSONL and summary.json")
    parser.add_argument("--limit", type=int, default=None, help="first N examples of each suite / BBH task")
    parser.add_argument("--bbh-tasks", default=None, help="comma-separated subset of the 27 BBH tasks")
    parser.add_argument("--prompt-file", default=None, help="in-context math prompt (default: the paper's 4-shot)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--answer-only-max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    server = parser.add_argument_group("through an OpenAI-compatible server (/v1/completions), resumable")
    server.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8080/v1 (vLLM, llama-server)")
    server.add_argument("--served-model", default=None, help="the model name the server knows")
    server.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    server.add_argument("--max-retries", type=int, default=6, help="tries after the first on transient errors")
    server.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the API key, if any")
    add_data_dir(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model on suites, write per-example results and a summary, print a table."""
    from specialight.evaluation.evaluator import EvalSettings, Evaluator, format_table, load_for_evaluation

    settings = EvalSettings(
        suites=[s.strip() for s in args.suites.split(",") if s.strip()],
        limit=args.limit,
        prompt_file=args.prompt_file,
        bbh_tasks=args.bbh_tasks.split(",") if args.bbh_tasks else None,
        max_new_tokens=args.max_new_tokens,
        answer_only_max_new_tokens=args.answer_only_max_new_tokens,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
    )
    if args.base_url is not None or args.served_model is not None:
        evaluator = _server_evaluator(args, settings)
    elif args.model is None:
        raise SystemExit("specialight evaluate: give --model, or --base-url and --served-model")
    else:
        model, tokenizer = load_for_evaluation(args.model, args.device)
        evaluator = Evaluator(model, tokenizer, settings)
    evaluator.items()  # fail on a bad suite or missing data before loading anything else
    results = evaluator.run(args.out)
    sys.stdout.write(format_table(results, per_task=True) + f"\nresults: {args.out}\n")
    return 0


def _server_evaluator(args: argparse.Namespace, settings):
    """An `Evaluator` whose completions come from ``--base-url`` (prompts fitted with ``--model``'s
    tokenizer and context)."""
    from transformers import AutoConfig

    from specialight.evaluation.evaluator import Evaluator
    from specialight.evaluation.server import ServerCompleter
    from specialight.models import load_tokenizer, resolve_model

    if args.base_url is None or args.served_model is None:
        raise SystemExit("specialight evaluate: --base-url and --served-model go together")
    source = resolve_model(args.model or args.served_model)
    completer = ServerCompleter(
        args.served_model,
        args.base_url,
        out_dir=args.out,
        concurrency=args.concurrency,
        api_key_env=args.api_key_env,
        max_retries=args.max_retries,
    )
    return Evaluator(None, load_tokenizer(source), settings, completer, AutoConfig.from_pretrained(source))


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``specialight plot``."""
    parser.add_argument(
        "--logdir",
        action="append",
        required=True,
        help="a run folder (or a folder of runs) holding evaluations.jsonl; repeat for several",
    )
    parser.add_argument("--out", required=True, help="PNG file for the curves (a _scaling PNG is added beside it)")


def run_plot(args: argparse.Namespace) -> int:
    """Draw the specialization curves (and the scaling plot for runs of several sizes)."""
    from specialight.plots import plot_runs

    for path in plot_runs(args.logdir, args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``specialight distill``."""
    parser.add_argument("--questions", default="gsm8k:tune", help="TASK:SPLIT to sample on (default gsm8k:tune)")
    parser.add_argument(
        "--teacher",
        required=True,
        help="openai:MODEL (an OpenAI-compatible server, with --base-url) or local:PATH_OR_ID",
    )
    parser.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8080/v1 (openai teachers)")
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (the key itself is never stored)",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="few-shot CoT prompt file (default: the paper's prompt_complex.txt under --data-dir)",
    )
    parser.add_argument("--num-samples", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (openai teachers)")
    parser.add_argument(
        "--samples-per-request",
        type=int,
        default=1,
        help="samples per request (the API's n): the prompt is sent once per N samples; servers that refuse "
        "n > 1 are asked one sample per request",
    )
    parser.add_argument("--max-retries", type=int, default=6)
    parser.add_argument("--out", required=True, help="output folder (samples.jsonl, summary.json)")
    parser.add_argument("--limit", type=int, default=None, help="the first N questions")
    parser.add_argument(
        "--score",
        action="store_true",
        help="local teachers: score the gold rationales teacher-forced instead of sampling",
    )
    parser.add_argument("--device", default="cpu")
    add_data_dir(parser)


def run_distill_command(args: argparse.Namespace) -> int:
    """Sample (or score) teacher chains of thought with top-k log-probs, resumably."""
    from specialight.data.tasks import DataError, load_examples, resolve_data_dir
    from specialight.teacher.distill import DistillSettings, run_distill

    task, _, split = args.questions.partition(":")
    questions = load_examples(task, split or "tune", args.data_dir)[: args.limit]
    prompt_path = Path(args.prompt) if args.prompt else resolve_data_dir(args.data_dir) / DEFAULT_TEACHER_PROMPT
    if not prompt_path.is_file():
        raise DataError(f"missing prompt file: {prompt_path} (give --prompt FILE)")
    template = prompt_path.read_text(encoding="utf-8")
    from specialight.teacher.build import build_teacher

    teacher = build_teacher(
        args.teacher, args.base_url, args.endpoint, args.api_key_env, args.max_retries, args.device, args.score
    )
    settings = DistillSettings(
        num_samples=1 if args.score else args.num_samples,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        top_k=args.top_k,
        seed=args.seed,
        concurrency=args.concurrency,
        samples_per_request=args.samples_per_request,
    )
    if args.score:
        from specialight.teacher.distill import run_scoring

        summary = run_scoring(questions, teacher, template, args.out, settings)
    else:
        summary = run_distill(questions, teacher, template, args.out, settings)
    brief = {k: v for k, v in summary.items() if k != "per_question"}
    sys.stdout.write(json.dumps(brief, indent=2) + "\n")
    return 0


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``specialight plan``."""
    parser.add_argument(
        "--config", action="append", required=True, help="training config (repeat to overlay, as with fit)"
    )
    parser.add_argument("--device-memory", type=float, default=80.0, help="memory of one device in GiB")


def run_plan(args: argparse.Namespace) -> int:
    """Print the per-rank memory table of a training config; exit 1 when it does not fit."""
    from specialight.plan import format_plan, load_config, plan

    config = load_config(args.config)
    parameters, rows = plan(config, args.device_memory)
    name = " + ".join(Path(c).name for c in args.config)
    sys.stdout.write(format_plan(name, parameters, rows, args.device_memory) + "\n")
    return 0 if rows[-1][1] <= args.device_memory else 1


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``specialight export``."""
    parser.add_argument("--ckpt", required=True, help="a checkpoint of `specialight fit` (e.g. RUN/best.ckpt)")
    parser.add_argument("--out", required=True, help="the transformers model folder to write")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights' dtype in the folder (default: as trained)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's student as a transformers folder with a model card."""
    from specialight.export import export_checkpoint

    out = export_checkpoint(args.ckpt, args.out, dtype=args.dtype, overwrite=args.overwrite)
    sys.stdout.write(f"wrote {out}\n")
    return 0


COMMANDS: dict[str, Command] = {
    "data": ("print every task and split with its count", add_data_dir, run_data),
    "align": (
        "align teacher samples to a student tokenizer and write sparse targets",
        add_align_arguments,
        run_align_command,
    ),
    "evaluate": ("evaluate a model or checkpoint on benchmark suites", add_evaluate_arguments, run_evaluate),
    "plot": ("draw the specialization curves from logged runs", add_plot_arguments, run_plot),
    "plan": ("print the memory one rank needs for a training config", add_plan_arguments, run_plan),
    "export": (
        "write a checkpoint's student as a transformers folder with a model card",
        add_export_arguments,
        run_export,
    ),
    "distill": (
        "sample teacher chains of thought with top-k log-probs, resumably",
        add_distill_arguments,
        run_distill_command,
    ),
}
