"""Static decoding (fixed buffers, CUDA graphs on a GPU) gives the own loop's completions; sizes from memory."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from specialight.evaluation import static
from specialight.evaluation.generation import generate
from specialight.evaluation.sizing import batch_for_memory, bucket, capacity_for, kv_bytes_per_token, row_bytes
from tests.helpers import tiny_llama

SMOLLM2_SHAPES = SimpleNamespace(
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576, vocab_size=49152
)


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer():
    # SmolLM2-135M: 30 layers x 3 key/value heads x 64 dims x (key + value) x 2 bytes in bf16
    assert kv_bytes_per_token(SMOLLM2_SHAPES, torch.bfloat16) == 30 * 3 * 64 * 2 * 2 == 23040
    assert kv_bytes_per_token(SMOLLM2_SHAPES, torch.float32) == 46080
    explicit = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, head_dim=8, hidden_size=64)
    assert kv_bytes_per_token(explicit, torch.float32) == 2 * 2 * 4 * 8 * 4  # no GQA: every head is cached


def test_batch_for_memory_is_the_largest_power_of_two_that_fits():
    gib = 1 << 30
    assert batch_for_memory(10 * gib, 1 << 20, fraction=0.4, ceiling=1 << 20) == 4096  # 4 GiB / 1 MiB rows
    assert batch_for_memory(100_000_000, 3_000_000, fraction=0.4) == 8  # 13 rows fit: 8
    assert batch_for_memory(10 * gib, 1 << 10) == 1024  # the ceiling
    assert batch_for_memory(1000, 10**9) == 1  # nothing fits: one row, the caller's floor decides
    # an H200's free memory, SmolLM2 rows of 1,152 slots in bf16 (26.5 MB of cache) after a 900-token
    # prefill (33 MB of activations): 930 rows fit in 40%, so 512
    per_row = row_bytes(SMOLLM2_SHAPES, torch.bfloat16, 1152, 900)
    assert per_row == 1152 * 23040 + 16 * 49152 + 64 * 576 * 900
    assert batch_for_memory(130 * gib, per_row) == 512


def test_buckets_and_capacities():
    assert [bucket(n) for n in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]
    assert [capacity_for(n) for n in (1, 64, 65, 700)] == [64, 64, 128, 704]


class _StopAt:
    """A tokenizer that writes token ids as numbers, ``stops`` as the stop string ``Q:``, and whose EOS can
    be any id, so that rows of a random model finish at chosen steps."""

    def __init__(self, inner, stops: set[int] = frozenset(), eos: int = -1) -> None:
        self.inner, self.stops, self.eos_token_id, self.pad_token_id = inner, stops, eos, inner.eos_token_id
        self.bos_token_id = inner.bos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join("Q:" if i in self.stops else str(i) for i in ids if i != self.eos_token_id)


def _prompts(data_dir) -> list[str]:
    from specialight.evaluation.suites import build_items

    math = [item.prompt for item in build_items("gsm8k_dev", data_dir, limit=4)]  # one shared 4-shot prefix
    return math + SHORT[:2]  # and prompts of their own


SHORT = ["Q: What is 2 + 3?\nA:", "Q: Name a colour.\nA:", "Q: How many legs has a cat?\nA:", "Q: 7 - 4?\nA:"]


def _equal_completions(model, tokenizer, prompts: list[str], budgets: list[int], share: bool, monkeypatch):
    """The own loop's and the static loop's completions, with stops that end the first four rows at
    different steps; asserts that the static batch shrank by buckets on the way."""
    free = generate(model, _StopAt(tokenizer), prompts, budgets, 8, progress=False, static=False, share_prefix=share)
    # row r meets a stop near step 2 + 3r: rows leave, the bucket halves, none is recomputed
    stops = {int(text.split()[2 + 3 * r]) for r, text in enumerate(free[:4])}
    tokenizer = _StopAt(tokenizer, stops, eos=next(iter(stops)))
    shrinks = []
    real_load_rows = static.Runner.load_rows
    monkeypatch.setattr(
        static.Runner, "load_rows", lambda self, *a: shrinks.append(self.rows) or real_load_rows(self, *a)
    )
    own = generate(model, tokenizer, prompts, budgets, 8, progress=False, static=False, share_prefix=share)
    fixed = generate(model, tokenizer, prompts, budgets, 8, progress=False, static=True, share_prefix=share)
    assert fixed == own
    assert shrinks and len({len(text) for text in own}) > 2  # rows did finish at different steps


@pytest.mark.slow
def test_static_decoding_gives_the_own_loops_completions(gpt2_tokenizer, monkeypatch):
    model = tiny_llama(len(gpt2_tokenizer))
    _equal_completions(model, gpt2_tokenizer, SHORT, [20] * 4, False, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_static_decoding_after_a_shared_prefix_gives_the_own_loops_completions(
    attention, gpt2_tokenizer, data_dir, monkeypatch
):
    model = tiny_llama(len(gpt2_tokenizer), attention)
    _equal_completions(model, gpt2_tokenizer, _prompts(data_dir), [20, 20, 20, 20, 9, 9], True, monkeypatch)


def test_the_cpu_default_is_the_own_loop(gpt2_tokenizer, monkeypatch):
    model = tiny_llama(len(gpt2_tokenizer))
    built = []
    monkeypatch.setattr(static.StaticDecoder, "__init__", lambda self, decoder: built.append(decoder))
    generate(model, gpt2_tokenizer, ["Q: What is 2 + 3?\nA:"], 4, progress=False)
    assert built == []


def test_a_model_the_static_step_cannot_run_falls_back_to_the_own_loop(gpt2_tokenizer, monkeypatch):
    model = tiny_llama(len(gpt2_tokenizer))
    monkeypatch.setattr(static, "supported", lambda model, cache: False)
    prompts = ["Q: What is 2 + 3?\nA:", "Q: Name a colour.\nA:"]
    own = generate(model, gpt2_tokenizer, prompts, 6, progress=False, static=False)
    assert generate(model, gpt2_tokenizer, prompts, 6, progress=False, static=True) == own


@pytest.mark.slow
def test_t5_generates_with_a_static_cache_as_with_the_dynamic_one(tiny_t5_dir, data_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tokenizer = (
        AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval(),
        AutoTokenizer.from_pretrained(tiny_t5_dir),
    )
    prompts = SHORT[:3]
    dynamic = generate(model, tokenizer, prompts, 10, batch_size=2, progress=False, static=False)
    assert generate(model, tokenizer, prompts, 10, batch_size=2, progress=False, static=True) == dynamic


@pytest.mark.slow
def test_smollm2_static_decoding_gives_the_own_loops_completions(data_dir):
    from specialight.core.models import load_student, load_tokenizer, resolve_model

    folder = resolve_model("smollm2")
    model, tokenizer = load_student(folder).eval(), load_tokenizer(folder)
    prompts = _prompts(data_dir)[:3] + _prompts(data_dir)[-2:]
    own = generate(model, tokenizer, prompts, 40, batch_size=4, progress=False, static=False)
    fixed = generate(model, tokenizer, prompts, 40, batch_size=4, progress=False, static=True)
    assert fixed == own
    assert all(text.strip() for text in own)
