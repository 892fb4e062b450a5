"""On-policy distillation across tokenizers: a tiny T5 student (T5 tokenizer) samples, a teacher on the GPT-2
tokenizer scores its samples (in process, or through a loopback OpenAI-compatible server), the aligner
projects them, and they enter training; a run stopped mid-way resumes with the same losses."""

from __future__ import annotations

import pytest
import torch

from specialight.core.constants import IGNORE_INDEX
from specialight.training.cli import run_lightning_cli
from specialight.training.on_policy import OnPolicyDistillation, one_hot_targets
from tests.helpers import read_steps
from tests.loopback import Loopback, completions_answer


def test_one_hot_targets_put_all_mass_on_each_label():
    batch = {"labels": torch.tensor([[5, 7, IGNORE_INDEX]])}
    one_hot_targets(batch, width=3)
    assert batch["topk_ids"].shape == (1, 3, 3)
    assert batch["topk_ids"][0, :, 0].tolist() == [5, 7, 0]
    assert batch["topk_probs"][0].tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="CoT format"):
        OnPolicyDistillation("local:x", data_format="zero_shot_answer_only")
    with pytest.raises(ValueError, match="lmbda"):
        OnPolicyDistillation("local:x", lmbda=1.5)


def gpt2_echo_server(tokenizer):
    """A loopback ``/v1/completions`` that echoes a text's GPT-2 tokens with a fixed, made-up top-5."""

    def answer(body: dict):
        ids = tokenizer.encode(body["prompt"])
        pieces = [tokenizer.decode([i]) for i in ids]
        offsets = [sum(len(p) for p in pieces[:n]) for n in range(len(pieces))]
        tops = []
        for i, piece in zip(ids, pieces):
            alternatives = {piece: -0.4}
            for shift in range(1, 8):
                alternatives.setdefault(tokenizer.decode([(i + shift) % len(tokenizer)]), -2.0 - shift / 10)
            tops.append(dict(list(alternatives.items())[:5]))
        logprobs = {"tokens": pieces, "token_logprobs": [-0.4] * len(ids), "top_logprobs": tops}
        logprobs["text_offset"] = offsets
        return completions_answer("teacher", [{"index": 0, "text": body["prompt"], "logprobs": logprobs}])

    return Loopback(answer)


