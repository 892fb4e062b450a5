"""ReservedLayer: the generation cache writes in place and gives what DynamicLayer gives."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from specialight.evaluation.cache import ReservedLayer, reserve


def _model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def test_reserved_cache_decodes_as_the_dynamic_cache_without_reallocating():
    model = _model()
    prompt = torch.randint(0, 64, (3, 7))
    dynamic = model(input_ids=prompt, use_cache=True).past_key_values
    reserved = model(input_ids=prompt, use_cache=True).past_key_values
    reserve(reserved, budget=5)
    assert all(isinstance(layer, ReservedLayer) for layer in reserved.layers)
    buffers = [layer.key_buffer.data_ptr() for layer in reserved.layers]
    token = prompt[:, -1:]
    for step in range(5):
        if step == 3:  # a row leaves the batch, as a finished row does in generation
            keep = torch.tensor([0, 2])
            dynamic.batch_select_indices(keep)
            reserved.batch_select_indices(keep)
            token = token[keep]
            buffers = [layer.key_buffer.data_ptr() for layer in reserved.layers]
        a = model(input_ids=token, past_key_values=dynamic, use_cache=True).logits
        b = model(input_ids=token, past_key_values=reserved, use_cache=True).logits
        torch.testing.assert_close(a, b)
        token = a[:, -1:].argmax(-1)
    assert [layer.key_buffer.data_ptr() for layer in reserved.layers] == buffers
    assert reserved.get_seq_length() == dynamic.get_seq_length() == 12


def test_reserve_leaves_an_empty_cache_alone():
    cache = DynamicCache()
    reserve(cache, budget=4)
    assert not any(isinstance(layer, ReservedLayer) for layer in cache.layers)
