"""The Llama/Qwen switches of ScratchGPTConfig: validation, the RoPE and gated-MLP modules against
transformers' own, and the model tests GPT-2 shapes pass (eager = sdpa, cached = uncached, static cache,
grouped KV cache, gradient checkpointing, resize_token_embeddings, Trainer accumulation, PEFT LoRA,
remote-code export loaded where scratch_gpt is absent)."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRotaryEmbedding

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.convert import gpt2_config_from_scratch
from scratch_gpt.mlp import ScratchGPTGatedMLP
from scratch_gpt.positions import ScratchGPTRotaryEmbedding
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import (
    assert_checkpointing_keeps_gradients,
    big_and_accumulated_grads,
    compiled_static_and_eager_generation,
    counting_applies,
    left_padded,
    manual_greedy,
    uneven_label_rows,
)

_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
FAMILY = {
    "llama-gqa": dict(position_embedding_type="rope", rope_parameters=_ROPE, norm_type="rmsnorm", mlp_type="swiglu",
                      hidden_act="silu", num_key_value_heads=2, qkv_bias=False, attention_bias=False, mlp_bias=False),
    "qwen3-mqa": dict(position_embedding_type="rope", rope_parameters=_ROPE, norm_type="rmsnorm", mlp_type="swiglu",
                      hidden_act="silu", num_key_value_heads=1, head_dim=16, qk_norm=True, tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False),
    "gpt2-with-gqa-and-biases": dict(num_key_value_heads=2, qkv_bias=True, intermediate_size=48),
}


def _family(name, **overrides):
    return make_tiny_config(**{**FAMILY[name], **overrides})


@pytest.fixture(params=sorted(FAMILY))
def family_model(request):
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(_family(request.param)).eval()


# -- config -----------------------------------------------------------------------------------------------


def test_gpt2_defaults_build_no_family_modules():
    config = ScratchGPTConfig()
    assert (config.position_embedding_type, config.mlp_type) == ("learned", "gelu")
    assert not hasattr(config, "rope_parameters")  # transformers runs its RoPE tests on configs that have it
    assert (config.num_key_value_heads, config.head_dim, config.qk_norm) == (12, 64, False)
    model = ScratchGPTForCausalLM(make_tiny_config())
    assert model.transformer.rotary_emb is None and model.transformer.wpe is not None
    assert not any("norm" in name for name, _ in model.transformer.h[0].attn.named_modules())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_key_value_heads=3), r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
        (dict(num_key_value_heads=0), "num_key_value_heads must be a positive integer"),
        (dict(mlp_type="geglu"), "mlp_type must be one of"),
        (dict(position_embedding_type="alibi"), "position_embedding_type must be one of"),
        (dict(position_embedding_type="rope", rope_parameters={"rope_type": "longrope", "factor": 2.0}),
         "rope_type='longrope'"),
        (dict(position_embedding_type="rope", head_dim=7), "head_dim must be even"),
        (dict(position_embedding_type="rope", rope_parameters={"rope_type": "llama3", "factor": 8.0}),
         "rope_parameters .* are invalid"),
        (dict(qk_norm="yes"), "qk_norm must be True or False"),
        (dict(head_dim=0), "head_dim must be a positive integer"),
    ],
)
def test_invalid_switches_raise_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_tiny_config(**overrides)


def test_explicit_head_dim_lifts_the_divisibility_rule_and_legacy_rope_theta_folds_in(tmp_path):
    config = make_tiny_config(hidden_size=30, num_attention_heads=4, head_dim=8, position_embedding_type="rope",
                              rope_theta=500.0)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500.0}
    with pytest.raises(ValueError, match="must be divisible by num_attention_heads"):
        make_tiny_config(hidden_size=30, num_attention_heads=4)
    config.save_pretrained(tmp_path)
    again = ScratchGPTConfig.from_pretrained(tmp_path)
    assert (again.head_dim, again.rope_parameters, again.rms_norm_eps) == (8, config.rope_parameters, 1e-5)


def test_gpt2_export_names_every_switch_it_cannot_express():
    with pytest.raises(ValueError, match="GPT-2 cannot express") as error:
        gpt2_config_from_scratch(_family("qwen3-mqa", norm_type="layernorm"))
    for name in ("position_embedding_type='rope'", "mlp_type='swiglu'", "qk_norm=True", "num_key_value_heads=1"):
        assert name in str(error.value)
    gpt2_config_from_scratch(make_tiny_config())  # GPT-2 shapes still export


# -- the new modules against transformers' own ---------------------------------------------------------


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16},
    ],
    ids=lambda rope: rope["rope_type"],
)
def test_rotary_embedding_matches_llamas(rope):
    ours = ScratchGPTRotaryEmbedding(make_tiny_config(position_embedding_type="rope", rope_parameters=dict(rope),
                                                      head_dim=16))
    theirs = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                              max_position_embeddings=64, rope_parameters=dict(rope)))
    x = torch.zeros(2, 5, 64)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 20, 33, 50, 63]])
    for a, b in zip(ours(x, positions), theirs(x, positions)):
        assert torch.equal(a, b)
    assert ours.attention_scaling == theirs.attention_scaling


def test_gated_mlp_matches_llama_mlp_with_copied_weights():
    config = make_tiny_config(mlp_type="swiglu", hidden_act="silu", intermediate_size=40, mlp_bias=True)
    torch.manual_seed(0)
    ours = ScratchGPTGatedMLP(config)
    torch.nn.init.normal_(ours.c_fc.bias)
    theirs = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=40, hidden_act="silu", mlp_bias=True))
    gate, up = ours.c_fc.weight.split(40), ours.c_fc.bias.split(40)
    theirs.load_state_dict({"gate_proj.weight": gate[0], "up_proj.weight": gate[1], "gate_proj.bias": up[0],
                            "up_proj.bias": up[1], "down_proj.weight": ours.c_proj.weight,
                            "down_proj.bias": ours.c_proj.bias})
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_swiglu_training_path_matches_llama_mlp_gradients(bias):
    """In training the gated MLP runs SwiGLUFunction (recomputing the activation in backward): same output,
    same gradients (input, weights, biases) as transformers' LlamaMLP with copied weights."""
    from scratch_gpt import mlp as mlp_module

    config = make_tiny_config(mlp_type="swiglu", hidden_act="silu", intermediate_size=40, mlp_bias=bias)
    torch.manual_seed(0)
    ours = ScratchGPTGatedMLP(config).train()
    if bias:
        torch.nn.init.normal_(ours.c_fc.bias)
        torch.nn.init.normal_(ours.c_proj.bias)
    theirs = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=40, hidden_act="silu", mlp_bias=bias))
    gate_w, up_w = ours.c_fc.weight.detach().split(40)
    state = {"gate_proj.weight": gate_w, "up_proj.weight": up_w, "down_proj.weight": ours.c_proj.weight.detach()}
    if bias:
        gate_b, up_b = ours.c_fc.bias.detach().split(40)
        state.update({"gate_proj.bias": gate_b, "up_proj.bias": up_b, "down_proj.bias": ours.c_proj.bias.detach()})
    theirs.load_state_dict(state)
    x = torch.randn(3, 7, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with counting_applies(mlp_module.SwiGLUFunction) as calls:
        out = ours(x)
    assert calls, "the fused training path did not run"
    ref = theirs(x_ref)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, **close)
    fc_grad = torch.cat((theirs.gate_proj.weight.grad, theirs.up_proj.weight.grad))
    torch.testing.assert_close(ours.c_fc.weight.grad, fc_grad, **close)
    torch.testing.assert_close(ours.c_proj.weight.grad, theirs.down_proj.weight.grad, **close)
    if bias:
        torch.testing.assert_close(ours.c_fc.bias.grad, torch.cat((theirs.gate_proj.bias.grad, theirs.up_proj.bias.grad)), **close)
        torch.testing.assert_close(ours.c_proj.bias.grad, theirs.down_proj.bias.grad, **close)


