"""ReservedLayer: the generation cache writes in place and gives what DynamicLayer gives."""

import inspect

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from specialight.evaluation.cache import READ_ONLY_METHODS, STATE_METHODS, ReservedLayer, reserve


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


def _layers(batch: int = 3, length: int = 5, capacity: int = 12) -> tuple[DynamicLayer, ReservedLayer]:
    """A filled DynamicLayer and a ReservedLayer built from an equal copy of it."""
    torch.manual_seed(1)
    keys, values = torch.randn(batch, 2, length, 4), torch.randn(batch, 2, length, 4)
    dynamic, source = DynamicLayer(), DynamicLayer()
    dynamic.update(keys.clone(), values.clone())
    source.update(keys.clone(), values.clone())
    return dynamic, ReservedLayer(source, capacity)


def _assert_same(dynamic: DynamicLayer, reserved: ReservedLayer) -> None:
    """Same states, and the reserved layer's states are views of its buffers."""
    torch.testing.assert_close(reserved.keys, dynamic.keys)
    torch.testing.assert_close(reserved.values, dynamic.values)
    assert reserved.keys.data_ptr() == reserved.key_buffer.data_ptr()
    assert reserved.values.data_ptr() == reserved.value_buffer.data_ptr()
    assert reserved.get_seq_length() == dynamic.get_seq_length()


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


@torch.inference_mode()
def test_reserve_swaps_only_filled_full_attention_layers():
    model = _model()
    cache = model(input_ids=torch.randint(0, 64, (2, 6)), use_cache=True).past_key_values
    empty, sliding = DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)
    sliding.update(torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8))
    cache.layers.extend([empty, sliding])
    reserve(cache, budget=4)
    assert [type(layer) for layer in cache.layers] == [ReservedLayer, ReservedLayer, DynamicLayer, type(sliding)]
    assert cache.layers[2] is empty and cache.layers[3] is sliding
    assert cache.layers[0].key_buffer.shape[-2] == 6 + 4


@pytest.mark.parametrize(
    "operation",
    [
        lambda layer: layer.crop(-2),
        lambda layer: layer.batch_repeat_interleave(2),
        lambda layer: layer.batch_select_indices(torch.tensor([2, 0])),
        lambda layer: layer.reorder_cache(torch.tensor([1, 1, 0])),
        lambda layer: (layer.offload(), layer.prefetch()),
    ],
    ids=["crop", "batch_repeat_interleave", "batch_select_indices", "reorder_cache", "offload+prefetch"],
)
def test_state_methods_act_as_the_dynamic_layers_and_keep_the_buffers(operation):
    dynamic, reserved = _layers()
    operation(dynamic)
    operation(reserved)
    _assert_same(dynamic, reserved)
    more = torch.randn(dynamic.keys.shape[0], 2, 1, 4)  # the next step still writes where attention reads
    dynamic.update(more, more + 1)
    reserved.update(more, more + 1)
    _assert_same(dynamic, reserved)


def test_reset_empties_the_layer_and_keeps_its_buffers():
    _, reserved = _layers()
    buffer = reserved.key_buffer.data_ptr()
    reserved.reset()
    assert reserved.get_seq_length() == 0
    fresh = torch.randn(3, 2, 2, 4)
    keys, values = reserved.update(fresh, fresh * 2)
    torch.testing.assert_close(keys, fresh)
    torch.testing.assert_close(values, fresh * 2)
    assert reserved.key_buffer.data_ptr() == buffer == keys.data_ptr()


def test_refused_operations_say_why():
    _, reserved = _layers(capacity=6)
    with pytest.raises(ValueError, match="negative count"):
        reserved.crop(3)
    with pytest.raises(RuntimeError, match="never lazily"):
        reserved.lazy_initialization(reserved.keys, reserved.values)
    with pytest.raises(RuntimeError, match="holds 6 positions; 7"):
        reserved.update(torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4))


def test_every_public_layer_method_is_overridden_or_known_to_only_read():
    """Fails when the installed transformers gives DynamicLayer a method this module does not know: it may
    rebind ``keys`` away from the reserved buffers (transformers' requirement has no upper bound)."""
    public = {name for name, _ in inspect.getmembers(DynamicLayer, callable) if not name.startswith("_")}
    unknown = public - set(STATE_METHODS) - set(READ_ONLY_METHODS)
    assert not unknown, f"review ReservedLayer for DynamicLayer's new methods: {sorted(unknown)}"
    for name in STATE_METHODS:
        assert name in vars(ReservedLayer), f"ReservedLayer must override {name}"
