"""Keep the best model (`--final-model best`, the default) and `--early-stopping-patience`: the run folder ends
with the weights of the lowest validation loss, recorded as Trainer records it; stale best folders go."""

from __future__ import annotations

import json

import pytest
import torch

from scratch_gpt import ScratchGPTForCausalLM, run_folder
from tests.training.pretrain.helpers import make_blocks, make_tokenizer, tiny_args
from training.pretrain.best import best_folder, evaluations_since_best, prune_best
from training.pretrain.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a constant, too-high learning rate: the validation loss is lowest after the first step and worse at the end
NOISY = dict(learning_rate=0.03, warmup_steps=0, min_lr_ratio=1.0, max_steps=8, eval_every=1)


def _evals(run_dir):
    return {r["step"]: r["eval_loss"] for r in run_folder.load_log_history(run_dir) if "eval_loss" in r}


def _held_out_loss(run_dir, rows: int) -> float:
    """The saved model's loss on the validation blocks the evaluations used (computed here, from the folder)."""
    model = ScratchGPTForCausalLM.from_pretrained(run_dir).eval()
    ids = torch.tensor(make_blocks()["validation"]["input_ids"][:rows])
    with torch.no_grad():  # the loop averages per-batch means over equal batches: the same as one mean here
        return torch.stack([model(input_ids=b, labels=b).loss for b in ids.split(8)]).mean().item()


def test_final_model_is_the_best_evaluation_and_trainer_state_records_it(tmp_path):
    out = tmp_path / "best"
    metrics = train(tiny_args(out, **NOISY), datasets=make_blocks(), tokenizer=make_tokenizer()).metrics
    evals = _evals(out)
    best_step = min(evals, key=evals.get)
    assert best_step < 8 and evals[8] > evals[best_step]  # the run's last model is not its best
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == evals[best_step] and state["best_global_step"] == best_step
    assert state["best_model_checkpoint"] == str(best_folder(out, best_step))
    assert [p.name for p in (out / "best").iterdir()] == [run_folder.checkpoint_name(best_step)]
    held_out = _held_out_loss(out, rows=16)
    assert held_out == pytest.approx(evals[best_step], abs=1e-5)  # the saved model is the best one
    assert metrics["eval_loss"] == evals[best_step] == run_folder.load_results(out)["eval"]["eval_loss"]
    last = run_folder.load_trainer_state(out / "checkpoints" / run_folder.checkpoint_name(8))
    assert last["best_global_step"] == best_step and last["step"] == 8
    from hub_export.card import read_run_records

    card = read_run_records(out)  # the model card names the saved model's evaluation, not the last one
    assert card.validation_step == best_step and card.validation["eval_loss"] == evals[best_step]


def test_final_model_last_keeps_the_last_weights(tmp_path):
    out = tmp_path / "last"
    metrics = train(tiny_args(out, final_model="last", **NOISY), datasets=make_blocks(),
                    tokenizer=make_tokenizer()).metrics
    evals = _evals(out)
    assert _held_out_loss(out, rows=16) == pytest.approx(evals[8], abs=1e-5)
    assert metrics["eval_loss"] == evals[8] and not (out / "best").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == min(evals.values()) and "best_model_checkpoint" not in state


def test_early_stopping_ends_the_run_after_patience_evaluations(tmp_path):
    out = tmp_path / "early"
    metrics = train(tiny_args(out, early_stopping_patience=2, **NOISY), datasets=make_blocks(),
                    tokenizer=make_tokenizer()).metrics
    evals = _evals(out)
    best_step = min(evals, key=evals.get)
    assert metrics["global_step"] == best_step + 2 < 8  # two evaluations without a new best, then the end
    assert evaluations_since_best(run_folder.load_log_history(out), best_step) == 2
    assert [s for s in run_folder.list_checkpoints(out)][-1].name == run_folder.checkpoint_name(best_step + 2)
    assert _held_out_loss(out, rows=16) == pytest.approx(evals[best_step], abs=1e-5)


def test_prune_best_keeps_what_the_state_or_the_newest_checkpoint_names(tmp_path):
    for step in (1, 2, 5, 9):
        best_folder(tmp_path, step).mkdir(parents=True)
    for step, best in ((3, 1), (6, 2)):
        checkpoint = run_folder.checkpoints_dir(tmp_path) / run_folder.checkpoint_name(step)
        checkpoint.mkdir(parents=True)
        run_folder.write_json(checkpoint, run_folder.TRAINER_STATE_FILE, {"step": step, "best_step": best})
        (checkpoint / run_folder.COMPLETE_MARKER).write_text(f"step {step}\n")
    prune_best(tmp_path, 5)  # e.g. a run resumed from step 6 whose killed part had saved a best at step 9
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [
        run_folder.checkpoint_name(2), run_folder.checkpoint_name(5)
    ]


def test_without_validation_data_the_run_keeps_the_last_model_and_never_stops_early(tmp_path):
    out = tmp_path / "no-val"
    metrics = train(tiny_args(out, early_stopping_patience=1, **NOISY), datasets=make_blocks(n_val=0),
                    tokenizer=make_tokenizer()).metrics
    assert metrics["global_step"] == 8 and metrics["eval_loss"] != metrics["eval_loss"]  # NaN: nothing to select on
    state = json.loads((out / "trainer_state.json").read_text())
    assert "best_metric" not in state and not (out / "best").exists()
