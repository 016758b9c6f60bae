"""Evaluate a model folder (or Hub repo) with lm-evaluation-harness and record the scores in the folder.

This is a thin driver over lm-eval's own Python API (``lm_eval.simple_evaluate`` with its ``hf`` backend), so
scores are exactly lm-eval's. What we add: bad input fails with one clear line before anything loads, and the
results land in the folder's ``eval_results.json`` under the ``lm_eval`` key through :mod:`scratch_gpt.run_folder`,
where the model card picks them up.

Importing ``scratch_gpt`` registers our classes with the Auto factories, so a run folder loads; an export loads
through the same installed classes (transformers 5.24 prefers a registered class over a repo's ``auto_map`` code,
``explicit_local_code`` in ``auto_factory.py``) with the export's own weights and config. ``trust_remote_code`` is
on so that other remote-code repos load too.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# lm-eval's per-task sections (name -> value), merged task by task into the recorded results.
_PER_TASK_SECTIONS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                      "n-samples")


def check_model(model: str) -> Path | None:
    """The local model folder (``None`` for a Hub repo id); raise ``FileNotFoundError`` for anything else."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not run_folder.has_config(path):
            raise FileNotFoundError(f"{model} has no model config: pass a folder written by save_pretrained "
                                    "(a scratch-gpt run folder or an export)")
        return path
    if path.exists() or not _REPO_ID.match(model):
        raise FileNotFoundError(f"model folder {model} does not exist: pass a scratch-gpt run folder, an export "
                                "folder or a Hub repo id (OWNER/NAME)")
    return None


def parse_tasks(tasks: str | list[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (stripped, no empties); raise ``ValueError`` when empty."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ValueError("no task given: pass --tasks NAME[,NAME...], e.g. --tasks hellaswag,arc_easy")
    return names


def task_manager(tasks: list[str], include_path: str | None = None) -> Any:
    """lm-eval's ``TaskManager`` (its tasks plus ``include_path``'s YAMLs), after checking every task exists."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"--include-path {include_path} is not a folder: pass the folder of your task YAMLs")
    if include_path is not None:  # indexing lm-eval's own thousands of YAMLs takes seconds: only when needed
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if all(manager.match_tasks([name]) for name in tasks):
            return manager
    manager = TaskManager(include_path=include_path)
    unknown = [name for name in tasks if not manager.match_tasks([name]) and not Path(name).is_file()]
    if unknown:
        hint = "check the spelling (`lm-eval ls tasks` lists them)"
        if include_path is None:
            hint += ", or pass --include-path DIR for your own task YAMLs"
        raise ValueError(f"unknown lm-eval task {', '.join(unknown)}: {hint}")
    return manager


def run_lm_eval(model: str, tasks: list[str], manager: Any, **options: Any) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with the ``hf`` backend; ``options`` are its keyword arguments."""
    import lm_eval
    import torch

    if options.get("device") is None:  # lm-eval's hf backend defaults to "cuda" even on a machine without one
        options["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = {"pretrained": model, "trust_remote_code": True, "dtype": "auto"}
    results = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=tasks, task_manager=manager,
                                      log_samples=False, **options)
    if results is None:  # lm-eval returns None on ranks other than 0
        return {}
    return json.loads(json.dumps(results, default=_json_default))


def _json_default(value: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable(value)


def merge_results(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """lm-eval results with ``new``'s tasks added to (or replacing) ``previous``'s; run metadata from ``new``."""
    merged = {**(previous or {}), **new}
    for section in _PER_TASK_SECTIONS:
        if isinstance((previous or {}).get(section), dict) and isinstance(new.get(section), dict):
            merged[section] = {**previous[section], **new[section]}
    return merged


def record_results(folder: Path, results: dict[str, Any]) -> Path:
    """Merge ``results`` into the folder's ``eval_results.json`` (under ``lm_eval``) through the run-folder contract."""
    previous = run_folder.read_json(folder, run_folder.results_file("eval"), {}) or {}
    merged = merge_results(previous.get(run_folder.LM_EVAL_KEY), results)
    run_folder.save_results(folder, "eval", {run_folder.LM_EVAL_KEY: merged})
    return run_folder.file(folder, run_folder.results_file("eval"))


def evaluate(
    model: str,
    tasks: str | list[str],
    *,
    limit: float | None = None,
    batch_size: int | str = 1,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Run lm-eval's ``tasks`` on ``model`` and, for a local folder, record the results in it.

    Raises ``FileNotFoundError`` / ``ValueError`` (naming the fix) for a missing model, an unknown task or a bad
    option, before any model is loaded. Returns lm-eval's results dict (JSON-safe, without per-sample logs).
    """
    folder = check_model(model)
    names = parse_tasks(tasks)
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be > 0 (a count, or a fraction below 1), got {limit}")
    manager = task_manager(names, include_path)
    results = run_lm_eval(model, names, manager, limit=limit, batch_size=batch_size, num_fewshot=num_fewshot,
                          device=device)
    if write and folder is not None and results:
        logger.info("wrote %s", record_results(folder, results))
    elif write and folder is None:
        logger.warning("%s is a Hub repo id, not a local folder: the results are printed, not recorded", model)
    return results
