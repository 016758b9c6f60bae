"""``scratch-gpt finetune classify|instruct``: Trainer-based finetuning from the command line.

Each task's options are its arguments dataclass (the shared model/output part plus its data part), the LoRA
options and the Trainer options, parsed through ``HfArgumentParser``. Heavy imports (torch, transformers'
models, datasets, peft) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from training.shared.arguments import dataclass_parser, from_namespace, lenient_numbers

from .arguments import (
    BaseModelArgument,
    ClassifyArguments,
    ClassifyData,
    DPOArguments,
    DPOData,
    FinetuneOptions,
    InstructArguments,
    InstructData,
    TrainerOptions,
)
from .lora import LoraOptions


def _add_task(sub: argparse._SubParsersAction, name: str, data_part: type, epochs: float, **texts: Any):
    """A task subcommand: MODEL, then the shared, data, LoRA and Trainer option groups."""
    p = sub.add_parser(
        name, parents=[dataclass_parser(FinetuneOptions, data_part, LoraOptions, TrainerOptions)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, **texts,
    )
    p.add_argument("model", help=BaseModelArgument.__dataclass_fields__["model"].metadata["help"])
    lenient_numbers(p)
    p.set_defaults(epochs=epochs)
    return p


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
    _add_task(
        sub, "classify", ClassifyData, epochs=5.0,
        help="Finetune a text classifier (the book's chapter 6).",
        description="Finetune a sequence classifier on TEXT/LABEL columns. Labels (strings or ints) come from "
        "the data; missing validation/test splits are carved out with a fixed seed, stratified by label. "
        "Writes the model, tokenizer and the run records (eval_results.json, test_results.json with accuracy, "
        "macro F1 and the confusion matrix, trainer_state.json).",
    ).set_defaults(func=_cmd_classify)
    _add_task(
        sub, "instruct", InstructData, epochs=2.0,
        help="Instruction-finetune on Alpaca-style records (the book's chapter 7).",
        description="Finetune on {instruction, input, output} records with the Alpaca prompt (also saved as the "
        "tokenizer's chat template); only response tokens are learned. Writes the model, tokenizer, the run "
        "records (validation loss before and after in eval_results.json) and generated_predictions.json "
        "(answers for the test split).",
    ).set_defaults(func=_cmd_instruct)
    _add_task(
        sub, "dpo", DPOData, epochs=1.0,
        help="Preference-tune with DPO through TRL's DPOTrainer (the book's chapter-7 bonus).",
        description="Direct preference optimisation on chosen/rejected pairs (the book's {instruction, input, "
        "chosen, rejected}, TRL's {prompt, chosen, rejected}, or conversational); the prompt is the model's chat "
        "template. The reference is the loaded model (or, with --lora, the model with its adapter disabled). "
        "Writes the model, tokenizer and the run records (reward accuracy and margins on the held-out pairs "
        "before and after training in eval_results.json).",
    ).set_defaults(func=_cmd_dpo)


def _options(ns: argparse.Namespace) -> tuple[TrainerOptions, LoraOptions | None]:
    return from_namespace(TrainerOptions, ns), (from_namespace(LoraOptions, ns) if ns.lora else None)


def _print_summary(result, output_dir: str) -> None:
    print(f"method: {result.method}")
    for split, metrics in result.results.items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith(
            ("_runtime", "_per_second", "total_flos"))}
        print(f"{split}: {json.dumps(shown)}")
    print(f"saved to {output_dir}")


def _cmd_classify(ns: argparse.Namespace) -> int:
    from .classify import finetune_classifier

    result = finetune_classifier(from_namespace(ClassifyArguments, ns), *_options(ns))
    _print_summary(result, ns.output_dir)
    return 0


def _cmd_instruct(ns: argparse.Namespace) -> int:
    from .instruct import finetune_instruct

    result = finetune_instruct(from_namespace(InstructArguments, ns), *_options(ns))
    _print_summary(result, ns.output_dir)
    return 0


def _cmd_dpo(ns: argparse.Namespace) -> int:
    from .dpo import finetune_dpo

    result = finetune_dpo(from_namespace(DPOArguments, ns), *_options(ns))
    _print_summary(result, ns.output_dir)
    return 0
