"""Llama / Mistral / Qwen2 / Qwen3 checkpoints in and out: exact logits against transformers' own classes,
identical greedy generations, left padding, strictness, and bit-identical round trips."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.convert_family import (
    convert_checkpoint,
    export_family,
    family_state_dict_to_scratch,
    family_to_scratch,
    scratch_config_from_family,
    scratch_to_family,
)
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close, left_padded

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=1)
_SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
_WIDER = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6)
_LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

CASES = {
    "llama-mha-tied": (LlamaConfig, LlamaForCausalLM, dict(_SMALL, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-gqa-untied": (LlamaConfig, LlamaForCausalLM, dict(_WIDER, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mqa-llama3-rope": (
        LlamaConfig, LlamaForCausalLM, dict(_SMALL, num_key_value_heads=1, rope_parameters=_LLAMA3)
    ),
    "llama-biases-linear-rope": (
        LlamaConfig, LlamaForCausalLM,
        dict(_WIDER, num_key_value_heads=3, attention_bias=True, mlp_bias=True,
             rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    ),
    "mistral-small": (MistralConfig, MistralForCausalLM, dict(_SMALL, num_key_value_heads=2, sliding_window=None)),
    "mistral-wider-head-dim": (
        MistralConfig, MistralForCausalLM, dict(_WIDER, num_key_value_heads=3, head_dim=16, sliding_window=None)
    ),
    "qwen2-small": (Qwen2Config, Qwen2ForCausalLM, dict(_SMALL, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2-wider-yarn": (
        Qwen2Config, Qwen2ForCausalLM,
        dict(_WIDER, num_key_value_heads=2, tie_word_embeddings=False,
             rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                              "original_max_position_embeddings": 16}),
    ),
    "qwen3-small": (Qwen3Config, Qwen3ForCausalLM, dict(_SMALL, num_key_value_heads=2, head_dim=8)),
    "qwen3-wide-heads-bias": (
        Qwen3Config, Qwen3ForCausalLM,
        dict(_WIDER, num_key_value_heads=3, head_dim=16, attention_bias=True, tie_word_embeddings=False),
    ),
}


def _reference(name: str):
    config_class, model_class, kwargs = CASES[name]
    torch.manual_seed(0)
    model = model_class(config_class(**_COMMON, **kwargs)).eval()
    with torch.no_grad():  # make every parameter count (random norms and biases), not just the matrices
        for tensor in model.parameters():
            if tensor.dim() == 1:
                tensor.normal_(1.0 if tensor.shape[0] in (32, 48, 8, 16) else 0.0, 0.1)
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_matches_transformers_logits_and_greedy_generation(name):
    reference = _reference(name)
    ours = family_to_scratch(reference)
    assert isinstance(ours, ScratchGPTForCausalLM) and ours.config.position_embedding_type == "rope"
    ids = torch.randint(2, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_logits_close(ours(ids).logits, reference(ids).logits, ours.config)
    kwargs = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=1)
    assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))


@pytest.mark.parametrize("name", ["llama-gqa-untied", "qwen3-wide-heads-bias"])
def test_left_padded_batch_matches_rows_alone(name):
    ours = family_to_scratch(_reference(name))
    rows = [[5, 17, 90, 23, 42, 8, 7], [61, 3], [20, 21, 22, 23]]
    ids, mask = left_padded(rows)
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=1)
    batch = ours.generate(ids, attention_mask=mask, **kwargs)
    with torch.no_grad():
        padded_logits = ours(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = ours.generate(torch.tensor([row]), **kwargs)
        assert batch[i, ids.shape[1] :].tolist() == alone[0, len(row) :].tolist()
        with torch.no_grad():
            alone_logits = ours(torch.tensor([row])).logits[0]
        assert_logits_close(padded_logits[i, -len(row) :], alone_logits, ours.config, ids.shape[1])


def test_switches_are_read_from_each_family_config():
    qwen2 = scratch_config_from_family(_reference("qwen2-small").config)
    assert (qwen2.qkv_bias, qwen2.attention_bias, qwen2.mlp_bias, qwen2.qk_norm) == (True, False, False, False)
    qwen3 = scratch_config_from_family(_reference("qwen3-wide-heads-bias").config)
    assert (qwen3.qk_norm, qwen3.head_dim, qwen3.num_key_value_heads, qwen3.tie_word_embeddings) == (True, 16, 3, False)
    llama = scratch_config_from_family(_reference("llama-mqa-llama3-rope").config)
    assert llama.num_key_value_heads == 1 and llama.rope_parameters["rope_type"] == "llama3"


@pytest.mark.parametrize(
    "config, feature",
    [
        (MistralConfig(**_COMMON, **_SMALL, sliding_window=16), "sliding_window=16"),
        (Qwen2Config(**_COMMON, **_SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1),
         "sliding_window=8"),
        (LlamaConfig(**_COMMON, **_SMALL, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
         "rope_type='dynamic'"),
        (LlamaConfig(**_COMMON, **_SMALL, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                           "partial_rotary_factor": 0.5}),
         "partial_rotary_factor=0.5"),
    ],
)
def test_unsupported_config_features_are_named(config, feature):
    with pytest.raises(ValueError, match="does not implement") as error:
        scratch_config_from_family(config)
    assert feature in str(error.value)


def test_missing_unexpected_and_misshaped_keys_are_named():
    reference = _reference("llama-gqa-untied")
    config = scratch_config_from_family(reference.config)
    expected = ScratchGPTForCausalLM(config).state_dict()
    state = dict(reference.state_dict())
    good = family_state_dict_to_scratch(state, expected, config.num_hidden_layers)
    assert set(good) == set(expected)

    missing = {k: v for k, v in state.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['model\.layers\.1\.self_attn\.k_proj\.weight'\]"):
        family_state_dict_to_scratch(missing, expected, config.num_hidden_layers)
    extra = {**state, "model.layers.0.mlp.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected keys \['model\.layers\.0\.mlp\.extra\.weight'\]"):
        family_state_dict_to_scratch(extra, expected, config.num_hidden_layers)
    shaped = {**state, "model.layers.0.mlp.down_proj.weight": torch.zeros(48, 79)}
    with pytest.raises(ValueError, match=r"wrong shapes \['transformer\.h\.0\.mlp\.c_proj\.weight"):
        family_state_dict_to_scratch(shaped, expected, config.num_hidden_layers)


def _save_source(tmp_path, name, tokenizer=None):
    src = tmp_path / name
    reference = _reference(name)
    reference.save_pretrained(src)
    if tokenizer is not None:
        tokenizer.save_pretrained(src)
    return src, reference


def test_convert_command_writes_a_folder_with_tokenizer_chat_template_and_same_logits(tmp_path, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    src, reference = _save_source(tmp_path, "qwen3-small", tokenizer)
    out = convert_checkpoint(src, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "scratch_gpt" and config["qk_norm"] is True
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(loaded, ScratchGPTForCausalLM)
    ids = torch.randint(2, VOCAB, (1, 12))
    with torch.no_grad():
        assert_logits_close(loaded(ids).logits, reference(ids).logits, loaded.config)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template


def test_convert_refuses_a_checkpoint_with_a_missing_weight_and_writes_nothing(tmp_path):
    src, _ = _save_source(tmp_path, "mistral-small")
    weights = load_file(src / "model.safetensors")
    del weights["model.layers.0.self_attn.v_proj.weight"]
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.0.self_attn.v_proj.weight"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_sliding_window_before_loading_weights(tmp_path):
    src = tmp_path / "src"
    MistralForCausalLM(MistralConfig(**_COMMON, **_SMALL, sliding_window=8)).save_pretrained(src)
    with pytest.raises(ValueError, match="sliding_window=8"):
        convert_checkpoint(src, tmp_path / "out")


def _family_scratch_config(**overrides):
    kwargs = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu",
                  num_key_value_heads=2, qkv_bias=False, attention_bias=False, mlp_bias=False,
                  tie_word_embeddings=False)
    kwargs.update(overrides)
    return make_tiny_config(**kwargs)


@pytest.mark.parametrize(
    "target, overrides",
    [("llama", {}), ("llama", dict(tie_word_embeddings=True, num_key_value_heads=1)),
     ("qwen3", dict(qk_norm=True, head_dim=16)), ("qwen3", dict(qk_norm=True, qkv_bias=True, attention_bias=True))],
)
def test_export_round_trip_is_bit_identical_and_loads_without_remote_code(tmp_path, tiny_tokenizer, target, overrides):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(_family_scratch_config(**overrides)).eval()
    out = export_family(model, tmp_path / target, target, tokenizer=tiny_tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == target and "auto_map" not in config
    assert not list(out.glob("*.py"))
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(plain).__name__ == {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[target]
    ids = torch.randint(2, 320, (2, 16))
    with torch.no_grad():
        assert_logits_close(plain(ids).logits, model(ids).logits, model.config)
    back = family_to_scratch(plain)
    original = model.state_dict()
    assert set(back.state_dict()) == set(original)
    for key, tensor in back.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    ignored = ("transformers_version", "architectures", "dtype", "_name_or_path")
    for key, value in model.config.to_dict().items():
        assert key in ignored or back.config.to_dict()[key] == value, key


@pytest.mark.parametrize(
    "target, config, reasons",
    [
        ("llama", make_tiny_config(), ["position_embedding_type='learned'", "norm_type='layernorm'",
                                       "mlp_type='gelu'"]),
        ("llama", _family_scratch_config(qk_norm=True), ["qk_norm=True"]),
        ("qwen3", _family_scratch_config(), ["qk_norm=False"]),
        ("qwen3", _family_scratch_config(qk_norm=True, mlp_bias=True), ["mlp_bias=True"]),
        ("llama", _family_scratch_config(qkv_bias=True), ["qkv_bias=True with attention_bias=False"]),
    ],
)
def test_export_refuses_what_the_target_cannot_express(tmp_path, target, config, reasons):
    model = ScratchGPTForCausalLM(config)
    with pytest.raises(ValueError, match=f"--format {target} cannot express") as error:
        export_family(model, tmp_path / "out", target)
    for reason in reasons:
        assert reason in str(error.value)
    assert not (tmp_path / "out").exists()


def test_scratch_to_family_then_back_keeps_logits_for_every_case():
    for name in ("llama-mqa-llama3-rope", "qwen3-small"):
        reference = _reference(name)
        ours = family_to_scratch(reference)
        again = scratch_to_family(ours, "qwen3" if name.startswith("qwen3") else "llama")
        for key, tensor in reference.state_dict().items():
            assert torch.equal(again.state_dict()[key], tensor), key


def test_cli_convert_dispatches_by_model_type_and_fails_in_one_line(tmp_path, capsys):
    import scratch_gpt_cli

    src, reference = _save_source(tmp_path, "llama-gqa-untied")
    assert scratch_gpt_cli.main(["convert", str(src), str(tmp_path / "out")]) == 0
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(2, VOCAB, (1, 10))
    with torch.no_grad():
        assert_logits_close(loaded(ids).logits, reference(ids).logits, loaded.config)

    bad = tmp_path / "windowed"
    MistralForCausalLM(MistralConfig(**_COMMON, **_SMALL, sliding_window=8)).save_pretrained(bad)
    capsys.readouterr()
    assert scratch_gpt_cli.main(["convert", str(bad), str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip()
    assert "sliding_window=8" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert scratch_gpt_cli.main(["convert", str(tmp_path / "out"), str(tmp_path / "out3")]) == 1
    assert "already a scratch-gpt model" in capsys.readouterr().err


def test_cli_convert_a_hub_id_from_the_offline_hub_cache(tmp_path, tiny_tokenizer):
    """SRC as a Hub id: resolved through the Hub cache layout with HF_HUB_OFFLINE=1 (no network)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--owner--tiny-qwen3"
    reference = _reference("qwen3-small")
    reference.save_pretrained(repo / "snapshots" / rev)
    tiny_tokenizer.save_pretrained(repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(root))
    code = "import sys, scratch_gpt_cli; sys.exit(scratch_gpt_cli.main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "convert", "owner/tiny-qwen3", str(tmp_path / "out")],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(2, VOCAB, (1, 12))
    with torch.no_grad():
        assert_logits_close(loaded(ids).logits, reference(ids).logits, loaded.config)


def test_conversion_owns_its_weights_keeps_the_tie_and_computes_rope_buffers():
    reference = _reference("llama-mha-tied")
    ours = family_to_scratch(reference)  # built on the meta device, then given the mapped tensors
    source_memory = {t.data_ptr() for t in reference.state_dict().values()}
    assert not any(t.data_ptr() in source_memory for t in ours.state_dict().values())
    assert ours.lm_head.weight.data_ptr() == ours.transformer.wte.weight.data_ptr()
    rotary = ours.transformer.rotary_emb
    assert torch.equal(rotary.inv_freq, reference.model.rotary_emb.inv_freq) and not rotary.inv_freq.is_meta
    back = scratch_to_family(ours, "llama")
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
