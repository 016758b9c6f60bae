"""The loss plot of a run, drawn from its ``log_history`` (``loss`` and ``eval_loss`` records, as Trainer logs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder

logger = logging.getLogger(__name__)


def plot_losses(log_history: list[dict[str, Any]], png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw train and validation loss against steps into a PNG (matplotlib Agg), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", linewidth=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="cross-entropy loss", title=title or "loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def save_plot(run_dir: Path, log_history: list[dict[str, Any]], name: str) -> None:
    """The loss plot of run ``name``; a failure (e.g. a full disk) is a warning, never the end of the run."""
    try:
        plot_losses(log_history, run_folder.file(run_dir, run_folder.LOSS_PLOT_FILE), title=f"{name}: loss")
    except (OSError, ValueError) as err:
        logger.warning("could not draw the loss plot (%s); training goes on", err)
