"""Every `scratch-gpt` command once, as a user runs it: a real CLI process each, chained through real folders.

This module is the smoke subset that `.ci/matrix` runs on the oldest versions the project claims and on the
highest Python `requires-python` admits (with tests/training/evaluate and tests/hub_export/test_hub.py, which
cover `evaluate` and `push` offline). It also runs in the main suite. The chain: `train --max-steps 20` on the
default corpus (the interpreter's standard library) -> `generate` (greedy, equal to `pipeline()`), `serve` (one
completion, equal to `pipeline()`), `export` (remote code, self-verified in a fresh process; GGUF), `convert`
(the plain GPT-2 export back, same logits), `finetune instruct`, `corpus-stats`, `train-tokenizer`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

PROMPT = "def parse_args("
NEW_TOKENS = 8
CLI_TIMEOUT_S = 900
SERVER_START_S = 240


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp / "hf_home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               SCRATCH_GPT_MALLOC_TUNING="0", TRANSFORMERS_VERBOSITY="error")
    return env


def cli(args: list[str], tmp: Path, timeout: int = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m scratch_gpt_cli ARGS`` in ``tmp``; fails the test with the command's stderr unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", "scratch_gpt_cli", *args], cwd=tmp, env=_env(tmp),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"scratch-gpt {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def greedy_reference(model_dir: Path, prompt: str, new_tokens: int) -> str:
    """``pipeline()``'s greedy continuation (no prompt), the reference every command is compared with."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(model_dir), device="cpu")
    out = pipe(prompt, max_new_tokens=new_tokens, do_sample=False, return_full_text=False)
    return out[0]["generated_text"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke")


@pytest.fixture(scope="module")
def run(work) -> Path:
    """`scratch-gpt train --max-steps 20` on the default corpus (the README's main job, shortened)."""
    out = work / "runs" / "tiny"
    cli(["train", "--max-steps", "20", "--output-dir", str(out)], work)
    return out


def test_train_writes_a_complete_run_folder(run):
    from scratch_gpt import run_folder

    assert (run / "config.json").is_file() and (run / "model.safetensors").is_file()
    steps = [r["step"] for r in run_folder.load_log_history(run) if "loss" in r]
    assert steps and max(steps) == 20


def test_generate_is_greedy_pipeline(run, work):
    out = cli(["generate", str(run), "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS),
               "--temperature", "0", "--no-stream"], work).stdout
    assert PROMPT + greedy_reference(run, PROMPT, NEW_TOKENS) in out


def test_serve_round_trip(run, work):
    from tests.hub_export import test_serve
    from tests.hub_export.test_serve import SCRATCH_SERVE, Server, _completion

    server = Server([*SCRATCH_SERVE, str(run)], work / "serve.log")
    try:
        server.wait_ready(time.monotonic() + SERVER_START_S)
        answer = _completion(server, PROMPT)
    finally:
        server.stop()
    assert answer == greedy_reference(run, PROMPT, test_serve.NEW_TOKENS)  # _completion asks for that many


def test_export_remote_code_and_gguf(run, work):
    remote, gguf = work / "export-remote", work / "export-gguf"
    cli(["export", str(run), str(remote)], work)  # verifies itself in a fresh process without scratch_gpt
    assert (remote / "config.json").is_file() and list(remote.glob("modeling_*.py"))
    cli(["export", str(run), str(gguf), "--format", "gguf"], work)
    assert list(gguf.glob("*.gguf")) and (gguf / "Modelfile").is_file()


def test_convert_plain_gpt2_export_back_keeps_logits(run, work):
    import torch
    from transformers import AutoModelForCausalLM

    import scratch_gpt  # noqa: F401  (registers the Auto classes)

    plain, back = work / "export-gpt2", work / "converted"
    cli(["export", str(run), str(plain), "--format", "gpt2"], work)
    cli(["convert", str(plain), str(back)], work)
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(run).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(back).eval()(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same weights through the same code


def test_finetune_instruct(run, work):
    data = work / "instructions.json"
    records = [{"instruction": f"Repeat the number {i}.", "input": "", "output": f"{i}"} for i in range(16)]
    data.write_text(json.dumps(records))
    out = work / "instruct"
    cli(["finetune", "instruct", str(run), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "2",
         "--batch-size", "4", "--disable-tqdm"], work)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_corpus_stats_and_train_tokenizer(work):
    corpus = work / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(200)))
    stats = cli(["corpus-stats", "--dataset", str(corpus), "--validation-fraction", "0"], work).stdout
    assert "tokens" in stats.lower()
    cli(["train-tokenizer", "--dataset", str(corpus), "--validation-fraction", "0", "--vocab-size", "300",
         str(work / "tok")], work)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "tok")
    text = "the quick brown fox"
    assert tok.decode(tok(text).input_ids) == text
