"""Keep the best model: the weights of the lowest validation loss, saved when reached; early stopping.

With ``--final-model best`` (the default), every evaluation that lowers the validation loss saves the model
(``save_pretrained``, staged and swapped in) into ``best/checkpoint-N`` of the run folder, whether or not a
checkpoint is kept at that step, and the finished run folder's model is that one, as Trainer's
``load_best_model_at_end``: a longer run never ends with a worse model than a shorter one. ``trainer_state.json``
records ``best_metric`` (the validation loss), ``best_global_step`` and ``best_model_checkpoint`` (the folder).

Resuming stays exact: the loop state (in each checkpoint) names its best step, a best folder is removed only
when neither the current state nor the newest complete checkpoint names it, and a resumed run first drops the
best folders that only the killed run's later steps had named. ``--early-stopping-patience N`` ends the run after N
evaluations in a row without a new best.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder
from scratch_gpt.safe_output import staged_output

from .checkpoints import list_checkpoints, load_state
from .distributed import full_state_dict

__all__ = ["BEST_DIR", "best_fields", "best_folder", "best_state_dict", "evaluations_since_best", "keep_best",
           "prune_best"]

logger = logging.getLogger(__name__)

BEST_DIR = "best"


def best_folder(run_dir: Path, step: int) -> Path:
    """Where the best model of ``step`` is kept: ``best/checkpoint-N``."""
    return Path(run_dir) / BEST_DIR / run_folder.checkpoint_name(step)


def best_fields(state, run_dir: Path, saved: bool) -> dict[str, Any]:
    """``best_metric``, ``best_global_step`` and (when the best model is ``saved``) ``best_model_checkpoint``
    for ``trainer_state.json``; empty before the first finite evaluation."""
    if state.best_step is None:
        return {}
    folder = {"best_model_checkpoint": str(best_folder(run_dir, state.best_step))} if saved else {}
    return {"best_metric": state.best_metric, "best_global_step": state.best_step, **folder}


def evaluations_since_best(log_history: list[dict[str, Any]], best_step: int | None) -> int:
    """Evaluations logged after the best one (all of them when there is no best yet)."""
    return sum(1 for r in log_history if "eval_loss" in r and (best_step is None or r["step"] > best_step))


def keep_best(run, job, state, metrics: dict[str, Any]) -> bool:
    """After an evaluation: save the model when its loss is the lowest so far (``--final-model best``); return
    whether early stopping ends the run. Called on every process (the loss is the same on all)."""
    loss = metrics.get("eval_loss", float("nan"))
    if math.isfinite(loss) and (state.best_metric is None or loss < state.best_metric):
        state.best_metric, state.best_step = float(loss), state.step
        if run.args.final_model == "best":
            save_best(run, job, state.step)
    patience = job.plan.early_stopping_patience if job.plan is not None else run.args.early_stopping_patience
    stale = evaluations_since_best(state.log_history, state.best_step)
    if patience and state.best_step is not None and stale >= patience:  # no finite loss yet: nothing to wait for
        if run.main:
            logger.info("early stopping at step %d: no better validation loss in %d evaluations (best %.4f at "
                        "step %s)", state.step, stale, state.best_metric or float("nan"), state.best_step)
        return True
    return False


def save_best(run, job, step: int) -> None:
    """Write the model of ``step`` into its best folder (staged, then swapped in) and drop unneeded ones."""
    accelerator = run.accelerator
    state_dict = full_state_dict(accelerator, job.model, job.unwrapped)  # every process (FSDP gathers)
    if run.main:
        with staged_output(best_folder(run.run_dir, step), overwrite=True) as stage:
            job.unwrapped.save_pretrained(stage, state_dict=state_dict)
        prune_best(run.run_dir, step)
    accelerator.wait_for_everyone()


def prune_best(run_dir: Path, current: int | None) -> None:
    """Remove the best folders that neither ``current`` (the loop's best step) nor the newest complete
    checkpoint (the one ``--resume`` continues) names."""
    root = Path(run_dir) / BEST_DIR
    if not root.is_dir():
        return
    newest = list_checkpoints(run_dir, warn=False)[-1:]
    keep = {current} | {load_state(path).get("best_step") for _, path in newest}
    names = {run_folder.checkpoint_name(s) for s in keep if s is not None}
    for path in root.iterdir():
        if path.name not in names:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def best_state_dict(run_dir: Path, step: int) -> dict[str, Any]:
    """The weights saved in the best folder of ``step``."""
    from safetensors.torch import load_file

    folder = best_folder(run_dir, step)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"the best model of step {step} is missing from {folder}")
    state_dict: dict[str, Any] = {}
    for path in files:
        state_dict.update(load_file(str(path)))
    return state_dict
