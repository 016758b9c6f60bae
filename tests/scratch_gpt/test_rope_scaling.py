"""RoPE past max_position_embeddings: linear, dynamic-NTK and YaRN scaling and partial rotation, against
transformers' own LlamaForCausalLM / LlamaRotaryEmbedding (copied weights) and GPT-NeoX's partial rotation.

The first tests reproduce the cases of transformers' common RoPE tests (``test_model_rope_scaling_from_config``,
``test_model_rope_scaling_frequencies``, partial rotation), which transformers runs when a config has the
``rope_parameters`` attribute: so a learned-position (GPT-2) config must not have it.

Logits are compared with a float64 copy of transformers' Llama as the reference, within the float32 error of the
forward (``helpers.logits_tol``: ``eps32 * sqrt(K) * max|logit| * depth`` with a safety factor, K the longest
reduction). transformers' own float32 Llama is held to the same bound.
"""

import copy

import pytest
import torch
from transformers import GPTNeoXConfig, LlamaConfig
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_apply_rotary
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTModel
from scratch_gpt.convert_family import scratch_to_family
from scratch_gpt.positions import ScratchGPTRotaryEmbedding, apply_rotary
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import logits_tol, manual_greedy

CONTEXT, SHORT, LONG = 32, 10, 48  # LONG = 1.5 x max_position_embeddings, as in transformers' tests
LAYERS, WIDTH, INTERMEDIATE = 2, 64, 96
LLAMA = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu",
             hidden_size=WIDTH, num_attention_heads=4, num_key_value_heads=2, intermediate_size=INTERMEDIATE,
             num_hidden_layers=LAYERS, max_position_embeddings=CONTEXT, qkv_bias=False, attention_bias=False,
             mlp_bias=False, tie_word_embeddings=False, cpu_fast_paths=False)  # no per-shape kernel timing
SCALED = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": CONTEXT},
}
DEFAULT = {"rope_type": "default", "rope_theta": 10000.0}


def _config(rope: dict, **overrides) -> ScratchGPTConfig:
    return make_tiny_config(**{**LLAMA, "rope_parameters": copy.deepcopy(rope), **overrides})


def _pair(rope: dict) -> tuple[ScratchGPTForCausalLM, torch.nn.Module]:
    """Our Llama-shaped model and transformers' LlamaForCausalLM with the same weights."""
    torch.manual_seed(0)
    ours = ScratchGPTForCausalLM(_config(rope)).eval()
    return ours, scratch_to_family(ours, "llama").eval()


def _assert_like_llama(ours, theirs, ids: torch.Tensor, **kwargs) -> None:
    """Our float32 logits and transformers' float32 logits both within the float32 bound of a float64 Llama."""
    reference_model = copy.deepcopy(theirs).double()
    with torch.no_grad():
        reference = reference_model(ids, **kwargs).logits.float()
        mine, llama = ours(ids, **kwargs).logits, theirs(ids, **kwargs).logits
    bound = logits_tol(ours.config, reference)
    assert (llama - reference).abs().max().item() <= bound  # the bound holds for transformers itself
    assert (mine - reference).abs().max().item() <= bound


# -- transformers' test_model_rope_scaling_from_config, on our base model --------------------------------


def _set_rope(config, rope: dict) -> None:
    # As transformers' _set_config_rope_params: update the config's dict in place after construction.
    config.rope_parameters = getattr(config, "rope_parameters", {}) or {}
    config.rope_parameters.update(rope)


@pytest.mark.parametrize("scaling_type", ["linear", "dynamic", "yarn"])
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_scaling_from_config(scaling_type, partial):
    config = _config(DEFAULT)
    short, long = torch.randint(2, 320, (1, SHORT)), torch.randint(2, 320, (1, LONG))
    _set_rope(config, {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial,
                       "original_max_position_embeddings": 16384})
    torch.manual_seed(42)
    original = ScratchGPTModel(config).eval()
    with torch.no_grad():
        original_short, original_long = original(short).last_hidden_state, original(long).last_hidden_state
    _set_rope(config, {"rope_type": scaling_type, "factor": 10.0, "rope_theta": 10000.0,
                       "partial_rotary_factor": partial})
    torch.manual_seed(42)
    scaled = ScratchGPTModel(config).eval()
    with torch.no_grad():
        scaled_short, scaled_long = scaled(short).last_hidden_state, scaled(long).last_hidden_state
    if scaling_type == "dynamic":  # dynamic NTK changes nothing within the original length
        torch.testing.assert_close(original_short, scaled_short, rtol=1e-5, atol=1e-5)
    else:
        assert not torch.allclose(original_short, scaled_short, atol=1e-5)
    assert not torch.allclose(original_long, scaled_long, atol=1e-5)


