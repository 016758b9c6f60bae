"""`scratch-gpt train`.

``train`` builds its options from :class:`training.pretrain.arguments.TrainArguments`, so every option of the loop is on
the command line with its help text; values layer as defaults < ``--preset`` < ``--config FILE`` < flags.

Allocator tuning: glibc returns large freed blocks (the logits) to the OS every step and the page faults cost
11-21% of CPU training time (DESIGN.md section 6). ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``
fixes that, but glibc reads them only at process start, so ``train`` re-executes itself once with them set
when they are missing. Opt out with ``--no-malloc-tuning`` or ``SCRATCH_GPT_MALLOC_TUNING=0``; setting the
two variables yourself (e.g. in front of ``accelerate launch``) also skips the re-exec.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from .arguments import PRESETS, TrainArguments, _base_type, _field_types, coerce_value

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
_REEXEC_GUARD = "SCRATCH_GPT_REEXECED"
_CLI_SCRIPTS = {"scratch-gpt", "scratch_gpt_cli.py"}

_GROUP_TITLES = {
    "model": "model",
    "data": "data (see training.data.corpus)",
    "optim": "optimisation and stopping",
    "eval": "evaluation and logging",
    "output": "run folder and checkpoints",
    "debug": "testing",
}


def _converter(name: str):
    def convert(text: str) -> Any:
        try:
            return coerce_value(name, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = _base_type(_field_types()[name])[0].__name__
    return convert


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainArguments field (default: not given, so presets and config files can apply)."""
    types = _field_types()
    groups = {key: parser.add_argument_group(title) for key, title in _GROUP_TITLES.items()}
    for f in dataclasses.fields(TrainArguments):
        flag = "--" + f.name.replace("_", "-")
        group = groups[f.metadata["group"]]
        help_text = f"{f.metadata['help']} (tiny: {f.default})"
        base, _ = _base_type(types[f.name])
        if f.name == "preset":
            group.add_argument(
                flag, choices=list(PRESETS), default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: tiny)"
            )
        elif base is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            group.add_argument(
                flag,
                type=_converter(f.name),
                choices=f.metadata.get("choices"),
                default=argparse.SUPPRESS,
                metavar=None if f.metadata.get("choices") else {int: "N", float: "X"}.get(base, "TEXT"),
                help=help_text,
            )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    p = subparsers.add_parser(
        "train",
        help="Pretrain a GPT from scratch (default: the tiny preset on the Python standard library, CPU minutes).",
        description="Pretrain a ScratchGPT with Accelerate. With no options: the `tiny` preset on the .py files "
        "of this interpreter's standard library, writing runs/tiny. Runs unchanged under `accelerate launch`.",
        epilog="Options layer as: defaults (= tiny) < --preset < --config FILE < flags. Presets: "
        + ", ".join(PRESETS),
    )
    p.add_argument("--config", default=None, metavar="FILE", help="YAML or JSON file of option: value pairs")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved options as YAML and exit without training"
    )
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="do not re-run the process with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e11 (a 15-40%% CPU speedup)",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


# ------------------------------------------------------------------------------------------------------------
# train


def _maybe_reexec_with_malloc_tuning(ns: argparse.Namespace) -> None:
    """Re-run this very command once with the allocator variables set (they only work from process start)."""
    if ns.no_malloc_tuning or ns.print_config or os.environ.get("SCRATCH_GPT_MALLOC_TUNING", "1") == "0":
        return
    if all(k in os.environ for k in MALLOC_ENV) or os.environ.get(_REEXEC_GUARD):
        return
    # Only when this process *is* the CLI (not a test calling main([...]) in-process).
    if os.path.basename(sys.argv[0]) not in _CLI_SCRIPTS or "train" not in sys.argv[1:]:
        return
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()}, _REEXEC_GUARD: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "scratch_gpt_cli", *sys.argv[1:]], env)


def resolve_from_namespace(ns: argparse.Namespace) -> TrainArguments:
    """TrainArguments from parsed flags (only those given) + ``--config``."""
    from .arguments import resolve_arguments

    names = {f.name for f in dataclasses.fields(TrainArguments)}
    overrides = {k: v for k, v in vars(ns).items() if k in names}
    return resolve_arguments(config_file=ns.config, overrides=overrides)


def cmd_train(ns: argparse.Namespace) -> int:
    args = resolve_from_namespace(ns)  # every value checked before anything heavy happens
    if ns.print_config:
        import yaml

        print(yaml.safe_dump(args.to_dict(), sort_keys=False), end="")
        return 0
    _maybe_reexec_with_malloc_tuning(ns)
    import logging

    from .loop import TrainingDivergedError, train

    if not getattr(ns, "verbose", False):  # Accelerate logs every file of every checkpoint at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)  # "Removed shared tensor" (tied head)

    try:
        run_dir = train(args)
    except TrainingDivergedError as err:
        print(f"scratch-gpt train: error: {err}", file=sys.stderr)
        return 1
    import json

    results_file = run_dir / "train_results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if results:
        print(
            f"done: {results['steps']} steps, {results['tokens']:,} tokens in {results['train_time_s']:.0f}s "
            f"({results['tokens_per_s']:,.0f} tokens/s); validation loss {results.get('val_loss', float('nan')):.4f}, "
            f"perplexity {results.get('val_ppl', float('nan')):.2f}"
        )
        for sample in results.get("samples", [])[:1]:
            print("sample:\n" + sample)
    print(f"model, tokenizer, metrics.jsonl and loss.png in {run_dir}")
    print(f"try: scratch-gpt generate {run_dir} --prompt 'def '")
    return 0
