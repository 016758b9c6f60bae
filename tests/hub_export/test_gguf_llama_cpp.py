"""GGUF exports run in real llama.cpp (npm's node-llama-cpp, prebuilt CPU binaries) and compared with ScratchGPT.

Each architecture the export writes (gpt2; llama = the tiny-llama preset; qwen2 = q/k/v bias, untied head;
qwen3 = the tiny-qwen3 preset) is trained a few steps (so its next-token distributions are far from uniform),
exported at f32, q8_0 and q4_0, and run in ONE node process for the whole module (tests/hub_export/
llama_cpp_runner.mjs). Checked against ScratchGPT in fp32:

- the prompt token ids llama.cpp's tokenizer gives equal ours on ASCII, accents, CJK, emoji, tabs and newlines;
- greedy decoding (temperature 0, no stop token) gives the same 24 tokens for f32; for q8_0 >= 90% of llama.cpp's
  greedy tokens are the ones ScratchGPT's argmax picks after the same prefix (once one near-tie flips, the two
  continuations differ everywhere after it, so a position-by-position count would measure the first flip only);
- perplexity on a held-out text: llama.cpp's raw logits for every position of the text (teacher forcing), log-softmax
  in float64 here, exp of the mean negative log-likelihood of each next token; the quantized files' perplexity is
  within 1% (q8_0) and 5% (q4_0) of ScratchGPT's fp32 perplexity on the same ids.

Llama, Mistral, Qwen2 and Qwen3 checkpoints built with transformers and brought in by ``scratch-gpt convert`` are
exported too and compared logit by logit. The tests skip where node or .ci/node's node-llama-cpp is absent, except
in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.hub_export.test_gguf import ENCODE_STRINGS, PROMPTS, train_tiny_lm

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("llama_cpp_runner.mjs")
NODE_PACKAGE = REPO_ROOT / ".ci" / "node" / "node_modules" / "node-llama-cpp"
QUANTS = ("f32", "q8_0", "q4_0")
GREEDY_TOKENS = 24
HELD_TEXT = (
    "def mul(a, b):\n    return a * b\n\nclass Pair:\n    def __init__(self, x, y):\n        self.x = x\n"
    "        self.y = y\n\nfor j in range(3):\n    print(j * j)\nThe quick brown fox. Hello world!\n"
)
PPL_TOLERANCE = {"f32": 0.001, "q8_0": 0.01, "q4_0": 0.05}
TOKENIZE_EXTRA = ["tab\there\tand\nnewline\r\n", "naïve café — “quotes” ½", "中文，日本語、한국어。", "🙂👍🏽🇫🇷"]


def _family_switches(architecture: str) -> dict[str, Any]:
    from training.pretrain.arguments import architecture_switches

    args = SimpleNamespace(architecture=architecture, num_attention_heads=4, num_key_value_heads=None,
                           hidden_size=32, intermediate_size=None, norm_type="rmsnorm", hidden_act=None,
                           zero_init_output_projections=False, final_logit_softcapping=None)
    return architecture_switches(args)


# The presets' own switches (training/pretrain/arguments.py), so a tiny-llama / tiny-qwen3 run exports like these.
ARCH_CONFIGS = {
    "gpt2": dict(qkv_bias=False),
    "llama": _family_switches("llama"),
    "qwen2": {**_family_switches("llama"), "qkv_bias": True, "tie_word_embeddings": False},
    "qwen3": _family_switches("qwen3"),
}


def _llama_cpp_or_skip() -> None:
    needs = (("node", shutil.which("node")), (str(NODE_PACKAGE), NODE_PACKAGE.is_dir()))
    missing = [what for what, ok in needs if not ok]
    if not missing:
        return
    message = (f"llama.cpp checks need {' and '.join(missing)}: install node >= 20, then "
               "`cd .ci/node && npm install --no-save`")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the llama.cpp checks; {message}")
    pytest.skip(message)


def run_llama_cpp(jobs: list[dict[str, Any]], timeout: float = 300) -> dict[str, Any]:
    """Run the jobs in one node-llama-cpp process; the parsed JSON it prints."""
    env = {**os.environ, "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true", "LLAMA_CPP_THREADS": "1"}  # see the runner
    proc = subprocess.run(["node", str(RUNNER)], input=json.dumps({"jobs": jobs}), capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=None)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _greedy(model: Any, ids: list[int], n: int = GREEDY_TOKENS) -> list[int]:
    """n argmax tokens, no stop token (as llama.cpp's temperature-0 evaluation)."""
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(ids):].tolist()


