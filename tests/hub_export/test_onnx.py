"""`scratch-gpt export --format onnx [--quant int8]`: the transformers.js layout, checked by onnxruntime here and by
transformers.js itself in Node (``.ci/node-transformersjs``), offline, for a GPT-2- and a Llama-shaped model.

The tiny models are trained for a few steps on a sentence first: a random model repeats one token (a weak "same
greedy text" check) and its flat, huge-activation logits are not what int8 quantization is for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from hub_export.onnx_export import MODEL_FILE, ONNX_DIR, QUANTIZED_FILE, export_onnx, plain_config  # noqa: E402
from hub_export.onnx_verify import GREEDY_TOKENS, PROMPT, verify_onnx  # noqa: E402
from hub_export.verify import ExportVerificationError  # noqa: E402
from tests.hub_export.conftest import REPO_ROOT, make_model_dir  # noqa: E402

NODE_DIR = REPO_ROOT / ".ci" / "node-transformersjs"
ENTRY = NODE_DIR / "node_modules" / "@huggingface" / "transformers" / "dist" / "transformers.node.mjs"
RUNNER = Path(__file__).with_name("transformersjs_runner.mjs")
NEW_TOKENS = 20
LLAMA = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu", hidden_act="silu",
             num_key_value_heads=2, qkv_bias=False, attention_bias=False, mlp_bias=False)
SHAPES = {
    # wide enough that the weights, not the graph, make up the file (the int8 size check)
    "gpt2": dict(hidden_size=128),
    "llama": dict(hidden_size=64, **LLAMA),
}
TEXT = "Every effort moves you forward. This is a fine example of a tiny corpus. The quick brown fox. "


def trained_model_dir(path: Path, steps: int = 40, **overrides) -> Path:
    """A tiny model (make_model_dir) after ``steps`` AdamW steps on :data:`TEXT`, saved back into ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_model_dir(path, **overrides)
    model = AutoModelForCausalLM.from_pretrained(path, cpu_fast_paths=False)
    ids = torch.tensor([AutoTokenizer.from_pretrained(path)(TEXT * 3)["input_ids"][:64]])
    optimizer, threads = torch.optim.AdamW(model.parameters(), lr=1e-2), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a busy machine
    try:
        model.train()
        for _ in range(steps):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.config.cpu_fast_paths = True
    model.eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Both shapes exported with --quant int8: the GPT-2 one through the CLI, the Llama one through the API."""
    from scratch_gpt_cli import main

    root = tmp_path_factory.mktemp("onnx")
    src = {name: trained_model_dir(root / f"{name}-src", **overrides) for name, overrides in SHAPES.items()}
    assert main(["export", str(src["gpt2"]), str(root / "gpt2"), "--format", "onnx", "--quant", "int8"]) == 0
    export_onnx(src["llama"], root / "llama", quant="int8")
    return {name: (src[name], root / name) for name in SHAPES}


def _load(src: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shape, model_type", [("gpt2", "gpt2"), ("llama", "llama")])
def test_layout_names_and_shapes_are_what_transformersjs_reads(exports, shape, model_type):
    src, out = exports[shape]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    onnx_files = [f"{ONNX_DIR}/{MODEL_FILE}", f"{ONNX_DIR}/{QUANTIZED_FILE}"]
    assert files == ["config.json", "generation_config.json", *onnx_files, "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model_type and "auto_map" not in config
    session = _session(out / ONNX_DIR / MODEL_FILE)
    layers = config.get("n_layer", config.get("num_hidden_layers"))
    kv = [f"{i}.{k}" for i in range(layers) for k in ("key", "value")]
    assert [i.name for i in session.get_inputs()] == [
        "input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in kv)]
    assert [o.name for o in session.get_outputs()] == ["logits", *(f"present.{n}" for n in kv)]
    past = session.get_inputs()[3]
    heads = config.get("num_key_value_heads", config.get("n_head"))
    head_dim = config.get("head_dim") or config.get("n_embd", config.get("hidden_size")) // config.get(
        "n_head", config.get("num_attention_heads"))
    # transformers.js builds the first, empty past from this metadata: batch_size -> batch, other symbols -> 0
    assert past.shape == ["batch_size", heads, "past_sequence_length", head_dim] and past.type == "tensor(float)"


@pytest.mark.parametrize("shape", SHAPES)
def test_left_padded_batch_with_past_matches_each_row_alone(exports, shape):
    """Independently of the export's own check: a left-padded batch of two, prompt then one cached step."""
    src, out = exports[shape]
    model, _ = _load(src)
    session = _session(out / ONNX_DIR / MODEL_FILE)
    names = [i.name for i in session.get_inputs()[3:]]
    meta = session.get_inputs()[3]
    rows = [[11, 12, 13, 14, 15, 16], [21, 22, 23, 24]]
    ids, mask = np.array([rows[0], [1, 1, *rows[1]]]), np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)  # as transformers.js computes them
    empty = np.zeros((2, meta.shape[1], 0, meta.shape[3]), dtype=np.float32)
    logits, *present = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                          **{n: empty for n in names}})
    step = session.run(None, {"input_ids": np.array([[7], [7]]), "attention_mask": np.pad(mask, ((0, 0), (0, 1)),
                                                                                        constant_values=1),
                              "position_ids": positions[:, -1:] + 1, **dict(zip(names, present))})[0]
    with torch.no_grad():
        for b, row in enumerate(rows):
            ref = model(torch.tensor([row + [7]])).logits[0].numpy()
            assert np.abs(logits[b, -len(row):] - ref[:-1]).max() < 1e-4
            assert np.abs(step[b, 0] - ref[-1]).max() < 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_file_is_small_and_picks_the_same_tokens(exports, shape):
    src, out = exports[shape]
    fp32, int8 = out / ONNX_DIR / MODEL_FILE, out / ONNX_DIR / QUANTIZED_FILE
    model, tokenizer = _load(src)
    report = verify_onnx(out, model, tokenizer, quantized=True)
    assert len(report["greedy_tokens"]) == GREEDY_TOKENS == 32
    assert report["int8_next_token_agreement"] >= 0.9  # teacher forced: the export's own rule
    assert report["int8_greedy_agreement"] >= 0.9  # free-running, position by position (the acceptance 2)
    assert len(set(report["greedy_tokens"])) > 3, "the fixture model should not repeat one token"
    if shape == "gpt2":  # the wider model: weights dominate the file (the Llama shape: next test)
        assert int8.stat().st_size <= 0.35 * fp32.stat().st_size, report["int8_size_ratio"]