def test_fused_swiglu_path_steps_aside_for_hooks_eval_and_autocast():
    config = make_tiny_config(mlp_type="swiglu", hidden_act="silu", intermediate_size=40)
    mlp = ScratchGPTGatedMLP(config).train()
    x = torch.randn(2, 5, 32)
    assert mlp._fusable(x)
    handle = mlp.c_fc.register_forward_hook(lambda *args: None)  # as tensor parallelism or PEFT would add
    assert not mlp._fusable(x)
    handle.remove()
    with torch.no_grad():
        assert not mlp._fusable(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not mlp._fusable(x)
    assert not mlp.eval()._fusable(x)


@pytest.mark.parametrize("shape", [(3, 7, 32), (2, 4, 5, 16)])
def test_fused_rmsnorm_training_path_matches_llama_rmsnorm(shape):
    """In training RMSNorm runs RMSNormFunction (saves x and the per-row rsqrt only): same output and gradients
    (input and weight) as transformers' LlamaRMSNorm, for model-width rows and per-head (QK-norm) rows."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from scratch_gpt import norm as norm_module

    torch.manual_seed(0)
    ours = norm_module.RMSNorm(shape[-1], eps=1e-6)
    torch.nn.init.normal_(ours.weight)
    theirs = LlamaRMSNorm(shape[-1], eps=1e-6)
    theirs.weight.data.copy_(ours.weight.detach())
    x = (torch.randn(*shape) * 3).transpose(0, 1).requires_grad_(True)  # strided, as q/k heads are
    x_ref = x.detach().clone().requires_grad_(True)
    with counting_applies(norm_module.RMSNormFunction) as calls:
        out = ours(x)
    assert calls, "the fused training path did not run"
    ref = theirs(x_ref)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-5)


def test_rotary_function_matches_transformers_rotation_and_gradient():
    """apply_rotary (three passes, RotaryFunction under autograd) and rotate_heads (queries and keys in one view)
    equal transformers' apply_rotary_pos_emb on strided query/key heads, values and gradients."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from scratch_gpt import positions

    config = make_tiny_config(position_embedding_type="rope", num_key_value_heads=2)
    torch.manual_seed(0)
    rope = ScratchGPTRotaryEmbedding(config)
    qkv = torch.randn(2, 5, 8, 8).transpose(1, 2)  # (b, heads, t, d) views of a (b, t, heads, d) tensor
    query, key = qkv[:, :4].requires_grad_(False), qkv[:, 4:6]
    cos, sin = rope(query, torch.arange(5).expand(2, 5) + 3)
    q, k = query.clone().requires_grad_(True), key.clone().requires_grad_(True)
    q_ref, k_ref = query.clone().requires_grad_(True), key.clone().requires_grad_(True)
    with counting_applies(positions.RotaryFunction) as calls:
        ours = positions.apply_rotary(q, k, cos, sin)
    assert len(calls) == 2
    theirs = apply_rotary_pos_emb(q_ref, k_ref, cos, sin)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    grads = torch.randn_like(ours[0]), torch.randn_like(ours[1])
    torch.autograd.backward(ours, grads)
    torch.autograd.backward(theirs, grads)
    torch.testing.assert_close(q.grad, q_ref.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k.grad, k_ref.grad, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        for a, b in zip(positions.apply_rotary(query, key, cos, sin), apply_rotary_pos_emb(query, key, cos, sin)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        # inference: queries and keys rotated together as one strided (b, h + kv, t, d) view
        joint = positions.apply_rotary(query, key, cos, sin, packed=qkv[:, :6])
        for a, b in zip(joint, apply_rotary_pos_emb(query, key, cos, sin)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_fused_rmsnorm_inference_path_and_autocast_fallback():
    from scratch_gpt import norm as norm_module
    from scratch_gpt.norm import RMSNorm

    norm, x = RMSNorm(8), torch.randn(2, 8)
    torch.nn.init.normal_(norm.weight)
    assert norm._fusable(x) and isinstance(norm, torch.nn.RMSNorm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not norm._fusable(x)
    assert not norm._fusable(x.double())
    with counting_applies(norm_module.RMSNormFunction) as calls:
        with torch.no_grad():  # inference: the same numbers as torch's own rms_norm, without the function
            torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (8,), norm.weight, norm.eps))
    assert not calls


# -- the model tests, on the family switches -----------------------------------------------------------


def test_eager_equals_sdpa_with_and_without_padding(family_model):
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]])
    with torch.no_grad():
        family_model.config._attn_implementation = "sdpa"
        sdpa = family_model(ids, attention_mask=mask).logits, family_model(ids).logits
        family_model.config._attn_implementation = "eager"
        eager = family_model(ids, attention_mask=mask).logits, family_model(ids).logits
    torch.testing.assert_close(sdpa[0][mask.bool()], eager[0][mask.bool()], atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa[1], eager[1], atol=1e-5, rtol=0)


