"""``config.cpu_fast_paths``: one switch for the private-op CPU paths, and exports that do not depend on them.

The fast paths (``linear.py``'s few-rows and oneDNN kernels, the fused loss's CPU branches, the aligned copy
after ``from_pretrained``) run in every Hub user's process. Switched off, the model uses public torch ops only
and gives the same logits; an exported repo loaded where the private ops do not exist gives the same logits too.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from hub_export.remote_code import write_remote_code
from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, linear
from scratch_gpt.kernel_choice import forced
from tests.conftest import make_tiny_config

# Run in a fresh interpreter: hide our package and the private torch ops, load the export as remote code.
WITHOUT_PRIVATE_OPS = r"""
import json, sys
import torch
sys.modules["scratch_gpt"] = None  # not importable: only the exported remote code can load
class WithoutLinearPointwise:  # torch.ops.mkldnn less the private op our oneDNN path uses
    def __getattr__(self, name, real=torch.ops.mkldnn):
        if name == "_linear_pointwise":
            raise AttributeError(name)
        return getattr(real, name)
torch.ops.mkldnn = WithoutLinearPointwise()
for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
    if hasattr(torch.cpu, name):
        delattr(torch.cpu, name)
from transformers import AutoModelForCausalLM
folder, ids_file, out_file = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
linear_module = sys.modules[type(model.lm_head).__module__]
ids = torch.tensor(json.load(open(ids_file)))
with torch.no_grad():
    logits = model(ids).logits
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=1)
torch.save({"logits": logits, "generated": generated, "onednn": linear_module._ONEDNN,
            "module": type(model).__module__}, out_file)
"""


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(make_tiny_config()).eval()


def test_switch_off_uses_only_f_linear_and_gives_the_same_logits(model, monkeypatch):
    ids = torch.randint(2, 320, (3, 11))
    with torch.no_grad():
        fast_logits = model(ids).logits
        fast_decode = model(ids[:, :1]).logits
    plain = ScratchGPTForCausalLM(make_tiny_config(cpu_fast_paths=False)).eval()
    plain.load_state_dict(model.state_dict())

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU fast path ran although cpu_fast_paths=False")

    monkeypatch.setattr(linear, "linear", refuse)
    monkeypatch.setattr(linear, "onednn_matmul_nt", refuse)
    monkeypatch.setattr("scratch_gpt.loss.matmul_nt", refuse)
    monkeypatch.setattr("scratch_gpt.loss.matmul_weight", refuse)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, fast_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(plain(ids[:, :1]).logits, fast_decode, atol=1e-5, rtol=0)
    plain.train()
    loss = plain(ids, labels=ids).loss  # the fused loss without oneDNN
    model.train()
    monkeypatch.undo()
    torch.testing.assert_close(loss, model(ids, labels=ids).loss, atol=1e-5, rtol=0)


def model_tolerance(model: ScratchGPTForCausalLM, magnitude: float) -> float:
    """How far logits may move when every product sums in another order: eps * sqrt(longest reduction) per
    product, times the products in series (four per block and the head), at the logits' magnitude; eps of
    the model's dtype (a bf16 product rounds its output once more)."""
    config = model.config
    longest = max(config.hidden_size, config.intermediate_size)
    in_series = 4 * config.num_hidden_layers + 1
    eps = torch.finfo(torch.float32).eps * longest**0.5
    if model.dtype != torch.float32:
        eps += torch.finfo(model.dtype).eps
    return eps * in_series * magnitude


