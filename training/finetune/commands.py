"""``scratch-gpt finetune classify|instruct``: Trainer-based finetuning from the command line.

Heavy imports (torch, transformers, datasets, peft) happen inside the command functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json

from .common import TrainerOptions, add_dataclass_arguments, dataclass_from_args
from .lora import LoraOptions


def _add_common(p: argparse.ArgumentParser, epochs: float, learning_rate: float) -> None:
    p.add_argument(
        "model",
        help="base model: a folder from `scratch-gpt train` or `scratch-gpt convert-gpt2`, "
        "or a GPT-2 checkpoint folder / Hub id (converted on the fly)",
    )
    p.add_argument("--output-dir", "-o", required=True, help="folder for the finetuned model, report and checkpoints")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL when it is a Hub id")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: the one in MODEL)")
    p.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    p.add_argument("--max-length", type=int, default=0, help="truncate examples to this many tokens (0: the model's context)")
    p.add_argument(
        "--dropout", type=float, default=None,
        help="set attention/residual/embedding dropout for finetuning (default: keep the model's)",
    )
    p.add_argument("--lora", action="store_true", help="train LoRA adapters instead of the model's weights")
    p.add_argument(
        "--merge", action="store_true",
        help="with --lora: fold the adapters into the weights and save a plain model (adapter kept in OUT/adapter)",
    )
    p.add_argument(
        "--resume-from-checkpoint", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
        help="resume a crashed run: from CHECKPOINT, or without a value from the newest in OUT/checkpoints",
    )
    p.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints after a successful run")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it already holds files")
    add_dataclass_arguments(p, LoraOptions, "LoRA (with --lora)")
    add_dataclass_arguments(p, TrainerOptions, "Trainer", epochs=epochs, learning_rate=learning_rate)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune`` with sub-subcommands ``classify`` and ``instruct``."""
    ft = subparsers.add_parser(
        "finetune",
        help="Finetune a model with transformers.Trainer: a text classifier or an instruction follower.",
        description="Finetune a scratch-gpt (or GPT-2) model with transformers.Trainer, fully, in its last "
        "blocks, or with LoRA, and save a folder that pipeline() serves.",
    )
    sub = ft.add_subparsers(dest="finetune_command", metavar="TASK")
    ft.set_defaults(func=lambda args: (ft.print_help(), 2)[1])

    c = sub.add_parser(
        "classify",
        help="Finetune a text classifier (the book's chapter 6).",
        description="Finetune a sequence classifier on TEXT/LABEL columns. Labels (strings or ints) come from "
        "the data; missing validation/test splits are carved out with a fixed seed, stratified by label. "
        "Writes the model, tokenizer and finetune_report.json (validation/test metrics, confusion matrix).",
    )
    _add_common(c, epochs=5.0, learning_rate=5e-5)
    c.add_argument(
        "--dataset", required=True,
        help="a local csv/tsv/json/jsonl/parquet file, a folder, a Hub dataset id, or an SMS-Spam-Collection "
        "style file (label<TAB>text per line; .txt or no suffix)",
    )
    c.add_argument(
        "--dataset-format", default="auto",
        choices=("auto", "sms", "csv", "tsv", "json", "jsonl", "parquet", "hub"),
        help="how to read --dataset (auto: by suffix; .txt and no suffix mean sms)",
    )
    c.add_argument("--text-column", default="text", help="column holding the text")
    c.add_argument("--label-column", default="label", help="column holding the label (strings or ints)")
    c.add_argument("--label-names", nargs="+", default=None, help="names for int labels 0..K-1, in order")
    c.add_argument("--validation-file", default=None, help="a separate validation file (same format as --dataset)")
    c.add_argument("--test-file", default=None, help="a separate test file (same format as --dataset)")
    c.add_argument("--validation-fraction", type=float, default=0.1, help="fraction of the data for validation when not given")
    c.add_argument("--test-fraction", type=float, default=0.2, help="fraction of the data for test when not given")
    c.add_argument("--balance", action="store_true", help="undersample the training data to equal class sizes (the book's spam set)")
    c.add_argument(
        "--train-last-blocks", type=int, default=None, metavar="N",
        help="train only the last N blocks, the final norm and the head (the book's recipe; default: all weights)",
    )
    c.set_defaults(func=_cmd_classify)

    i = sub.add_parser(
        "instruct",
        help="Instruction-finetune on Alpaca-style records (the book's chapter 7).",
        description="Finetune on {instruction, input, output} records with the Alpaca prompt (also saved as the "
        "tokenizer's chat template); only response tokens are learned. Writes the model, tokenizer, "
        "finetune_report.json (validation loss) and test_answers.json (answers for the test split).",
    )
    _add_common(i, epochs=2.0, learning_rate=5e-5)
    i.add_argument("--dataset", required=True, help="a local .json (list of records) or .jsonl file, or a Hub dataset id")
    i.add_argument("--train-fraction", type=float, default=0.85, help="first fraction of the records used for training")
    i.add_argument("--test-fraction", type=float, default=0.10, help="next fraction used for test answers (the rest validates)")
    i.add_argument("--shuffle", action="store_true", help="shuffle the records (with --seed) before splitting (the book keeps file order)")
    i.add_argument("--train-on-prompt", action="store_true", help="also learn the prompt tokens (default: only the response)")
    i.add_argument("--max-new-tokens", type=int, default=256, help="length limit of the generated test answers")
    i.add_argument("--max-test-answers", type=int, default=0, help="answer only the first N test records (0: all)")
    i.set_defaults(func=_cmd_instruct)


