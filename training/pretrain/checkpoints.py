"""Resumable checkpoints of the pretraining loop, named and found through :mod:`scratch_gpt.run_folder`.

A checkpoint is ``accelerator.save_state`` plus ``trainer_state.json`` (the :class:`TrainState` of the loop,
log history included), written into ``checkpoint-N.tmp``; every file is fsynced, then the ``COMPLETE`` marker
is written and fsynced, and only then is the folder renamed to ``checkpoint-N``. A crash during a save leaves
a ``.tmp`` folder (or a folder without the marker) that ``--resume`` skips with a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder
from scratch_gpt.safe_output import apply_umask, fsync_dir, fsync_tree

logger = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"


def list_checkpoints(run_dir: str | os.PathLike, warn: bool = True) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first; half-written ones are skipped (warned)."""
    root = run_folder.checkpoints_dir(run_dir)
    if warn and root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and not run_folder.is_complete_checkpoint(path):
                logger.warning("skipping incomplete checkpoint %s (a save was interrupted)", path)
    return [(run_folder.checkpoint_step(p), p) for p in run_folder.list_checkpoints(run_dir)]


def newest_name(run_dir: Path) -> str:
    """The folder name of the newest complete checkpoint, or ``none``."""
    newest = run_folder.latest_checkpoint(run_dir)
    return newest.name if newest else "none"


def load_state(path: Path) -> dict[str, Any]:
    """The loop state saved with a checkpoint."""
    return run_folder.load_trainer_state(path)


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save a complete checkpoint for ``step`` on every process; keep the newest ``keep``."""
    root = run_folder.checkpoints_dir(run_dir)
    final = root / run_folder.checkpoint_name(step)
    tmp = final.with_name(final.name + _TMP_SUFFIX)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _seal(tmp, state, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        _prune(run_dir, keep)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _seal(folder: Path, state: dict[str, Any], step: int) -> None:
    """Write the loop state, set the umask's modes, fsync everything, then write (and fsync) the ``COMPLETE`` marker."""
    run_folder.write_json(folder, run_folder.TRAINER_STATE_FILE, state)
    apply_umask(folder)  # accelerate's writers choose their own modes; a checkpoint follows the umask like a run
    fsync_tree(folder)
    marker = run_folder.file(folder, run_folder.COMPLETE_MARKER)
    with open(marker, "w") as fh:
        fh.write(f"step {step}\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(folder)


def _prune(run_dir: Path, keep: int) -> None:
    """Drop all but the newest ``keep`` complete checkpoints and the leftovers of interrupted saves."""
    for _, old in list_checkpoints(run_dir, warn=False)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run_folder.checkpoints_dir(run_dir).glob(f"*{_TMP_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)
