"""`scratch-gpt train`.

``train`` builds its options from the parts of :class:`training.pretrain.arguments.TrainArguments` through
``HfArgumentParser``, so every option of the loop is on the command line with its help text; values layer as defaults < ``--preset`` < ``--config FILE`` < flags.

Allocator tuning: glibc returns large freed blocks (the logits) to the OS every step and the page faults cost
11-21% of CPU training time (DESIGN.md section 6). ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``
fixes that, but glibc reads them only at process start, so ``train`` re-executes itself once with them set
when they are missing. Opt out with ``--no-malloc-tuning`` or ``SCRATCH_GPT_MALLOC_TUNING=0``; setting the
two variables yourself (e.g. in front of ``accelerate launch``) also skips the re-exec.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from training.shared.arguments import add_command, arg, given_options

from .arguments import PRESETS, TRAIN_PARTS, TrainArguments

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
_REEXEC_GUARD = "SCRATCH_GPT_REEXECED"
_CLI_SCRIPTS = {"scratch-gpt", "scratch_gpt_cli.py"}
# The re-exec must run the installed CLI, never a scratch_gpt_cli.py / training/ / scratch_gpt/ that happens to
# sit in the working directory: `python -m` and `-c` put the cwd ('') first on sys.path, so drop it first
# (what `python -P` does on 3.11+; this also works on 3.10).
_SAFE_START = (
    "import sys\nif sys.path and sys.path[0] in ('', '.'):\n    del sys.path[0]\n"
    "from scratch_gpt_cli import main\nsys.exit(main())"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``: one ``--flag`` per field of the :class:`TrainArguments` parts, defaults left to presets."""
    add_command(
        subparsers, "train", cmd_train, parts=TRAIN_PARTS, suppress_defaults=True, arguments=_ARGUMENTS,
        help="Pretrain a GPT from scratch (default: the tiny preset on the Python standard library, CPU minutes).",
        description="Pretrain a ScratchGPT with Accelerate. With no options: the `tiny` preset on the .py files "
        "of this interpreter's standard library, writing runs/tiny. Runs unchanged under `accelerate launch`.",
        epilog="Options layer as: defaults (= tiny) < --preset < --config FILE < flags. Presets: "
        + ", ".join(PRESETS),
    )


_ARGUMENTS = (
    arg("--config", default=None, metavar="FILE", help="YAML or JSON file of option: value pairs"),
    arg("--print-config", action="store_true", help="print the resolved options as YAML and exit without training"),
    arg("--no-malloc-tuning", action="store_true",
        help="do not re-run the process with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e11 (a 15-40%% CPU speedup)"),
)


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
    os.execve(sys.executable, [sys.executable, "-c", _SAFE_START, *sys.argv[1:]], env)


def resolve_from_namespace(ns: argparse.Namespace) -> TrainArguments:
    """TrainArguments from parsed flags (only those given) + ``--config``."""
    from .arguments import resolve_arguments

    return resolve_arguments(config_file=ns.config, overrides=given_options(ns, *TRAIN_PARTS))


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
        out = train(args)
    except TrainingDivergedError as err:
        print(f"scratch-gpt train: error: {err}", file=sys.stderr)
        return 1
    print(_summary(out.metrics))
    for sample in out.samples[:1]:
        print("sample:\n" + sample)
    print(f"model, tokenizer, training records and the loss plot in {out.run_dir}")
    print(closing_hint(out.run_dir, out.prompt))
    return 0


def closing_hint(run_dir, prompt: str, max_words: int = 4) -> str:
    """The ``scratch-gpt generate`` command to try next, prompted with the first words of ``prompt`` (the start
    of a validation document of the corpus, or ``--sample-prompt``); no ``--prompt`` when it has no words."""
    words = prompt.strip().splitlines()[0].split()[:max_words] if prompt.strip() else []
    hint = f"try: scratch-gpt generate {shlex.quote(str(run_dir))}"
    return f"{hint} --prompt {shlex.quote(' '.join(words) + ' ')}" if words else hint


def _summary(metrics: dict[str, Any]) -> str:
    """One line of the final metrics that :func:`training.pretrain.loop.train` returns."""
    nan = float("nan")
    return (
        f"done: {metrics['global_step']} steps, {metrics['num_input_tokens_seen']:,} tokens in "
        f"{metrics['train_runtime']:.0f}s ({metrics['train_tokens_per_second']:,.0f} tokens/s); validation loss "
        f"{metrics.get('eval_loss', nan):.4f}, perplexity {metrics.get('eval_perplexity', nan):.2f}"
    )
