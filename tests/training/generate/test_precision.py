"""Low-precision decoding: bf16 and int8 models generate what fp32 generates and keep its perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TEXTS, make_tiny_config

PROMPTS = ["def add(a, b):", "The quick brown", "import os\n", "for i in range(", "class Point:"]
VALIDATION = [
    "def sub(a, b):\n    return a - b\n",
    "The lazy dog sleeps while the quick brown fox jumps.",
    "import sys\nprint(sys.argv)\n",
    "class Line:\n    def __init__(self, a, b):\n        self.a = a\n",
    "for j in range(5):\n    print(j + j)\n",
]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A tiny causal LM trained for 150 AdamW steps on the shared tiny corpus (confident, not random)."""
    from scratch_gpt import ScratchGPTForCausalLM
    from training.data.tokenizer import train_tokenizer

    tok = train_tokenizer(TINY_TEXTS, vocab_size=320, min_frequency=2, model_max_length=64)
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(vocab_size=len(tok))).train()
    ids = torch.tensor(tok("<|endoftext|>".join(TINY_TEXTS[:12])).input_ids)
    blocks = ids[: len(ids) // 32 * 32].view(-1, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        batch = blocks[(torch.arange(4) + step) % len(blocks)]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    path = tmp_path_factory.mktemp("precision") / "model"
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def bf16_units(monkeypatch):
    """Exercise the real bf16 model on any CPU (slow where bf16 is emulated, but correct)."""
    from training.generate import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(precision, "bf16_decode_speedup", lambda: 2.0)


def _greedy(model, tok, prompt: str) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                             min_new_tokens=32, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def _perplexity(model, tok) -> float:
    losses, counts = [], []
    for text in VALIDATION:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        losses.append(loss.item())
        counts.append(ids.shape[1] - 1)
    return math.exp(sum(losses) / sum(counts))


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_low_precision_matches_fp32(trained_dir, bf16_units, dtype):
    from transformers import AutoTokenizer

    from training.generate.precision import load_for_generation

    tok = AutoTokenizer.from_pretrained(trained_dir)
    fp32, low = load_for_generation(trained_dir, "fp32"), load_for_generation(trained_dir, dtype)
    same = [_greedy(fp32, tok, p) == _greedy(low, tok, p) for p in PROMPTS]
    assert sum(same) >= 4, same
    ppl32, ppl_low = _perplexity(fp32, tok), _perplexity(low, tok)
    assert ppl32 < 100  # trained: far below the uniform 320
    assert abs(ppl_low / ppl32 - 1) < 0.01, (ppl32, ppl_low)


def test_int8_stores_int8_weights(trained_dir):
    from training.generate.precision import load_for_generation, quantize_int8, weight_bytes

    fp32, int8 = load_for_generation(trained_dir, "fp32"), load_for_generation(trained_dir, "int8")
    from torch.ao.nn.quantized import Embedding as QEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    assert isinstance(int8.lm_head, QLinear) and isinstance(int8.transformer.h[0].mlp.c_fc, QLinear)
    assert type(int8.transformer.wte).__name__ == "MappedEmbedding"  # the local file's table, memory-mapped
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    assert weight_bytes(int8) < 0.4 * weight_bytes(fp32)
    whole = quantize_int8(load_for_generation(trained_dir, "fp32"))  # the in-memory path (Hub ids) quantizes them
    assert isinstance(whole.transformer.wte, QEmbedding)
    assert weight_bytes(whole) < 0.4 * weight_bytes(fp32)


def test_bf16_without_bf16_units_warns_and_falls_back(trained_dir, monkeypatch):
    from training.generate import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bf16 units .* falling back to --dtype fp32"):
        model = precision.load_for_generation(trained_dir, "bf16")
    assert model.dtype == torch.float32


def test_bf16_measured_slower_falls_back(trained_dir, monkeypatch):
    from training.generate import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(precision, "bf16_decode_speedup", lambda: 0.8)
    with pytest.warns(RuntimeWarning, match="bf16 decoding measured 0.80x the speed of fp32 .* falling back"):
        assert precision.load_for_generation(trained_dir, "bf16").dtype == torch.float32


def test_bf16_probe_measures_a_ratio():
    from training.generate.precision import bf16_decode_speedup

    assert 0 < bf16_decode_speedup(width=64, matrices=2, repeats=2) < 100


def test_bf16_with_units_loads_bf16(trained_dir, bf16_units):
    from training.generate.precision import load_for_generation

    assert load_for_generation(trained_dir, "bf16").dtype == torch.bfloat16


def test_int8_without_linear_layers_is_a_clear_error(trained_dir):
    from training.generate.precision import load_for_generation, quantize_int8

    with pytest.raises(ValueError, match="--dtype int8 quantizes linear layers, but this Sequential has none"):
        quantize_int8(torch.nn.Sequential(torch.nn.Embedding(4, 4), torch.nn.LayerNorm(4)))
    model = load_for_generation(trained_dir, "int8")
    with pytest.raises(ValueError, match="ScratchGPTForCausalLM has none .already quantized"):
        quantize_int8(model)


def test_unknown_dtype_is_refused():
    from training.generate.precision import resolve_dtype

    with pytest.raises(ValueError, match="unknown --dtype 'fp8'; use one of fp32, bf16, int8"):
        resolve_dtype("fp8")


def test_cpu_detection_reads_torch_probe(monkeypatch):
    from training.generate import precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.cpu_has_bf16_units() is True


def test_generate_command_dtype(trained_dir, capsys):
    """`scratch-gpt generate --dtype int8` prints the same greedy text as fp32 on this trained model."""
    from scratch_gpt_cli import main

    texts = {}
    for dtype in ("fp32", "int8"):
        args = ["generate", str(trained_dir), "--prompt", "def add(a, b):", "--max-new-tokens", "16",
                "--temperature", "0", "--dtype", dtype, "--no-stream"]
        assert main(args) == 0
        texts[dtype] = capsys.readouterr().out
    assert texts["fp32"].startswith("def add(a, b):") and texts["int8"] == texts["fp32"]


def test_int8_streamed_load_equals_quantizing_the_fp32_model(trained_dir):
    """The layer-at-a-time int8 loader gives the same model as loading fp32 and quantizing its linear layers
    (the embeddings stay the file's exact float rows, memory-mapped)."""
    from training.generate import precision

    streamed = precision._load_int8_streaming(trained_dir, {})
    assert streamed is not None  # a local model.safetensors: the streamed path applies
    whole = precision.load_for_generation(trained_dir, "fp32")
    precision._as_plain_linears(whole)
    precision._quantize_modules(whole, embeddings=False)
    wte = streamed.transformer.wte
    assert type(wte).__name__ == "MappedEmbedding" and not wte.weight.is_meta
    torch.testing.assert_close(wte.weight, whole.transformer.wte.weight, rtol=0, atol=0)
    ids = torch.tensor([[5, 17, 42, 9, 100, 3, 77, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(streamed(ids).logits, whole(ids).logits, rtol=0, atol=0)
        greedy = dict(max_new_tokens=12, do_sample=False)
        assert torch.equal(streamed.generate(ids, **greedy), whole.generate(ids, **greedy))
    assert not any(t.is_meta for t in list(streamed.parameters()) + list(streamed.buffers()))
    assert streamed.generation_config.max_new_tokens == whole.generation_config.max_new_tokens


def test_int8_streamed_load_declines_what_it_cannot_read(trained_dir, tmp_path):
    """A Hub-style call with extra options, or a folder without model.safetensors, takes the whole-model path."""
    from training.generate import precision

    assert precision._load_int8_streaming(trained_dir, {"revision": "main"}) is None
    assert precision._load_int8_streaming(tmp_path, {}) is None
