"""Auto classes, save/load, padding, loss contract, gradient checkpointing, resizing, compile, classification."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import scratch_gpt
from scratch_gpt import (
    ScratchGPTConfig,
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    ScratchGPTModel,
)
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import (
    assert_checkpointing_keeps_gradients,
    assert_grads_close,
    assert_logits_close,
    fp32_tol,
    fused_loss_inputs,
    matmul_tol,
)


@pytest.mark.parametrize(
    "auto_cls, cls",
    [
        (AutoModel, ScratchGPTModel),
        (AutoModelForCausalLM, ScratchGPTForCausalLM),
        (AutoModelForSequenceClassification, ScratchGPTForSequenceClassification),
    ],
)
def test_auto_classes_resolve_and_round_trip_bit_identically(tmp_path, auto_cls, cls):
    config = make_tiny_config()
    assert type(AutoConfig.for_model("scratch_gpt")) is ScratchGPTConfig
    torch.manual_seed(0)
    model = auto_cls.from_config(config).eval()
    assert type(model) is cls
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = auto_cls.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls and type(AutoConfig.from_pretrained(tmp_path)) is ScratchGPTConfig
    ids = torch.randint(2, 320, (2, 9))
    out_a, out_b = model(ids), loaded(ids)
    key = "last_hidden_state" if cls is ScratchGPTModel else "logits"
    assert torch.equal(out_a[key], out_b[key])
    has_generation_config = (tmp_path / "generation_config.json").exists()
    assert has_generation_config == (cls is ScratchGPTForCausalLM)
    if has_generation_config:
        assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 0


def test_loaded_weights_are_aligned_so_sharding_does_not_change_logits(tmp_path):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config()).eval()
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").eval()
    sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    for loaded in (one, sharded):
        assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())  # safetensors maps them 8-aligned
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for rows in (1, 3, 40):  # the few-rows path and the plain one
        ids = torch.randint(2, 320, (rows, 6)) if rows < 40 else torch.randint(2, 320, (2, 40))
        with torch.no_grad():
            assert torch.equal(one(ids).logits, sharded(ids).logits)
            assert torch.equal(one(ids).logits, model(ids).logits)


def test_weights_are_tied_and_stay_tied_after_loading(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    untied = ScratchGPTForCausalLM(make_tiny_config(tie_word_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(hidden_size=256, num_hidden_layers=8, vocab_size=1000))
    c_fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    c_proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    assert abs(c_fc.std().item() - 0.02) < 0.001
    assert abs(c_proj.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)
    assert not any("mask" in k or k.endswith(".attn.bias") for k in model.state_dict())  # no causal-mask buffer


def test_left_padded_batch_matches_each_row_alone(tiny_causal_lm):
    torch.manual_seed(3)
    rows = [torch.randint(2, 320, (n,)) for n in (11, 4, 8)]
    width = max(len(r) for r in rows)
    ids = torch.full((3, width), 1)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    batched = tiny_causal_lm(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = tiny_causal_lm(row[None]).logits[0]
        assert_logits_close(batched[i, width - len(row) :], alone, tiny_causal_lm.config, width)


def test_right_padded_batch_matches_rows_alone(tiny_causal_lm):
    rows = [torch.randint(2, 320, (n,)) for n in (6, 10)]
    ids = torch.full((2, 10), 1)
    mask = torch.zeros(2, 10, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    batched = tiny_causal_lm(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        assert_logits_close(batched[i, : len(row)], tiny_causal_lm(row[None]).logits[0], tiny_causal_lm.config, 10)


def test_loss_equals_hand_computed_shifted_cross_entropy(tiny_causal_lm):
    ids = torch.randint(2, 320, (2, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    out = tiny_causal_lm(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 320)
    target = labels[:, 1:].reshape(-1)
    keep = target != -100
    expected = F.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(out.loss, expected)
    # -100 positions really are ignored: changing their (masked) label values changes nothing
    labels_changed = labels.clone()
    labels_changed[0, :5] = -100
    torch.testing.assert_close(tiny_causal_lm(ids, labels=labels_changed).loss, out.loss)


def test_loss_honours_num_items_in_batch(tiny_causal_lm):
    ids = torch.randint(2, 320, (2, 12))
    summed = tiny_causal_lm(ids, labels=ids, num_items_in_batch=torch.tensor(1000)).loss
    mean = tiny_causal_lm(ids, labels=ids).loss
    torch.testing.assert_close(summed, mean * 22 / 1000)


def test_logits_to_keep_and_inputs_embeds(tiny_causal_lm):
    ids = torch.randint(2, 320, (2, 12))
    full = tiny_causal_lm(ids).logits
    assert_logits_close(tiny_causal_lm(ids, logits_to_keep=1).logits, full[:, -1:], tiny_causal_lm.config, 12)
    embeds = tiny_causal_lm.transformer.wte(ids)
    torch.testing.assert_close(tiny_causal_lm(inputs_embeds=embeds).logits, full)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_causal_lm(ids, inputs_embeds=embeds)
    as_tuple = tiny_causal_lm(ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], full)


def test_legacy_past_key_values_alias(tiny_causal_lm):
    ids = torch.randint(2, 320, (1, 8))
    prefix = tiny_causal_lm(ids[:, :5], use_cache=True)
    via_alias = tiny_causal_lm(ids[:, 5:], past_key_values=prefix.cache, use_cache=True).logits
    assert_logits_close(via_alias, tiny_causal_lm(ids).logits[:, 5:], tiny_causal_lm.config, 8)
    with pytest.raises(ValueError, match="cache="):
        tiny_causal_lm(ids, cache=prefix.cache, past_key_values=prefix.cache)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config()).train()
    assert_checkpointing_keeps_gradients(model, torch.randint(2, 320, (2, 16)))
    assert model.transformer.h[0].gradient_checkpointing


def test_resize_token_embeddings_keeps_the_tie(tiny_causal_lm):
    old = tiny_causal_lm.transformer.wte.weight.detach().clone()
    tiny_causal_lm.resize_token_embeddings(333)
    assert tiny_causal_lm.config.vocab_size == 333
    assert tiny_causal_lm.lm_head.weight.shape == (333, 32)
    assert tiny_causal_lm.lm_head.weight.data_ptr() == tiny_causal_lm.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(tiny_causal_lm.transformer.wte.weight[:320], old)
    assert tiny_causal_lm(torch.tensor([[332, 5]])).logits.shape == (1, 2, 333)


def test_torch_compile_matches_eager_mode(tiny_causal_lm):
    ids = torch.randint(2, 320, (2, 16))
    compiled = torch.compile(tiny_causal_lm, backend="aot_eager")
    assert_logits_close(compiled(ids).logits, tiny_causal_lm(ids).logits, tiny_causal_lm.config)


def test_rmsnorm_variant_trains():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(norm_type="rmsnorm", qkv_bias=False))
    assert isinstance(model.transformer.ln_f, torch.nn.RMSNorm)
    assert model.transformer.h[0].attn.c_attn.bias is None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(2, 320, (2, 16))
    first = model(ids, labels=ids).loss.item()
    for _ in range(20):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    assert model(ids, labels=ids).loss.item() < first / 2


# --- sequence classification -------------------------------------------------------------------------------------


def _classifier(num_labels=3, **kwargs):
    torch.manual_seed(0)
    return ScratchGPTForSequenceClassification(make_tiny_config(num_labels=num_labels, **kwargs)).eval()


@pytest.mark.parametrize("side", ["left", "right"])
def test_classifier_pools_the_last_real_token(side):
    model = _classifier()
    rows = [torch.randint(2, 320, (n,)) for n in (9, 5)]
    ids = torch.full((2, 9), 1)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(9 - len(row), 9) if side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    # From the mask; with right padding also from pad_token_id alone (left padding needs the mask anyway).
    for kwargs in (dict(attention_mask=mask),) + ((dict(),) if side == "right" else ()):
        batched = model(ids, **kwargs).logits
        for i, row in enumerate(rows):
            assert_logits_close(batched[i], model(row[None]).logits[0], model.config, 9)


def test_classifier_single_label_multi_label_and_regression_losses():
    ids = torch.randint(2, 320, (4, 7))
    single = _classifier(3)
    labels = torch.tensor([0, 2, 1, 2])
    out = single(ids, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert single.config.problem_type == "single_label_classification"

    multi = _classifier(3)
    multi_labels = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    out = multi(ids, labels=multi_labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, multi_labels))
    assert multi.config.problem_type == "multi_label_classification"

    regression = _classifier(1)
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(ids, labels=targets)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))
    assert regression.config.problem_type == "regression"


def test_classifier_needs_a_way_to_find_padding():
    model = _classifier(pad_token_id=None)
    with pytest.raises(ValueError, match="attention_mask or config.pad_token_id"):
        model(torch.randint(2, 320, (2, 5)))


def test_package_registers_version():
    assert scratch_gpt.__version__


# --- the fused LM-head loss used in training -----------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [None, 500])
def test_fused_training_loss_equals_plain_loss_and_gradients(num_items):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(vocab_size=3000)).train()
    ids = torch.randint(0, 3000, (3, 40))
    labels = ids.clone()
    labels[1, :7] = -100
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    results = {}
    for fused in (False, True):
        model.config.fused_lm_loss = fused
        model.zero_grad()
        out = model(ids, labels=labels, **kwargs)
        out.loss.backward()
        results[fused] = (out, {n: p.grad.clone() for n, p in model.named_parameters()})
    (plain, plain_grads), (fused, fused_grads) = results[False], results[True]
    assert plain.logits is not None and fused.logits is None  # the point: no full logits in training
    # a log-sum-exp over V = 3000 positive terms is off by ~eps * sqrt(V) in absolute terms, whatever its size
    torch.testing.assert_close(fused.loss, plain.loss, atol=fp32_tol(3000), rtol=0)
    assert_grads_close(fused_grads, plain_grads, reduction_len=3000, depth=model.config.num_hidden_layers + 1)


def test_fused_loss_is_not_used_where_logits_are_wanted():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config())
    ids = torch.randint(2, 320, (2, 10))
    model.eval()
    assert model(ids, labels=ids).logits is not None  # evaluation
    model.train()
    with torch.no_grad():
        assert model(ids, labels=ids).logits is not None  # no backward coming
    model.loss_function = lambda logits, labels, vocab_size, **kw: logits.sum() * 0  # a custom loss is honoured
    out = model(ids, labels=ids)
    assert out.logits is not None and out.loss.item() == 0


@pytest.mark.parametrize("chunk_elements", [3000 * 7, 1 << 25])  # seven rows per chunk, or one chunk
@pytest.mark.parametrize("loss_scale", [1.0, 0.25])  # the backward skips its multiply only at 1
def test_fused_loss_chunks_and_scaled_backward_match_plain_cross_entropy(monkeypatch, chunk_elements, loss_scale):
    from scratch_gpt import loss as loss_module

    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", chunk_elements)
    hidden, weight, labels = fused_loss_inputs()
    fused = loss_module.fused_causal_lm_loss(hidden, weight, labels) * loss_scale
    fused_grads = torch.autograd.grad(fused, [hidden, weight])
    logits = hidden @ weight.t()
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 3000), labels[:, 1:].reshape(-1)) * loss_scale
    plain_grads = torch.autograd.grad(plain, [hidden, weight])
    # the loss is a mean of lse(z) - z_label: each logit z (16-term sums below max |hidden| @ |weight|^T, ~5)
    # enters twice at most, and the log-sum-exp over 3000 positive terms adds ~eps * sqrt(3000)
    logit_tol = 2 * matmul_tol(hidden, weight.t()) + fp32_tol(3000)
    torch.testing.assert_close(fused, plain, atol=logit_tol * loss_scale, rtol=0)
    assert_grads_close(dict(enumerate(fused_grads)), dict(enumerate(plain_grads)), reduction_len=3000)


def test_fused_loss_under_bf16_autocast_matches_plain_within_bf16_precision():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config()).train()
    ids = torch.randint(2, 320, (2, 24))
    results = {}
    for fused in (False, True):
        model.config.fused_lm_loss = fused
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        out.loss.backward()
        results[fused] = (out.loss.detach(), model.lm_head.weight.grad.clone())
    torch.testing.assert_close(results[True][0], results[False][0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(results[True][1], results[False][1], atol=2e-3, rtol=5e-2)


@pytest.mark.parametrize("native", [True, False])
def test_fused_loss_head_precision_under_cpu_autocast_follows_the_hardware(monkeypatch, native):
    from scratch_gpt import loss as loss_module

    monkeypatch.setattr(loss_module, "_cpu_has_native_matmul", lambda dtype: native)
    torch.manual_seed(0)
    hidden = torch.randn(2, 12, 16, requires_grad=True)
    weight = (0.3 * torch.randn(500, 16)).requires_grad_()
    labels = torch.randint(0, 500, (2, 12))
    exact = loss_module.fused_causal_lm_loss(hidden, weight, labels)
    exact_grad = torch.autograd.grad(exact, weight)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_module.fused_causal_lm_loss(hidden, weight, labels)
    mixed_grad = torch.autograd.grad(mixed, weight)[0]
    if native:  # bf16 GEMMs: close to, but not equal to, the fp32 result
        assert not torch.equal(mixed, exact)
        torch.testing.assert_close(mixed, exact, atol=5e-2, rtol=1e-2)
        torch.testing.assert_close(mixed_grad, exact_grad, atol=5e-3, rtol=5e-2)
    else:  # emulated bf16: the head stays in fp32
        torch.testing.assert_close(mixed, exact, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mixed_grad, exact_grad, atol=1e-7, rtol=1e-5)
