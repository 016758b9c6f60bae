"""`--architecture llama|qwen3` and the tiny-llama / tiny-qwen3 presets: the Llama-family switches in the
pretraining loop, everything else unchanged; a tiny Llama-style model pretrains and its validation loss falls."""

from __future__ import annotations

import math

import pytest
import torch

from scratch_gpt import ScratchGPTForCausalLM, run_folder
from tests.training.pretrain.helpers import make_blocks, make_tokenizer, tiny_args
from training.pretrain.arguments import resolve_arguments
from training.pretrain.loop import train
from training.pretrain.setup import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("preset, qk_norm", [("tiny-llama", False), ("tiny-qwen3", True)])
def test_family_presets_build_the_switches(preset, qk_norm):
    args = resolve_arguments(preset=preset)
    config = build_model(args, make_tokenizer()).config
    assert (config.position_embedding_type, config.norm_type, config.mlp_type) == ("rope", "rmsnorm", "swiglu")
    assert config.num_key_value_heads == args.num_attention_heads // 2 and config.qk_norm is qk_norm
    assert not (config.qkv_bias or config.attention_bias or config.mlp_bias)
    assert config.intermediate_size % 64 == 0 and config.intermediate_size < 4 * config.hidden_size
    gpt2 = build_model(resolve_arguments(preset="tiny"), make_tokenizer()).config
    assert (gpt2.position_embedding_type, gpt2.mlp_type, gpt2.num_key_value_heads) == ("learned", "gelu", 4)


def test_bad_key_value_head_count_is_named():
    with pytest.raises(ValueError, match="--num-key-value-heads 3 must be a positive divisor"):
        resolve_arguments(overrides={"architecture": "llama", "num_key_value_heads": 3})


def test_tiny_llama_pretrains_and_validation_loss_falls(tmp_path):
    out = tmp_path / "llama"
    args = tiny_args(out, architecture="llama", num_attention_heads=4, max_steps=24, eval_every=8)
    train(args, datasets=make_blocks(), tokenizer=make_tokenizer())
    evals = [r["eval_loss"] for r in run_folder.load_log_history(out) if "eval_loss" in r]
    assert len(evals) == 3 and evals[2] < evals[1] < evals[0]
    model = ScratchGPTForCausalLM.from_pretrained(out).eval()
    assert model.config.position_embedding_type == "rope" and model.config.num_key_value_heads == 2
    validation = torch.tensor(make_blocks()["validation"]["input_ids"])
    untrained = build_model(args, make_tokenizer()).eval()
    with torch.no_grad():
        before = untrained(validation, labels=validation).loss.item()
        after = model(validation, labels=validation).loss.item()
    assert before > math.log(300) - 0.05 and after < before - 0.1  # from the uniform guess down