def test_int8_file_of_a_wider_llama_is_small(tmp_path):
    """At width 64 the norms, scales and graph are 36% of the int8 file; from width 128 on weights dominate it, as
    in any real model: the int8 file is <= 0.35x the fp32 one (the issue's acceptance 2, size part)."""
    from hub_export.onnx_export import export_decoder, quantize_int8
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=300, hidden_size=128, num_hidden_layers=2,
                                                   num_attention_heads=4, **LLAMA)).eval()
    fp32, int8 = tmp_path / MODEL_FILE, tmp_path / QUANTIZED_FILE
    export_decoder(model, fp32)
    quantize_int8(fp32, int8)
    assert int8.stat().st_size <= 0.35 * fp32.stat().st_size, int8.stat().st_size / fp32.stat().st_size


def test_self_check_refuses_an_export_of_another_model(exports, tmp_path):
    src, out = exports["gpt2"]
    other = make_model_dir(tmp_path / "other", **SHAPES["gpt2"])  # untrained
    model, tokenizer = _load(other)
    with pytest.raises(ExportVerificationError, match="onnxruntime logits differ"):
        verify_onnx(out, model, tokenizer, quantized=False)


def test_qwen3_shape_gets_a_qwen3_config():
    from scratch_gpt import ScratchGPTConfig

    config = plain_config(ScratchGPTConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           qk_norm=True, head_dim=16, **LLAMA))
    assert config.model_type == "qwen3" and config.head_dim == 16 and config.num_key_value_heads == 2


@pytest.mark.parametrize(
    ("overrides", "extra", "message"),
    [
        (dict(position_embedding_type="rope"), [], "--format onnx writes a llama config for transformers.js"),
        ({}, ["--quant", "q8_0"], "--format onnx takes --quant int8"),
        ({}, ["--space"], "--space needs a Hub-repo format"),
        (dict(kind="cls"), [], "--format onnx exports text-generation models"),
    ],
)
def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, capsys, overrides, extra, message):
    from scratch_gpt_cli import main

    src = make_model_dir(tmp_path / "src", **overrides)
    capsys.readouterr()  # the progress bars of saving it
    assert main(["export", str(src), str(tmp_path / "out"), "--format", "onnx", *extra]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_missing_onnx_packages_name_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs onnxscript: install them with pip install 'scratch-gpt\[onnx\]'"):
        export_onnx(tmp_path / "anything", tmp_path / "out")


def _node() -> str:
    """The node binary, with transformers.js installed; missing: a failure in CI, a skip elsewhere."""
    node = shutil.which("node")
    reason = ("node is not installed" if node is None else f"{ENTRY} is missing (run npm ci in {NODE_DIR})"
              if not ENTRY.is_file() else None)
    if reason is None:
        return node
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"CI must run the transformers.js check: {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["fp32", "q8"])
def test_transformersjs_in_node_generates_scratchgpts_greedy_text(exports, shape, dtype):
    node = _node()
    src, out = exports[shape]
    model, tokenizer = _load(src)
    ids = tokenizer(PROMPT, return_tensors="pt")
    expected = tokenizer.decode(model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0],
                                skip_special_tokens=True)
    env = {**os.environ, "TRANSFORMERSJS_ENTRY": str(ENTRY), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([node, str(RUNNER), str(out), dtype, str(NEW_TOKENS), PROMPT], env=env, cwd=str(NODE_DIR),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["generated_text"] == expected, (result, GREEDY_TOKENS)
