"""One driver for every finetuning task: validate, build, train with ``transformers.Trainer``, publish.

A task (:class:`FinetuneTask`) supplies the small part that differs: its splits, its model head, how it
encodes and collates examples, what it measures after training and what it adds to the saved folder. The
driver does the rest the same way for all of them:

1. validate the arguments, the base model (a scratch-gpt folder, or a GPT-2 checkpoint converted on the
   fly) and the data, and check that the output overlaps no input, before anything is written;
2. build tokenizer, model, LoRA adapters and a Trainer whose checkpoints go to ``OUT/checkpoints``;
3. train, then evaluate (``eval``/``test`` metrics, Trainer's names);
4. write model, tokenizer and the run records into a staging folder beside ``OUT`` and swap it in at once
   (:func:`scratch_gpt.safe_output.staged_output`); records go through :mod:`scratch_gpt.run_folder`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder
from scratch_gpt.safe_output import carry_over, check_no_overlap, staged_output
from training.shared.plot import save_plot

from .arguments import FinetuneArguments, TrainerOptions
from .lora import LoraOptions, apply_lora, merge, set_adapter_base_path
from .source import ModelSource, check_vocab, load_tokenizer_for, materialize_scratch_model, resolve_model_source

logger = logging.getLogger(__name__)


class FinetuneTask:
    """The per-task part of finetuning. Subclasses set ``pipeline_tag`` and override the hooks they need."""

    pipeline_tag = ""
    lora_task = "causal"  # peft task type: "causal" or "classify"
    padding_side = "right"

    def __init__(self, args: FinetuneArguments) -> None:
        self.args = args
        self.splits: dict[str, Any] = {}

    def check(self, lora: LoraOptions | None) -> None:
        """Refuse task options that contradict each other (before any work)."""

    def inputs(self) -> list[str | None]:
        """Local paths this run reads (the output must overlap none of them)."""
        return [self.args.model, self.args.dataset, self.args.tokenizer]

    def load_splits(self, seed: int) -> None:
        """Read and split the data into ``self.splits`` (``train`` plus ``validation``/``test`` when any)."""
        raise NotImplementedError

    def split_sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def prepare_tokenizer(self, tokenizer) -> None:
        """Adjust the tokenizer before encoding (e.g. a chat template)."""

    def build_model(self, base_dir: str, tokenizer, config_overrides: dict[str, Any]):
        """The model to train, loaded from the scratch-gpt folder ``base_dir``."""
        raise NotImplementedError

    def method(self, lora: LoraOptions | None) -> str:
        return ("lora-merged" if self.args.merge else "lora") if lora is not None else "full"

    def freeze(self, model) -> None:
        """Mark the parameters that stay fixed (default: none)."""

    def encode(self, tokenizer, max_length: int) -> dict[str, Any]:
        """The tokenised splits the Trainer sees (``train`` and, when evaluated, ``validation``)."""
        raise NotImplementedError

    def collator(self, tokenizer):
        raise NotImplementedError

    def trainer_kwargs(self) -> dict[str, Any]:
        """Extra ``Trainer`` arguments, e.g. ``compute_metrics``."""
        return {}

    def make_trainer(self, model, tokenizer, opts: TrainerOptions, output_dir: str, encoded: dict[str, Any]):
        """The trainer (default: ``transformers.Trainer`` from :func:`make_trainer`; DPO uses TRL's)."""
        return make_trainer(model, tokenizer, opts, output_dir, encoded, self)

    def adapter_base(self, model, tokenizer, base_dir: str, source: ModelSource, work: str) -> str | None:
        """A folder to ship as ``OUT/base_model`` for an unmerged adapter, or None to point at ``base_dir``."""
        return base_dir if source.kind != "scratch_gpt" else None

    def before_training(self, trainer, resume: str | None) -> dict[str, Any]:
        """Validation metrics before training (merged into the ``eval`` results)."""
        return {}

    def evaluate(self, trainer, encoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """``{"eval": {...}, "test": {...}}`` after training."""
        return {"eval": trainer.evaluate()} if "validation" in encoded else {}

    def finalize(self, model, tokenizer, stage: Path, opts: TrainerOptions) -> dict[str, dict[str, Any]]:
        """Last touches on the final model and extra files in the staging folder; returns extra results."""
        return {}

    def settings(self) -> dict[str, Any]:
        """The task's arguments as recorded in ``training_args.json``."""
        return asdict(self.args)


@dataclass
class FinetuneResult:
    """What a finetuning run returns: the folder and the records written into it."""

    output_dir: Path
    settings: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.settings["method"]


@dataclass
class Job:
    """Everything built for one run."""

    source: ModelSource
    opts: TrainerOptions
    lora: LoraOptions | None
    tokenizer: Any
    train_model: Any
    encoded: dict[str, Any]
    trainer: Any
    base_dir: str
    adapter_base: str | None
    parameters: dict[str, int]


def finetune(
    task: FinetuneTask, trainer_options: TrainerOptions | None = None, lora: LoraOptions | None = None
) -> FinetuneResult:
    """Finetune ``task.args.model`` on the task's data and publish the result in ``task.args.output_dir``."""
    args, opts = task.args, trainer_options or TrainerOptions()
    lora = lora if lora is not None else (LoraOptions() if args.lora else None)
    args.lora = lora is not None
    args.check()
    task.check(lora)
    source = resolve_model_source(args.model, args.revision)
    task.load_splits(opts.seed)
    resume = check_output_dir(args, task.inputs())
    with tempfile.TemporaryDirectory(prefix="scratch-gpt-base-") as work:
        job = build_job(task, source, opts, lora, work)
        start_checkpoints(args)
        results = train_and_evaluate(task, job, resume)
        settings = {"task": task.pipeline_tag, "base_model_kind": source.kind, "method": task.method(lora),
                    **task.settings(), "trainer": asdict(opts), "lora_options": asdict(lora) if lora else None}
        if job.trainer.is_world_process_zero():  # under `accelerate launch`, only the main process writes
            publish(task, job, settings, results)
    return FinetuneResult(Path(args.output_dir), settings, results)


# ------------------------------------------------------------------------------------------------------------
# the steps


def check_output_dir(args: FinetuneArguments, inputs: list[str | None]) -> str | None:
    """The checkpoint to resume from; refuses a busy output without --overwrite/--resume, or one over an input."""
    out = args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--output-dir {out} is a file")
    resume = resolve_resume(out, args.resume_from_checkpoint)
    if os.path.isdir(out) and os.listdir(out) and not (args.overwrite or resume):
        hint = ("add --resume-from-checkpoint to continue from its checkpoints, choose another folder,"
                if run_folder.checkpoints_dir(out).is_dir() else "choose another folder")
        raise FileExistsError(f"--output-dir {out} is not empty; {hint} or pass --overwrite")
    check_no_overlap(out, inputs)
    return resume


def resolve_resume(output_dir: str, resume: str | bool | None) -> str | None:
    """The checkpoint to resume from: an explicit path, or the newest in ``OUT/checkpoints`` for ``True``."""
    if not resume:
        return None
    if isinstance(resume, str) and resume not in ("latest", "last", "true"):
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume-from-checkpoint {resume} is not a folder")
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = run_folder.checkpoints_dir(output_dir)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None:
        raise FileNotFoundError(f"no checkpoint-N folder in {ckpt_dir} to resume from")
    logger.info("resuming from %s", last)
    return last


def build_job(task: FinetuneTask, source: ModelSource, opts: TrainerOptions, lora: LoraOptions | None,
              work: str) -> Job:
    """Tokenizer, model (frozen parts, LoRA), encoded splits and the Trainer."""
    from transformers import set_seed

    args = task.args
    base_dir = materialize_scratch_model(source, work)
    tokenizer = load_tokenizer_for(base_dir, args.tokenizer, padding_side=task.padding_side)
    task.prepare_tokenizer(tokenizer)
    set_seed(opts.seed)  # the new head is initialised at load time, before Trainer seeds
    overrides = {"pad_token_id": tokenizer.pad_token_id}
    if args.dropout is not None:
        overrides.update(attention_dropout=args.dropout, resid_dropout=args.dropout, embd_dropout=args.dropout)
    model = task.build_model(base_dir, tokenizer, overrides)
    check_vocab(model, tokenizer)
    context = model.config.max_position_embeddings
    encoded = task.encode(tokenizer, min(args.max_length, context) if args.max_length > 0 else context)
    task.freeze(model)
    adapter_base = task.adapter_base(model, tokenizer, base_dir, source, work) if lora and not args.merge else None
    train_model = apply_lora(model, lora, task=task.lora_task) if lora is not None else model
    parameters = parameter_counts(train_model)
    logger.info("training %d of %d parameters", parameters["trainable_parameters"], parameters["total_parameters"])
    trainer = task.make_trainer(train_model, tokenizer, opts, checkpoint_home(args), encoded)
    return Job(source, opts, lora, tokenizer, train_model, encoded, trainer, base_dir, adapter_base, parameters)


def parameter_counts(model) -> dict[str, int]:
    """Trainable and total parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": total}


def make_trainer(model, tokenizer, opts: TrainerOptions, output_dir: str, encoded: dict[str, Any], task):
    """A ``transformers.Trainer`` on ``encoded["train"]`` with checkpoints in ``OUT/checkpoints``; it
    evaluates on ``encoded["validation"]`` when that split exists (else evaluation is off)."""
    from transformers import Trainer

    args = opts.training_arguments(
        str(run_folder.checkpoints_dir(output_dir)),
        eval_strategy=opts.eval_strategy if "validation" in encoded else "no",
        label_names=["labels"],
    )
    return Trainer(
        model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded.get("validation"),
        processing_class=tokenizer, data_collator=task.collator(tokenizer), **task.trainer_kwargs(),
    )


def checkpoint_home(args: FinetuneArguments) -> str:
    """Where Trainer's ``checkpoints/`` go: OUT, or with ``--overwrite`` of a non-empty OUT (no resumption) a
    work folder beside it, so the old result stays whole until the new one is swapped in (issue 11)."""
    out = args.output_dir
    if args.overwrite and not args.resume_from_checkpoint and os.path.isdir(out) and os.listdir(out):
        return str(Path(out).with_name(f".{Path(out).name}.overwrite"))
    return out


def start_checkpoints(args: FinetuneArguments) -> None:
    """A new run over an old one trains in a fresh work folder (one left by a killed run is removed)."""
    home = checkpoint_home(args)
    if home != args.output_dir and os.path.isdir(home):
        shutil.rmtree(home)


def train_and_evaluate(task: FinetuneTask, job: Job, resume: str | None) -> dict[str, dict[str, Any]]:
    """Train, then measure; returns the ``train``/``eval``/``test`` results (Trainer's metric names)."""
    initial = task.before_training(job.trainer, resume)
    out = job.trainer.train(resume_from_checkpoint=resume)
    sizes = task.split_sizes()
    results = {"train": {**out.metrics, "global_step": int(out.global_step), "train_samples": sizes["train"],
                         **job.parameters}}
    for split, metrics in task.evaluate(job.trainer, job.encoded).items():
        results[split] = {**results.get(split, {}), **metrics}
    if initial or "validation" in sizes:
        results["eval"] = {**initial, **results.get("eval", {}), "eval_samples": sizes.get("validation", 0)}
    if "test" in sizes:
        results["test"] = {**results.get("test", {}), "test_samples": sizes["test"]}
    for split, metrics in results.items():
        logger.info("%s results: %s", split, {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    return results


def publish(task: FinetuneTask, job: Job, settings: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """Model, tokenizer and records into a staging folder beside OUT, then swapped in at once."""
    args = task.args
    carry, home = [run_folder.CHECKPOINTS_DIR] if args.keep_checkpoints else [], checkpoint_home(args)
    in_place = home == args.output_dir
    with staged_output(args.output_dir, overwrite=True, inputs=task.inputs(), carry=carry if in_place else ()) as stage:
        final = final_model(job, args, stage)
        for split, metrics in task.finalize(final, job.tokenizer, stage, job.opts).items():
            results[split] = {**results.get(split, {}), **metrics}
        final.save_pretrained(stage)
        job.tokenizer.save_pretrained(stage)
        save_records(stage, settings, results, job.trainer.state.log_history, Path(args.output_dir).name)
        if not in_place:
            carry_over(Path(home), stage, carry)
    if not in_place:
        shutil.rmtree(home, ignore_errors=True)
    logger.info("saved the finetuned model to %s", args.output_dir)


def final_model(job: Job, args: FinetuneArguments, stage: Path):
    """The model to save: merged adapters (the adapter kept in ``adapter/``), the adapter pointing at its base
    (shipped in ``base_model/`` when it is not the original folder), or the trained model itself."""
    if job.lora is not None and args.merge:
        job.train_model.save_pretrained(stage / run_folder.ADAPTER_DIR)  # before merging removes it
        return merge(job.train_model)
    if job.lora is not None:
        base = os.path.abspath(job.base_dir)
        if job.adapter_base is not None:
            shutil.copytree(job.adapter_base, stage / run_folder.BASE_MODEL_DIR)
            base = os.path.abspath(os.path.join(args.output_dir, run_folder.BASE_MODEL_DIR))
        set_adapter_base_path(job.train_model, base)
    return job.train_model


def save_records(stage: Path, settings: dict[str, Any], results: dict[str, dict[str, Any]],
                 log_history: list[dict[str, Any]], name: str) -> None:
    """Settings, results, log history and the loss plot, as ``Trainer`` names them."""
    run_folder.save_training_args(stage, settings)
    for split, metrics in results.items():
        run_folder.save_results(stage, split, metrics)
    step = results.get("train", {}).get("global_step", 0)
    run_folder.save_log_history(stage, log_history, global_step=step)
    save_plot(stage, log_history, name)
