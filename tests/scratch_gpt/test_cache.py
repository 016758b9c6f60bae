"""The append-in-place KV cache layer behaves exactly like transformers' concatenating ``DynamicLayer``."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.cache import AppendKVLayer, use_append_layers

from ..conftest import make_tiny_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(make_tiny_config()).eval()


def _append_cache(model, capacity=None):
    return use_append_layers(DynamicCache(config=model.config), capacity)


@torch.no_grad()
def test_growing_append_cache_matches_concatenating_cache_step_by_step(model):
    ids = torch.randint(2, 320, (2, 40))
    plain, ours = DynamicCache(config=model.config), _append_cache(model)  # no capacity: grows by doubling
    assert all(isinstance(layer, AppendKVLayer) for layer in ours.layers)
    seen_buffers = set()
    for start, stop in [(0, 5), (5, 6), (6, 7), (7, 19), (19, 20), (20, 21), (21, 40)]:
        step = ids[:, start:stop]
        a = model(step, cache=plain, use_cache=True).logits
        b = model(step, cache=ours, use_cache=True).logits
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
        seen_buffers.add(ours.layers[0]._key_buffer.data_ptr())
        for p_layer, o_layer in zip(plain.layers, ours.layers):
            assert torch.equal(o_layer.keys, p_layer.keys) and torch.equal(o_layer.values, p_layer.values)
    assert ours.get_seq_length() == 40
    assert len(seen_buffers) > 1  # the buffers did grow along the way


@torch.no_grad()
def test_crop_reorder_and_reset_keep_the_append_cache_consistent(model):
    ids = torch.randint(2, 320, (3, 12))
    plain, ours = DynamicCache(config=model.config), _append_cache(model, capacity=32)
    for cache in (plain, ours):
        model(ids, cache=cache, use_cache=True)
        cache.crop(-4)
        cache.reorder_cache(torch.tensor([2, 0, 0]))
    buffer = ours.layers[0]._key_buffer
    nxt = torch.randint(2, 320, (3, 1))
    a = model(nxt, cache=plain, use_cache=True).logits
    b = model(nxt, cache=ours, use_cache=True).logits
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert ours.layers[0]._key_buffer is buffer  # cropped and reordered in place: no reallocation
    ours.reset()
    assert ours.get_seq_length() == 0
    model(ids[:, :4], cache=ours, use_cache=True)
    assert ours.get_seq_length() == 4


@torch.no_grad()
def test_generate_reserves_its_length_once_and_matches_a_plain_cache(model):
    ids = torch.randint(2, 320, (2, 6))
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=1, return_dict_in_generate=True)
    ours = model.generate(ids, **kwargs)
    user_cache = DynamicCache(config=model.config)
    plain = model.generate(ids, cache=user_cache, **kwargs)
    assert torch.equal(ours.sequences, plain.sequences)
    layer = ours.cache.layers[0]
    # prompt + new tokens - 1 (the last token is never fed back): reserved once, filled exactly
    assert isinstance(layer, AppendKVLayer) and layer._key_buffer.shape[-2] == ours.cache.get_seq_length() == 15
    assert all(type(layer) is DynamicLayer for layer in user_cache.layers)  # the caller's cache is untouched


@torch.no_grad()
def test_beam_search_with_append_cache_matches_plain_cache(model):
    ids = torch.randint(2, 320, (2, 5))
    kwargs = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=1)
    ours = model.generate(ids, **kwargs)
    plain = model.generate(ids, cache=DynamicCache(config=model.config), **kwargs)
    assert torch.equal(ours, plain)


def test_use_append_layers_leaves_other_caches_alone(model):
    from transformers import StaticCache

    static = StaticCache(config=model.config, max_cache_len=16)
    assert use_append_layers(static) is static
    assert not any(isinstance(layer, AppendKVLayer) for layer in static.layers)
