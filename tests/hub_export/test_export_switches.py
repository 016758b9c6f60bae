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


@pytest.fixture(scope="module")
def switch_export(tmp_path_factory):
    """A model with every switch on, exported as remote code: (source folder, export result)."""
    tmp = tmp_path_factory.mktemp("switches")
    src = _trained_looking_model_dir(tmp / "model", **SWITCHES)
    return src, export_model(src, tmp / "export")


def test_remote_code_export_of_every_switch_reloads_without_scratch_gpt(switch_export):
    src, result = switch_export
    config = json.loads((result.out_dir / "config.json").read_text())
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


# Run by an interpreter started with -I -S (no site processing) and only the site-packages folder on its path: torch
# and transformers import, scratch_gpt does not exist at all (its editable install is a .pth hook, never read).
_PLAIN_CHILD = """
import sys
sys.path.append(sys.argv[1])
import torch
from transformers import AutoModelForCausalLM
try:
    import scratch_gpt
except ImportError:
    pass
else:
    raise SystemExit("scratch_gpt is importable here: " + scratch_gpt.__file__)
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
ids = torch.tensor([[5, 17, 42, 9, 100, 7], [3, 3, 250, 11, 60, 2]])
with torch.no_grad():
    logits = model(ids).logits
tokens = model.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=1)
act = type(model.transformer.h[0].mlp.act).__name__
torch.save({"logits": logits, "tokens": tokens, "module": type(model).__module__, "act": act}, sys.argv[3])
"""


def test_every_switch_round_trips_through_remote_code_in_a_plain_interpreter(switch_export, tmp_path):
    import subprocess
    import sys
    import sysconfig

    src, result = switch_export
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PATH": "/usr/bin:/bin"}
    out = tmp_path / "child.pt"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PLAIN_CHILD, sysconfig.get_paths()["purelib"], str(result.out_dir),
         str(out)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    child = torch.load(out)
    assert child["module"].startswith("transformers_modules.") and child["act"] == "ReLUSquaredActivation"
    source = ScratchGPTForCausalLM.from_pretrained(src).eval()
    ids = torch.tensor([[5, 17, 42, 9, 100, 7], [3, 3, 250, 11, 60, 2]])
    with torch.no_grad():
        torch.testing.assert_close(child["logits"], source(ids).logits, rtol=0, atol=0)
    assert child["logits"].abs().max() < SWITCHES["final_logit_softcapping"]  # capped in that process too
    expected = source.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=1)
    assert torch.equal(child["tokens"], expected)


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
