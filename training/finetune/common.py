"""Shared pieces of Trainer-based finetuning (classification and instruction).

Design choices:
- One typed dataclass (:class:`TrainerOptions`) holds the usual Trainer settings; the CLI builds its options
  from the dataclass fields (help text lives in the field metadata), so the command line and the Python API
  cannot drift apart. :meth:`TrainerOptions.training_arguments` turns it into ``transformers.TrainingArguments``.
- A base model is a scratch-gpt folder (``scratch-gpt train`` / ``convert-gpt2``) or a GPT-2 checkpoint, which
  is converted on the fly with :mod:`scratch_gpt.convert`. Anything else is refused with an error that says
  what was found and what to pass instead.
- The output folder is the Trainer's ``output_dir``'s parent: checkpoints go to ``OUT/checkpoints`` (so a
  crashed run resumes with ``--resume-from-checkpoint``), the final model, tokenizer and report are written
  to a temporary folder beside ``OUT`` and moved in file by file with ``os.replace``; the report is moved
  last, so its presence marks a complete run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
CONVERTED_BASE_SUBDIR = "base_model"
REPORT_NAME = "finetune_report.json"


# --------------------------------------------------------------------------------------------- options
@dataclass
class TrainerOptions:
    """The Trainer settings both finetuning commands share (defaults suit a small GPT on one device)."""

    epochs: float = field(default=3.0, metadata={"help": "number of training epochs"})
    max_steps: int = field(
        default=-1, metadata={"help": "stop after this many optimizer steps (overrides --epochs when > 0)"}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate of AdamW"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(
        default="linear", metadata={"help": "learning-rate schedule after warmup (linear, cosine, constant, ...)"}
    )
    warmup: float = field(
        default=0.0,
        metadata={"help": "linear warmup: a number of steps, or a fraction of all steps when below 1"},
    )
    batch_size: int = field(default=8, metadata={"help": "training batch size per device"})
    eval_batch_size: int = field(default=0, metadata={"help": "evaluation batch size per device (0: as --batch-size)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables clipping)"})
    eval_strategy: str = field(
        default="epoch", metadata={"help": "when to evaluate on the validation split: no, steps or epoch"}
    )
    eval_steps: float = field(
        default=0, metadata={"help": "evaluate every N steps with --eval-strategy steps (0: as --logging-steps)"}
    )
    save_strategy: str = field(
        default="epoch",
        metadata={"help": "when to write a resumable checkpoint to OUT/checkpoints: no, steps or epoch"},
    )
    save_steps: float = field(default=500, metadata={"help": "checkpoint every N steps with --save-strategy steps"})
    save_total_limit: int = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    logging_steps: float = field(default=10, metadata={"help": "log the training loss every N steps"})
    seed: int = field(default=123, metadata={"help": "random seed (model head init, shuffling, dropout)"})
    mixed_precision: str = field(
        default="no", metadata={"help": "mixed precision: no, bf16 or fp16 (fp16 needs a GPU)"}
    )
    use_cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is available"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass to save memory"}
    )
    dataloader_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    disable_tqdm: bool = field(default=False, metadata={"help": "hide the Trainer progress bar"})

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
            output_dir=output_dir,
            num_train_epochs=self.epochs,
            max_steps=self.max_steps,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.eval_batch_size or self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            max_grad_norm=self.max_grad_norm,
            eval_strategy=self.eval_strategy,
            eval_steps=self.eval_steps or None,
            save_strategy=self.save_strategy,
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            logging_strategy="steps",
            logging_steps=self.logging_steps,
            seed=self.seed,
            data_seed=self.seed,
            bf16=self.mixed_precision == "bf16",
            fp16=self.mixed_precision == "fp16",
            use_cpu=self.use_cpu,
            dataloader_num_workers=self.dataloader_workers,
            disable_tqdm=self.disable_tqdm,
            report_to=[],
            remove_unused_columns=False,
        )
        if self.gradient_checkpointing:  # transformers 5 renamed the switch
            names = {f.name for f in dataclasses.fields(TrainingArguments)}
            key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
            kwargs[key] = True
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, title: str, **defaults: Any) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (help from the field metadata).

    ``defaults`` overrides field defaults for this parser (e.g. a different learning rate per command).
    """
    import typing

    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = defaults.get(f.name, f.default_factory())  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', f.name)} (default: {default})"
        ftype = hints[f.name]
        if ftype is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif ftype in (int, float, str):
            group.add_argument(flag, type=ftype, default=default, help=help_text, dest=f.name)
        else:  # lists of strings
            group.add_argument(flag, nargs="+", default=default, help=help_text, dest=f.name)


