"""The two attention implementations agree; causality; padding; attention weights under eager."""

import pytest
import torch

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.attention import build_attention_mask, eager_attention, sdpa_attention
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close, fp32_tol, random_left_padded_batch


def _pair(**overrides):
    torch.manual_seed(0)
    eager = ScratchGPTForCausalLM(make_tiny_config(**overrides)).eval()
    eager.config._attn_implementation = "eager"
    sdpa = ScratchGPTForCausalLM(make_tiny_config(**overrides)).eval()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.config._attn_implementation = "sdpa"
    return eager, sdpa


def test_eager_and_sdpa_agree_without_padding():
    eager, sdpa = _pair()
    ids = torch.randint(2, 320, (2, 20))
    assert_logits_close(sdpa(ids).logits, eager(ids).logits, eager.config)


def test_eager_and_sdpa_agree_with_padding():
    eager, sdpa = _pair()
    ids, mask = random_left_padded_batch()
    real = mask.bool()
    expected = eager(ids, attention_mask=mask).logits
    assert_logits_close(sdpa(ids, attention_mask=mask).logits[real], expected[real], eager.config, ids.shape[1])


def test_functions_agree_on_random_tensors_with_a_cached_prefix():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 3, 8)  # 3 new queries after 5 cached positions
    k, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    pad = torch.ones(2, 8, dtype=torch.long)
    pad[0, :2] = 0
    mask = build_attention_mask(pad, q_len=3, kv_len=8, past_len=5, device=q.device)
    out_e, w = eager_attention(None, q, k, v, mask)
    out_s, _ = sdpa_attention(None, q, k, v, mask)
    # scores: 8-term sums below S = max(|q| @ |k|^T) / sqrt(8); an error d in a score is a relative error d in
    # its softmax weight, so the output (weights times |v| <= V, summed over 8 keys) is off by ~ V * (S + 1) ulps
    scores = (q.abs() @ k.abs().transpose(-1, -2)).max().item() / 8**0.5
    torch.testing.assert_close(out_s, out_e, atol=fp32_tol(8, v.abs().max().item() * (scores + 1)), rtol=0)
    # causal: query 0 (absolute position 5) sees keys 0..5 only; padding keys get no weight
    assert torch.all(w[:, :, 0, 6:] == 0)
    assert torch.all(w[0, :, :, :2] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 3))


def test_no_mask_is_built_on_the_unpadded_path():
    assert build_attention_mask(torch.ones(2, 7, dtype=torch.long), 7, 7, 0, torch.device("cpu")) is None
    assert build_attention_mask(None, 7, 7, 0, torch.device("cpu")) is None


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_causality_future_tokens_do_not_change_past_logits(implementation):
    eager, sdpa = _pair()
    model = eager if implementation == "eager" else sdpa
    ids = torch.randint(2, 320, (1, 16))
    changed = ids.clone()
    changed[0, 9:] = torch.randint(2, 320, (7,))
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_output_attentions_returns_causal_weights_under_eager():
    eager, _ = _pair()
    ids = torch.randint(2, 320, (2, 10))
    out = eager(ids, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 10, 10)
    weights = out.attentions[0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
    assert torch.all(weights.triu(1) == 0)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], eager.transformer(ids).last_hidden_state)


def test_attn_implementation_switch_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    eager, _ = _pair()
    eager.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").config._attn_implementation == "eager"
    assert AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").config._attn_implementation == "sdpa"


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(drop_rate=0.5))
    ids = torch.randint(2, 320, (2, 10))
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits)