def _argmax_after_each_prefix(model: Any, prompt: list[int], continuation: list[int]) -> list[int]:
    """ScratchGPT's argmax after prompt + continuation[:i], for every i (one forward pass)."""
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        return model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    """exp(mean NLL of each next token) from (positions, vocab) logits of ``ids``."""
    logp = torch.log_softmax(logits.double(), dim=-1)[:-1]
    return math.exp(-logp.gather(1, torch.tensor(ids[1:])[:, None]).mean().item())


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread: on this busy 2-core machine two threads made training the tiny models ~17x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, one_thread) -> dict[str, Any]:
    """Each architecture trained, exported at each quant, and everything run in llama.cpp at once."""
    from transformers import AutoTokenizer

    from hub_export.gguf import export_gguf
    from scratch_gpt import ScratchGPTForCausalLM

    _llama_cpp_or_skip()
    root = tmp_path_factory.mktemp("gguf-llama-cpp")
    cases, jobs = {}, []
    for arch, overrides in ARCH_CONFIGS.items():
        src = train_tiny_lm(root / arch, steps=120, **overrides)
        model = ScratchGPTForCausalLM.from_pretrained(src).eval()
        tok = AutoTokenizer.from_pretrained(src)
        prompts = [tok(p).input_ids for p in PROMPTS]
        ours = SimpleNamespace(model=model, tok=tok, prompts=prompts, held=tok(HELD_TEXT).input_ids,
                               greedy=[_greedy(model, ids) for ids in prompts])
        for quant in QUANTS:
            result = export_gguf(src, root / f"{arch}-{quant}", quant=quant)
            cases[arch, quant] = SimpleNamespace(**vars(ours), result=result)
            jobs.append({"model": str(result.out_dir / "model.gguf"), "tokenize": ENCODE_STRINGS + TOKENIZE_EXTRA,
                         "greedy": [{"ids": ids, "n": GREEDY_TOKENS} for ids in prompts], "logits": [ours.held]})
    output = run_llama_cpp(jobs)
    for case, ran in zip(cases.values(), output["results"]):
        case.ran = ran
    return {"cases": cases, "llama_cpp": output["llama_cpp"], "node_llama_cpp": output["node_llama_cpp"]}


CASES = [(arch, quant) for arch in ARCH_CONFIGS for quant in QUANTS]


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
def test_architecture_is_the_one_the_switches_name(matrix, arch):
    assert {matrix["cases"][arch, q].result.arch for q in QUANTS} == {arch}
    assert {matrix["cases"][arch, q].ran["architecture"] for q in QUANTS} == {arch}  # as llama.cpp read it
    assert matrix["cases"][arch, "f32"].ran["pre"] == "gpt-2"


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
def test_llama_cpp_tokenizes_like_ours(matrix, arch):
    case = matrix["cases"][arch, "f32"]
    for text, ids in zip(ENCODE_STRINGS + TOKENIZE_EXTRA, case.ran["tokens"]):
        assert ids == case.tok(text).input_ids, repr(text)


@pytest.mark.parametrize(("arch", "quant"), CASES)
def test_greedy_tokens_match(matrix, arch, quant):
    case = matrix["cases"][arch, quant]
    assert all(len(tokens) == GREEDY_TOKENS for tokens in case.ran["greedy"])
    if quant == "f32":
        assert case.ran["greedy"] == case.greedy
        return
    agree = [_argmax_after_each_prefix(case.model, p, g) for p, g in zip(case.prompts, case.ran["greedy"])]
    same = sum(a == b for x, y in zip(case.ran["greedy"], agree) for a, b in zip(x, y))
    assert same >= (0.9 if quant == "q8_0" else 0.75) * GREEDY_TOKENS * len(agree), (same, case.ran["greedy"])


@pytest.mark.parametrize(("arch", "quant"), CASES)
def test_perplexity_close_to_fp32(matrix, arch, quant):
    case = matrix["cases"][arch, quant]
    with torch.no_grad():
        ours = case.model(torch.tensor([case.held])).logits[0]
    theirs = torch.tensor(case.ran["logits"][0])
    reference, measured = perplexity(ours, case.held), perplexity(theirs, case.held)
    assert reference < 0.5 * case.model.config.vocab_size  # trained: far from uniform
    assert abs(measured / reference - 1) <= PPL_TOLERANCE[quant], (reference, measured)
    if quant == "f32":
        assert (theirs - ours).abs().max().item() < 1e-3 * max(1.0, ours.abs().max().item())


