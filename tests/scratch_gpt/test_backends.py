"""Every attention backend gives the logits of our written-out eager attention, padded or not (fp32, to the
rounding tolerance of :func:`tests.scratch_gpt.helpers.logits_tol`: ~1e-5 here, kernels differ per CPU).

Ours: ``eager``/``sdpa`` (the standard names resolve to scratch_gpt's functions). transformers': its
``sdpa_attention_forward`` and GPT-2's ``eager_attention_forward``, registered here under their own names with
transformers' mask functions; ``flex_attention``; ``paged|eager`` with the 4D additive mask continuous batching
passes (the paged cache itself is exercised in test_continuous_batching.py). A function registered through
``AttentionInterface.register`` is called for every layer.
"""

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward as gpt2_eager_attention

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.attention import sdpa_attention
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close, random_left_padded_batch

AttentionInterface.register("transformers_sdpa", sdpa_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register("transformers_sdpa", sdpa_mask)
AttentionInterface.register("transformers_eager", gpt2_eager_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register("transformers_eager", eager_mask)

BACKENDS = ["sdpa", "transformers_sdpa", "transformers_eager", "flex_attention"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(make_tiny_config()).eval()


def _logits(model, implementation, **inputs):
    model.set_attn_implementation(implementation)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        model.set_attn_implementation("eager")


@pytest.mark.parametrize("implementation", BACKENDS)
def test_backend_matches_our_eager_without_padding(model, implementation):
    ids = torch.randint(2, 320, (2, 20))
    reference = _logits(model, "eager", input_ids=ids)
    assert_logits_close(_logits(model, implementation, input_ids=ids), reference, model.config)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_backend_matches_our_eager_with_left_padding(model, implementation):
    ids, mask = random_left_padded_batch()
    real = mask.bool()
    reference = _logits(model, "eager", input_ids=ids, attention_mask=mask)
    got = _logits(model, implementation, input_ids=ids, attention_mask=mask)
    assert_logits_close(got[real], reference[real], model.config, ids.shape[1])


def test_paged_eager_with_the_additive_mask_continuous_batching_passes(model):
    ids, mask = random_left_padded_batch()
    real = mask.bool()
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    allowed = causal[None, None] & real[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    reference = _logits(model, "eager", input_ids=ids, attention_mask=mask)
    got = _logits(model, "paged|eager", input_ids=ids, attention_mask=additive, position_ids=positions)
    assert_logits_close(got[real], reference[real], model.config, ids.shape[1])


def test_a_registered_function_is_called_for_every_layer_with_its_module(model):
    calls = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        calls.append((module.layer_idx, module.is_causal, query.shape))
        return sdpa_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("test_probe", probe)
    ids = torch.randint(2, 320, (2, 9))
    reference = _logits(model, "eager", input_ids=ids)
    got = _logits(model, "test_probe", input_ids=ids)
    assert [c[0] for c in calls] == [0, 1]
    assert all(c[1] is True and c[2] == (2, 4, 9, 8) for c in calls)
    assert_logits_close(got, reference, model.config)


def test_kwargs_from_forward_reach_the_attention_function(model):
    seen = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs.get("my_flag"))
        return sdpa_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("test_kwargs_probe", probe)
    _logits(model, "test_kwargs_probe", input_ids=torch.randint(2, 320, (1, 5)), my_flag="here")
    assert seen == ["here", "here"]


def test_unknown_implementation_is_one_clear_error(model):
    with pytest.raises(ValueError, match="not_registered_anywhere"):
        model.set_attn_implementation("not_registered_anywhere")
