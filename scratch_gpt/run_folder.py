"""The run-folder contract: every file a scratch-gpt stage writes beside a saved model, named once.

A run folder is what ``save_pretrained`` writes (config, weights, tokenizer, generation config) plus the
record of how it was made. Pretraining, every finetuning task, evaluation, export and the model card read and
write those records through this module and nothing else, so the file names below appear nowhere else.
Where the ecosystem already has a file for a record we use it, so a folder from our loop and one from
``transformers.Trainer`` look alike to every tool:

==========================  =====================================================================
``training_args.json``      the resolved settings of the stage that made the folder
``trainer_state.json``      ``log_history`` (one dict per logged step / evaluation), as Trainer writes it
``train_results.json``      final training metrics (``train_loss``, ``train_runtime``, ...)
``eval_results.json``       validation metrics (``eval_loss``, ``eval_accuracy``, ...); lm-eval scores
                            under the ``lm_eval`` key
``test_results.json``       held-out test metrics (``test_accuracy``, ``test_f1``, ...)
``all_results.json``        the union of the three above, as Trainer's ``save_metrics`` keeps it
``generated_predictions.json``  generations for a held-out split (instruction finetuning)
``loss.png``                the loss curve drawn from ``log_history``
``checkpoints/checkpoint-N/``  resumable state; complete only once it holds the ``COMPLETE`` marker
``adapter/``, ``base_model/``  a finetuned LoRA run's adapter (merged runs) or the base it loads (unmerged)
==========================  =====================================================================

Standard library only: this file lives in the model package so both ``training`` and ``hub_export`` can use
it without importing each other, and the exported remote code never imports it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)

TRAINING_ARGS_FILE = "training_args.json"
TRAINER_STATE_FILE = "trainer_state.json"
ALL_RESULTS_FILE = "all_results.json"
PREDICTIONS_FILE = "generated_predictions.json"
LOSS_PLOT_FILE = "loss.png"
MODEL_CARD_FILE = "README.md"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"  # a merged LoRA run keeps its adapter here
BASE_MODEL_DIR = "base_model"  # the base an unmerged LoRA adapter loads (a converted GPT-2, a new classifier head)
CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
RESULT_SPLITS = ("train", "eval", "test")
LM_EVAL_KEY = "lm_eval"

# Every name above that describes how a model was made (not the model itself): what export copies beside it.
RECORD_FILES = (TRAINING_ARGS_FILE, TRAINER_STATE_FILE, ALL_RESULTS_FILE, PREDICTIONS_FILE, LOSS_PLOT_FILE) + tuple(
    f"{split}_results.json" for split in RESULT_SPLITS
)


def results_file(split: str) -> str:
    """``train_results.json`` / ``eval_results.json`` / ``test_results.json``."""
    if split not in RESULT_SPLITS:
        raise ValueError(f"unknown results split {split!r}; expected one of {', '.join(RESULT_SPLITS)}")
    return f"{split}_results.json"


# -- plain JSON, written atomically ----------------------------------------------------------------------


def write_json(folder: str | os.PathLike, name: str, data: Any) -> Path:
    """Write ``folder/name`` as indented JSON through a temporary file, fsync and rename (never half-written)."""
    path = Path(folder) / name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_json(folder: str | os.PathLike, name: str, default: Any = None) -> Any:
    """``folder/name`` parsed, or ``default`` when it is absent. A corrupt file raises ``ValueError`` naming it."""
    path = Path(folder) / name
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete or repair it") from err


# -- settings, results, log history ---------------------------------------------------------------------


def save_training_args(folder: str | os.PathLike, args: dict[str, Any]) -> Path:
    """Record the resolved settings of the stage that wrote ``folder``."""
    return write_json(folder, TRAINING_ARGS_FILE, args)


def load_training_args(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings recorded by :func:`save_training_args`, or ``None``."""
    return read_json(folder, TRAINING_ARGS_FILE)


def save_results(folder: str | os.PathLike, split: str, metrics: dict[str, Any]) -> None:
    """Merge ``metrics`` into ``{split}_results.json`` and ``all_results.json`` (Trainer's ``save_metrics``).

    Merging (not replacing) lets later stages add to a split: ``evaluate`` adds lm-eval scores to the
    validation metrics that finetuning wrote.
    """
    name = results_file(split)
    write_json(folder, name, {**read_json(folder, name, {}), **metrics})
    write_json(folder, ALL_RESULTS_FILE, {**read_json(folder, ALL_RESULTS_FILE, {}), **metrics})


def load_results(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{"train": {...}, "eval": {...}, "test": {...}}`` for the splits that have results."""
    out = {}
    for split in RESULT_SPLITS:
        metrics = read_json(folder, results_file(split))
        if metrics:
            out[split] = metrics
    return out


def save_log_history(folder: str | os.PathLike, log_history: list[dict[str, Any]], **state: Any) -> Path:
    """Write ``trainer_state.json`` with ``log_history`` (and extra state such as ``global_step``)."""
    return write_json(folder, TRAINER_STATE_FILE, {**state, "log_history": list(log_history)})


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    """``trainer_state.json`` as a dict (empty when absent)."""
    return read_json(folder, TRAINER_STATE_FILE, {}) or {}


def load_log_history(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``log_history`` records of ``trainer_state.json`` (``[]`` when absent)."""
    return list(load_trainer_state(folder).get("log_history", []))


def last_eval_metrics(folder: str | os.PathLike) -> dict[str, Any]:
    """The last ``log_history`` record that holds an ``eval_loss`` (``{}`` when none)."""
    evals = [r for r in load_log_history(folder) if "eval_loss" in r]
    return evals[-1] if evals else {}


# -- what a folder holds --------------------------------------------------------------------------------


def file(folder: str | os.PathLike, name: str) -> Path:
    """``folder/name`` as a Path (for files other stages open themselves, e.g. the plot or the weights)."""
    return Path(folder) / name


def has_config(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``config.json``."""
    return (Path(folder) / CONFIG_FILE).is_file()


def has_weights(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds model weights (full model, not an adapter)."""
    return any((Path(folder) / name).is_file() for name in WEIGHTS_FILES)


def has_adapter(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a PEFT adapter."""
    return (Path(folder) / ADAPTER_FILES[0]).is_file()


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds tokenizer files."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES[:2] + TOKENIZER_FILES[3:6])


def record_files(folder: str | os.PathLike) -> list[Path]:
    """The run records present in ``folder`` (settings, results, log history, predictions, plot)."""
    return [Path(folder) / name for name in RECORD_FILES if (Path(folder) / name).is_file()]


# -- checkpoints ----------------------------------------------------------------------------------------

_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoints_dir(folder: str | os.PathLike) -> Path:
    """``folder/checkpoints``."""
    return Path(folder) / CHECKPOINTS_DIR


def checkpoint_name(step: int) -> str:
    """``checkpoint-00000500`` for step 500 (zero-padded so names sort by step)."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a checkpoint folder name, or ``None`` for other names (``.tmp`` folders included)."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint counts only once its ``COMPLETE`` marker is written (last, after an fsync)."""
    return checkpoint_step(path) is not None and (Path(path) / COMPLETE_MARKER).is_file()


def list_checkpoints(folder: str | os.PathLike, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders of a run, oldest first (only complete ones unless ``complete_only=False``)."""
    root = checkpoints_dir(folder)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    if complete_only:
        found = [p for p in found if is_complete_checkpoint(p)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    found = list_checkpoints(folder)
    return found[-1] if found else None
