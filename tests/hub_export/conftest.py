"""Fixtures for the hub_export tests: tiny models, a tiny tokenizer, a fake run directory, shared exports.

Everything is built here (no download): a byte-level BPE trained in-memory with `tokenizers`, 2-layer models of
hidden size 32. Exports are session-scoped because each one runs a self-check subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scratch_gpt import run_folder
from tests.conftest import make_tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TOKEN = "hf_TESTTOKEN_do_not_print_0123456789"
# A pretraining run's log_history as trainer_state.json holds it: train records, evaluations, a train record after
# the last evaluation.
LOG_HISTORY = [
    {"step": 10, "loss": 5.61, "learning_rate": 0.0003, "tokens_per_s": 1234.5},
    {"step": 10, "eval_loss": 5.5512, "eval_perplexity": 257.5},
    {"step": 20, "loss": 4.92, "learning_rate": 0.00025},
    {"step": 20, "eval_loss": 4.8763, "eval_perplexity": 131.17, "epoch": 0.5},
    {"step": 30, "loss": 4.31, "learning_rate": 0.0002},
]
# lm-evaluation-harness output as the evaluate command stores it under eval_results.json's "lm_eval" key.
LM_EVAL = {
    "results": {
        "hellaswag": {"alias": "hellaswag", "acc,none": 0.2625, "acc_stderr,none": 0.0139, "acc_norm,none": 0.27},
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.3125, "acc_stderr,none": 0.0164},
    },
    "config": {"model": "hf", "model_args": "pretrained=./some/local/model,trust_remote_code=True"},
}
# What classification finetuning records (Trainer.predict metrics with the eval_/test_ prefix, a confusion matrix).
CLS_EVAL = {"eval_loss": 0.6103, "eval_accuracy": 0.75, "eval_f1_macro": 0.7333, "eval_runtime": 1.25, "epoch": 2.0}
CLS_TEST = {
    "test_loss": 0.5521, "test_accuracy": 0.8125, "test_f1_macro": 0.7857, "test_samples_per_second": 88.1,
    "test_confusion_matrix": {"labels": ["negative", "neutral", "positive"],
                              "rows_true_columns_predicted": [[5, 1, 0], [1, 3, 0], [0, 1, 5]]},
}
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
    """The records a pretraining run leaves beside its final model, written through the run-folder contract."""
    run_folder.save_training_args(
        run_dir,
        {"dataset": "python-stdlib", "preset": "tiny", "learning_rate": 0.0003, "max_steps": 30,
         "output_dir": str(run_dir), "optim": {"warmup_steps": 5}},
    )
    run_folder.save_log_history(run_dir, LOG_HISTORY, global_step=30)
    run_folder.save_results(run_dir, "train", {"train_loss": 4.31, "train_runtime": 12.5, "epoch": 0.75})
    run_folder.save_results(run_dir, "eval", {"eval_loss": 4.8763, "eval_perplexity": 131.17})
    run_folder.save_results(run_dir, "eval", {run_folder.LM_EVAL_KEY: LM_EVAL})
    run_folder.file(run_dir, run_folder.LOSS_PLOT_FILE).write_bytes(PNG_1x1)


def write_classifier_records(run_dir: Path) -> None:
    """The records a classification finetuning leaves: settings, validation and test results, log history."""
    run_folder.save_training_args(run_dir, {"model_name_or_path": "owner/tiny-gpt", "dataset": "owner/sms-spam",
                                            "text_column": "text", "label_column": "label", "num_train_epochs": 2})
    run_folder.save_log_history(run_dir, [{"step": 4, "loss": 1.1}, {"step": 8, **CLS_EVAL}])
    run_folder.save_results(run_dir, "eval", CLS_EVAL)
    run_folder.save_results(run_dir, "test", CLS_TEST)


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
    """A pretraining run folder: final model + tokenizer + settings, log history, results, lm-eval, loss plot."""
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
    path = make_model_dir(tmp_path_factory.mktemp("cls") / "classifier", kind="cls", seed=1)
    write_classifier_records(path)
    return path


@pytest.fixture(scope="session")
def cls_export(cls_dir, tmp_path_factory):
    from hub_export.card import CardOptions
    from hub_export.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-classifier"
    return export_model(cls_dir, out, card_options=CardOptions(base_model="owner/tiny-gpt"))
