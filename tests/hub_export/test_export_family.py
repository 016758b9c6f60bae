"""`scratch-gpt export --format llama|qwen3`: plain transformers repos (no remote code) verified in a fresh
process that cannot import scratch_gpt, a bit-identical round trip back, and refusals naming the reason."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hub_export.export import export_model
from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.convert_family import family_to_scratch
from tests.hub_export.conftest import make_model_dir

FAMILY = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu",
              num_key_value_heads=2, qkv_bias=False, attention_bias=False, mlp_bias=False)
CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@pytest.mark.parametrize("target, overrides", [("llama", {}), ("qwen3", {"qk_norm": True, "head_dim": 16})])
def test_plain_family_export_verifies_and_round_trips(tmp_path, target, overrides):
    src = make_model_dir(tmp_path / "model", seed=1, **FAMILY, **overrides)
    out = tmp_path / target
    result = export_model(src, out, export_format=target)
    assert result.export_format == target and not [f for f in result.files if f.endswith(".py")]
    assert result.verification["model_class"].endswith(f".{CLASSES[target]}")
    assert 0 < result.verification["tolerance"] < 1e-3  # from the arithmetic (verify.logits_tolerance)
    assert result.verification["max_abs_diff"] <= result.verification["tolerance"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == target and "auto_map" not in config
    assert config["architectures"] == [CLASSES[target]]
    card = (out / "README.md").read_text()
    assert f"`{CLASSES[target]}`" in card and "trust_remote_code" not in card

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    source = ScratchGPTForCausalLM.from_pretrained(src).eval()
    back = family_to_scratch(plain)
    for key, tensor in source.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_plain_family_export_refuses_a_gpt2_shaped_model_with_the_reasons(tmp_path):
    src = make_model_dir(tmp_path / "gpt2-shaped")
    with pytest.raises(ValueError, match="--format llama cannot express") as error:
        export_model(src, tmp_path / "out", export_format="llama")
    assert "position_embedding_type='learned'" in str(error.value) and "mlp_type='gelu'" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_cli_export_format_qwen3(tmp_path, capsys):
    import scratch_gpt_cli

    src = make_model_dir(tmp_path / "model", **FAMILY, qk_norm=True)
    assert scratch_gpt_cli.main(["export", str(src), str(tmp_path / "q3"), "--format", "qwen3"]) == 0
    assert json.loads((tmp_path / "q3" / "config.json").read_text())["model_type"] == "qwen3"
    capsys.readouterr()
    assert scratch_gpt_cli.main(["export", str(src), str(tmp_path / "ll"), "--format", "llama"]) != 0
    err = capsys.readouterr().err.strip()
    assert "qk_norm=True" in err and len(err.splitlines()) == 1 and not (tmp_path / "ll").exists()