@pytest.fixture(scope="module")
def student(tiny_t5_dir, tmp_path_factory):
    """The tiny T5 without dropout: Lightning does not restore the global RNG on resume, so only a
    dropout-free student can show that the on-policy state alone makes a resumed run repeat itself."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir, dropout_rate=0.0)
    folder = tmp_path_factory.mktemp("tiny-t5-no-dropout")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_t5_dir).save_pretrained(folder)
    return folder


def fit_args(student, data_dir, root, steps_out, teacher: str, *extra: str, loss: str = "GeneralizedJSD") -> list[str]:
    """Seven steps of a divergence (JSD by default) on a tiny T5, a round every 2 steps, every batch on-policy once
    the buffer holds rows."""
    return [
        "fit",
        "--seed_everything=3",
        f"--model.model_name_or_path={student}",
        f"--model.loss=specialight.training.losses.{loss}",
        "--model.learning_rate=0.001",
        f"--data.data_dir={data_dir}",
        "--data.limit=12",
        "--data.batch_size=2",
        "--data.formats={zero_shot_cot: 1.0}",
        "--data.max_target_length=48",
        "--trainer.max_steps=7",
        "--trainer.accelerator=cpu",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        "--checkpoint_every_n_steps=100",
        "--trainer.callbacks+=tests.helpers.RecordSteps",
        f"--trainer.callbacks.out={steps_out}",
        "--trainer.callbacks+=specialight.training.on_policy.OnPolicyDistillation",
        f"--trainer.callbacks.teacher={teacher}",
        "--trainer.callbacks.every_n_steps=2",
        "--trainer.callbacks.questions=2",
        "--trainer.callbacks.lmbda=0.75",
        "--trainer.callbacks.max_new_tokens=10",
        *extra,
    ]


@pytest.mark.slow
def test_a_stopped_cross_tokenizer_on_policy_fit_resumes_with_the_same_losses(
    student, tiny_gpt2_dir, data_dir, tmp_path
):
    teacher = f"local:{tiny_gpt2_dir}"
    whole = run_lightning_cli(fit_args(student, data_dir, tmp_path / "whole", tmp_path / "whole-steps", teacher))
    callback = next(c for c in whole.trainer.callbacks if isinstance(c, OnPolicyDistillation))
    assert callback.round == 4 and callback.buffer  # rounds at steps 0, 2, 4, 6; rows from three of them
    assert all(len(row["topk_ids"][0]) == 6 for row in callback.buffer)  # top-5 + the sampled token's slot
    with pytest.raises(RuntimeError, match="stopped at step 3"):
        run_lightning_cli(
            fit_args(student, data_dir, tmp_path / "runs", tmp_path / "first", teacher)
            + [
                "--trainer.callbacks+=tests.helpers.StopAt",
                "--trainer.callbacks.step=3",
                "--trainer.callbacks.how=raise",
            ]
        )
    run_lightning_cli(
        fit_args(student, data_dir, tmp_path / "runs", tmp_path / "second", teacher, "--ckpt_path", "last")
    )

    first, second, reference = (read_steps(tmp_path / name) for name in ("first", "second", "whole-steps"))
    assert [s["step"] for s in second] == [4, 5, 6, 7]
    on_policy = [s for s in reference if s["units"][0] == -1]  # buffer rows carry no data-module unit
    assert len(on_policy) >= 2
    resumed = first[:3] + second
    assert [s["units"] for s in resumed] == [s["units"] for s in reference]
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in reference], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_a_served_teacher_on_another_tokenizer_drives_an_on_policy_fit(tiny_t5_dir, data_dir, tmp_path, gpt2_tokenizer):
    with gpt2_echo_server(gpt2_tokenizer) as server:
        cli = run_lightning_cli(
            fit_args(
                tiny_t5_dir,
                data_dir,
                tmp_path / "runs",
                tmp_path / "steps",
                "openai:teacher",
                f"--trainer.callbacks.base_url={server.base_url}",
                loss="ReverseKL",
            )
        )
        assert any(body.get("echo") for body in server.bodies)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, OnPolicyDistillation))
    assert callback.scorer.how == "echo" and callback.buffer
    steps = read_steps(tmp_path / "steps")
    assert len(steps) == 7 and any(s["units"][0] == -1 for s in steps)
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)


def test_a_divergence_needs_teacher_rows_from_the_data_or_an_on_policy_callback(tiny_gpt2_dir):
    from types import SimpleNamespace

    from specialight.training.losses import ReverseKL
    from specialight.training.module import SpecializationModule

    module = SpecializationModule(str(tiny_gpt2_dir), loss=ReverseKL())
    gold = SimpleNamespace(has_teacher_distributions=False)
    module._trainer = SimpleNamespace(datamodule=gold, callbacks=[])
    with pytest.raises(ValueError, match="needs teacher top-k targets"):
        module.setup("fit")
    module._trainer = SimpleNamespace(datamodule=gold, callbacks=[OnPolicyDistillation("local:x")])
    module.setup("fit")


@pytest.fixture(scope="module")
def tiny_llama_teacher(t5_tokenizer, tmp_path_factory):
    """A tiny random Llama on T5's tokenizer: a decoder-only teacher whose tokens differ from GPT-2's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(t5_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    folder = tmp_path_factory.mktemp("tiny-llama-t5")
    LlamaForCausalLM(config).save_pretrained(folder)
    t5_tokenizer.save_pretrained(folder)
    return folder


def test_a_decoder_only_student_probe_measures_divergences_on_its_own_held_out_samples(
    tiny_gpt2_dir, tiny_llama_teacher, data_dir
):
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.data.tasks import load_examples
    from specialight.training.losses import DistributionMatching, ReverseKL
    from specialight.training.module import SpecializationModule

    data = SpecializationDataModule(
        str(tiny_gpt2_dir), data_dir=str(data_dir), limit=12, formats={"zero_shot_cot": 1.0}, max_target_length=48
    )
    callback = OnPolicyDistillation(f"local:{tiny_llama_teacher}", max_new_tokens=12, background=False)
    callback.prepare(data, str(tiny_gpt2_dir))
    student = SpecializationModule(str(tiny_gpt2_dir))
    student.configure_model()
    student.eval()
    examples = load_examples("gsm8k", "heldout", data_dir)[:3]
    losses = {"forward": DistributionMatching(), "reverse": ReverseKL()}
    first = callback.probe(student, examples, losses, seed=5)
    questions = set(first["forward"])
    assert questions and questions <= {e.id for e in examples} and set(first["reverse"]) == questions
    values = [v for by_question in first.values() for v in by_question.values()]
    assert all(v >= 0 for v in values) and max(values) > 0  # a random student and a random teacher disagree
    assert first["forward"] != first["reverse"]  # two divergences, not one cross-entropy under two names
    assert callback.probe(student, examples, losses, seed=5) == first  # seeded: the same samples, the same values
    assert callback.probe(student, examples, losses, seed=6) != first


@pytest.mark.slow
def test_a_decoder_only_student_samples_through_the_evaluator_loop_in_an_on_policy_fit(
    tiny_gpt2_dir, tiny_llama_teacher, data_dir, tmp_path
):
    args = fit_args(tiny_gpt2_dir, data_dir, tmp_path / "runs", tmp_path / "steps", f"local:{tiny_llama_teacher}")
    cli = run_lightning_cli([a for a in args if a != "--trainer.max_steps=7"] + ["--trainer.max_steps=5"])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, OnPolicyDistillation))
    assert callback.round == 3 and callback.buffer  # rounds at steps 0, 2, 4; rows of the first two
    steps = read_steps(tmp_path / "steps")
    assert any(s["units"][0] == -1 for s in steps)  # batches drawn from the student's own samples
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
