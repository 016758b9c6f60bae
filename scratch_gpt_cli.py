"""The `scratch-gpt` command line: one dispatcher, one subcommand per stage.

This is the only module that sees both `training` and `hub_export`. Each command module exposes
``register(subparsers)``, which adds its subcommand(s) with ``set_defaults(func=...)``; heavy imports
(torch, transformers, datasets) happen inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from pathlib import Path


def _quiet_third_party_import_noise(argv: list[str]) -> None:
    """Before the imports below: torchao (which executorch installs) warns on import, reached through
    transformers' quantizer registry, that its CUDA and Python-3.10 extensions do not load and that torch
    deprecates its pytree registrations. That is several lines on every command, even a bad-input one that should
    print one line, and nothing a user can act on; ``-v`` or ``SCRATCH_GPT_DEBUG=1`` shows it."""
    if {"-v", "--verbose"} & set(argv) or os.environ.get("SCRATCH_GPT_DEBUG", "0") not in ("", "0"):
        return
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


_quiet_third_party_import_noise(sys.argv[1:])

from hub_export import commands as hub_commands  # noqa: E402  (after the logging set-up above)
from hub_export import playground as playground_commands  # noqa: E402
from hub_export import serve as serve_commands  # noqa: E402
from training.data import commands as data_commands  # noqa: E402
from training.evaluate import commands as evaluate_commands  # noqa: E402
from training.finetune import commands as finetune_commands  # noqa: E402
from training.generate import commands as generate_commands  # noqa: E402
from training.pretrain import commands as train_commands  # noqa: E402
from training.shared.arguments import add_command, arg  # noqa: E402

# Modules that provide `register(subparsers)`. Order = order in `scratch-gpt --help`.
COMMAND_MODULES = (
    train_commands,  # train
    generate_commands,  # generate
    data_commands,  # train-tokenizer, corpus-stats
    finetune_commands,  # finetune classify | instruct
    evaluate_commands,  # evaluate (lm-eval)
    hub_commands,  # export, push
    serve_commands,  # serve (transformers serve)
    playground_commands,  # playground (Gradio page in the browser)
)


_CONVERT_ARGUMENTS = (
    arg("out_dir", help="folder to write the converted model into (must not exist unless --overwrite)"),
    arg("--revision", default=None, help="Hub revision (branch, tag or commit) when SRC is a Hub id"),
    arg("--overwrite", action="store_true", help="replace OUT_DIR if it exists"),
)


def _register_convert(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers, "convert", _cmd_convert_any,
        arguments=[arg("src", help="a local checkpoint folder or a Hub model id such as HuggingFaceTB/SmolLM2-135M"),
                   *_CONVERT_ARGUMENTS],
        help="Convert a GPT-2, Llama, Mistral, Qwen2 or Qwen3 checkpoint into a scratch-gpt model folder.",
        description="Convert a transformers GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM (no sliding "
        "window), Qwen2ForCausalLM or Qwen3ForCausalLM checkpoint into a scratch-gpt model folder with the "
        "source's tokenizer and chat template. Strict: missing, unexpected or mis-shaped weights and config "
        "features scratch-gpt lacks are errors naming them (docs/family.md).",
    )
    add_command(
        subparsers, "convert-gpt2", _cmd_convert,
        arguments=[arg("src", help="a local GPT-2 checkpoint folder or a Hub model id such as openai-community/gpt2"),
                   *_CONVERT_ARGUMENTS],
        help="Convert a GPT-2 checkpoint (local folder or Hub id) into a scratch-gpt model folder.",
        description="Convert a transformers GPT-2 checkpoint into a scratch-gpt model folder "
        "(config.json, model.safetensors, generation_config.json and the source's tokenizer files).",
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from scratch_gpt.convert import convert_gpt2_checkpoint

    return _converted(convert_gpt2_checkpoint(args.src, args.out_dir, revision=args.revision, overwrite=args.overwrite))


def _cmd_convert_any(args: argparse.Namespace) -> int:
    from scratch_gpt.convert_family import convert_checkpoint

    return _converted(convert_checkpoint(args.src, args.out_dir, revision=args.revision, overwrite=args.overwrite))


def _converted(out: object) -> int:
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
    for module in COMMAND_MODULES:
        module.register(subparsers)
    _register_convert(subparsers)
    return parser


# ------------------------------------------------------------------------------------------------------------
# Expected failures -> one line on stderr. Exit 2: the command line is wrong (argparse, or an option value the
# command rejects: its message starts with the option). Exit 1: a runtime failure (files, disk, network, device,
# bad input data). -v or SCRATCH_GPT_DEBUG=1 re-raises, so the traceback shows. Anything else is a bug and
# keeps its traceback.

USAGE_EXIT, RUNTIME_EXIT, INTERRUPTED_EXIT = 2, 1, 130
DEBUG_ENV = "SCRATCH_GPT_DEBUG"
_NETWORK_MODULES = ("huggingface_hub", "requests", "httpx", "httpcore", "urllib3")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _one_line(text: object, limit: int = 600) -> str:
    """Collapse a (possibly multi-line) message into one line of at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _from_modules(err: BaseException, prefixes: tuple[str, ...]) -> bool:
    return any(cls.__module__.split(".")[0] in prefixes for cls in type(err).__mro__)


