"""What pretraining records in its run folder, written only through :mod:`scratch_gpt.run_folder`.

Records follow ``transformers.Trainer`` so a folder from our loop and one from ``Trainer`` look alike:
``log_history`` in ``trainer_state.json`` (one dict per logged step: ``loss``, ``learning_rate``,
``grad_norm``, ``num_input_tokens_seen``, ... and ``muon_learning_rate`` with ``--optimizer muon``; one per
evaluation: ``eval_loss``, ``eval_perplexity``),
``train_results.json`` / ``eval_results.json`` / ``all_results.json`` at the end, the settings in
``training_args.json`` and the loss curve drawn from ``log_history``. The history is written at evaluations,
checkpoints and the end (never every step), so logging costs the loop nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder
from training.shared.plot import save_plot

logger = logging.getLogger(__name__)

# options that may change between a run and its resumption without a warning
RESUMABLE_CHANGES = frozenset(
    {"resume", "overwrite", "max_steps", "max_tokens", "max_time", "debug_nan_step", "early_stopping_patience",
     "max_epochs"}
)


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged loss gives a large finite number (NaN stays NaN)."""
    return math.exp(min(loss, 50.0)) if math.isfinite(loss) else float("nan")


def record_arguments(run_dir: Path, settings: dict[str, Any], resuming: bool) -> None:
    """Save the resolved settings; on resume, warn about options that changed since the run began."""
    saved = run_folder.load_training_args(run_dir) if resuming else None
    if saved:
        changed = {
            k: (saved.get(k), v) for k, v in settings.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v
        }
        if changed:
            logger.warning("resuming with changed options (old, new): %s", changed)
    run_folder.save_training_args(run_dir, settings)


def train_records(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-loss records of a log history."""
    return [r for r in log_history if "loss" in r]


def eval_records(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation records of a log history."""
    return [r for r in log_history if "eval_loss" in r]


def write_history(
    run_dir: Path, log_history: list[dict[str, Any]], global_step: int, max_steps: int, **extra: Any
) -> None:
    """``trainer_state.json`` with the log history so far (Trainer's layout; ``extra``: e.g. ``best_metric``)."""
    run_folder.save_log_history(run_dir, log_history, global_step=global_step, max_steps=max_steps, **extra)


def write_progress(
    run_dir: Path, log_history: list[dict[str, Any]], global_step: int, max_steps: int, **extra: Any
) -> None:
    """The history so far, during the run: a failure (a full disk) is a warning, never the end of the run
    (the final records are written again with the model, and each checkpoint holds its own state)."""
    try:
        write_history(run_dir, log_history, global_step, max_steps, **extra)
    except OSError as err:
        logger.warning("could not write the log history to %s (%s); training goes on", run_dir, err)


def save_final_records(
    stage: Path, name: str, settings: dict[str, Any], log_history: list, results: dict[str, dict],
    **extra: Any,
) -> None:
    """Everything the finished run ``name`` holds besides the model: settings, history (with ``extra`` such as
    ``best_metric``), results, plot."""
    run_folder.save_training_args(stage, settings)
    step = results["train"].get("global_step", 0)
    write_history(stage, log_history, step, settings.get("max_steps", step), **extra)
    for split, metrics in results.items():
        run_folder.save_results(stage, split, metrics)
    save_plot(stage, log_history, name)
