"""Issue 15 in the real loop: a --max-time run ends at the minimum learning rate (fake clock), also across a
resume; the sample prompt comes from the validation split; --sampling offset keeps SIGKILL + --resume
bit-identical and 2-process sharding equal to one process."""

from __future__ import annotations

import signal

import pytest
import torch

from scratch_gpt import run_folder
from tests.training.pretrain.helpers import (
    kill_hanging_child, launch_two_processes, make_blocks, make_tokenizer, tiny_args,
)
from training.pretrain import loop
from training.pretrain.loop import train
from training.pretrain.monitor import default_prompt

STEP_S = 0.25  # fake seconds per optimizer step


class _Stop(Exception):
    pass


@pytest.fixture
def fake_clock(monkeypatch):
    """Training time advances STEP_S per optimizer step started, nothing else (evaluation, saving) counts."""
    started = {"steps": 0}

    class FakeClock:
        def __init__(self, before: float) -> None:
            self.before, self.start = before, started["steps"]

        def elapsed(self) -> float:
            return self.before + STEP_S * (started["steps"] - self.start)

    real_step = loop.train_step

    def counting_step(*args, **kwargs):
        started["steps"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "Clock", FakeClock)
    monkeypatch.setattr(loop, "train_step", counting_step)
    return started


def _history(run_dir):
    return run_folder.load_log_history(run_dir)


def _lrs(run_dir):
    return [(r["step"], r["learning_rate"]) for r in _history(run_dir) if "learning_rate" in r]


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def _budget_args(out, **extra):
    # 5.1 s of fake time at 0.25 s a step: 21 steps (the 21st sees 5.25 s >= 5.1 s), and no step cap
    return tiny_args(out, max_steps=None, max_time="5.1s", warmup_steps=3, min_lr_ratio=0.1, **extra)


def test_max_time_run_ends_at_minimum_lr_also_across_a_resume(tmp_path, fake_clock):
    torch.set_num_threads(1)
    full = train(_budget_args(tmp_path / "full"), datasets=make_blocks(), tokenizer=make_tokenizer())
    lrs = _lrs(full.run_dir)
    assert full.metrics["global_step"] == 21 and [s for s, _ in lrs] == list(range(1, 22))
    peak = 3e-3
    assert lrs[-1][1] == pytest.approx(0.1 * peak)  # the last step runs at the minimum
    assert lrs[2][1] == pytest.approx(peak)  # warmup done
    decay = [lr for _, lr in lrs[2:]]
    assert all(a >= b for a, b in zip(decay, decay[1:])) and decay[len(decay) // 2] > 0.4 * peak

    def stop_after_12(step, record):
        if step == 12:
            raise _Stop

    part = tmp_path / "part"
    with pytest.raises(_Stop):
        train(_budget_args(part, checkpoint_every=5), datasets=make_blocks(), tokenizer=make_tokenizer(),
              callbacks=[stop_after_12])
    resumed = train(_budget_args(part, checkpoint_every=5, resume=True), datasets=make_blocks(),
                    tokenizer=make_tokenizer())
    assert resumed.metrics["global_step"] == 21
    assert _lrs(part) == lrs  # the plan continued exactly from the checkpoint at step 10
    a, b = _weights(full.run_dir), _weights(part)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)


def test_sample_prompt_comes_from_the_validation_split(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    seen = []
    real = loop.evaluate_and_sample.__globals__["sample_continuations"]

    def spy(model, tokenizer, prompt, *args):
        seen.append(prompt)
        return real(model, tokenizer, prompt, *args)

    monkeypatch.setitem(loop.evaluate_and_sample.__globals__, "sample_continuations", spy)
    blocks, tok = make_blocks(), make_tokenizer()
    out = train(tiny_args(tmp_path / "a", max_steps=2, num_samples=1, sample_max_new_tokens=4),
                datasets=blocks, tokenizer=tok)
    expected = default_prompt(blocks["validation"][0]["input_ids"], tok)
    assert seen == [expected] and expected and expected != "def "
    assert len(out.samples) == 1
    train(tiny_args(tmp_path / "b", max_steps=2, num_samples=1, sample_max_new_tokens=4, sample_prompt="class "),
          datasets=blocks, tokenizer=tok)
    assert seen[-1] == "class "  # an explicit prompt wins


def _run_child(out, steps, every, hang_after):
    return kill_hanging_child(out, steps, every, hang_after, "--sampling", "offset")


def test_offset_sampling_sigkill_then_resume_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    steps, every = 16, 5  # 95 windows / 8 = 11 batches an epoch: the run crosses into a second offset
    full = train(tiny_args(tmp_path / "full", max_steps=steps, checkpoint_every=every, sampling="offset"),
                 datasets=make_blocks(), tokenizer=make_tokenizer())
    grid = train(tiny_args(tmp_path / "grid", max_steps=steps, sampling="grid"), datasets=make_blocks(),
                 tokenizer=make_tokenizer())
    part = tmp_path / "part"
    assert _run_child(part, steps, every, hang_after=13) == -signal.SIGKILL
    train(tiny_args(part, max_steps=steps, checkpoint_every=every, sampling="offset", resume=True),
          datasets=make_blocks(), tokenizer=make_tokenizer())
    a, b, g = _weights(full.run_dir), _weights(part), _weights(grid.run_dir)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
    assert any(not torch.equal(a[k], g[k]) for k in a)  # the offset windows really differ from the grid


def test_offset_sampling_two_processes_match_one(tmp_path):
    """Each process takes its half of every global batch of the shifted windows: the same run as one process."""
    torch.set_num_threads(1)
    steps = 14  # past the first epoch (11 global batches of 8 of the 95 windows)
    one = train(tiny_args(tmp_path / "one", max_steps=steps, per_device_batch_size=8, sampling="offset"),
                datasets=make_blocks(), tokenizer=make_tokenizer())
    two = tmp_path / "two"
    proc = launch_two_processes(two, steps, "--sampling", "offset")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_folder.load_results(two)["train"]["num_processes"] == 2
    losses = lambda d: [r["loss"] for r in _history(d) if "loss" in r]  # noqa: E731
    assert losses(two) == pytest.approx(losses(one.run_dir), abs=1e-4)
    a, b = _weights(one.run_dir), _weights(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4, msg=key)
