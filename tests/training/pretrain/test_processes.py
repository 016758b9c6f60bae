"""Pretraining across real processes: a SIGKILLed run resumes exactly; two DDP processes match one."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import pytest
import torch

from tests.training.pretrain.helpers import (
    REPO_ROOT, child_env, kill_hanging_child, make_blocks, make_tokenizer, tiny_args,
)
from scratch_gpt import run_folder
from training.pretrain.checkpoints import list_checkpoints
from training.pretrain.loop import train


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def _train_losses(run_dir):
    return [r["loss"] for r in run_folder.load_log_history(run_dir) if "loss" in r]


def test_sigkill_after_checkpoint_then_resume_equals_uninterrupted(tmp_path, caplog):
    torch.set_num_threads(1)
    steps, every = 10, 3
    full = train(tiny_args(tmp_path / "full", max_steps=steps, checkpoint_every=every),
                 datasets=make_blocks(), tokenizer=make_tokenizer()).run_dir

    part = tmp_path / "part"
    assert kill_hanging_child(part, steps, every, hang_after=7, timeout=240) == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(part)] == [3, 6]
    assert not (part / "model.safetensors").exists()
    # what a crash during a later save leaves behind: a .tmp folder, and a folder without the COMPLETE marker
    ckpts = part / "checkpoints"
    (ckpts / "checkpoint-00000009.tmp").mkdir()
    (ckpts / "checkpoint-00000008").mkdir()
    (ckpts / "checkpoint-00000008" / "model.safetensors").write_bytes(b"half")

    caplog.set_level(logging.WARNING, logger="training.pretrain.checkpoints")
    train(tiny_args(part, max_steps=steps, checkpoint_every=every, resume=True),
          datasets=make_blocks(), tokenizer=make_tokenizer())
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "checkpoint-00000009.tmp" in warnings and "checkpoint-00000008" in warnings
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
    assert _train_losses(part) == pytest.approx(_train_losses(full), abs=1e-6)
    # records the killed run logged after its checkpoint were dropped, not duplicated
    assert [r["step"] for r in run_folder.load_log_history(part)] == [
        r["step"] for r in run_folder.load_log_history(full)
    ]
    assert [s for s, _ in list_checkpoints(part, warn=False)] == [9, 10]


def test_two_processes_match_one_with_same_global_batch(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU = DDP over gloo, each process its own shard."""
    torch.set_num_threads(1)
    steps = 6
    one = train(tiny_args(tmp_path / "one", max_steps=steps, per_device_batch_size=8),
                datasets=make_blocks(), tokenizer=make_tokenizer()).run_dir
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tests.training.pretrain.helpers", "--out", str(two), "--steps", str(steps), "--batch", "4"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = run_folder.load_results(two)["train"]
    assert results["num_processes"] == 2  # really two processes, not two copies of one
    assert results["num_input_tokens_seen"] == run_folder.load_results(one)["train"]["num_input_tokens_seen"]
    assert _train_losses(two) == pytest.approx(_train_losses(one), abs=1e-4)
    a, b = _weights(one), _weights(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4, msg=key)
