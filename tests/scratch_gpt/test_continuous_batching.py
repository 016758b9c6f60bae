"""Continuous batching (transformers' ``generate_batch`` / ``init_continuous_batching``) over the paged cache.

Requests of different lengths are packed into one row with restarting positions and a paged KV cache; each
must get, token for token, what ``generate()`` gives the prompt alone, and the log-probabilities of its tokens
must equal those from ``generate()``'s raw logits (so the paged attention is right, not merely the arg-max).
Both attention names continuous batching accepts on CPU are covered: ``sdpa`` (ours) and ``paged|eager``.
"""

import pytest
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from scratch_gpt import ScratchGPTForCausalLM
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import fp32_tol, logits_tol

PROMPT_LENGTHS = (2, 5, 9, 14, 20, 27)  # packed together: 77 tokens in one row, more than the context of 64
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(make_tiny_config()).eval()


def _prompts():
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(2, 320, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def _generation_config():
    return GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=1)


def _cb_config(**overrides):
    # A small, fixed cache: left to itself, continuous batching sizes the cache from free memory (slow on CPU).
    return ContinuousBatchingConfig(page_size=16, num_blocks=32, max_batch_tokens=128, **overrides)


def _alone(model, prompt):
    out = model.generate(
        torch.tensor([prompt]),
        generation_config=_generation_config(),
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [torch.log_softmax(step[0], -1)[t].item() for step, t in zip(out.logits, tokens)]
    # a log-probability z_t - lse(z) holds two logits' rounding and the log-sum-exp's own over the vocabulary
    tol = 2 * logits_tol(model.config, torch.stack(out.logits), len(prompt) + NEW_TOKENS)
    return tokens, logprobs, tol + fp32_tol(model.config.vocab_size)


@pytest.mark.parametrize("implementation", ["sdpa", "paged|eager"])
def test_generate_batch_equals_generate_per_prompt(model, implementation):
    model.set_attn_implementation(implementation)
    prompts = _prompts()
    results = model.generate_batch(
        inputs=prompts,
        generation_config=_generation_config(),
        continuous_batching_config=_cb_config(return_logprobs=True),
    )
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    assert len(results) == len(prompts)
    assert all(r.error is None for r in results.values()), [r.error for r in results.values()]
    by_prompt = {tuple(r.prompt_ids): r for r in results.values()}
    for prompt in prompts:
        tokens, logprobs, tol = _alone(model, prompt)
        result = by_prompt[tuple(prompt)]
        assert result.generated_tokens == tokens
        torch.testing.assert_close(torch.tensor(result.logprobs), torch.tensor(logprobs), atol=tol, rtol=0)


def test_init_continuous_batching_manager_serves_requests_added_while_running(model):
    model.set_attn_implementation("sdpa")
    prompts = _prompts()
    manager = model.init_continuous_batching(
        generation_config=_generation_config(), continuous_batching_config=_cb_config()
    )
    manager.start()
    try:
        ids = [manager.add_request(prompt, max_new_tokens=NEW_TOKENS) for prompt in prompts[:3]]
        ids += [manager.add_request(prompt, max_new_tokens=NEW_TOKENS) for prompt in prompts[3:]]
        results = {rid: manager.get_result(request_id=rid, timeout=120) for rid in ids}
    finally:
        manager.stop(block=True, timeout=60)
    for rid, prompt in zip(ids, prompts):
        assert results[rid] is not None, f"request {rid} did not finish"
        assert results[rid].generated_tokens == _alone(model, prompt)[0]
