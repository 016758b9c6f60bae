"""Issue 11, acceptance 2: a SIGKILL in the middle of a command's final write never leaves a mixed folder.

Each case runs the real CLI in a subprocess with ``SCRATCH_GPT_CRASH_AT=<point>``
(:func:`scratch_gpt.safe_output.crash_point`), which kills the process with SIGKILL at that point of its
all-or-nothing write (a few points per command: every case is a full CLI process on a small machine). Afterwards the output folder must be absent, the old complete result (byte for byte) or
the new complete result (loads, and holds none of the old result's files) -- never a mix. When nothing complete
was left, a plain rerun (no ``--overwrite``) succeeds and leaves no staging folder behind.

Points: ``before-fsync`` (all files written to the staging folder, nothing synced), ``before-swap`` (synced,
not yet renamed), ``after-swap`` (renamed in, the old result not yet deleted), ``train-model-written`` (the
final weights staged, the records not yet). ``export`` has its own crash tests in tests/hub_export/test_crash.py
(same hook, its own ``export-weights-written`` point).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scratch_gpt.safe_output import CRASH_ENV

OLD_ONLY = "OLD_RESULT_ONLY.txt"  # a file only the old result holds: finding it beside new files means a mix
KILLED = -signal.SIGKILL
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []  # keep the cwd off sys.path where Python can


def run_cli(args: list[str], cwd: Path, crash_at: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -P -m scratch_gpt_cli ARGS`` in ``cwd`` (a scratch folder), optionally killed at ``crash_at``."""
    env = {**os.environ, "SCRATCH_GPT_MALLOC_TUNING": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    cmd = [sys.executable, *SAFE_PATH, "-m", "scratch_gpt_cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def assert_old_or_new(out: Path, old: dict[str, str] | None, is_new_complete) -> str:
    """``absent`` | ``old`` | ``new``; fails on anything else (a mix, a half-written new result)."""
    if not out.exists():
        assert old is None, "the old complete result disappeared"
        return "absent"
    now = tree(out)
    if old is not None and now == old:
        return "old"
    assert OLD_ONLY not in now, f"old and new files mixed in {out}: {sorted(now)}"
    is_new_complete(out)
    return "new"


def seed_old(out: Path, make) -> dict[str, str]:
    """An old complete result at ``out`` (written by ``make``), marked with a file only it holds."""
    make(out)
    (out / OLD_ONLY).write_text("from the previous run\n")
    return tree(out)


def _tiny_gpt2(path: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=320, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)


def _loads_causal_lm(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import scratch_gpt  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


# -- convert-gpt2 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_src(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash_src") / "gpt2"
    _tiny_gpt2(path)
    return path


@pytest.mark.parametrize("point", ["before-swap"])
def test_convert_killed_before_the_swap_leaves_nothing_and_reruns(point, gpt2_src, tmp_path):
    out = tmp_path / "converted"
    killed = run_cli(["convert-gpt2", str(gpt2_src), str(out)], tmp_path, crash_at=point)
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    assert assert_old_or_new(out, None, _loads_causal_lm) == "absent"
    rerun = run_cli(["convert-gpt2", str(gpt2_src), str(out)], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert assert_old_or_new(out, None, _loads_causal_lm) == "new"
    assert leftovers(out) == []  # the killed run's staging folder was cleaned by the rerun


@pytest.mark.parametrize("point, expected", [("before-fsync", "old"), ("after-swap", "new")])
def test_convert_overwrite_killed_is_old_or_new_never_mixed(point, expected, gpt2_src, tmp_path):
    out = tmp_path / "converted"
    old = seed_old(out, _tiny_gpt2)  # a GPT-2 folder stands in for any previous complete result
    killed = run_cli(["convert-gpt2", str(gpt2_src), str(out), "--overwrite"], tmp_path, crash_at=point)
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    assert assert_old_or_new(out, old, _loads_causal_lm) == expected


# -- train-tokenizer ---------------------------------------------------------------------------------------


def test_train_tokenizer_killed_before_the_swap_reruns_without_overwrite(corpus, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    args = ["train-tokenizer", str(out), "--dataset", str(corpus), "--vocab-size", "300"]
    killed = run_cli(args, tmp_path, crash_at="before-swap")
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    assert not out.exists()
    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(AutoTokenizer.from_pretrained(out)) == 300 and leftovers(out) == []


# -- train -------------------------------------------------------------------------------------------------

TRAIN = ["train", "--preset", "tiny", "--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads", "2",
         "--block-size", "32", "--vocab-size", "300", "--per-device-batch-size", "4", "--max-steps", "2",
         "--eval-every", "1000", "--eval-batches", "1", "--num-samples", "0", "--no-malloc-tuning"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash_corpus") / "corpus"
    path.mkdir()
    stdlib = Path(shutil.__file__).parent
    for name in ("textwrap.py", "glob.py", "fnmatch.py", "shlex.py"):
        shutil.copy(stdlib / name, path / name)
    return path


def _trained_run(folder: Path) -> None:
    _loads_causal_lm(folder)
    from scratch_gpt import run_folder

    assert run_folder.has_tokenizer(folder) and run_folder.load_results(folder).get("train")


@pytest.mark.parametrize("point", ["train-model-written", "before-swap", "after-swap"])
def test_train_killed_in_its_final_save(point, corpus, tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN, "--dataset", str(corpus), "--output-dir", str(out)]
    killed = run_cli(args, tmp_path, crash_at=point)
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    if run_folder_has_model(out):
        assert assert_old_or_new(out, None, _trained_run) == "new"
        return
    # no model: what is left is the start of the run, resumable from its final checkpoint
    from scratch_gpt import run_folder

    assert not (out / run_folder.CONFIG_FILE).exists() and not (out / run_folder.results_file("train")).exists()
    again = args + (["--resume"] if run_folder.latest_checkpoint(out) else [])
    rerun = run_cli(again, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _trained_run(out)
    assert leftovers(out) == []


def test_failed_first_train_does_not_block_a_plain_rerun(corpus, tmp_path, capsys):
    import scratch_gpt_cli

    out = tmp_path / "run"
    args = [*TRAIN, "--dataset", str(corpus), "--output-dir", str(out)]
    assert scratch_gpt_cli.main([*args, "--debug-nan-step", "1"]) == 1  # fails after the run folder was started
    assert "nan" in capsys.readouterr().err
    assert scratch_gpt_cli.main(args) == 0  # no --overwrite needed: nothing complete was left
    _trained_run(out)
    (out / "notes.txt").write_text("mine")  # a folder holding anything else is still protected
    assert scratch_gpt_cli.main(args) == 1 and "--overwrite" in capsys.readouterr().err


def run_folder_has_model(folder: Path) -> bool:
    from scratch_gpt import run_folder

    return run_folder.has_config(folder) and run_folder.has_weights(folder)


def test_train_overwrite_killed_before_swap_keeps_the_old_run(corpus, tmp_path):
    out = tmp_path / "run"
    old = seed_old(out, lambda p: (p.mkdir(), (p / "config.json").write_text(json.dumps({"old": True}))))
    args = [*TRAIN, "--dataset", str(corpus), "--output-dir", str(out), "--overwrite"]
    killed = run_cli(args, tmp_path, crash_at="before-swap")
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert assert_old_or_new(out, old, _trained_run) == "old"


def test_train_overwrite_replaces_the_old_run_only_when_the_new_one_is_complete(corpus, tmp_path):
    import scratch_gpt_cli

    out = tmp_path / "run"
    seed_old(out, lambda p: (p.mkdir(), (p / "checkpoints" / "checkpoint-00000009").mkdir(parents=True),
                             (p / "checkpoints" / "checkpoint-00000009" / "COMPLETE").write_text("")))
    args = [*TRAIN, "--dataset", str(corpus), "--output-dir", str(out), "--overwrite"]
    assert scratch_gpt_cli.main([*args, "--debug-nan-step", "1"]) == 1  # a failed overwrite keeps the old run
    assert (out / OLD_ONLY).is_file()
    assert scratch_gpt_cli.main(args) == 0
    assert assert_old_or_new(out, None, _trained_run) == "new"
    assert not (out / "checkpoints" / "checkpoint-00000009").exists()  # nothing of the old run carried over
    assert leftovers(out) == []  # no work or staging folder left beside it


# -- finetune (export's crash tests live in tests/hub_export/test_crash.py) -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    import torch

    from scratch_gpt import ScratchGPTForCausalLM
    from tests.conftest import TINY_TEXTS, make_tiny_config
    from training.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("crash_base") / "model"
    torch.manual_seed(0)
    ScratchGPTForCausalLM(make_tiny_config(max_position_embeddings=256)).save_pretrained(path)
    train_tokenizer(TINY_TEXTS, vocab_size=320, min_frequency=2, model_max_length=256).save_pretrained(path)
    return path


def _classifier(folder: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    import scratch_gpt  # noqa: F401

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 2)


@pytest.mark.parametrize("point", ["before-swap"])
def test_finetune_classify_killed_during_its_write(point, base_model, tmp_path):
    rows = [f"{'win cash now' if i % 2 else 'see you soon'} {i},{'spam' if i % 2 else 'ham'}" for i in range(40)]
    data = tmp_path / "sms.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "clf"
    args = ["finetune", "classify", str(base_model), "--dataset", str(data), "-o", str(out), "--max-steps", "2",
            "--batch-size", "8"]
    killed = run_cli(args, tmp_path, crash_at=point)
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    if out.exists():  # Trainer's checkpoints, nothing else: no model that looks complete
        assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
    resumable = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    rerun = run_cli(args + (["--resume-from-checkpoint"] if resumable else []), tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert assert_old_or_new(out, None, _classifier) == "new"
    assert leftovers(out) == []


def test_a_full_disk_for_the_plot_and_the_history_is_a_warning_not_the_end(corpus, tmp_path, monkeypatch, caplog):
    """Non-essential outputs (the loss plot, the log history written during the run) never end a run."""
    import errno
    import logging

    import scratch_gpt_cli
    from training.pretrain import records
    from training.shared import plot

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[-1]))

    real_history = records.write_history

    def history(run_dir, *args, **kwargs):  # the run folder's disk is full; the final staging succeeds
        if not Path(run_dir).name.startswith("."):
            full(run_dir)
        return real_history(run_dir, *args, **kwargs)

    monkeypatch.setattr(plot, "plot_losses", full)
    monkeypatch.setattr(records, "write_history", history)
    caplog.set_level(logging.WARNING)
    out = tmp_path / "run"
    assert scratch_gpt_cli.main([*TRAIN, "--dataset", str(corpus), "--output-dir", str(out)]) == 0
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "could not draw the loss plot" in warnings and "could not write the log history" in warnings
    assert run_folder_has_model(out)


def test_finetune_overwrite_killed_before_swap_keeps_the_old_result(base_model, tmp_path):
    rows = [f"{'win cash now' if i % 2 else 'see you soon'} {i},{'spam' if i % 2 else 'ham'}" for i in range(40)]
    data = tmp_path / "sms.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "clf"
    old = seed_old(out, lambda p: (p.mkdir(), (p / "config.json").write_text(json.dumps({"old": True}))))
    args = ["finetune", "classify", str(base_model), "--dataset", str(data), "-o", str(out), "--max-steps", "2",
            "--batch-size", "8", "--overwrite"]
    killed = run_cli(args, tmp_path, crash_at="before-swap")
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert assert_old_or_new(out, old, _classifier) == "old"
    import scratch_gpt_cli

    assert scratch_gpt_cli.main([*args, "--keep-checkpoints"]) == 0  # the rerun replaces it, keeping its checkpoints
    assert assert_old_or_new(out, old, _classifier) == "new"
    assert (out / "checkpoints").is_dir() and leftovers(out) == []
