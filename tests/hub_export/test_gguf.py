"""GGUF export: transformers' own GGUF reader loads the file and agrees with the source model and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TEXTS, make_tiny_config


# 20 strings: ASCII, accents, CJK, emoji, code, whitespace runs, a special token, empty.
ENCODE_STRINGS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "café naïve façade résumé Ångström",
    "Übermäßig große Straße",
    "你好，世界",
    "日本語のテキスト",
    "한국어 문장",
    "🌍🚀 emoji 👩‍💻 mixed",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i * i)",
    "x = {'k': [1, 2, 3]}  # comment",
    "a    b\t\t\tc\n\n\nd",
    "   leading and trailing   ",
    "\n\n\n",
    "it's we're they'll I'd",
    "numbers 1234567890 3.14159",
    "<|endoftext|>after special",
    "mixed Ελληνικά and русский",
    "",
    "Hello world! Hello tokenizer! 你好 🌍",
]
PROMPTS = ["def add(a, b):", "The quick", "import os\n", "for i in", "class Point:"]


def train_tiny_lm(path: Path, steps: int = 60, **overrides) -> Path:
    """A tiny causal LM trained for a few steps on the shared tiny corpus, saved with its BPE tokenizer.

    Context 1024 and MLP width 4x hidden: transformers' GGUF reader can rebuild only those for gpt2.
    """
    from scratch_gpt import ScratchGPTForCausalLM
    from training.data.tokenizer import train_tokenizer

    tok = train_tokenizer(TINY_TEXTS, vocab_size=320, min_frequency=2, model_max_length=1024)
    config = make_tiny_config(vocab_size=len(tok), max_position_embeddings=1024, **overrides)
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(config)
    ids = torch.tensor(tok("<|endoftext|>".join(TINY_TEXTS[:6]) * 4).input_ids)
    blocks = ids[: len(ids) // 32 * 32].view(-1, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: two threads on a busy 2-core machine trained ~17x slower
    try:
        for step in range(steps):
            batch = blocks[torch.arange(8) + step % max(1, len(blocks) - 8)]
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    return train_tiny_lm(tmp_path_factory.mktemp("gguf") / "model", qkv_bias=False)


@pytest.fixture(scope="module")
def source(trained_dir):
    from transformers import AutoTokenizer

    from scratch_gpt import ScratchGPTForCausalLM

    return ScratchGPTForCausalLM.from_pretrained(trained_dir).eval(), AutoTokenizer.from_pretrained(trained_dir)


def _export(trained_dir: Path, out: Path, quant: str):
    from hub_export.gguf import export_gguf

    return export_gguf(trained_dir, out, quant=quant)


def _load_gguf(out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf").eval()
    return model, AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")


def _greedy(model, tok, prompt: str, n: int = 24) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def f32_export(trained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-f32") / "out"
    return _export(trained_dir, out, "f32"), _load_gguf(out)


def test_f32_logits_and_greedy_match(source, f32_export):
    model, tok = source
    result, (hf_model, hf_tok) = f32_export
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    assert result.files == ["Modelfile", "README.md", "model.gguf"]
    ids = tok(TINY_TEXTS[0] + TINY_TEXTS[3], return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (hf_model(ids).logits - model(ids).logits).abs().max().item()
    assert diff < 1e-4
    for prompt in PROMPTS:
        assert _greedy(hf_model, hf_tok, prompt) == _greedy(model, tok, prompt)


def test_gguf_tokenizer_encodes_like_ours(source, f32_export):
    tok = source[1]
    hf_tok = f32_export[1][1]
    for text in ENCODE_STRINGS:
        assert hf_tok(text).input_ids == tok(text).input_ids, text
    assert (hf_tok.eos_token, hf_tok.pad_token, hf_tok.bos_token) == (tok.eos_token, tok.pad_token, tok.bos_token)


def test_file_metadata_is_llama_cpp_gpt2(trained_dir, f32_export):
    from gguf import GGUFReader, TokenType

    reader = GGUFReader(f32_export[0].out_dir / "model.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    config = json.loads((trained_dir / "config.json").read_text())
    assert field("general.architecture") == "gpt2"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("gpt2.block_count") == config["num_hidden_layers"]
    assert field("gpt2.feed_forward_length") == config["intermediate_size"]
    assert field("tokenizer.ggml.token_type")[0] == TokenType.CONTROL  # <|endoftext|>
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied head: llama.cpp reuses token_embd
    assert "blk.0.attn_qkv.bias" in names  # zero bias written for a bias-free qkv (llama.cpp requires one)
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    assert list(qkv.shape) == [config["hidden_size"], 3 * config["hidden_size"]]  # ggml order: (in, out)
    modelfile = (f32_export[0].out_dir / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|endoftext|>"' in modelfile


def test_q8_0_loads_within_tolerance(source, trained_dir, tmp_path):
    """q8_0 (per-32 block int8 with an f16 scale): logits within 5% of the logit range, same first greedy tokens."""
    model, tok = source
    result = _export(trained_dir, tmp_path / "q8", "q8_0")
    assert "Q8_0" in result.tensor_types.values() and result.tensor_types["position_embd.weight"] == "F32"
    hf_model, _ = _load_gguf(tmp_path / "q8")
    ids = tok(TINY_TEXTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf_model(ids).logits
    spread = (ours.max() - ours.min()).item()
    assert (theirs - ours).abs().max().item() < 0.05 * spread
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item() >= 0.9
    size_f32 = sum(p.numel() for p in model.parameters()) * 4
    assert (tmp_path / "q8" / "model.gguf").stat().st_size < size_f32


def test_chat_template_goes_into_gguf_and_modelfile(trained_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    chat_dir = tmp_path / "chat"
    shutil.copytree(trained_dir, chat_dir)
    tok = AutoTokenizer.from_pretrained(chat_dir)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}SYS: {{ m['content'] }}\n{% else %}"
        "USER: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}BOT:{% endif %}"
    )
    tok.save_pretrained(chat_dir)
    _export(chat_dir, tmp_path / "out", "f16")
    _, hf_tok = _load_gguf(tmp_path / "out")
    assert hf_tok.chat_template == tok.chat_template
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert 'TEMPLATE """{{ if .System }}SYS: {{ .System }}\nUSER: {{ .Prompt }}\nBOT:{{ else }}' in modelfile


