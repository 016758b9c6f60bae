"""Fixtures for the hub_export tests: tiny models, a tiny tokenizer, a fake run directory, shared exports.

Everything is built here (no download): a byte-level BPE trained in-memory with `tokenizers`, 2-layer models of
hidden size 32. Exports are session-scoped because each one runs a self-check subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TOKEN = "hf_TESTTOKEN_do_not_print_0123456789"
# Records as the training loop writes them: train records, eval records, a train record after the last eval.
METRICS = [
    {"step": 10, "train_loss": 5.61, "lr": 0.0003, "tokens_per_s": 1234.5},
    {"step": 10, "val_loss": 5.5512, "val_perplexity": 257.5},
    {"step": 20, "train_loss": 4.92, "lr": 0.00025},
    {"step": 20, "val_loss": 4.8763, "val_perplexity": 131.17, "epoch": 0.5},
    {"step": 30, "train_loss": 4.31, "lr": 0.0002},
]
# A 1x1 PNG, so the "loss plot" is a real image file.
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a7d5d1e50000000049454e44ae426082"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["Every effort moves you forward.", "This is a fine example of a tiny corpus.", "The quick brown fox."]
    tok.train_from_iterator(text * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def make_model_dir(
    path: Path, *, kind: str = "lm", tokenizer: bool = True, seed: int = 0, **config_overrides: Any
) -> Path:
    """Save a tiny random scratch-gpt model (and tokenizer) into ``path``."""
    import torch

    from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification

    tok = build_tokenizer()
    torch.manual_seed(seed)
    if kind == "cls":
        cfg = make_tiny_config(
            vocab_size=len(tok), num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
            **config_overrides,
        )
        model = ScratchGPTForSequenceClassification(cfg)
    else:
        model = ScratchGPTForCausalLM(make_tiny_config(vocab_size=len(tok), **config_overrides))
    model.save_pretrained(path)
    if tokenizer:
        tok.save_pretrained(path)
    return path


def write_run_files(run_dir: Path) -> None:
    with open(run_dir / "metrics.jsonl", "w") as f:
        for rec in METRICS:
            f.write(json.dumps(rec) + "\n")
        f.write("not json, a crashed write\n")
    (run_dir / "loss_plot.png").write_bytes(PNG_1x1)
    (run_dir / "training_args.json").write_text(
        json.dumps({"dataset": "python-stdlib", "preset": "tiny", "learning_rate": 0.0003, "max_steps": 30,
                    "nested": {"ignored": True}})
    )


def run_python(
    code: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (env vars that huggingface_hub reads at import take effect)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def base_env(tmp: Path) -> dict[str, str]:
    """A clean environment for subprocesses: no token, private HF home, project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp / "hf_home"), PYTHONPATH=str(REPO_ROOT), TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error")
    return env


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A run directory: final model + tokenizer + metrics.jsonl + loss plot + training settings."""
    path = make_model_dir(tmp_path_factory.mktemp("run") / "run")
    write_run_files(path)
    return path


@pytest.fixture(scope="session")
def lm_export(run_dir, tmp_path_factory):
    """The run exported as remote code, sharded (max shard 60KB) so that shards are exercised everywhere."""
    from hub_export.card import CardOptions
    from hub_export.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-gpt"
    return export_model(
        run_dir,
        out,
        max_shard_size="60KB",
        card_options=CardOptions(repo_id="owner/tiny-gpt", datasets=["owner/tiny-corpus"], tags=["tiny"]),
    )


@pytest.fixture(scope="session")
def cls_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("cls") / "classifier", kind="cls", seed=1)


@pytest.fixture(scope="session")
def cls_export(cls_dir, tmp_path_factory):
    from hub_export.card import CardOptions
    from hub_export.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-classifier"
    return export_model(cls_dir, out, card_options=CardOptions(base_model="owner/tiny-gpt"))