def test_cached_generation_equals_uncached_and_static_cache(family_model):
    rows = [[5, 17, 99, 23, 42, 8, 7], [61, 3], [200, 201, 202, 203]]
    ids, mask = left_padded(rows)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=1)
    dynamic = family_model.generate(ids, **kwargs)
    for i, row in enumerate(rows):
        assert dynamic[i, ids.shape[1] :].tolist() == manual_greedy(family_model, row, 10)
    assert torch.equal(family_model.generate(ids, cache_implementation="static", **kwargs), dynamic)


def test_kv_cache_stores_the_grouped_heads(family_model):
    config = family_model.config
    out = family_model(torch.randint(2, 320, (2, 9)), use_cache=True)
    keys = out.cache.layers[0].keys
    assert keys.shape == (2, config.num_key_value_heads, 9, config.head_dim)
    full = family_model(torch.randint(2, 320, (1, 12))).logits
    assert full.shape == (1, 12, 320)


def test_gradient_checkpointing_gives_the_same_gradients(family_model):
    family_model.train()
    assert_checkpointing_keeps_gradients(family_model, torch.randint(2, 320, (2, 16)))


def test_resize_token_embeddings(family_model):
    old = family_model.transformer.wte.weight.detach().clone()
    family_model.resize_token_embeddings(333)
    assert family_model.lm_head.weight.shape == (333, 32)
    tied = family_model.lm_head.weight.data_ptr() == family_model.transformer.wte.weight.data_ptr()
    assert tied == family_model.config.tie_word_embeddings
    torch.testing.assert_close(family_model.transformer.wte.weight[:320], old)
    assert family_model(torch.tensor([[332, 5]])).logits.shape == (1, 2, 333)


