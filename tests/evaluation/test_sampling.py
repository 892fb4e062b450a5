"""Sampling at a temperature through the evaluator's own decoding loop (on-policy distillation's students)."""

import torch

from specialight.evaluation.generation import Decoder, generate
from specialight.evaluation.suites import build_items


def test_a_draw_follows_the_softmax_at_the_temperature():
    decoder = Decoder.__new__(Decoder)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20_000, 1)
    for temperature in (0.5, 1.0, 2.0):
        decoder.temperature = temperature
        torch.manual_seed(0)
        counts = torch.bincount(torch.tensor(decoder.pick(logits)), minlength=4).float() / len(logits)
        expected = torch.softmax(logits[0] / temperature, dim=-1)
        assert torch.allclose(counts, expected, atol=0.015)  # ~4 standard errors at n = 20,000
    decoder.temperature = 0.0
    assert decoder.pick(logits[:3]) == [0, 0, 0]  # greedy


def test_sampling_is_seeded_and_a_cold_temperature_is_greedy(gpt2, data_dir):
    model, tokenizer = gpt2
    prompts = [i.prompt for i in build_items("gsm8k_dev_zero_shot", data_dir, limit=4)]

    def sample(temperature: float, seed: int) -> list[str]:
        torch.manual_seed(seed)
        return generate(
            model, tokenizer, prompts, max_new_tokens=10, batch_size=4, progress=False, temperature=temperature
        )

    greedy = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=4, progress=False)
    assert sample(1.0, 1) == sample(1.0, 1)
    assert sample(1.0, 1) != sample(1.0, 2) and sample(1.0, 1) != greedy  # a random tiny model: flat logits
    assert sample(1e-4, 3) == greedy
