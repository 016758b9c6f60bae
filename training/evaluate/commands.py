"""`scratch-gpt evaluate`: lm-evaluation-harness benchmarks on a model folder, scores recorded in the folder."""

from __future__ import annotations

import argparse

from training.shared.arguments import add_command, arg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    add_command(
        subparsers, "evaluate", cmd_evaluate, arguments=_ARGUMENTS,
        help="Score a model on lm-evaluation-harness tasks (HellaSwag, ARC, LAMBADA, your own YAML tasks).",
        description="Run lm-evaluation-harness (its Python API, `hf` backend) on MODEL, print its results table "
        "and merge the results into MODEL's eval_results.json (key lm_eval), where the model card picks them "
        "up. Standard tasks download their datasets from the Hub; tasks of your own (a YAML over a local "
        "JSONL) run offline with --include-path. Needs `pip install 'scratch-gpt[eval]'`.",
    )


_ARGUMENTS = (
    arg("model", metavar="MODEL", help="scratch-gpt run folder, export folder or Hub repo id"),
    arg("--tasks", required=True,
        help="comma-separated lm-eval task names or globs, e.g. hellaswag,arc_easy,lambada_openai"),
    arg("--limit", type=float, default=None,
        help="at most N examples per task (a fraction when below 1); for quick checks, not for reporting"),
    arg("--batch-size", default="1",
        help="examples per forward pass, or 'auto' to find the largest that fits (default: 1)"),
    arg("--num-fewshot", type=int, default=None, help="few-shot examples per prompt (default: the task's)"),
    arg("--include-path", default=None, metavar="DIR", help="folder of extra task YAMLs (your own tasks)"),
    arg("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"),
    arg("--no-write", action="store_true", help="print the table only; leave eval_results.json alone"),
)


def _batch_size(value: str) -> int | str:
    if value == "auto" or value.startswith("auto:"):
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--batch-size must be a positive integer or 'auto', got {value!r}")
    return int(value)


def cmd_evaluate(ns: argparse.Namespace) -> int:
    batch_size = _batch_size(ns.batch_size)
    limit = int(ns.limit) if ns.limit is not None and ns.limit >= 1 else ns.limit
    from lm_eval.utils import make_table

    from .evaluate import evaluate

    results = evaluate(ns.model, ns.tasks, limit=limit, batch_size=batch_size, include_path=ns.include_path,
                       num_fewshot=ns.num_fewshot, device=ns.device, write=not ns.no_write)
    if results:
        print(make_table(results))
        if results.get("groups"):
            print(make_table(results, "groups"))
    return 0