def _path_args(args: argparse.Namespace) -> list[Path]:
    """The command-line values that name existing local files or folders (to point an error at one)."""
    found = []
    for value in vars(args).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and os.path.exists(item):
                found.append(Path(item))
    return found


def _weights_named(args: argparse.Namespace) -> str:
    """The weight files under the folders given on the command line (for errors that do not name theirs)."""
    names = []
    for path in _path_args(args):
        items = [path] if path.is_file() else sorted(path.iterdir()) if path.is_dir() else []
        names += [str(p) for p in items if p.name.endswith(_WEIGHT_SUFFIXES)]
    return ", ".join(names) or "the model's weight file"


def _os_error_message(err: OSError) -> str:
    """One line for an OSError: ours carry their own message; raw ones get the file and a fix."""
    name = err.filename if err.filename is not None else ""
    if err.errno is None or not name:
        return _one_line(err)
    if err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {name}: free some space or choose another output folder"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {name}; fix its permissions or choose another path"
    if err.errno == errno.EROFS:
        return f"read-only file system: {name}; choose an output folder on a writable disk"
    if err.errno == errno.ENOENT:
        return f"no such file or folder: {name}; check the path"
    if err.errno == errno.EEXIST:
        return f"{name} already exists; pass --overwrite to replace it or choose another output"
    return f"{err.strerror or err}: {name}"


def _output_named(args: argparse.Namespace) -> str:
    """The output path given on the command line (for write errors that do not name their file)."""
    for name in ("out_dir", "output_dir", "output"):
        if isinstance(getattr(args, name, None), str):
            return getattr(args, name)
    return "the output folder"


def _rust_os_error(err: BaseException, args: argparse.Namespace) -> str | None:
    """The Rust libraries (safetensors, tokenizers) report I/O failures such as a full disk as a plain
    exception whose text ends in ``(os error N)``; map N like an OSError, naming the output being written."""
    code = re.search(r"\(os error (\d+)\)", str(err))
    if not code:
        return None
    return _os_error_message(OSError(int(code.group(1)), os.strerror(int(code.group(1))), _output_named(args)))


def _safetensors_message(err: BaseException, args: argparse.Namespace) -> str:
    """safetensors reports I/O failures (a full disk) in its own error type, with the errno in the text."""
    io_error = _rust_os_error(err, args)
    if io_error:
        return io_error
    return (
        f"cannot read the weights in {_weights_named(args)} ({_one_line(err, 200)}): the file is truncated "
        "or corrupt; re-download, re-export or retrain it"
    )


def _network_message(err: BaseException) -> str:
    return (
        f"could not reach the Hugging Face Hub ({_one_line(err, 300)}); check the id and your connection, "
        "or pass a local folder (HF_HUB_OFFLINE=1 reads only the local cache)"
    )


def _cuda_message(err: BaseException) -> str | None:
    text = str(err)
    if "CUDA" not in text and "cuda" not in text and "NVIDIA" not in text:
        return None
    return f"CUDA is not available here ({_one_line(text, 200)}); use --device cpu or --device auto"


def describe_failure(err: BaseException, args: argparse.Namespace) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for an expected failure, ``None`` for a bug (keeps its traceback)."""
    if isinstance(err, (argparse.ArgumentError, argparse.ArgumentTypeError)):
        return USAGE_EXIT, _one_line(err)
    if isinstance(err, UnicodeDecodeError):
        return RUNTIME_EXIT, (
            f"input is not UTF-8 text ({err.reason} at byte offset {err.start}); convert it first, e.g. "
            "`iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8`"
        )
    if type(err).__name__ == "SafetensorError" or _from_modules(err, ("safetensors",)):
        return RUNTIME_EXIT, _safetensors_message(err, args)
    if isinstance(err, OSError) and _from_modules(err, _NETWORK_MODULES) and not isinstance(err, FileExistsError):
        return RUNTIME_EXIT, _network_message(err)
    if isinstance(err, OSError):
        return RUNTIME_EXIT, _os_error_message(err)
    if _from_modules(err, _NETWORK_MODULES):  # httpx errors are not OSErrors
        return RUNTIME_EXIT, _network_message(err)
    if isinstance(err, (RuntimeError, AssertionError)) and _cuda_message(err):
        return RUNTIME_EXIT, _cuda_message(err)
    if isinstance(err, ValueError):
        message = _one_line(err)
        return (USAGE_EXIT if message.startswith("--") else RUNTIME_EXIT), message
    io_error = _rust_os_error(err, args)
    return (RUNTIME_EXIT, io_error) if io_error else None


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "finetune_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "verbose", False)) or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "fsspec"):  # request chatter even under -v
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run one ``scratch-gpt`` command; expected failures print one line on stderr and return 1 or 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    _configure_logging(debug)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_EXIT
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"scratch-gpt {_command_name(args)}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as err:
        failure = describe_failure(err, args)
        if failure is None or debug:
            raise
        print(f"scratch-gpt {_command_name(args)}: error: {failure[1]}", file=sys.stderr)
        return failure[0]


if __name__ == "__main__":
    sys.exit(main())
