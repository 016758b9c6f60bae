"""``scratch-gpt finetune classify|instruct``: Trainer-based finetuning from the command line.

Each task's options are its arguments dataclass (the shared model/output part plus its data part), the LoRA
options and the Trainer options, parsed through ``HfArgumentParser``. Heavy imports (torch, transformers'
models, datasets, peft) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json

from training.shared.arguments import add_command, arg, from_namespace

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


# (name, data part, default epochs, help, description); the command functions are below, in _COMMANDS.
_TASKS = (
    ("classify", ClassifyData, 5.0, "Finetune a text classifier (the book's chapter 6).",
     "Finetune a sequence classifier on TEXT/LABEL columns. Labels (strings or ints) come from the data; missing "
     "validation/test splits are carved out with a fixed seed, stratified by label. Writes the model, tokenizer "
     "and the run records (eval_results.json, test_results.json with accuracy, macro F1 and the confusion "
     "matrix, trainer_state.json)."),
    ("instruct", InstructData, 2.0, "Instruction-finetune on Alpaca-style records (the book's chapter 7).",
     "Finetune on {instruction, input, output} records with the Alpaca prompt (also saved as the tokenizer's "
     "chat template); only response tokens are learned. Writes the model, tokenizer, the run records "
     "(validation loss before and after in eval_results.json) and generated_predictions.json (answers for the "
     "test split)."),
    ("dpo", DPOData, 1.0, "Preference-tune with DPO through TRL's DPOTrainer (the book's chapter-7 bonus).",
     "Direct preference optimisation on chosen/rejected pairs (the book's {instruction, input, chosen, "
     "rejected}, TRL's {prompt, chosen, rejected}, or conversational); the prompt is the model's chat template. "
     "The reference is the loaded model (or, with --lora, the model with its adapter disabled). Writes the "
     "model, tokenizer and the run records (reward accuracy and margins on the held-out pairs before and after "
     "training in eval_results.json)."),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune`` with one sub-subcommand per task: MODEL, then the shared, data, LoRA and Trainer options."""
    ft = subparsers.add_parser(
        "finetune",
        help="Finetune a model with transformers.Trainer: a text classifier or an instruction follower.",
        description="Finetune a scratch-gpt (or GPT-2) model with transformers.Trainer, fully, in its last "
        "blocks, or with LoRA, and save a folder that pipeline() serves.",
    )
    sub = ft.add_subparsers(dest="finetune_command", metavar="TASK")
    ft.set_defaults(func=lambda args: (ft.print_help(), 2)[1])
    model = arg("model", help=BaseModelArgument.__dataclass_fields__["model"].metadata["help"])
    for name, data_part, epochs, help_text, description in _TASKS:
        add_command(
            sub, name, _COMMANDS[name], parts=(FinetuneOptions, data_part, LoraOptions, TrainerOptions),
            arguments=[model], help=help_text, description=description,
        ).set_defaults(epochs=epochs)


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


_COMMANDS = {"classify": _cmd_classify, "instruct": _cmd_instruct, "dpo": _cmd_dpo}
