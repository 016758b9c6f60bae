"""`scratch-gpt export` with the issue-24 switches (``hidden_act="relu2"``, ``zero_init_output_projections``,
``final_logit_softcapping``): the remote-code export reloads in a fresh process that cannot import scratch_gpt with
the same logits and generations, GPT-2 carries the ReLU² MLP, and every plain format (gpt2, llama, qwen3, gguf)
refuses, in one line naming the switch and the reason, what its class cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub_export.export import export_model
from hub_export.gguf import check_gguf_config, export_gguf
from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from tests.conftest import make_tiny_config

from .conftest import make_model_dir

FAMILY = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu",
              num_key_value_heads=2, qkv_bias=False, attention_bias=False, mlp_bias=False)
SWITCHES = dict(hidden_act="relu2", zero_init_output_projections=True, final_logit_softcapping=1.0)


def _trained_looking_model_dir(path: Path, **overrides) -> Path:
    """A tiny model folder whose weights are all random (the zero-initialised projections included), as after
    training: an export that dropped a switch or re-initialised a weight would change the logits."""
    make_model_dir(path, **overrides)
    model = ScratchGPTForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(path)
    return path


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if any(tag in p.name for tag in (".tmp-", ".old-", ".staging-"))]


def test_remote_code_export_of_every_switch_reloads_without_scratch_gpt(tmp_path):
    src = _trained_looking_model_dir(tmp_path / "model", **SWITCHES)
    result = export_model(src, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert {key: config[key] for key in SWITCHES} == SWITCHES
    assert "mlp.py" in result.files and "modeling_scratch_gpt.py" in result.files
    v = result.verification  # loaded by transformers from the shipped code, scratch_gpt blocked in that process
    assert v["model_class"].startswith("transformers_modules.")
    assert v["max_abs_diff"] == 0.0 and v["generation_match"] is True
    # the source really is soft-capped and has non-zero projections, so the comparison covered the switches
    source = ScratchGPTForCausalLM.from_pretrained(src).eval()
    assert source.transformer.h[0].mlp.c_proj.weight.abs().max() > 0
    with torch.no_grad():
        assert source(torch.arange(2, 12)[None]).logits.abs().max() < SWITCHES["final_logit_softcapping"]


def test_gpt2_format_carries_the_relu2_mlp(tmp_path):
    """GPT2MLP applies ACT2FN[activation_function], so a ReLU² model is a plain GPT-2 repo (zero-init too: it is
    an init choice, nothing in the weights' format)."""
    src = _trained_looking_model_dir(tmp_path / "model", hidden_act="relu2", zero_init_output_projections=True)
    result = export_model(src, tmp_path / "gpt2", export_format="gpt2")
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "relu2"
    assert result.verification["model_class"].endswith("GPT2LMHeadModel")
    assert result.verification["max_abs_diff"] <= result.verification["tolerance"] < 1e-3


REFUSALS = [
    ("gpt2", {"final_logit_softcapping": 30.0}, r"GPT-2 cannot express final_logit_softcapping=30.0: GPT2LMHeadModel"),
    ("llama", {**FAMILY, "final_logit_softcapping": 30.0}, r"final_logit_softcapping=30.0 \(llama has no logit soft"),
    ("qwen3", {**FAMILY, "qk_norm": True, "final_logit_softcapping": 30.0},
     r"final_logit_softcapping=30.0 \(qwen3 has no logit soft"),
    ("llama", {"hidden_act": "relu2"}, r"the ReLU² MLP \(hidden_act='relu2' without a gate; llama's MLP is gated"),
    ("qwen3", {"hidden_act": "relu2", "qk_norm": True}, r"the ReLU² MLP \(hidden_act='relu2' without a gate"),
    ("gguf", {"final_logit_softcapping": 30.0}, r"final_logit_softcapping=30.0; llama.cpp soft-caps final logits only"),
    ("gguf", {**FAMILY, "final_logit_softcapping": 30.0}, r"final_logit_softcapping=30.0; llama.cpp soft-caps"),
    ("gguf", {"hidden_act": "relu2"}, r"cannot express hidden_act='relu2': its MLP uses tanh-approximated GELU"),
    ("gguf", {**FAMILY, "hidden_act": "relu2"}, r"with hidden_act='relu2'; llama/qwen2/qwen3 need"),
]


@pytest.mark.parametrize("export_format, overrides, message", REFUSALS)
def test_plain_formats_refuse_what_they_cannot_express(tmp_path, export_format, overrides, message):
    src = make_model_dir(tmp_path / "model", **overrides)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        if export_format == "gguf":
            export_gguf(src, out)
        else:
            export_model(src, out, export_format=export_format)
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("export_format", ["gpt2", "gguf"])
def test_cli_refusal_is_one_line_naming_the_switch(tmp_path, capsys, export_format):
    import scratch_gpt_cli

    src = make_model_dir(tmp_path / "model", final_logit_softcapping=30.0)
    capsys.readouterr()  # the save's progress bar
    assert scratch_gpt_cli.main(["export", str(src), str(tmp_path / "out"), "--format", export_format]) != 0
    err = capsys.readouterr().err.strip()
    assert "final_logit_softcapping=30.0" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_gguf_takes_zero_initialised_projections():
    for overrides, arch in (({}, "gpt2"), (FAMILY, "llama")):
        config = make_tiny_config(zero_init_output_projections=True, **overrides)
        assert isinstance(config, ScratchGPTConfig) and check_gguf_config(config)[0] == arch
