"""The small-model recipe switches of issue 24: the ReLU² MLP (``hidden_act="relu2"``), zero-initialised output
projections (``zero_init_output_projections``) and final-logit soft-capping (``final_logit_softcapping``).

Each against a reference: the MLP against its math written out and against transformers' GPT-2 / Llama with the
same weights, soft-capping against ``c * tanh(logits / c)`` of the uncapped model with the same weights (forward,
loss, gradients and generate's logits); validation, save/load, and the converters in and out (the plain exports
refuse what they cannot express; tests/hub_export/test_export_switches.py runs the export command and the
remote-code round trip)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.convert import gpt2_config_from_scratch, gpt2_to_scratch, scratch_to_gpt2
from scratch_gpt.convert_family import convert_checkpoint, family_to_scratch, scratch_to_family
from scratch_gpt.mlp import ScratchGPTMLP
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import (
    EPS32,
    assert_grads_close,
    assert_logits_close,
    compiled_static_and_eager_generation,
    fp32_tol,
    fused_loss_inputs,
    grads,
    manual_greedy,
    matmul_tol,
)

CAP = 1.0  # small, so that the tiny models' logits (|logit| up to ~2) are visibly bent by the cap
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
LLAMA = dict(position_embedding_type="rope", rope_parameters=_ROPE, norm_type="rmsnorm", mlp_type="swiglu",
             num_key_value_heads=2, qkv_bias=False, attention_bias=False, mlp_bias=False)


def _model(seed: int = 0, **overrides) -> ScratchGPTForCausalLM:
    torch.manual_seed(seed)
    return ScratchGPTForCausalLM(make_tiny_config(**overrides)).eval()


def _with_weights_of(source: ScratchGPTForCausalLM, **overrides) -> ScratchGPTForCausalLM:
    """A model of ``source``'s config with ``overrides``, holding ``source``'s weights."""
    model = ScratchGPTForCausalLM(ScratchGPTConfig(**{**source.config.to_dict(), **overrides}))
    model.load_state_dict(source.state_dict(), strict=True)
    return model.train(source.training)


def _ids(seed: int = 0, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(2, 320, shape, generator=torch.Generator().manual_seed(seed))


def _spread_weights(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every weight (zero-initialised ones included) random values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


# -- config -----------------------------------------------------------------------------------------------


def test_defaults_are_off_and_a_config_json_without_the_keys_loads_with_them_off(tmp_path):
    config = make_tiny_config()
    assert config.hidden_act == "gelu_pytorch_tanh"
    assert config.zero_init_output_projections is False and config.final_logit_softcapping is None
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["final_logit_softcapping"] is None and saved["zero_init_output_projections"] is False
    del saved["final_logit_softcapping"], saved["zero_init_output_projections"]  # a model saved before issue 24
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = ScratchGPTConfig.from_pretrained(tmp_path)
    assert old.final_logit_softcapping is None and old.zero_init_output_projections is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(final_logit_softcapping=0.0), r"final_logit_softcapping must be None \(off\) or a finite number > 0.*got 0\.0"),
        (dict(final_logit_softcapping=-30), r"final_logit_softcapping.*got -30"),
        (dict(final_logit_softcapping=float("inf")), r"final_logit_softcapping.*got inf"),
        (dict(final_logit_softcapping=True), r"final_logit_softcapping.*got True"),
        (dict(final_logit_softcapping="30"), r"final_logit_softcapping.*got '30'"),
        (dict(zero_init_output_projections=1), r"zero_init_output_projections must be True or False, got 1"),
        (dict(hidden_act="relu_squared"), r"hidden_act 'relu_squared' is unknown"),
    ],
)
def test_invalid_switch_values_raise_with_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_tiny_config(**overrides)


# -- ReLU² MLP --------------------------------------------------------------------------------------------


def test_relu2_mlp_is_the_math_written_out():
    config = make_tiny_config(hidden_act="relu2", intermediate_size=48)
    torch.manual_seed(0)
    mlp = ScratchGPTMLP(config)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    mlp = mlp.double()
    fc, proj = mlp.c_fc, mlp.c_proj
    expected = F.linear(torch.clamp(F.linear(x, fc.weight, fc.bias), min=0) ** 2, proj.weight, proj.bias)
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=1e-12)
    assert (F.linear(x, fc.weight, fc.bias) < 0).any()  # the clamp was exercised


def test_relu2_model_equals_transformers_gpt2_and_converts_back_bit_identically():
    """GPT-2's MLP takes any activation_function: GPT2LMHeadModel with "relu2" is the reference, and the
    GPT-2 → scratch-gpt converter (``scratch-gpt convert``) brings it back unchanged."""
    model = _model(hidden_act="relu2")
    _spread_weights(model)
    gpt2 = scratch_to_gpt2(model)
    assert isinstance(gpt2, GPT2LMHeadModel) and gpt2.config.activation_function == "relu2"
    ids = _ids()
    with torch.no_grad():
        ours = model(ids).logits
        assert_logits_close(gpt2(ids).logits, ours, model.config)
    back = gpt2_to_scratch(gpt2)
    assert back.config.hidden_act == "relu2"
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_gated_relu2_exports_to_llama_and_back():
    model = _model(hidden_act="relu2", **LLAMA)
    _spread_weights(model)
    llama = scratch_to_family(model, "llama")
    assert isinstance(llama, LlamaForCausalLM) and llama.config.hidden_act == "relu2"
    ids = _ids()
    with torch.no_grad():
        assert_logits_close(llama(ids).logits, model(ids).logits, model.config)
    back = family_to_scratch(llama)
    assert back.config.hidden_act == "relu2" and back.config.mlp_type == "swiglu"
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_scratch_gpt_convert_reads_a_relu2_gpt2_checkpoint(tmp_path):
    """``scratch-gpt convert`` on a GPT-2 folder written with activation_function="relu2"."""
    source = _model(hidden_act="relu2")
    _spread_weights(source)
    scratch_to_gpt2(source).save_pretrained(tmp_path / "gpt2")
    convert_checkpoint(tmp_path / "gpt2", tmp_path / "scratch")
    converted = ScratchGPTForCausalLM.from_pretrained(tmp_path / "scratch").eval()
    assert converted.config.hidden_act == "relu2"
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, source(ids).logits, rtol=0, atol=0)


# -- zero-initialised output projections -------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, LLAMA], ids=["gpt2", "llama"])
def test_zero_init_zeroes_exactly_the_output_projections_and_training_moves_them(overrides):
    model = _model(zero_init_output_projections=True, **overrides).train()
    reference = _model(**overrides)  # same seed, switch off
    projections = {n for n in dict(model.named_parameters()) if n.endswith(("attn.c_proj.weight", "mlp.c_proj.weight"))}
    assert len(projections) == 2 * model.config.num_hidden_layers
    for name, param in model.named_parameters():
        if name in projections:
            assert not param.any(), name
            assert reference.get_parameter(name).std() > 0, name  # off: the scaled normal init
        elif name.endswith("weight") and "ln_" not in name and "norm" not in name:
            assert param.std() > 0, name
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(2):  # step 1 moves the projections; step 2 the layers behind them (their grads were 0)
        optimizer.zero_grad()
        model(_ids(step), labels=_ids(step)).loss.backward()
        optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_zero_init_is_an_init_choice_only_loaded_weights_stay(tmp_path):
    model = _model(zero_init_output_projections=True)
    _spread_weights(model)
    model.save_pretrained(tmp_path)
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.zero_init_output_projections is True
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


# -- final-logit soft-capping ---------------------------------------------------------------------------


def _capped(logits: torch.Tensor) -> torch.Tensor:
    return CAP * torch.tanh(logits / CAP)


# The same ops on the same logits: only a different elementwise kernel could differ, by a few ulps of CAP.
CAP_TOL = 8 * EPS32 * CAP


@pytest.mark.parametrize("overrides", [{}, LLAMA], ids=["gpt2", "llama"])
def test_softcap_logits_and_loss_equal_the_reference_on_the_uncapped_model(overrides):
    plain = _model(**overrides)
    _spread_weights(plain)  # logits well beyond the cap, so the tanh really bends them
    capped = _with_weights_of(plain, final_logit_softcapping=CAP)
    ids = _ids()
    with torch.no_grad():
        raw, out = plain(ids).logits, capped(ids, labels=ids)
    assert raw.abs().max() > 2 * CAP and out.logits.abs().max() < CAP
    expected = _capped(raw)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=CAP_TOL)
    reference_loss = F.cross_entropy(expected[:, :-1].reshape(-1, expected.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, reference_loss, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-loss", "plain-loss"])
def test_softcap_training_loss_and_gradients_equal_the_reference(fused):
    plain = _model().train()
    _spread_weights(plain)
    capped = _with_weights_of(plain, final_logit_softcapping=CAP, fused_lm_loss=fused)
    ids = _ids()
    out = capped(ids, labels=ids)
    assert (out.logits is None) == fused  # the fused head + loss caps too, so it stays on

    def reference_loss(model, batch):
        logits = _capped(model(batch).logits)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    plain.config.fused_lm_loss = False  # the reference: autograd through the cap written out
    plain.zero_grad()
    want_loss = reference_loss(plain, ids)
    want_loss.backward()
    want = {n: p.grad.clone() for n, p in plain.named_parameters()}
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-6, atol=0)
    got = grads(capped, ids)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("chunk_elements", [3000 * 7, 1 << 25])  # seven rows per chunk, or one chunk
@pytest.mark.parametrize("cpu_fast_paths", [True, False])
def test_fused_loss_with_softcap_matches_capped_cross_entropy(monkeypatch, chunk_elements, cpu_fast_paths):
    """The fused head + loss (loss.py) with a cap, in chunks, with ignored labels and num_items_in_batch, against
    autograd through ``c * tanh(h @ W.T / c)`` and F.cross_entropy."""
    from scratch_gpt import loss as loss_module

    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", chunk_elements)
    hidden, weight, labels = fused_loss_inputs()
    cap, items = 2.0, 40  # |h @ W.T| reaches ~5: the cap bends the largest logits
    fused = loss_module.fused_causal_lm_loss(hidden, weight, labels, num_items_in_batch=items,
                                             cpu_fast_paths=cpu_fast_paths, softcap=cap)
    fused_grads = torch.autograd.grad(fused, [hidden, weight])
    logits = cap * torch.tanh(hidden @ weight.t() / cap)
    assert (hidden @ weight.t()).abs().max() > 2 * cap
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 3000), labels[:, 1:].reshape(-1), reduction="sum") / items
    plain_grads = torch.autograd.grad(plain, [hidden, weight])
    # as tests/scratch_gpt/test_modeling.py's fused-loss test: each logit's 16-term sum, then the log-sum-exp over
    # 3000 terms; tanh (slope <= 1) does not enlarge an input error
    logit_tol = 2 * matmul_tol(hidden, weight.t()) + fp32_tol(3000)
    torch.testing.assert_close(fused, plain, atol=logit_tol, rtol=0)
    assert_grads_close(dict(enumerate(fused_grads)), dict(enumerate(plain_grads)), reduction_len=3000)


def test_softcap_generation_uses_the_capped_logits():
    plain = _model()
    _spread_weights(plain)
    capped = _with_weights_of(plain, final_logit_softcapping=CAP).eval()
    prompt = [5, 17, 42, 9]
    out = capped.generate(
        torch.tensor([prompt]), max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
        pad_token_id=1,
    )
    tokens = out.sequences[0, len(prompt):].tolist()
    assert tokens == manual_greedy(capped, prompt, 6)  # cached decoding equals uncached
    for step, step_logits in enumerate(out.logits):  # each step's logits are the cap of the uncapped model's
        with torch.no_grad():
            raw = plain(out.sequences[:, : len(prompt) + step]).logits[:, -1]
        torch.testing.assert_close(step_logits, _capped(raw), rtol=0, atol=1e-5 * CAP)


# -- all three together: save/load and the plain formats ---------------------------------------------------


def test_all_switches_round_trip_through_save_and_load(tmp_path):
    model = _model(hidden_act="relu2", zero_init_output_projections=True, final_logit_softcapping=CAP)
    _spread_weights(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["hidden_act"], saved["zero_init_output_projections"], saved["final_logit_softcapping"]) == (
        "relu2", True, CAP)
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_switches_trace_into_one_fullgraph_compiled_static_cache_graph():
    model = _model(hidden_act="relu2", zero_init_output_projections=True, final_logit_softcapping=CAP)
    _spread_weights(model)
    graphs, compiled, eager = compiled_static_and_eager_generation(model)
    assert graphs == 1 and torch.equal(compiled, eager)


def test_plain_formats_refuse_softcapping_and_the_ungated_relu2_naming_the_switch():
    capped = make_tiny_config(final_logit_softcapping=30.0)
    with pytest.raises(ValueError, match=r"GPT-2 cannot express final_logit_softcapping=30.0: GPT2LMHeadModel has no"):
        gpt2_config_from_scratch(capped)
    for target in ("llama", "qwen3"):
        family = _model(final_logit_softcapping=30.0, **LLAMA, qk_norm=target == "qwen3")
        with pytest.raises(ValueError, match=rf"final_logit_softcapping=30.0 \({target} has no logit soft-capping\)"):
            scratch_to_family(family, target)
    relu2 = _model(hidden_act="relu2")  # GPT-2-shaped: llama's MLP is gated
    with pytest.raises(ValueError, match=r"the ReLU² MLP \(hidden_act='relu2' without a gate; llama's MLP is gated"):
        scratch_to_family(relu2, "llama")
    # zero-initialised projections are an init choice: every format takes them
    assert gpt2_config_from_scratch(make_tiny_config(zero_init_output_projections=True)).n_embd == 32
    scratch_to_family(_model(zero_init_output_projections=True, **LLAMA), "llama")