def test_peft_lora_trains_and_generates(family_model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(family_model, LoraConfig(r=4, target_modules=["c_attn", "c_proj", "c_fc"]))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(2, 320, (2, 8))
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)
    peft_model.eval()
    assert peft_model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, eos_token_id=None).shape == (2, 11)


def test_trainer_gradient_accumulation_matches_one_big_batch(tmp_path):
    data = uneven_label_rows()
    model = ScratchGPTForCausalLM(_family("qwen3-mqa"))
    big, accumulated = big_and_accumulated_grads(model, data, tmp_path)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-6, rtol=1e-4)


def test_remote_code_export_loads_where_scratch_gpt_is_absent(tmp_path, tiny_tokenizer):
    """hub_export's export reloads the folder in a fresh process that cannot import scratch_gpt and compares
    logits and generations with the source: a family model must pass that check."""
    from hub_export.export import export_model

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(_family("qwen3-mqa")).eval()
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    result = export_model(tmp_path / "model", tmp_path / "export")
    assert result.export_format == "remote-code"
    assert "positions.py" in result.files and "mlp.py" in result.files
    assert result.verification


def test_tensor_parallel_plan_gathers_the_fused_gate_and_up_projection():
    plan = _family("llama-gqa").base_model_tp_plan
    assert (plan["h.*.mlp.c_fc"], plan["h.*.mlp.c_proj"]) == ("colwise_gather_output", "rowwise_split_input")
    assert make_tiny_config().base_model_tp_plan["h.*.mlp.c_fc"] == "colwise"  # GPT-2's MLP splits plainly
    assert "base_model_tp_plan" not in _family("llama-gqa").to_json_string()


@pytest.mark.parametrize("name, implementation", [("llama-gqa", "sdpa"), ("qwen3-mqa", "eager")])
def test_fullgraph_compiled_static_cache_generate_equals_eager(name, implementation):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(_family(name)).eval()
    model.set_attn_implementation(implementation)
    graphs, compiled, eager = compiled_static_and_eager_generation(model)
    assert graphs == 1 and torch.equal(compiled, eager)  # RoPE, GQA and QK-norm trace without a break


@pytest.mark.parametrize("implementation", ["sdpa", "paged|eager"])
def test_continuous_batching_equals_generate_per_prompt(implementation):
    """Paged attention over grouped key/value heads, RoPE on packed rows with restarting positions."""
    from tests.scratch_gpt.test_continuous_batching import _alone, _cb_config, _generation_config, _prompts

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(_family("qwen3-mqa", eos_token_id=None)).eval()
    model.set_attn_implementation(implementation)
    prompts = _prompts()
    results = model.generate_batch(inputs=prompts, generation_config=_generation_config(),
                                   continuous_batching_config=_cb_config(return_logprobs=True))
    model.set_attn_implementation("sdpa")
    by_prompt = {tuple(r.prompt_ids): r for r in results.values()}
    for prompt in prompts:
        tokens, logprobs, tol = _alone(model, prompt)  # tol: the log-probabilities' float32 bound
        assert len(tokens) == 8 and by_prompt[tuple(prompt)].generated_tokens == tokens
        torch.testing.assert_close(torch.tensor(by_prompt[tuple(prompt)].logprobs), torch.tensor(logprobs),
                                   atol=tol, rtol=0)