# ------------------------------------------------------------------------------------------------ bad input


def test_rmsnorm_with_learned_positions_is_refused_before_writing(tmp_path):
    from hub_export.gguf import export_gguf
    from tests.hub_export.conftest import make_model_dir

    src = make_model_dir(tmp_path / "rms", norm_type="rmsnorm")
    with pytest.raises(ValueError, match="GGUF export cannot hold this model: learned positions with "
                                         "norm_type='rmsnorm'.*gpt2 needs learned positions \\+ LayerNorm"):
        export_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rms"]  # no staging folder left behind


_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
FAMILY = dict(position_embedding_type="rope", rope_parameters=_ROPE, norm_type="rmsnorm", mlp_type="swiglu",
              hidden_act="silu", qkv_bias=False, attention_bias=False, mlp_bias=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(norm_type="layernorm"), "position_embedding_type='rope' with norm_type='layernorm'; llama/qwen2/qwen3"),
        (dict(mlp_type="gelu", hidden_act="gelu_pytorch_tanh"), "with mlp_type='gelu'"),
        (dict(hidden_act="gelu"), "with hidden_act='gelu'"),
        (dict(qk_norm=True, qkv_bias=True), "QK-norm together with a q/k/v bias; llama.cpp's qwen3 has no q/k/v bias"),
        (dict(qkv_bias=True, attention_bias=True), "llama.cpp's qwen2 has no output-projection or MLP bias"),
        (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), "rope_type='dynamic'"),
        (dict(rope_parameters={**_ROPE, "partial_rotary_factor": 0.5}), "partial_rotary_factor=0.5"),
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "beta_fast": 16,
                               "original_max_position_embeddings": 16}), "YaRN with beta_fast=16"),
        (dict(qk_norm=True, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 16}),
         "rope_type='llama3' with QK-norm; llama.cpp's qwen3 architecture reads no rope_freqs tensor"),
    ],
)
def test_what_no_llama_cpp_architecture_holds_is_refused_in_one_line(tmp_path, overrides, message):
    from hub_export.gguf import check_gguf_config

    config = make_tiny_config(**{**FAMILY, **overrides})
    with pytest.raises(ValueError, match="GGUF export cannot hold this model") as err:
        check_gguf_config(config)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("overrides", "arch"),
    [({}, "llama"), (dict(num_key_value_heads=1), "llama"), (dict(qkv_bias=True), "qwen2"),
     (dict(qk_norm=True, head_dim=16), "qwen3"), (dict(attention_bias=True, mlp_bias=True), "llama")],
)
def test_switches_pick_the_architecture(overrides, arch):
    from hub_export.gguf import check_gguf_config

    assert check_gguf_config(make_tiny_config(**{**FAMILY, **overrides}))[0] == arch