def test_quantized_files_are_smaller(matrix):
    for arch in ARCH_CONFIGS:
        sizes = [(matrix["cases"][arch, q].result.out_dir / "model.gguf").stat().st_size for q in QUANTS]
        assert sizes[0] > sizes[1] > sizes[2], (arch, sizes)
        assert "Q4_0" in matrix["cases"][arch, "q4_0"].result.tensor_types.values()


# ------------------------------------------------------------------------------------------------ converted checkpoints

_HF = dict(vocab_size=320, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=1,
           hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, initializer_range=0.2)
_LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
# (transformers class name, config overrides, the llama.cpp architecture the export must pick)
CONVERTED = {
    "llama-gqa-untied-llama3-rope": ("Llama", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                                   rope_parameters=_LLAMA3), "llama"),
    "mistral-head-dim-16": ("Mistral", dict(num_key_value_heads=2, head_dim=16, sliding_window=None), "llama"),
    "qwen2-tied-yarn": ("Qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=_YARN), "qwen2"),
    "qwen3-mqa-untied": ("Qwen3", dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False), "qwen3"),
}


def _converted_dir(root: Path, name: str) -> tuple[Any, Path]:
    """A random transformers model of the family, converted in with ``scratch-gpt convert``'s function."""
    import transformers

    from scratch_gpt.convert_family import convert_checkpoint
    from tests.hub_export.conftest import build_tokenizer

    family, overrides, _ = CONVERTED[name]
    config = getattr(transformers, f"{family}Config")(**_HF, **overrides)
    torch.manual_seed(0)
    reference = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    with torch.no_grad():  # random norms too, so every weight matters
        for key, tensor in reference.named_parameters():
            if "norm" in key:
                tensor.uniform_(0.5, 1.5)
    reference.save_pretrained(root / f"{name}-hf")
    converted = convert_checkpoint(root / f"{name}-hf", root / name)
    build_tokenizer().save_pretrained(converted)
    return reference, converted


def test_converted_family_checkpoints_run_in_llama_cpp_with_their_logits(tmp_path, one_thread):
    """Llama / Mistral / Qwen2 / Qwen3 -> scratch-gpt convert -> GGUF f32 -> llama.cpp: the transformers logits."""
    from hub_export.gguf import export_gguf

    _llama_cpp_or_skip()
    ids = list(range(2, 50))
    references, jobs = {}, []
    for name in CONVERTED:
        references[name], src = _converted_dir(tmp_path, name)
        result = export_gguf(src, tmp_path / f"{name}-gguf")
        assert result.arch == CONVERTED[name][2]
        jobs.append({"model": str(result.out_dir / "model.gguf"), "logits": [ids]})
    for name, ran in zip(CONVERTED, run_llama_cpp(jobs)["results"]):
        with torch.no_grad():
            expected = references[name](torch.tensor([ids])).logits[0]
        diff = (torch.tensor(ran["logits"][0]) - expected).abs().max().item()
        assert diff < 1e-3 * max(1.0, expected.abs().max().item()), (name, diff)


# ------------------------------------------------------------------------------------------------ converted tokenizers

DIGITS = ["numbers 1234567890 and 3.14159", "x=12345;y=678", "2024-12-07 10:30"]


def _split_tokenizer(regex: str) -> Any:
    """A byte-level BPE whose pre-tokenizer is Llama 3's / Qwen2's: Split(regex, Isolated) then ByteLevel."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import TINY_TEXTS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_TEXTS + DIGITS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama3_and_qwen2_pre_tokenizers_split_like_llama_cpp(tmp_path, one_thread, pre):
    """Converted checkpoints keep their tokenizer: llama.cpp's llama-bpe / qwen2 splitting equals theirs."""
    from hub_export.gguf import SPLIT_PRE_TOKENIZERS, export_gguf
    from scratch_gpt import ScratchGPTForCausalLM
    from tests.conftest import make_tiny_config

    _llama_cpp_or_skip()
    regex = next(r for r, name in SPLIT_PRE_TOKENIZERS.items() if name == pre)
    tok = _split_tokenizer(regex)
    src = tmp_path / "m"
    ScratchGPTForCausalLM(make_tiny_config(vocab_size=len(tok), **ARCH_CONFIGS["llama"])).save_pretrained(src)
    tok.save_pretrained(src)
    texts = ENCODE_STRINGS + TOKENIZE_EXTRA + DIGITS
    ran = run_llama_cpp([{"model": str(export_gguf(src, tmp_path / "out").out_dir / "model.gguf"),
                          "tokenize": texts}])["results"][0]
    assert ran["pre"] == pre
    for text, ids in zip(texts, ran["tokens"]):
        assert ids == tok(text).input_ids, repr(text)