def _lora(args: argparse.Namespace) -> LoraOptions | None:
    return dataclass_from_args(LoraOptions, args) if args.lora else None


def _common_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments both finetuning functions take, from the options :func:`_add_common` adds
    (plus ``--dataset``, which each task adds with its own help)."""
    return dict(
        model=args.model,
        dataset=args.dataset,
        output_dir=args.output_dir,
        dataset_config=args.dataset_config,
        max_length=args.max_length,
        tokenizer=args.tokenizer,
        dropout=args.dropout,
        lora=_lora(args),
        merge_lora=args.merge,
        trainer_options=dataclass_from_args(TrainerOptions, args),
        resume_from_checkpoint=args.resume_from_checkpoint,
        keep_checkpoints=args.keep_checkpoints,
        overwrite=args.overwrite,
        revision=args.revision,
    )


def _summary(report: dict, keys: tuple[str, ...]) -> str:
    return "\n".join(f"{k}: {json.dumps(report.get(k))}" for k in keys)


def _cmd_classify(args: argparse.Namespace) -> int:
    from .classify import REPORT_NAME, finetune_classifier

    report = finetune_classifier(
        **_common_kwargs(args),
        text_column=args.text_column,
        label_column=args.label_column,
        data_format=args.dataset_format,
        validation_file=args.validation_file,
        test_file=args.test_file,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        balance=args.balance,
        label_names=args.label_names,
        train_last_blocks=args.train_last_blocks,
    )
    print(_summary(report, ("method", "split_sizes", "validation", "test", "train_seconds")))
    print(f"saved classifier to {args.output_dir} (report: {args.output_dir}/{REPORT_NAME})")
    return 0


def _cmd_instruct(args: argparse.Namespace) -> int:
    from .instruct import REPORT_NAME, finetune_instruct

    report = finetune_instruct(
        **_common_kwargs(args),
        train_fraction=args.train_fraction,
        test_fraction=args.test_fraction,
        shuffle=args.shuffle,
        train_on_prompt=args.train_on_prompt,
        max_new_tokens=args.max_new_tokens,
        max_test_answers=args.max_test_answers,
    )
    print(_summary(report, ("method", "split_sizes", "initial_validation_loss", "validation_loss", "train_seconds", "test_answers")))
    print(f"saved instruction model to {args.output_dir} (report: {args.output_dir}/{REPORT_NAME})")
    return 0
