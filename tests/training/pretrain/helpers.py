"""Shared pieces for the pretraining tests, also runnable as a training child process.

``python -m tests.training.pretrain.helpers --out DIR [...]`` trains the tiny test model on synthetic blocks;
the SIGKILL and ``accelerate launch`` tests run it in a subprocess so that a kill or a second process is real.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
VOCAB = 300
BLOCK = 32

TEXTS = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n\nclass C{i}:\n    pass\n" for i in range(300)]


@functools.lru_cache(maxsize=1)
def make_tokenizer():
    from training.data.tokenizer import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=VOCAB, model_max_length=BLOCK)


def make_blocks(n_train: int = 96, n_val: int = 16, block: int = BLOCK, seed: int = 0):
    """Learnable synthetic blocks: short repeating token patterns with a random phase and period."""
    import torch
    from datasets import Dataset, DatasetDict

    vocab = len(make_tokenizer())
    g = torch.Generator().manual_seed(seed)

    def rows(n: int) -> list[list[int]]:
        out = []
        for _ in range(n):
            period = int(torch.randint(2, 6, (1,), generator=g))
            base = torch.randint(2, vocab, (period,), generator=g)
            out.append(base.repeat(block // period + 1)[:block].tolist())
        return out

    return DatasetDict(
        train=Dataset.from_dict({"input_ids": rows(n_train)}),
        validation=Dataset.from_dict({"input_ids": rows(n_val)}),
    )


def tiny_args(out_dir, **overrides):
    from training.pretrain.arguments import resolve_arguments

    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        block_size=BLOCK,
        vocab_size=VOCAB,
        per_device_batch_size=8,
        learning_rate=3e-3,
        warmup_steps=2,
        max_steps=12,
        eval_every=1000,
        eval_batches=2,
        checkpoint_every=0,
        log_every=1,
        num_samples=0,
        output_dir=str(out_dir),
        seed=0,
        max_time=None,
        # fp32: these tests compare numbers with fp32 references (`auto`, the default, is bf16 on CPUs with
        # bf16 units); test_pretrain.py tests `auto` itself
        mixed_precision="no",
    )
    values.update(overrides)
    return resolve_arguments(overrides=values)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    return env


def launch_two_processes(out, steps: int, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """This module's training run (``main``) under ``accelerate launch`` with 2 CPU processes (gloo), 4 rows each."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tests.training.pretrain.helpers", "--out", str(out), "--steps", str(steps), "--batch", "4", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)


def kill_hanging_child(out, steps: int, every: int, hang_after: int, *extra: str, timeout: float = 300) -> int:
    """Run this module as a training child into ``out`` until it hangs after step ``hang_after``, SIGKILL it
    there (a real crash, mid-run) and return its exit code; the test fails if it exits early or never hangs."""
    import pytest

    cmd = [sys.executable, "-m", "tests.training.pretrain.helpers", "--out", str(out), "--steps", str(steps),
           "--checkpoint-every", str(every), "--hang-after", str(hang_after), *extra]
    child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not Path(out, "HANGING").exists():
            if child.poll() is not None:
                pytest.fail(f"training child exited early ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"training child did not reach step {hang_after} in time")
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--hang-after", type=int, default=None, help="after this step (and its checkpoint) sleep")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sampling", default=None, help="--sampling of the run (default: the option's default)")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    ns = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from training.pretrain.loop import train

    args = tiny_args(
        ns.out, max_steps=ns.steps, per_device_batch_size=ns.batch, checkpoint_every=ns.checkpoint_every,
        resume=ns.resume, optimizer=ns.optimizer, eval_every=ns.eval_every, learning_rate=ns.learning_rate,
        **({} if ns.sampling is None else {"sampling": ns.sampling}),
    )

    def hang(step, record):
        if ns.hang_after is not None and step == ns.hang_after:
            Path(ns.out, "HANGING").write_text(str(step))
            while True:  # wait for the parent's SIGKILL
                time.sleep(1)

    train(args, datasets=make_blocks(), tokenizer=make_tokenizer(), callbacks=[hang])
    return 0


if __name__ == "__main__":
    sys.exit(main())