@pytest.mark.parametrize("scaling_type", ["default", "linear", "dynamic", "yarn"])
def test_short_and_long_inputs_give_llamas_logits(scaling_type):
    ours, theirs = _pair(SCALED.get(scaling_type, DEFAULT))
    # Short, long, short again: dynamic NTK grows its frequencies for the long input and resets after it.
    for length in (SHORT, LONG, SHORT):
        _assert_like_llama(ours, theirs, torch.randint(2, 320, (2, length)))
    torch.testing.assert_close(ours.transformer.rotary_emb.inv_freq, theirs.model.rotary_emb.inv_freq, atol=0, rtol=0)


# -- transformers' test_model_rope_scaling_frequencies, on our rotary module ----------------------------


def _rope(rope: dict, partial: float | None = None) -> ScratchGPTRotaryEmbedding:
    partial = {} if partial is None else {"partial_rotary_factor": partial}
    return ScratchGPTRotaryEmbedding(_config({**rope, **partial}))


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_scaling_frequencies(partial):
    x, factor = torch.randn(1), 10
    short, long = torch.arange(SHORT)[None], torch.arange(LONG)[None]
    original = _rope(DEFAULT, partial)
    cos_short, sin_short = original(x, short)
    cos_long, sin_long = original(x, long)
    torch.testing.assert_close(cos_short, cos_long[:, :SHORT])

    linear = _rope({"rope_type": "linear", "rope_theta": 10000.0, "factor": factor}, partial)
    lin_cos, lin_sin = linear(x, long)
    for position in range(0, LONG, factor):  # new position x is the original position x / factor
        torch.testing.assert_close(lin_cos[:, position], cos_long[:, position // factor])
        torch.testing.assert_close(lin_sin[:, position], sin_long[:, position // factor])

    ntk = _rope({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": factor}, partial)
    ntk_cos, ntk_sin = ntk(x, short)
    torch.testing.assert_close((ntk_cos, ntk_sin), (cos_short, sin_short))  # unchanged up to the original length
    ntk_cos, ntk_sin = ntk(x, long)
    assert not torch.allclose(ntk_cos, cos_long) and not torch.allclose(ntk_sin, sin_long)
    assert (ntk.inv_freq <= original.inv_freq).all() and (ntk.inv_freq < original.inv_freq).any()
    torch.testing.assert_close(ntk(x, short), (cos_short, sin_short))  # and back for a short input

    yarn = _rope({"rope_type": "yarn", "rope_theta": 10000.0, "factor": factor}, partial)
    yarn_cos, yarn_sin = yarn(x, long)
    torch.testing.assert_close(yarn(x, short), (yarn_cos[:, :SHORT], yarn_sin[:, :SHORT]))
    assert not torch.allclose(yarn_cos[:, :SHORT], cos_short) and not torch.allclose(yarn_cos, cos_long)


@pytest.mark.parametrize("scaling_type", ["linear", "dynamic", "yarn"])
def test_frequencies_equal_llamas_bit_for_bit_through_growth_and_reset(scaling_type):
    rope = SCALED[scaling_type]
    ours = _rope(rope)
    theirs = LlamaRotaryEmbedding(LlamaConfig(hidden_size=WIDTH, num_attention_heads=4,
                                              max_position_embeddings=CONTEXT, rope_parameters=dict(rope)))
    x = torch.zeros(1)
    for positions in (torch.arange(SHORT)[None], torch.arange(LONG)[None], torch.arange(LONG + 7)[None],
                      torch.arange(SHORT)[None]):
        for a, b in zip(ours(x, positions), theirs(x, positions)):
            assert torch.equal(a, b)
        assert torch.equal(ours.inv_freq, theirs.inv_freq)


# -- partial rotation (partial_rotary_factor) ------------------------------------------------------------


@pytest.mark.parametrize("rope", [DEFAULT, *SCALED.values()], ids=lambda rope: rope["rope_type"])
def test_partial_rotation_equals_gpt_neox(rope):
    """transformers' partial rotation lives in GPT-NeoX (Llama has none): same angles, same rotated queries and
    keys, and the dimensions past the rotated width pass through untouched."""
    rope = {**rope, "partial_rotary_factor": 0.5}
    ours = _rope(rope)
    theirs = GPTNeoXRotaryEmbedding(GPTNeoXConfig(hidden_size=WIDTH, num_attention_heads=4,
                                                  max_position_embeddings=CONTEXT, rope_parameters=dict(rope)))
    x, positions = torch.zeros(1), torch.arange(LONG)[None].expand(2, LONG)
    cos, sin = ours(x, positions)
    assert cos.shape == (2, LONG, 8)  # half of head_dim 16
    for a, b in zip((cos, sin), theirs(x, positions)):
        assert torch.equal(a, b)
    query, key = torch.randn(2, 4, LONG, 16), torch.randn(2, 2, LONG, 16)
    rotated = apply_rotary(query, key, cos, sin)
    for a, b in zip(rotated, neox_apply_rotary(query, key, cos, sin)):
        assert torch.equal(a, b)
    assert torch.equal(rotated[0][..., 8:], query[..., 8:]) and torch.equal(rotated[1][..., 8:], key[..., 8:])


def test_partial_rotation_model_runs_long_inputs_and_cached_equals_uncached():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(_config({**SCALED["yarn"], "partial_rotary_factor": 0.25})).eval()
    assert model.transformer.rotary_emb.inv_freq.numel() == 2  # 16 * 0.25 = 4 rotated dimensions
    ids = torch.randint(2, 320, (2, LONG))
    with torch.no_grad():
        full = model(ids).logits
        prefix = model(ids[:, :20], use_cache=True)
        rest = model(ids[:, 20:], cache=prefix.cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 20:], atol=1e-5, rtol=0)
    full_rotation = _config({**SCALED["yarn"], "partial_rotary_factor": 1.0})
    assert ScratchGPTRotaryEmbedding(full_rotation).inv_freq.numel() == 8


@pytest.mark.parametrize(
    "rope, message",
    [
        ({**DEFAULT, "partial_rotary_factor": 0.0}, r"must be in \(0, 1\], got 0.0"),
        ({**DEFAULT, "partial_rotary_factor": 1.5}, r"must be in \(0, 1\], got 1.5"),
        ({**DEFAULT, "partial_rotary_factor": 0.1}, r"int\(16 \* 0.1\) = 1 dimensions"),
        ({**SCALED["dynamic"], "partial_rotary_factor": 0.125}, r"= 2 dimensions .* at least 3"),
        ({"rope_type": "longrope", "rope_theta": 1e4}, "rope_type='longrope'"),
    ],
)
def test_invalid_rope_parameters_name_the_numbers(rope, message):
    with pytest.raises(ValueError, match=message):
        _config(rope)


# -- configs without RoPE, lengths, the cache ---------------------------------------------------------------


def test_learned_position_configs_have_no_rope_parameters(tmp_path):
    for config in (ScratchGPTConfig(), make_tiny_config(), make_tiny_config(rope_theta=500.0)):
        assert not hasattr(config, "rope_parameters") and "rope_parameters" not in config.to_dict()
    make_tiny_config().save_pretrained(tmp_path)
    assert not hasattr(ScratchGPTConfig.from_pretrained(tmp_path), "rope_parameters")
    rope = _config(SCALED["dynamic"])
    rope.save_pretrained(tmp_path)
    assert ScratchGPTConfig.from_pretrained(tmp_path).rope_parameters == rope.rope_parameters


def test_learned_positions_refuse_long_inputs_and_rope_warns_once():
    learned = ScratchGPTForCausalLM(make_tiny_config(max_position_embeddings=CONTEXT))
    with pytest.raises(ValueError, match=rf"{LONG} \(cached 0 \+ new {LONG}\).*max_position_embeddings={CONTEXT}"):
        learned(torch.zeros(1, LONG, dtype=torch.long))
    model = ScratchGPTForCausalLM(_config(DEFAULT)).eval()
    logger = logging.get_logger("scratch_gpt.modeling_scratch_gpt")
    logger.warning_once.cache_clear()
    with CaptureLogger(logger) as captured, torch.no_grad():
        for length in (CONTEXT, LONG, LONG + 1):
            model(torch.zeros(1, length, dtype=torch.long))
    assert captured.out.count(f"longer than max_position_embeddings={CONTEXT}") == 1


@pytest.mark.parametrize("scaling_type", ["default", "linear", "yarn"])
def test_cached_generation_past_the_context_equals_uncached(scaling_type):
    ours, _ = _pair(SCALED.get(scaling_type, DEFAULT))
    prompt = torch.randint(2, 320, (1, 20)).tolist()[0]
    new = LONG - len(prompt)  # ends 1.5 x past max_position_embeddings
    cached = ours.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=None,
                           pad_token_id=1)[0, len(prompt):].tolist()
    assert cached == manual_greedy(ours, prompt, new)


def test_dynamic_cached_generation_behaves_as_llamas():
    """Dynamic NTK changes the frequencies as the sequence grows; keys already in the cache keep the rotation
    they were written with (transformers' Llama does the same), so cached decoding past the original length
    is not an uncached forward. It matches Llama's cached decoding: the same tokens, the same step logits."""
    ours, theirs = _pair(SCALED["dynamic"])
    prompt = torch.randint(2, 320, (1, 20))
    kwargs = dict(max_new_tokens=LONG - 20, do_sample=False, eos_token_id=None, pad_token_id=1,
                  output_scores=True, return_dict_in_generate=True)
    mine, llama = ours.generate(prompt, **kwargs), theirs.generate(prompt, **kwargs)
    assert torch.equal(mine.sequences, llama.sequences)
    steps = torch.stack(mine.scores)  # (steps, 1, vocab)
    bound = logits_tol(ours.config, steps, seq_len=LONG)
    assert (steps - torch.stack(llama.scores)).abs().max().item() <= 2 * bound  # each within bound of float64