def dataclass_from_args(cls: type, args: argparse.Namespace):
    """Build dataclass ``cls`` from the parsed options that :func:`add_dataclass_arguments` added."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


# ------------------------------------------------------------------------------------------ base model
@dataclass
class ModelSource:
    """Where a base model comes from: ``kind`` is ``scratch_gpt`` or ``gpt2``."""

    name_or_path: str
    kind: str
    revision: str | None = None


_TRAIN_RUN_SUBDIRS = ("final", "model", "final_model")


def resolve_model_source(name_or_path: str, revision: str | None = None) -> ModelSource:
    """Check that ``name_or_path`` is a scratch-gpt or GPT-2 model (local folder or Hub id).

    A ``scratch-gpt train`` run folder whose model lives in a ``final``/``model`` subfolder is accepted too.
    Raises ``FileNotFoundError``/``ValueError`` naming what was found and what is expected.
    """
    from transformers import PretrainedConfig

    expected = (
        "pass a folder written by `scratch-gpt train` or `scratch-gpt convert-gpt2`, "
        "or a GPT-2 checkpoint (folder or Hub id such as openai-community/gpt2)"
    )
    path = name_or_path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        inner = [os.path.join(path, d) for d in _TRAIN_RUN_SUBDIRS if os.path.isfile(os.path.join(path, d, "config.json"))]
        if not inner:
            raise FileNotFoundError(f"{path} is a folder without config.json, so it is not a model folder; {expected}")
        path = inner[0]
        logger.info("using the model in %s", path)
    elif os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path} is a file, not a model folder; {expected}")
    elif not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"model folder {path} does not exist; {expected}")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    except OSError as err:
        raise FileNotFoundError(f"cannot read a model config from {path!r} ({err}); {expected}") from err
    model_type = config_dict.get("model_type")
    if model_type == "scratch_gpt":
        return ModelSource(path, "scratch_gpt", revision)
    if model_type == "gpt2":
        return ModelSource(path, "gpt2", revision)
    raise ValueError(
        f"{path} holds a model of type {model_type!r}, but finetuning needs a scratch-gpt or GPT-2 model; {expected}"
    )


def materialize_scratch_model(source: ModelSource, workdir: str) -> str:
    """A local scratch-gpt folder for ``source``: the folder itself, or a GPT-2 checkpoint converted into
    ``workdir/base_model`` (weights, config and the source's tokenizer files)."""
    if source.kind == "scratch_gpt":
        return source.name_or_path
    from scratch_gpt.convert import convert_gpt2_checkpoint

    out = os.path.join(workdir, CONVERTED_BASE_SUBDIR)
    logger.info("converting GPT-2 checkpoint %s into a scratch-gpt model at %s", source.name_or_path, out)
    result = convert_gpt2_checkpoint(source.name_or_path, out, revision=source.revision, overwrite=True)
    return str(result) if result is not None else out


def load_tokenizer_for(model_dir: str, tokenizer: str | None = None, padding_side: str = "right"):
    """The tokenizer from ``tokenizer`` (folder or Hub id) or else ``model_dir``; eos becomes pad if none."""
    from transformers import AutoTokenizer

    src = tokenizer or model_dir
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"no tokenizer found in {src} ({err}); pass --tokenizer with a tokenizer folder or Hub id"
        ) from err
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {src} has no eos token; finetuning needs one (set eos_token in its config)")
    if tok.pad_token is None:
        logger.info("tokenizer has no pad token: using its eos token %r as pad", tok.eos_token)
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def check_vocab(model, tokenizer) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding matrix."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}; "
            "use the tokenizer the model was trained with (--tokenizer)"
        )


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (the score head is initialised at load time, before Trainer seeds)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


