"""The stages of ``specialight`` beside LightningCLI's: one typed function each, whose parameters and
docstring are the stage's options and help (`specialight.cli` builds the parsers from them).

A parameter typed with a settings dataclass (`EvalSettings`, `AlignSettings`, `DistillSettings`) gives that
dataclass's fields as options of their own, beside the function's: a field added there is an option here.
Every function returns the exit status. Heavy imports stay inside the functions (the settings dataclasses
import no torch), so ``specialight --help`` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from specialight.align.settings import AlignSettings
from specialight.core.errors import DataError
from specialight.evaluation.settings import EvalSettings
from specialight.teacher.distill import DistillSettings

DEFAULT_TEACHER_PROMPT = "prompts/flan_t5_cot_specialization/prompt_complex.txt"


def data(data_dir: str | None = None) -> int:
    """Print every task and split with its count.

    Args:
        data_dir: benchmark folder laid out like shared/data (default: $SPECIALIGHT_DATA_DIR or ./data).
    """
    from specialight.data.tasks import BBH_TASKS, split_table

    rows = split_table(data_dir)
    width = max(len(task) for task, _, _ in rows)
    lines = [f"{'task':<{width}}  {'split':<5}  {'count':>6}"]
    lines += [f"{task:<{width}}  {split:<5}  {count:>6,}" for task, split, count in rows]
    bbh = sum(count for task, _, count in rows if task.startswith("bbh/"))
    lines.append(f"{'bbh (all)':<{width}}  {'test':<5}  {bbh:>6,}  ({len(BBH_TASKS)} tasks)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def distill(
    teacher: str,
    out: str,
    settings: DistillSettings,
    questions: str = "gsm8k:tune",
    base_url: str | None = None,
    endpoint: Literal["completions", "chat"] = "completions",
    api_key_env: str = "OPENAI_API_KEY",
    prompt: str | None = None,
    max_retries: int = 6,
    limit: int | None = None,
    score: bool = False,
    device: str = "cpu",
    data_dir: str | None = None,
) -> int:
    """Sample teacher chains of thought with top-k log-probs, resumably.

    Args:
        teacher: openai:MODEL (an OpenAI-compatible server, with base_url) or local:PATH_OR_ID.
        out: output folder (samples.jsonl, summary.json).
        settings: how many samples, drawn how (`DistillSettings`; its fields are options of their own).
        questions: TASK:SPLIT to sample on.
        base_url: e.g. http://127.0.0.1:8080/v1 (openai teachers).
        endpoint: the server's completions or chat endpoint.
        api_key_env: environment variable holding the API key (the key itself is never stored).
        prompt: few-shot CoT prompt file (default: the paper's prompt_complex.txt under data_dir).
        max_retries: tries after the first on transient errors (openai teachers).
        limit: the first N questions.
        score: score the gold rationales teacher-forced instead of sampling (a local teacher, or a server
            that echoes prompt log-probs or is llama-server).
        device: where a local teacher runs.
        data_dir: benchmark folder laid out like shared/data (default: $SPECIALIGHT_DATA_DIR or ./data).
    """
    from dataclasses import replace

    from specialight.data.tasks import load_examples, resolve_data_dir
    from specialight.teacher.build import build_teacher
    from specialight.teacher.distill import run_distill, run_scoring

    task, _, split = questions.partition(":")
    examples = load_examples(task, split or "tune", data_dir)[:limit]
    prompt_path = Path(prompt) if prompt else resolve_data_dir(data_dir) / DEFAULT_TEACHER_PROMPT
    if not prompt_path.is_file():
        raise DataError(f"missing prompt file: {prompt_path} (give --prompt FILE)")
    template = prompt_path.read_text(encoding="utf-8")
    backend = build_teacher(teacher, base_url, endpoint, api_key_env, max_retries, device, score)
    if score:
        summary = run_scoring(examples, backend, template, out, replace(settings, num_samples=1))
    else:
        summary = run_distill(examples, backend, template, out, settings)
    brief = {k: v for k, v in summary.items() if k != "per_question"}
    sys.stdout.write(json.dumps(brief, indent=2) + "\n")
    return 0


def align(samples: str, out: str, settings: AlignSettings, num_proc: int = 1) -> int:
    """Align teacher samples to a student tokenizer and write sparse targets.

    Args:
        samples: teacher samples: a .jsonl file or a folder of shards.
        out: output folder (targets.arrow, summary.json).
        settings: how to align (`AlignSettings`; its fields are options of their own).
        num_proc: worker processes.
    """
    from specialight.align.run import run_align

    summary = run_align(samples, out, settings, num_proc=num_proc)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def evaluate(
    settings: EvalSettings,
    out: str,
    model: str | None = None,
    device: str = "cpu",
    base_url: str | None = None,
    served_model: str | None = None,
    context_length: int | None = None,
    concurrency: int = 4,
    max_retries: int = 6,
    api_key_env: str = "OPENAI_API_KEY",
) -> int:
    """Evaluate a model or checkpoint on benchmark suites: per-example JSONL, summary.json and a table.

    Args:
        settings: which suites and how (`EvalSettings`, also `PeriodicEvaluation`'s; fields are options).
        out: folder for per-example JSONL and summary.json.
        model: model folder, hub id, alias, or a specialight .ckpt (with base_url: where the served model's
            tokenizer comes from, and its context where the folder has a config.json; default served_model).
        device: where the model runs.
        base_url: an OpenAI-compatible server (/v1/completions; vLLM, llama-server), e.g.
            http://127.0.0.1:8080/v1; resumable.
        served_model: the model name the server knows.
        context_length: the served model's context in tokens (default: what the server reports, vLLM's
            max_model_len or llama-server's n_ctx, and the model folder's config.json; the smallest).
        concurrency: requests in flight (server).
        max_retries: tries after the first on transient errors (server).
        api_key_env: environment variable holding the API key, if any (server).
    """
    from specialight.evaluation.tables import format_table

    check_suites(settings.suites)  # before any model is resolved or loaded
    if base_url is not None or served_model is not None:
        if base_url is None or served_model is None:
            raise DataError("--base_url and --served_model go together")
        server = (base_url, served_model, context_length, concurrency, max_retries, api_key_env)
        evaluator = served_evaluator(settings, out, model or served_model, *server)
    elif model is None:
        raise DataError("give --model, or --base_url and --served_model")
    else:
        from specialight.evaluation.evaluator import Evaluator, load_for_evaluation

        evaluator = Evaluator(*load_for_evaluation(model, device), settings)
    evaluator.items()  # fail on missing data before generating anything
    results = evaluator.run(out)
    sys.stdout.write(format_table(results, per_task=True) + f"\nresults: {out}\n")
    return 0


def check_suites(suites: list[str]) -> None:
    """`DataError` naming ``--suites`` for a suite no evaluation knows."""
    from specialight.evaluation.likelihood import LIKELIHOOD_SUITES
    from specialight.evaluation.suites import expand

    try:
        expand([name for name in suites if name not in LIKELIHOOD_SUITES])
    except DataError as err:
        raise DataError(f"--suites: {err}") from None


def served_evaluator(
    settings: EvalSettings,
    out: str,
    model: str,
    base_url: str,
    served_model: str,
    context_length: int | None,
    concurrency: int,
    max_retries: int,
    api_key_env: str,
):
    """An `Evaluator` whose completions come from the server, with ``model``'s tokenizer and the served
    model's context (`specialight.evaluation.served`)."""
    from specialight.core.models import load_tokenizer, resolve_model
    from specialight.evaluation.evaluator import Evaluator
    from specialight.evaluation.served import served_config
    from specialight.evaluation.server import ServerCompleter

    source = resolve_model(model)
    completer = ServerCompleter(
        served_model,
        base_url,
        out_dir=out,
        concurrency=concurrency,
        api_key_env=api_key_env,
        max_retries=max_retries,
    )
    config = served_config(source, base_url, served_model, context_length, api_key_env)
    return Evaluator(None, load_tokenizer(source), settings, completer, config)


def plot(logdir: list[str] | str, out: str) -> int:
    """Draw the specialization curves from logged runs, the dose-response figure (accuracy and likelihood on
    GSM8K dev and M-A-S dev against training examples seen), the likelihood panels, and the scaling plot for
    runs of several sizes.

    Args:
        logdir: a run folder (or a folder of runs) holding evaluations.jsonl, or a list of them.
        out: PNG file for the curves (_dose_response, _likelihood and _scaling PNGs are added beside it).
    """
    from specialight.reporting.plots import plot_runs

    for path in plot_runs([logdir] if isinstance(logdir, str) else logdir, out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


def plan(configs: list[str] | str, device_memory: float = 80.0) -> int:
    """Print the memory one rank needs for a training config; exit status 1 when it does not fit.

    Args:
        configs: training config, or a list of them overlaid in order (as fit overlays its --config files).
        device_memory: memory of one device in GiB.
    """
    from specialight.training.plan import format_plan, load_config
    from specialight.training.plan import plan as plan_memory

    paths = [configs] if isinstance(configs, str) else configs
    parameters, rows = plan_memory(load_config(paths), device_memory)
    name = " + ".join(Path(c).name for c in paths)
    sys.stdout.write(format_plan(name, parameters, rows, device_memory) + "\n")
    return 0 if rows[-1][1] <= device_memory else 1


def export(
    ckpt: str,
    out: str,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    overwrite: bool = False,
    gguf: bool = False,
    outtype: Literal["f16", "q8_0"] = "f16",
) -> int:
    """Write a checkpoint's student as a transformers folder with a model card (and a GGUF for llama.cpp).

    Args:
        ckpt: a checkpoint of `specialight fit` (e.g. RUN/best.ckpt).
        out: the transformers model folder to write.
        dtype: weights' dtype in the folder (default: as trained).
        overwrite: replace an existing out folder.
        gguf: also write OUT/<name>-<outtype>.gguf with llama.cpp's own converter (scripts/fetch_llama_converter.sh
            fetches it once), for llama-server, Ollama, LM Studio.
        outtype: the GGUF's weights: f16, or q8_0 (8-bit, half the size).
    """
    from specialight.training.export import export_checkpoint

    written = export_checkpoint(ckpt, out, dtype=dtype, overwrite=overwrite, gguf=outtype if gguf else None)
    sys.stdout.write(f"wrote {written}\n")
    sys.stdout.writelines(f"wrote {path}\n" for path in sorted(written.glob("*.gguf")))
    return 0


def claims(
    run: str, in_context_run: str | None = None, zero_shot_run: str | None = None, out: str | None = None
) -> int:
    """Judge the paper's claims on a finished run by paired intervals and write claims.md.

    Args:
        run: a run folder holding evaluations.jsonl (and evaluations/step-*/, selection.json).
        in_context_run: the Fig. 4 arm tuned on in-context data only (claim c).
        zero_shot_run: the Fig. 4 arm tuned on zero-shot data only (claim c).
        out: where to write it (default: RUN/claims.md).
    """
    from specialight.reporting.claims import claims_markdown

    arms = (Path(in_context_run), Path(zero_shot_run)) if in_context_run and zero_shot_run else (None, None)
    text = claims_markdown(Path(run), *arms)
    (Path(out) if out else Path(run) / "claims.md").write_text(text)
    sys.stdout.write(text)
    return 0


STAGES = {stage.__name__: stage for stage in (data, distill, align, evaluate, plot, plan, export, claims)}
