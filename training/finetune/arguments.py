"""Finetuning options: shared parts (base model and output, Trainer settings) composed into one class per task.

Each part is a dataclass whose fields are ``--flags`` (help in the metadata, see
:mod:`training.shared.arguments`); a task's arguments class inherits the shared part and adds its data part,
so ``ClassifyArguments`` and ``InstructArguments`` never repeat a field. :class:`TrainerOptions` becomes
``transformers.TrainingArguments`` through :meth:`TrainerOptions.training_arguments`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainerOptions:
    """The Trainer settings every finetuning task shares (defaults suit a small GPT on one device)."""

    _argument_group_name = "Trainer"

    epochs: float = _opt(3.0, "number of training epochs")
    max_steps: int = _opt(-1, "stop after this many optimizer steps (overrides --epochs when > 0)")
    learning_rate: float = _opt(5e-5, "peak learning rate of AdamW")
    weight_decay: float = _opt(0.1, "AdamW weight decay")
    lr_scheduler: str = _opt("linear", "learning-rate schedule after warmup (linear, cosine, constant, ...)")
    warmup: float = _opt(0.0, "linear warmup: a number of steps, or a fraction of all steps when below 1")
    batch_size: int = _opt(8, "training batch size per device")
    eval_batch_size: int = _opt(0, "evaluation batch size per device (0: as --batch-size)")
    grad_accum: int = _opt(1, "gradient accumulation steps per optimizer step")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 disables clipping)")
    eval_strategy: str = _opt("epoch", "when to evaluate on the validation split: no, steps or epoch")
    eval_steps: float = _opt(0, "evaluate every N steps with --eval-strategy steps (0: as --logging-steps)")
    save_strategy: str = _opt("epoch", "when to write a resumable checkpoint to OUT/checkpoints: no, steps or epoch")
    save_steps: float = _opt(500, "checkpoint every N steps with --save-strategy steps")
    save_total_limit: int = _opt(2, "keep at most this many checkpoints")
    logging_steps: float = _opt(10, "log the training loss every N steps")
    seed: int = _opt(123, "random seed (model head init, shuffling, dropout)")
    mixed_precision: str = _opt("no", "mixed precision: no, bf16 or fp16 (fp16 needs a GPU)")
    use_cpu: bool = _opt(False, "train on the CPU even when a GPU is available")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass to save memory")
    dataloader_workers: int = _opt(0, "data loader worker processes")
    disable_tqdm: bool = _opt(False, "hide the Trainer progress bar")

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_batch_size < 0:
            raise ValueError(f"--eval-batch-size must be >= 0, got {self.eval_batch_size}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("eval_strategy", "save_strategy"):
            if getattr(self, name) not in ("no", "steps", "epoch"):
                raise ValueError(f"--{name.replace('_', '-')} must be no, steps or epoch, got {getattr(self, name)!r}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("give --epochs > 0 or --max-steps > 0")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")

    def training_arguments(self, output_dir: str, **overrides: Any):
        """``transformers.TrainingArguments`` for these options (``overrides`` win)."""
        from transformers import TrainingArguments

        kwargs: dict[str, Any] = dict(
            output_dir=output_dir, num_train_epochs=self.epochs, max_steps=self.max_steps,
            learning_rate=self.learning_rate, weight_decay=self.weight_decay, lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup, per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.eval_batch_size or self.batch_size,
            gradient_accumulation_steps=self.grad_accum, max_grad_norm=self.max_grad_norm,
            eval_strategy=self.eval_strategy, eval_steps=self.eval_steps or None, save_strategy=self.save_strategy,
            save_steps=self.save_steps, save_total_limit=self.save_total_limit, logging_strategy="steps",
            logging_steps=self.logging_steps, seed=self.seed, data_seed=self.seed,
            bf16=self.mixed_precision == "bf16", fp16=self.mixed_precision == "fp16", use_cpu=self.use_cpu,
            dataloader_num_workers=self.dataloader_workers, disable_tqdm=self.disable_tqdm, report_to=[],
            remove_unused_columns=False,
        )
        if self.gradient_checkpointing:  # transformers 5 renamed the switch
            names = {f.name for f in dataclasses.fields(TrainingArguments)}
            key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
            kwargs[key] = True
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)


@dataclass
class BaseModelArgument:
    """The model to finetune (a positional argument on the command line)."""

    model: str = _opt("", "base model: a folder from `scratch-gpt train` or `scratch-gpt convert-gpt2`, "
                      "or a GPT-2 checkpoint folder / Hub id (converted on the fly)")


@dataclass
class FinetuneOptions:
    """What every task shares besides the Trainer settings: output, tokenizer, LoRA switches, resumption."""

    _argument_group_name = "model and output"

    output_dir: str = _opt("", "folder for the finetuned model, its records and checkpoints",
                           aliases=["-o"], required=True, metavar="OUTPUT_DIR")
    revision: str | None = _opt(None, "Hub revision of MODEL when it is a Hub id")
    tokenizer: str | None = _opt(None, "tokenizer folder or Hub id (default: the one in MODEL)")
    dataset_config: str | None = _opt(None, "configuration name of a Hub dataset")
    max_length: int = _opt(0, "truncate examples to this many tokens (0: the model's context)")
    dropout: float | None = _opt(
        None, "set attention/residual/embedding dropout for finetuning (default: keep the model's)")
    lora: bool = _opt(False, "train LoRA adapters instead of the model's weights")
    merge: bool = _opt(
        False, "with --lora: fold the adapters into the weights and save a plain model (adapter kept in OUT/adapter)")
    resume_from_checkpoint: str | None = _opt(
        None, "resume a crashed run: from CHECKPOINT, or without a value from the newest in OUT/checkpoints",
        nargs="?", const="latest", metavar="CHECKPOINT")
    keep_checkpoints: bool = _opt(False, "keep OUT/checkpoints after a successful run")
    overwrite: bool = _opt(False, "replace OUTPUT_DIR if it already holds files")


@dataclass
class FinetuneArguments(FinetuneOptions, BaseModelArgument):
    """The shared part of every task's arguments; a task adds its data part (which names ``dataset``)."""

    dataset: str = ""

    def check(self) -> None:
        """Refuse missing required values and contradicting switches."""
        for name in ("model", "dataset", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required")
        if self.merge and not self.lora:
            raise ValueError("--merge needs --lora")
        if self.max_length < 0:
            raise ValueError(f"--max-length must be >= 0, got {self.max_length}")


DATA_FORMATS = ("auto", "sms", "csv", "tsv", "json", "jsonl", "parquet", "hub")


# ------------------------------------------------------------------------------------------ classify
def _dataset(help: str) -> Any:
    """The ``--dataset`` option of a task's data part: required, with the task's own help."""
    return _opt("", help, required=True)


@dataclass
class ClassifyData:
    """Where the labelled texts come from and how they are split."""

    _argument_group_name = "data"

    dataset: str = _dataset(
        "a local csv/tsv/json/jsonl/parquet file, a folder, a Hub dataset id, or an SMS-Spam-Collection "
        "style file (label<TAB>text per line; .txt or no suffix)")
    dataset_format: str = _opt(
        "auto", "how to read --dataset (auto: by suffix; .txt and no suffix mean sms)", choices=DATA_FORMATS)
    text_column: str = _opt("text", "column holding the text")
    label_column: str = _opt("label", "column holding the label (strings or ints)")
    label_names: list[str] | None = _opt(None, "names for int labels 0..K-1, in order")
    validation_file: str | None = _opt(None, "a separate validation file (same format as --dataset)")
    test_file: str | None = _opt(None, "a separate test file (same format as --dataset)")
    validation_fraction: float = _opt(0.1, "fraction of the data for validation when not given")
    test_fraction: float = _opt(0.2, "fraction of the data for test when not given")
    balance: bool = _opt(False, "undersample the training data to equal class sizes (the book's spam set)")
    train_last_blocks: int | None = _opt(
        None, "train only the last N blocks, the final norm and the head (the book's recipe; default: all weights)",
        metavar="N")


@dataclass
class ClassifyArguments(ClassifyData, FinetuneArguments):
    """Every option of ``scratch-gpt finetune classify`` (Trainer and LoRA settings aside)."""


# ------------------------------------------------------------------------------------------ instruct
@dataclass
class InstructData:
    """Where the instruction records come from, how they are split, what is learned and answered."""

    _argument_group_name = "data"

    dataset: str = _dataset("a local .json (list of records) or .jsonl file, or a Hub dataset id")
    train_fraction: float = _opt(0.85, "first fraction of the records used for training")
    test_fraction: float = _opt(0.10, "next fraction used for test answers (the rest validates)")
    shuffle: bool = _opt(False, "shuffle the records (with --seed) before splitting (the book keeps file order)")
    train_on_prompt: bool = _opt(False, "also learn the prompt tokens (default: only the response)")
    max_new_tokens: int = _opt(256, "length limit of the generated test answers")
    max_test_answers: int = _opt(0, "answer only the first N test records (0: all)")


@dataclass
class InstructArguments(InstructData, FinetuneArguments):
    """Every option of ``scratch-gpt finetune instruct`` (Trainer and LoRA settings aside)."""


# ------------------------------------------------------------------------------------------ dpo
DPO_LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOData:
    """Where the preference pairs come from, the held-out split, and the DPO loss."""

    _argument_group_name = "data and preference"

    dataset: str = _dataset(
        "a local .json/.jsonl file or Hub dataset id of preference pairs: the book's {instruction, input, "
        "chosen, rejected}, TRL's {prompt, chosen, rejected}, or the conversational form (lists of messages)")
    validation_fraction: float = _opt(
        0.1, "last fraction of the pairs held out for reward accuracy and margins (when no validation split)")
    shuffle: bool = _opt(False, "shuffle the pairs (with --seed) before splitting")
    beta: float = _opt(0.1, "DPO beta: how far the policy may move from the reference")
    loss_type: str = _opt("sigmoid", "DPO loss: sigmoid (the DPO paper) or ipo", choices=DPO_LOSS_TYPES)


@dataclass
class DPOArguments(DPOData, FinetuneArguments):
    """Every option of ``scratch-gpt finetune dpo`` (Trainer and LoRA settings aside)."""
