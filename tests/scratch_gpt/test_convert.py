"""GPT-2 interop: transformers' GPT2LMHeadModel converts with equal logits and generations, and back."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.convert import (
    convert_gpt2_checkpoint,
    gpt2_config_from_scratch,
    gpt2_state_dict_to_scratch,
    gpt2_to_scratch,
    scratch_to_gpt2,
)
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close

SHAPES = [
    dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=320),
    dict(n_embd=48, n_layer=3, n_head=6, n_positions=40, vocab_size=257, n_inner=80),  # non-default n_inner
    dict(n_embd=64, n_layer=1, n_head=2, n_positions=128, vocab_size=500, activation_function="gelu"),
]


def _gpt2(shape, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, **shape)).eval()


@pytest.mark.parametrize("shape", SHAPES, ids=["tiny", "n_inner", "gelu"])
def test_gpt2_converts_with_equal_logits_and_generations(shape):
    gpt2 = _gpt2(shape)
    ours = gpt2_to_scratch(gpt2)
    assert isinstance(ours, ScratchGPTForCausalLM)
    assert ours.config.intermediate_size == shape.get("n_inner", 4 * shape["n_embd"])
    ids = torch.randint(0, shape["vocab_size"], (3, 17))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    assert_logits_close(ours(ids).logits, gpt2(ids).logits, ours.config)
    real = mask.bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # GPT-2 needs them spelled out; ours derives them from the mask
    assert_logits_close(
        ours(ids, attention_mask=mask).logits[real],
        gpt2(ids, attention_mask=mask, position_ids=positions).logits[real],
        ours.config,
        ids.shape[1],
    )
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kwargs), gpt2.generate(ids, **kwargs))


@pytest.mark.parametrize("overrides", [dict(), dict(qkv_bias=False), dict(tie_word_embeddings=False)])
def test_scratch_to_gpt2_to_scratch_round_trips_bit_identically(overrides):
    torch.manual_seed(0)
    ours = ScratchGPTForCausalLM(make_tiny_config(**overrides)).eval()
    gpt2 = scratch_to_gpt2(ours)
    assert isinstance(gpt2, GPT2LMHeadModel)
    ids = torch.randint(2, 320, (2, 11))
    assert_logits_close(gpt2(ids).logits, ours(ids).logits, ours.config)
    back = gpt2_to_scratch(gpt2)
    if not ours.config.qkv_bias:  # GPT-2 always has a qkv bias; ours came back with the exact zero bias
        assert back.config.qkv_bias and all(not b.attn.c_attn.bias.any() for b in back.transformer.h)
    else:
        assert back.config.to_dict() == ours.config.to_dict()
        assert ours.state_dict().keys() == back.state_dict().keys()
        for key, tensor in ours.state_dict().items():
            assert torch.equal(tensor, back.state_dict()[key]), key
    assert torch.equal(back(ids).logits, ours(ids).logits)


def test_sequence_classifier_converts_both_ways():
    torch.manual_seed(0)
    gpt2 = GPT2ForSequenceClassification(GPT2Config(num_labels=3, pad_token_id=1, **SHAPES[0])).eval()
    ours = gpt2_to_scratch(gpt2)
    assert isinstance(ours, ScratchGPTForSequenceClassification) and ours.config.num_labels == 3
    ids = torch.randint(2, 320, (2, 9))
    assert_logits_close(ours(ids).logits, gpt2(ids).logits, ours.config, ids.shape[1])
    assert_logits_close(scratch_to_gpt2(ours)(ids).logits, gpt2(ids).logits, ours.config, ids.shape[1])


def test_rmsnorm_is_refused_by_gpt2_with_the_reason():
    with pytest.raises(ValueError, match="rmsnorm.*LayerNorm"):
        gpt2_config_from_scratch(make_tiny_config(norm_type="rmsnorm"))


def test_missing_or_unexpected_keys_are_named():
    gpt2 = _gpt2(SHAPES[0])
    state = gpt2_state_dict_to_scratch(gpt2.state_dict())
    ours = ScratchGPTForCausalLM(make_tiny_config())
    from scratch_gpt.convert import _load_strict

    broken = dict(state)
    del broken["transformer.h.1.mlp.c_fc.bias"]
    broken["transformer.h.9.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.bias.*transformer\.h\.9\.extra\.weight"):
        _load_strict(ours, broken)
    bad_shape = dict(state)
    bad_shape["transformer.wpe.weight"] = torch.zeros(3, 32)
    with pytest.raises(ValueError, match="transformer.wpe.weight"):
        _load_strict(ours, bad_shape)


def test_convert_gpt2_checkpoint_folder_with_tokenizer(tmp_path, tiny_tokenizer):
    src = tmp_path / "gpt2"
    gpt2 = _gpt2(SHAPES[0])
    gpt2.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    out = convert_gpt2_checkpoint(src, tmp_path / "converted")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(loaded, ScratchGPTForCausalLM)
    assert AutoTokenizer.from_pretrained(out).encode("def add") == tiny_tokenizer.encode("def add")
    ids = torch.randint(0, 320, (1, 12))
    assert_logits_close(loaded(ids).logits, gpt2(ids).logits, loaded.config)
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_gpt2_checkpoint(src, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted")]  # no temp folder left


def test_convert_gpt2_cli(tmp_path):
    src = tmp_path / "gpt2"
    _gpt2(SHAPES[1]).save_pretrained(src)
    result = subprocess.run(
        [sys.executable, "-m", "scratch_gpt_cli", "convert-gpt2", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert "no tokenizer" in result.stderr.lower()  # warned, not silently skipped
    again = subprocess.run(
        [sys.executable, "-m", "scratch_gpt_cli", "convert-gpt2", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
