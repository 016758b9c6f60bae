"""Plan for the data: planned epochs from the step or time plan and the training split, a one-line warning and
early stopping beyond MANY_EPOCHS, a shorter, annealed run beyond the epoch cap; and the closing hint of
`scratch-gpt train` prompts with the corpus."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from scratch_gpt import run_folder
from tests.training.pretrain.helpers import make_blocks, make_tokenizer, tiny_args
from training.pretrain.commands import closing_hint
from training.pretrain.budget import lr_multiplier
from training.pretrain.loop import TrainingDivergedError, train
from training.pretrain.plan import (
    MANY_EPOCHS, MANY_EPOCHS_CAP, MANY_EPOCHS_PATIENCE, TIME_PLAN_AFTER_STEPS, plan_data,
)
from training.pretrain.setup import validation_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(**values):
    base = dict(early_stopping_patience=None, gradient_accumulation_steps=1, final_model="best", max_epochs=None)
    return SimpleNamespace(**{**base, **values})


def test_planned_epochs_and_what_many_turns_on(caplog):
    caplog.set_level(logging.INFO, logger="training.pretrain.plan")
    few = plan_data(_args(), steps=40, batches_per_epoch=12, log=True)  # 3.3 epochs
    assert (few.epochs, few.many, few.early_stopping_patience, few.mitigations) == (3.33, False, None, [])
    assert "40 steps = 3.33 epochs" in caplog.text and "repeated data" not in caplog.text
    many = plan_data(_args(gradient_accumulation_steps=2), steps=40, batches_per_epoch=12, log=True)
    assert many.epochs == pytest.approx(80 / 12, abs=0.01) and many.epochs > MANY_EPOCHS and many.many
    assert many.early_stopping_patience == MANY_EPOCHS_PATIENCE
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "6.67 planned epochs is more than 4" in warning[0]
    assert "early stopping after 3 evaluations" in warning[0] and "best evaluation" in warning[0]
    given = plan_data(_args(early_stopping_patience=7, final_model="last", max_epochs=0), steps=400,
                      batches_per_epoch=12, log=False)
    assert given.many and given.early_stopping_patience == 7 and given.mitigations == []  # the user's choice stays
    off = plan_data(_args(early_stopping_patience=0), steps=400, batches_per_epoch=12, log=False)
    assert off.many and off.early_stopping_patience == 0 and not any("early stopping" in m for m in off.mitigations)
    assert plan_data(_args(), steps=400, batches_per_epoch=None, log=False).epochs is None  # a stream
    pending = plan_data(_args(), steps=None, batches_per_epoch=12, log=False)
    assert not pending.known and pending.epochs is None


def test_beyond_the_epoch_cap_the_plan_shortens_the_run(caplog):
    caplog.set_level(logging.INFO, logger="training.pretrain.plan")
    over = MANY_EPOCHS_CAP * 2
    steps = int(over * 12 / 2)  # 12 batches an epoch, 2 micro-batches a step
    capped = plan_data(_args(gradient_accumulation_steps=2), steps=steps, batches_per_epoch=12, log=True)
    assert capped.many and capped.max_steps == int(MANY_EPOCHS_CAP * 12 / 2) < steps
    assert any("a shorter run" in m for m in capped.mitigations) and "a shorter run" in caplog.text
    within = plan_data(_args(), steps=int(MANY_EPOCHS_CAP * 12), batches_per_epoch=12, log=False)
    assert within.many and within.max_steps is None  # exactly at the cap: nothing to cut
    assert plan_data(_args(max_epochs=0), steps=steps, batches_per_epoch=12, log=False).max_steps is None
    asked = plan_data(_args(max_epochs=2.5), steps=40, batches_per_epoch=12, log=False)  # 3.3 epochs, not many
    assert not asked.many and asked.max_steps == 30 and asked.early_stopping_patience is None


@pytest.mark.parametrize("budget", [None, "60s"], ids=["steps", "time"])
def test_a_capped_run_ends_at_the_cap_with_its_schedule_annealed(tmp_path, budget):
    out = tmp_path / "capped"
    # 12 batches an epoch: 2 epochs are 24 steps of the 60 planned, or of the ~minute a time budget allows
    args = tiny_args(out, max_steps=None if budget else 60, max_time=budget, max_epochs=2.0, min_lr_ratio=0.1,
                     warmup_steps=2, early_stopping_patience=0, sampling="grid")
    metrics = train(args, datasets=make_blocks(), tokenizer=make_tokenizer()).metrics
    history = [r for r in run_folder.load_log_history(out) if "learning_rate" in r]
    assert metrics["global_step"] == 24 and history[-1]["step"] == 24
    # the cosine ends with the run: a step plan's last step is one cosine step above the minimum (the minimum
    # is step 24's, which is not run), a time plan's last step is at the minimum
    last = lr_multiplier(23, 2, 24, 0.1) if budget is None else 0.1
    assert history[-1]["learning_rate"] == pytest.approx(3e-3 * last)
    assert max(r["learning_rate"] for r in history) == pytest.approx(3e-3, rel=0.05)


def test_a_resumed_time_planned_run_keeps_its_cap(tmp_path):
    out = tmp_path / "resumed"
    values = dict(max_steps=None, max_time="60s", max_epochs=2.0, min_lr_ratio=0.1, early_stopping_patience=0,
                  sampling="grid", checkpoint_every=12)
    with pytest.raises(TrainingDivergedError):  # stops at step 18: the plan (cap at 24) and step 12 are saved
        train(tiny_args(out, debug_nan_step=18, **values), datasets=make_blocks(), tokenizer=make_tokenizer())
    metrics = train(tiny_args(out, resume=True, **values), datasets=make_blocks(), tokenizer=make_tokenizer()).metrics
    history = [r for r in run_folder.load_log_history(out) if "learning_rate" in r]
    assert metrics["global_step"] == 24 and history[-1]["learning_rate"] == pytest.approx(3e-3 * 0.1)


def test_a_many_epoch_run_says_so_and_stops_early_with_the_best_model(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.pretrain")
    out = tmp_path / "many"
    # 96 blocks / 8 = 12 batches an epoch: 60 steps are 5 epochs; a too-high constant rate makes it noisy
    args = tiny_args(out, max_steps=60, eval_every=1, learning_rate=0.03, warmup_steps=0, min_lr_ratio=1.0,
                     sampling="grid")
    metrics = train(args, datasets=make_blocks(), tokenizer=make_tokenizer()).metrics
    assert "60 steps = 5 epochs" in caplog.text and "5 planned epochs is more than 4" in caplog.text
    evals = {r["step"]: r["eval_loss"] for r in run_folder.load_log_history(out) if "eval_loss" in r}
    best = min(evals, key=evals.get)
    assert metrics["global_step"] == best + MANY_EPOCHS_PATIENCE < 60 and metrics["eval_loss"] == evals[best]


def test_a_time_planned_run_is_planned_once_its_step_time_is_known(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.pretrain.plan")
    out = tmp_path / "timed"
    train(tiny_args(out, max_steps=None, max_time="3s", eval_every=10_000), datasets=make_blocks(),
          tokenizer=make_tokenizer())
    steps = run_folder.load_results(out)["train"]["global_step"]
    planned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data plan")]
    assert steps > TIME_PLAN_AFTER_STEPS and len(planned) == 1 and "epochs of the training split" in planned[0]


def test_closing_hint_prompts_with_the_first_words_of_the_corpus(tmp_path):
    assert closing_hint("runs/play", "  ROMEO. But soft, what light\nthrough yonder") == (
        "try: scratch-gpt generate runs/play --prompt 'ROMEO. But soft, what '"
    )
    assert closing_hint("runs/x y", "it's") == "try: scratch-gpt generate 'runs/x y' --prompt 'it'\"'\"'s '"
    assert closing_hint("runs/tiny", " \n") == "try: scratch-gpt generate runs/tiny"
    blocks = make_blocks()["validation"].with_format("torch", columns=["input_ids"])
    prompt = validation_prompt(blocks, make_tokenizer())
    first = make_tokenizer().decode(blocks[0]["input_ids"][:8].tolist())
    assert prompt == first


def test_train_command_ends_with_a_prompt_from_the_corpus(tmp_path, capsys):
    from scratch_gpt_cli import main

    corpus = tmp_path / "plays"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"act{i}.txt").write_text("".join(
            f"ROMEO. Scene {i} line {j}: but soft, what light through yonder window breaks.\n" for j in range(40)
        ))
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(corpus), "--validation-fraction", "0.25", "--vocab-size", "300",
                 "--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads", "2", "--block-size",
                 "32", "--per-device-batch-size", "4", "--max-steps", "2", "--num-samples", "0", "--eval-batches",
                 "1", "--max-time", "none", "--output-dir", str(out), "--no-malloc-tuning"]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint.startswith(f"try: scratch-gpt generate {out} --prompt '") and "def" not in hint
    assert hint.split("--prompt ")[1].strip("'").split()[0] in {"ROMEO.", "ROMEO"}