def make_trainer(model, tokenizer, opts: TrainerOptions, output_dir: str, encoded: dict[str, Any], data_collator,
                 **trainer_kwargs: Any):
    """A ``transformers.Trainer`` on ``encoded["train"]`` with checkpoints in ``OUT/checkpoints``.

    It evaluates on ``encoded["validation"]`` when that split exists (else evaluation is off);
    ``trainer_kwargs`` (e.g. ``compute_metrics``) go to the Trainer.
    """
    from transformers import Trainer

    has_val = "validation" in encoded
    args = opts.training_arguments(
        os.path.join(output_dir, CHECKPOINT_SUBDIR),
        eval_strategy=opts.eval_strategy if has_val else "no",
        label_names=["labels"],
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded.get("validation"),
        processing_class=tokenizer,
        data_collator=data_collator,
        **trainer_kwargs,
    )


# --------------------------------------------------------------------------------------- output folder
def prepare_output_dir(output_dir: str, overwrite: bool = False, resume: bool = False) -> None:
    """Make ``output_dir`` ready: refuse a finished or foreign folder unless ``overwrite``/``resume``."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f"--output-dir {output_dir} is a file")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if overwrite:
            logger.warning("removing the existing output folder %s (--overwrite)", output_dir)
            shutil.rmtree(output_dir)
        elif not resume:
            has_checkpoints = os.path.isdir(os.path.join(output_dir, CHECKPOINT_SUBDIR))
            hint = (
                "add --resume-from-checkpoint to continue from its checkpoints, choose another folder,"
                if has_checkpoints
                else "choose another folder"
            )
            raise FileExistsError(f"--output-dir {output_dir} is not empty; {hint} or pass --overwrite")
    os.makedirs(output_dir, exist_ok=True)


def resolve_resume(output_dir: str, resume: str | bool | None) -> str | None:
    """The checkpoint to resume from: an explicit path, or the newest in ``OUT/checkpoints`` for ``True``."""
    if not resume:
        return None
    if isinstance(resume, str) and resume not in ("latest", "last", "true"):
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume-from-checkpoint {resume} is not a folder")
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = os.path.join(output_dir, CHECKPOINT_SUBDIR)
    last = get_last_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if last is None:
        raise FileNotFoundError(f"no checkpoint-N folder in {ckpt_dir} to resume from")
    logger.info("resuming from %s", last)
    return last


def staging_dir(output_dir: str) -> str:
    """A fresh temporary folder beside ``output_dir`` (same file system, so ``os.replace`` is atomic)."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.tmp-", dir=parent)


def commit_staged(staged: str, output_dir: str, last: tuple[str, ...] = ()) -> None:
    """Move every entry of ``staged`` into ``output_dir`` with ``os.replace``; names in ``last`` go last."""
    os.makedirs(output_dir, exist_ok=True)
    names = sorted(os.listdir(staged), key=lambda n: (n in last, n))
    for name in names:
        src, dst = os.path.join(staged, name), os.path.join(output_dir, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)
    shutil.rmtree(staged, ignore_errors=True)


def finish_output(staged: str, output_dir: str, report: dict[str, Any], keep_checkpoints: bool = False) -> None:
    """Write ``report`` into ``staged``, move the staged run into ``output_dir`` (report last, marking it
    complete) and drop ``OUT/checkpoints`` unless ``keep_checkpoints``."""
    write_json(os.path.join(staged, REPORT_NAME), report)
    commit_staged(staged, output_dir, last=(REPORT_NAME,))
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(output_dir, CHECKPOINT_SUBDIR), ignore_errors=True)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + ``os.replace``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def trainable_parameter_summary(model) -> dict[str, int | float]:
    """``{"trainable": n, "total": n, "fraction": f}`` over the model's parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def log_history_losses(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The (step, loss) and (step, eval_loss) entries of a Trainer's ``state.log_history``."""
    rows = []
    for entry in log_history:
        row = {k: entry[k] for k in ("step", "epoch", "loss", "eval_loss") if k in entry}
        if "loss" in row or "eval_loss" in row:
            rows.append(row)
    return rows


def read_records(path: str) -> list[dict[str, Any]]:
    """Records from a local ``.json`` (a list of objects, or ``{"data": [...]}``) or ``.jsonl`` file."""
    with open(path, encoding="utf-8") as fh:
        if path.endswith(".jsonl"):
            records = []
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path} line {i} is not valid JSON: {err}") from err
            return records
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); JSON Lines files need the .jsonl suffix") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records, found a {type(data).__name__}")
    return data