@pytest.mark.parametrize("path", ["onednn", "transposed", "row_blocks", "onednn_packed"])
def test_forcing_each_kernel_gives_the_same_logits_and_greedy_tokens(model, path):
    """Whichever kernel the measurement picks, the model computes the same: prefill, decoding (1 and 3 rows)
    and greedy generation under each forced path against plain F.linear."""
    ids = torch.randint(2, 320, (3, 11))
    if path == "onednn_packed":  # a bf16-weights candidate
        model = model.to(torch.bfloat16)

    def run() -> tuple:
        with torch.no_grad():
            outputs = [model(ids).logits, model(ids[:, :1]).logits, model(ids[:1, :1]).logits]
            logits = torch.cat([out.float().reshape(-1) for out in outputs])
            tokens = model.generate(ids[:1], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=1)
        return logits, tokens

    with forced("f_linear"):
        want_logits, want_tokens = run()
    with forced(path):  # kernels that do not apply to a shape fall back to F.linear
        logits, tokens = run()
    tolerance = model_tolerance(model, want_logits.abs().max().item())
    torch.testing.assert_close(logits, want_logits, atol=tolerance, rtol=0)
    assert torch.equal(tokens, want_tokens)


@pytest.mark.parametrize("path", ["mm", "onednn"])
def test_forcing_each_loss_kernel_gives_the_same_loss_and_gradients(model, path):
    ids = torch.randint(2, 320, (2, 16))
    model.train()
    with forced("f_linear"):
        want = model(ids, labels=ids).loss
        want_grad = torch.autograd.grad(want, model.lm_head.weight)[0]
    with forced(path):
        got = model(ids, labels=ids).loss
        got_grad = torch.autograd.grad(got, model.lm_head.weight)[0]
    tolerance = model_tolerance(model, want.item())
    torch.testing.assert_close(got, want, atol=tolerance, rtol=0)
    torch.testing.assert_close(got_grad, want_grad, atol=model_tolerance(model, want_grad.abs().max().item()), rtol=0)


def test_switch_off_skips_the_aligned_copy(tmp_path, model):
    model.config.cpu_fast_paths = False
    model.save_pretrained(tmp_path)
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.cpu_fast_paths is False
    assert all(m.cpu_fast_paths is False for m in loaded.modules() if isinstance(m, linear.Linear))


def test_export_without_private_ops_gives_the_same_logits(tmp_path, model):
    folder = tmp_path / "export"
    model.save_pretrained(folder)
    write_remote_code(folder, ScratchGPTConfig)
    ids = torch.randint(2, 320, (2, 9))
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    with torch.no_grad():
        reference = model(ids).logits
        generated = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = [sys.executable, "-c", WITHOUT_PRIVATE_OPS, str(folder), str(tmp_path / "ids.json")]
    run = subprocess.run([*script, str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules") and result["onednn"] is False
    torch.testing.assert_close(result["logits"], reference, atol=1e-5, rtol=0)
    assert torch.equal(result["generated"], generated)


def test_shipped_code_names_no_machine_specific_figures():
    # Remote code runs on every user's machine: measured speeds belong in docs/backends.md, not in docstrings.
    import re
    from pathlib import Path

    import scratch_gpt

    pattern = re.compile(r"GB/s|GF/s|GFLOP|EPYC|\d+(\.\d+)?x (faster|slower)|tok/s", re.IGNORECASE)
    for path in Path(scratch_gpt.__file__).parent.glob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), f"{path.name}:{number}: {line.strip()}"


def test_decoding_steps_are_compared_end_to_end_and_give_the_same_tokens(model, monkeypatch):
    """The step chooser alternates plain and tuned steps while generating; either way the tokens are the plain
    model's, and a quantized head (whose ``weight`` is a method) does not trip the step key."""
    from scratch_gpt.kernel_choice import STEPS

    monkeypatch.setattr(STEPS, "decisions", {})
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    plain = ScratchGPTForCausalLM(ScratchGPTConfig(**{**model.config.to_dict(), "cpu_fast_paths": False})).eval()
    plain.load_state_dict(model.state_dict())
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16, do_sample=False)
    want = plain.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, **kwargs), want)
    assert [key[3:5] for key in STEPS.decisions] == [(2, 1)]  # decoding compared and decided; the prompt, once, not
    quantized = torch.ao.quantization.quantize_dynamic(model.lm_head, {torch.nn.Linear}, dtype=torch.qint8)
    monkeypatch.setattr(model, "lm_head", quantized)
    assert model.generate(ids, **kwargs).shape == want.shape
