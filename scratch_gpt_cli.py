"""The `scratch-gpt` command line: one dispatcher, one subcommand per stage.

This is the only module that sees both `training` and `hub_export`. Each command module exposes
``register(subparsers)``, which adds its subcommand(s) with ``set_defaults(func=...)``; heavy imports
(torch, transformers, datasets) happen inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that provide `register(subparsers)`. Order = order in `scratch-gpt --help`.
COMMAND_MODULES = (
    "training.commands_train",  # train, generate
    "training.commands_data",  # train-tokenizer, corpus-stats
    "training.commands_finetune",  # finetune classify | instruct
    "hub_export.commands",  # export, push
)


def _register_convert(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-gpt2",
        help="Convert a GPT-2 checkpoint (local folder or Hub id) into a scratch-gpt model folder.",
        description="Convert a transformers GPT-2 checkpoint into a scratch-gpt model folder "
        "(config.json, model.safetensors, generation_config.json and the source's tokenizer files).",
    )
    p.add_argument("src", help="a local GPT-2 checkpoint folder or a Hub model id such as openai-community/gpt2")
    p.add_argument("out_dir", help="folder to write the converted model into (must not exist unless --overwrite)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) when SRC is a Hub id")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from scratch_gpt.convert import convert_gpt2_checkpoint

    out = convert_gpt2_checkpoint(args.src, args.out_dir, revision=args.revision, overwrite=args.overwrite)
    print(f"wrote scratch-gpt model to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="scratch-gpt",
        description="Build, train, finetune and share a GPT written from scratch, the Hugging Face way.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _register_convert(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "fsspec"):  # request chatter even under -v
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # User errors: one clear line, no traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"scratch-gpt {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