def test_unknown_quant_is_refused(trained_dir, tmp_path):
    from hub_export.gguf import export_gguf

    with pytest.raises(ValueError, match="unknown --quant 'q4_k'; use one of f32, f16, bf16, q8_0, q4_0"):
        export_gguf(trained_dir, tmp_path / "out", quant="q4_k")
    assert not (tmp_path / "out").exists()


def test_tokenizer_llama_cpp_cannot_express_is_refused(trained_dir, tmp_path):
    import shutil

    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    from hub_export.gguf import export_gguf

    bad = tmp_path / "bad"
    shutil.copytree(trained_dir, bad)
    tok = AutoTokenizer.from_pretrained(bad)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.save_pretrained(bad)
    with pytest.raises(ValueError, match="llama.cpp's gpt2 tokenizer cannot express this vocabulary: pre-tokenizer"):
        export_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizer_larger_than_embedding_is_refused(trained_dir, tmp_path):
    from transformers import AutoTokenizer

    from hub_export.gguf import export_gguf
    from scratch_gpt import ScratchGPTForCausalLM

    model = ScratchGPTForCausalLM.from_pretrained(trained_dir)
    model.resize_token_embeddings(model.config.vocab_size - 5)
    model.save_pretrained(tmp_path / "small")
    AutoTokenizer.from_pretrained(trained_dir).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="llama.cpp cannot express ids outside the embedding"):
        export_gguf(tmp_path / "small", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_without_overwrite(trained_dir, tmp_path):
    from hub_export.gguf import export_gguf

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_gguf(trained_dir, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_model_without_tokenizer_is_refused(tmp_path):
    from hub_export.gguf import export_gguf
    from tests.hub_export.conftest import make_model_dir

    src = make_model_dir(tmp_path / "bare", tokenizer=False)
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json; a GGUF file carries its tokenizer"):
        export_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_export_format_gguf(trained_dir, tmp_path, capsys):
    from scratch_gpt_cli import main

    out = tmp_path / "out"
    assert main(["export", str(trained_dir), str(out), "--format", "gguf", "--quant", "q8_0"]) == 0
    assert "exported GGUF (q8_0)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model.gguf"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "gguf", "--quant", "q4_k"], "unknown --quant 'q4_k'; use one of f32, f16, bf16, q8_0, q4_0"),
        (["--quant", "q8_0"], "--quant q8_0 applies to --format gguf only"),
        (["--format", "gguf", "--space"], "--space needs a Hub-repo format"),
    ],
)
def test_cli_bad_gguf_options_are_one_line(trained_dir, tmp_path, capsys, extra, message):
    from scratch_gpt_cli import main

    assert main(["export", str(trained_dir), str(tmp_path / "out"), *extra]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ Llama / Qwen family


def _family_dir(path: Path, **overrides) -> Path:
    from tests.hub_export.conftest import make_model_dir

    return make_model_dir(path, initializer_range=0.2, **{**FAMILY, **overrides})


def test_llama_file_metadata_heads_and_rope_row_order(tmp_path):
    """llama: GQA head counts, RMS eps, RoPE keys, untied output; q/k rows interleaved per head (NORM RoPE)."""
    from gguf import GGUFReader

    from hub_export.gguf import export_gguf
    from hub_export.gguf_arch import permute_rope_rows
    from scratch_gpt import ScratchGPTForCausalLM

    src = _family_dir(tmp_path / "llama", num_key_value_heads=2, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0})
    result = export_gguf(src, tmp_path / "out", quant="f16")
    reader = GGUFReader(result.out_dir / "model.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert (result.arch, field("general.architecture")) == ("llama", "llama")
    assert (field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (4, 2)
    assert field("llama.rope.dimension_count") == 8 and field("llama.rope.freq_base") == 5e5
    assert (field("llama.rope.scaling.type"), field("llama.rope.scaling.factor")) == ("linear", 2.0)
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["output.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert "blk.0.attn_q.bias" not in tensors and "blk.0.attn_qkv.weight" not in tensors
    c_attn = ScratchGPTForCausalLM.from_pretrained(src).transformer.h[0].attn.c_attn.weight.detach().numpy()
    k_file = tensors["blk.0.attn_k.weight"].data.astype("float32").reshape(16, 32)
    assert abs(k_file - permute_rope_rows(c_attn[32:48], 2)).max() < 1e-3  # f16 rounding
    assert abs(k_file - c_attn[32:48]).max() > 1e-2  # and the order really changed


@pytest.mark.parametrize(
    ("overrides", "arch"), [(dict(qkv_bias=True), "qwen2"), (dict(qk_norm=True, head_dim=16), "qwen3")]
)
def test_qwen_files_keep_half_split_rows(tmp_path, overrides, arch):
    from gguf import GGUFReader

    from hub_export.gguf import export_gguf
    from scratch_gpt import ScratchGPTForCausalLM

    src = _family_dir(tmp_path / arch, num_key_value_heads=1, **overrides)
    result = export_gguf(src, tmp_path / "out")
    reader = GGUFReader(result.out_dir / "model.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == arch and "output.weight" not in tensors
    attn = ScratchGPTForCausalLM.from_pretrained(src).transformer.h[0].attn
    q_rows = 4 * attn.c_attn.weight.shape[0] // 6
    assert (tensors["blk.0.attn_q.weight"].data == attn.c_attn.weight.detach().numpy()[:q_rows]).all()
    if arch == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(tensors)
    else:  # transformers' GGUF reader takes Qwen3Config's head_dim 128 instead of the file's key_length
        assert any("head_dim 128" in w for w in result.warnings), result.warnings
        assert reader.fields["qwen3.attention.key_length"].contents() == 16
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= set(tensors)


@pytest.mark.parametrize(("quant", "matrix", "embedding"), [("bf16", "BF16", "BF16"), ("q4_0", "Q4_0", "Q8_0")])
def test_bf16_and_q4_0_tensor_types(tmp_path, quant, matrix, embedding):
    from hub_export.gguf import export_gguf

    result = export_gguf(_family_dir(tmp_path / "m"), tmp_path / "out", quant=quant)
    types = result.tensor_types
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == matrix
    assert types["token_embd.weight"] == embedding and types["output_norm.weight"] == "F32"


def test_instruct_llama_chat_template_in_gguf_and_modelfile(tmp_path):
    """An instruction-finetuned Llama-shaped model: its chat template in the GGUF metadata and the Modelfile."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from hub_export.gguf import export_gguf

    src = _family_dir(tmp_path / "instruct")
    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n{% else %}"
        "### Instruction:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    )
    tok.save_pretrained(src)
    out = export_gguf(src, tmp_path / "out", quant="q8_0").out_dir
    reader = GGUFReader(out / "model.gguf")
    assert reader.fields["tokenizer.chat_template"].contents() == tok.chat_template
    modelfile = (out / "Modelfile").read_text()
    assert ('TEMPLATE """{{ if .System }}### System:\n{{ .System }}\n\n### Instruction:\n{{ .Prompt }}\n\n'
            '### Response:\n{{ else }}### Instruction:\n{{ .Prompt }}\n\n### Response:\n{{ end }}"""') in modelfile
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile


@pytest.mark.parametrize("overrides", [dict(num_key_value_heads=2), dict(qkv_bias=True, tie_word_embeddings=False)])
def test_transformers_gguf_reader_agrees_on_family_files(tmp_path, overrides):
    """transformers' own GGUF reader (which undoes llama's q/k permutation) rebuilds the same logits."""
    from transformers import AutoModelForCausalLM

    from hub_export.gguf import export_gguf
    from scratch_gpt import ScratchGPTForCausalLM

    src = _family_dir(tmp_path / "m", **overrides)
    out = export_gguf(src, tmp_path / "out").out_dir
    theirs = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf").eval()
    ours = ScratchGPTForCausalLM.from_pretrained(src).eval()
    ids = torch.arange(2, 40)[None]
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max().item() < 1e-4


def test_cli_exports_a_llama_shaped_model_at_q4_0(tmp_path, capsys):
    from gguf import GGUFReader

    from scratch_gpt_cli import main

    out = tmp_path / "out"
    assert main(["export", str(_family_dir(tmp_path / "m")), str(out), "--format", "gguf", "--quant", "q4_0"]) == 0
    assert "exported GGUF (q4_0)" in capsys.readouterr().out
    reader = GGUFReader(out / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == 2  # LlamaFileType.MOSTLY_Q4_0
