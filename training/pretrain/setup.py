"""The steps before the first optimizer step: validate and prepare a run, then build what it trains.

:func:`prepare` checks every setting and the run folder, starts Accelerate, finds the checkpoint to resume
from and loads the data (the main process tokenises first and caches; the others reuse its work), and only
then touches the run folder. :func:`build` makes the model, the optimizer and the data loaders, all prepared
by Accelerate, plus the learning-rate schedule (a pure function of the step).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from scratch_gpt import run_folder
from scratch_gpt.safe_output import check_no_overlap, check_target

from .arguments import TrainArguments, architecture_switches, parse_duration
from .checkpoints import list_checkpoints
from .distributed import check_checkpoint_kind, cpu_fsdp_plugin, enable_cpu_fsdp
from .budget import StepSchedule, TimeBudgetSchedule, lr_multiplier  # noqa: F401 (lr_multiplier: re-exported)
from .monitor import default_prompt
from .optimizers import FUSED_ADAMW_DEVICES, build_optimizers, fused_adamw, param_groups  # noqa: F401 (re-exported)
from .plan import DataPlan, plan_data
from .records import record_arguments
from .sampling import EpochWindows, WindowSampler

Schedule = StepSchedule | TimeBudgetSchedule

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------
# pure pieces


def make_schedule(args: TrainArguments, total_steps: int | None, max_time_s: float | None) -> Schedule:
    """Warmup + cosine over the steps; with a time budget, planned over the time left from the measured step
    times (and ended by the steps too when they end first), so a time-limited run ends at its minimum rate."""
    if max_time_s is None:
        return StepSchedule(args.warmup_steps, total_steps, args.min_lr_ratio)
    return TimeBudgetSchedule(max_time_s, total_steps, args.warmup_steps, args.min_lr_ratio)


def total_steps_for(args: TrainArguments, tokens_per_step: int) -> int | None:
    """Steps to run: ``max_steps``, or fewer when ``max_tokens`` is reached first; None: the time budget decides."""
    caps = [args.max_steps] if args.max_steps is not None else []
    if args.max_tokens is not None:
        caps.append(max(1, math.ceil(args.max_tokens / tokens_per_step)))
    return min(caps) if caps else None


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch: the order depends only on (seed, epoch), so a resumed run replays it."""

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_items


def build_model(args: TrainArguments, tokenizer) -> torch.nn.Module:
    """A freshly initialised ScratchGPTForCausalLM sized by ``args`` for ``tokenizer``'s vocabulary."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    eos = tokenizer.eos_token_id
    config = ScratchGPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        max_position_embeddings=args.block_size,
        attention_dropout=args.dropout,
        resid_dropout=args.dropout,
        embd_dropout=args.dropout,
        **architecture_switches(args),  # norm, MLP width and the Llama/Qwen3 switches
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )
    config._attn_implementation = args.attn_implementation
    return ScratchGPTForCausalLM(config)


# ------------------------------------------------------------------------------------------------------------
# prepare: settings, run folder, Accelerate, data


@dataclass
class Run:
    """A validated run: its settings, Accelerate, the run folder, the data and where to resume from."""

    args: TrainArguments
    accelerator: Any
    run_dir: Path
    datasets: Any
    tokenizer: Any
    resume_from: Path | None
    max_time_s: float | None
    output_dir: Path | None = None  # where the finished run is published, when it is not run_dir (--overwrite)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def target(self) -> Path:
        """The folder the finished run replaces: ``--output-dir`` (``run_dir`` is a work folder with --overwrite)."""
        return self.output_dir or self.run_dir


def prepare(args: TrainArguments, datasets=None, tokenizer=None) -> Run:
    """Validate everything, then load the data, then (main process) start the run folder."""
    from accelerate.utils import set_seed

    args.validate()
    output_dir = args.run_dir
    check_run_dir(args, output_dir)
    run_dir = work_dir_for(args, output_dir)
    accelerator = build_accelerator(args, run_dir)
    resume_from = find_resume(args, run_dir)
    if resume_from is not None:  # a checkpoint of another kind (FSDP shards vs. one model) fails before the data
        check_checkpoint_kind(resume_from, accelerator, run_folder.load_trainer_state(resume_from))
    set_seed(args.seed)  # the same seed everywhere: identical initial weights on every process
    if accelerator.is_main_process:
        if datasets is None:
            datasets, tokenizer = load_data(args, run_dir if resume_from else None, show_progress=True)
        start_run_folder(args, run_dir, tokenizer, resuming=resume_from is not None)
    accelerator.wait_for_everyone()
    if datasets is None:  # other processes: the tokenizer the main process saved, the data it cached
        datasets, tokenizer = load_data(args, run_dir, show_progress=False)
    max_time_s = parse_duration(args.max_time) if args.max_time else None
    return Run(args, accelerator, run_dir, datasets, tokenizer, resume_from, max_time_s, output_dir)


def work_dir_for(args: TrainArguments, output_dir: Path) -> Path:
    """Where the run trains: ``--output-dir`` itself, or with ``--overwrite`` of an existing run a work folder
    beside it, so the old run stays complete until the new one is published over it (issue 11)."""
    if args.overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        return output_dir.with_name(f".{output_dir.name}.overwrite")
    return output_dir


def check_run_dir(args: TrainArguments, run_dir: Path) -> None:
    """Refuse contradicting flags, a busy folder without --resume/--overwrite, and outputs over inputs."""
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"output path {run_dir} exists and is not a folder")
    busy = run_dir.is_dir() and any(run_dir.iterdir()) and not holds_only_unfinished_run(run_dir)
    if busy and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
            "or --output-dir for a new one"
        )
    check_no_overlap(run_dir, [args.dataset, args.tokenizer])
    check_target(run_dir, overwrite=True)  # its parent can be created and written (before any work)


_UNFINISHED_RUN_NAMES = frozenset(
    (*run_folder.TOKENIZER_FILES, *run_folder.RECORD_FILES, run_folder.CHECKPOINTS_DIR,
     run_folder.GENERATION_CONFIG_FILE, "tensorboard", "best")
)


def holds_only_unfinished_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what a run writes before it has anything complete (its tokenizer,
    settings, logs, unfinished checkpoints): no model and no complete checkpoint, so a plain rerun may start
    it again (issue 11: a failed or killed first run must not block the rerun). Any other file keeps it."""
    if run_folder.has_weights(run_dir) or list_checkpoints(run_dir):
        return False
    return all(item.name in _UNFINISHED_RUN_NAMES for item in run_dir.iterdir())


def find_resume(args: TrainArguments, run_dir: Path) -> Path | None:
    """The newest complete checkpoint with --resume; a non-empty folder without one is an error."""
    if not args.resume:
        return None
    complete = list_checkpoints(run_dir)
    if complete:
        return complete[-1][1]
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise FileNotFoundError(
            f"--resume: {run_dir} holds no complete checkpoint to continue; pass --overwrite to start it again "
            "or --output-dir for a new run"
        )
    logger.info("--resume: %s holds no run yet; starting from scratch", run_dir)
    return None


def resolve_mixed_precision(requested: str, has_accelerator: bool) -> str:
    """``--mixed-precision`` as Accelerate takes it: ``auto`` becomes bf16 where the device computes it natively."""
    if requested != "auto":
        return requested
    from training.shared.hardware import auto_mixed_precision

    device = "cpu"
    if has_accelerator:
        device = torch.accelerator.current_accelerator().type if hasattr(torch, "accelerator") else "cuda"
    chosen, why = auto_mixed_precision(device)
    logger.info("--mixed-precision auto: %s (%s)", "bf16" if chosen == "bf16" else "fp32", why)
    return chosen


def build_accelerator(args: TrainArguments, run_dir: Path):
    """Accelerate for this run (CPU DDP over gloo under a multi-process launch without an accelerator; FSDP2
    over gloo when that launch asks for FSDP, see :mod:`.distributed`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if args.report_to == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")
        log_with = "tensorboard"
    # Without cpu=True, Accelerate treats a torchrun/`accelerate launch --multi_gpu` job on a machine with no
    # accelerator as a single process; with it, such a job is DDP over gloo (MULTI_CPU).
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    # Accelerate keeps its settings in a per-process singleton; a second run in the same process (a notebook,
    # tests, benchmarks) may ask for another precision or compile backend. The process group stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    fsdp = cpu_fsdp_plugin(has_accelerator, args.mixed_precision)  # an FSDP launch on a CPU-only machine
    precision = "no" if fsdp is not None else resolve_mixed_precision(args.mixed_precision, has_accelerator)
    accelerator = Accelerator(
        cpu=not has_accelerator,
        mixed_precision=precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dynamo_backend="inductor" if args.compile else "no",
        fsdp_plugin=fsdp,
    )
    if fsdp is not None:
        enable_cpu_fsdp(accelerator, fsdp)
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use --mixed-precision bf16 or no")
    return accelerator


def load_data(args: TrainArguments, tokenizer_dir: Path | None, show_progress: bool):
    """Tokenizer (given, the run's own, or trained on the corpus) and packed blocks."""
    from training.data.corpus import prepare_datasets
    from training.data.tokenizer import load_tokenizer

    tokenizer = None
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif tokenizer_dir is not None and run_folder.has_tokenizer(tokenizer_dir):
        tokenizer = load_tokenizer(str(tokenizer_dir))  # a resumed run (or another process) reuses the run's
    if tokenizer is None:
        logger.info("training a %d-token BPE tokenizer on %s", args.vocab_size, args.dataset)
    # a given tokenizer sets the model vocabulary; otherwise one of --vocab-size is trained
    vocab = args.vocab_size if tokenizer is None else max(args.vocab_size, len(tokenizer))
    blocks, tokenizer, stats = prepare_datasets(  # the train arguments include the data arguments
        args, args.block_size, tokenizer=tokenizer, vocab_size=vocab, stride=args.stride,
        show_progress=show_progress,
    )
    if show_progress:
        logger.info("data: %s", json.dumps(stats))
    return blocks, tokenizer


def start_run_folder(args: TrainArguments, run_dir: Path, tokenizer, resuming: bool) -> None:
    """Replace an old run (--overwrite, only now that everything is validated), save tokenizer and settings."""
    if args.overwrite and run_dir.exists():  # the work folder of an earlier --overwrite run that died
        shutil.rmtree(run_dir)
    elif not resuming and run_dir.is_dir() and any(run_dir.iterdir()) and holds_only_unfinished_run(run_dir):
        logger.warning("%s holds only the start of an unfinished run (nothing complete); starting it again", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(run_dir)
    record_arguments(run_dir, args.to_dict(), resuming)


# ------------------------------------------------------------------------------------------------------------
# build: model, optimizer, loaders


@dataclass
class Job:
    """What the loop trains: Accelerate-prepared model, optimizer and loaders, and the step plan."""

    model: torch.nn.Module
    unwrapped: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]  # [AdamW] or [AdamW, Muon] (--optimizer)
    train_dl: Any
    eval_dl: Any
    sampler: EpochSampler | WindowSampler | None
    streaming: bool
    tokens_per_step: int
    total_steps: int | None  # None: the time budget ends the run
    num_parameters: int
    schedule: Schedule
    sample_prompt: str = ""
    plan: DataPlan | None = None  # planned epochs over the training split, and what the run does about many

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first (AdamW) optimizer."""
        return self.optimizers[0]


def build(run: Run, model: torch.nn.Module | None = None) -> Job:
    """Model (fresh unless given), the optimizers, the loaders and the schedule, prepared by Accelerate."""
    from accelerate.utils import set_seed

    args, accelerator = run.args, run.accelerator
    train_set, eval_set, block, streaming = loader_datasets(run)
    set_seed(args.seed)
    if model is None:
        model = build_model(args, run.tokenizer)
    num_parameters = sum(p.numel() for p in model.parameters())
    train_set, sampler = training_windows(args, train_set, streaming, block, accelerator.num_processes)
    seeded = dict(generator=torch.Generator().manual_seed(args.seed))  # keeps the global RNG untouched
    train_dl = DataLoader(train_set, batch_size=args.per_device_batch_size, sampler=sampler, drop_last=True, **seeded)
    eval_dl = DataLoader(eval_set, batch_size=args.per_device_batch_size, **seeded)
    optimizers = build_optimizers(args, model, accelerator.device)
    check_optimizer_launch(args, accelerator)
    model, *optimizers, train_dl, eval_dl = accelerator.prepare(model, *optimizers, train_dl, eval_dl)
    tokens_per_step = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps * block
    total_steps = total_steps_for(args, tokens_per_step)
    if run.main:
        logger.info(
            "training %.2fM parameters on %d processes: %s steps x %d tokens (%s train blocks of %d)",
            num_parameters / 1e6, accelerator.num_processes, total_steps or f"{args.max_time} of", tokens_per_step,
            "streamed" if streaming else len(train_set), block,
        )
    plan = plan_data(args, total_steps, None if streaming else len(train_dl), run.main)
    total_steps = plan.max_steps or total_steps  # the plan's epoch cap: fewer steps, the schedule planned over them
    return Job(
        model, accelerator.unwrap_model(model), optimizers, train_dl, eval_dl, sampler, streaming,
        tokens_per_step, total_steps, num_parameters, make_schedule(args, total_steps, run.max_time_s),
        args.sample_prompt or validation_prompt(eval_set, run.tokenizer), plan,
    )


def apply_epoch_cap(job: Job, step: int) -> bool:
    """Shorten a time-planned run to the epoch cap of the plan made once its step time was known (not before
    ``step``, the steps already run): the loop ends there and the schedule is planned to end there. True if it
    applied. A time-planned run has no step count until then (``--max-time`` alone) and a
    :class:`TimeBudgetSchedule`; a step plan's cap is applied by :func:`build`."""
    cap = job.plan.max_steps if job.plan is not None else None
    if cap is None:
        return False
    job.total_steps = job.schedule.max_steps = max(cap, step)
    return True


def check_optimizer_launch(args: TrainArguments, accelerator) -> None:
    """Muon orthogonalises whole matrices: refuse launches that shard them (FSDP, DeepSpeed) in one line; and
    fp16, whose one gradient scaler Accelerate updates after each optimizer's step (two steps, one scale)."""
    from accelerate.utils import DistributedType

    if args.optimizer == "muon" and getattr(accelerator, "mixed_precision", "no") == "fp16":
        raise ValueError("--optimizer muon does not train under fp16 loss scaling; use --mixed-precision bf16 or no")
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if args.optimizer == "muon" and sharded:
        raise ValueError(
            f"--optimizer muon needs whole weight matrices on every process, but this launch shards them "
            f"({accelerator.distributed_type.value}); launch with DDP (configs/ddp.yaml) or use --optimizer adamw"
        )


def training_windows(
    args: TrainArguments, train_set, streaming: bool, block: int, processes: int
) -> tuple[Any, Sampler | None]:
    """The training set and its sampler for ``--sampling`` (see :mod:`.sampling`). A stream, overlapping
    ``--stride`` blocks and a split of one global batch are read as packed (grid): the shifted and random
    windows need a contiguous in-memory block grid with one block to spare."""
    too_small = not streaming and len(train_set) <= args.per_device_batch_size * processes
    if streaming or args.sampling == "grid" or (args.stride or block) != block or too_small:
        if args.sampling != "grid":
            logger.info("--sampling %s needs in-memory, non-overlapping blocks and more than one batch of them; "
                        "reading the packed blocks (grid)", args.sampling)
        return train_set, None if streaming else EpochSampler(len(train_set), args.seed)
    windows = EpochWindows(train_set, args.sampling, args.seed)
    return windows, WindowSampler(len(windows), args.seed)


def validation_prompt(eval_set, tokenizer) -> str:
    """The default sample prompt: the start of the first validation document ("" without validation data)."""
    first = next(iter(eval_set), None)
    return "" if first is None else default_prompt(first["input_ids"].tolist(), tokenizer)


def loader_datasets(run: Run) -> tuple[Any, Any, int, bool]:
    """(train set, eval set, block length, streaming?) in torch format, the eval set cut to --eval-batches."""
    from datasets import IterableDataset

    args, datasets = run.args, run.datasets
    global_batch = args.per_device_batch_size * run.accelerator.num_processes
    eval_rows = None if args.eval_batches is None else args.eval_batches * global_batch
    if isinstance(datasets["train"], IterableDataset):  # blocks arrive in order; a re-seeded buffer mixes them
        train_set = datasets["train"].select_columns(["input_ids"]).shuffle(seed=args.seed, buffer_size=10_000)
        train_set = train_set.with_format("torch")
        eval_set = datasets["validation"].select_columns(["input_ids"]).with_format("torch")
        eval_set = eval_set if eval_rows is None else eval_set.take(eval_rows)
        block, streaming = len(next(iter(train_set))["input_ids"]), True
    else:
        train_set = datasets["train"].with_format("torch", columns=["input_ids"])
        eval_set = datasets["validation"].with_format("torch", columns=["input_ids"])
        eval_set = eval_set if eval_rows is None else eval_set.select(range(min(len(eval_set), eval_rows)))
        block, streaming = len(train_set[0]["input_ids"]), False
        if len(train_set) < global_batch:
            raise ValueError(
                f"only {len(train_set)} training blocks for a global micro-batch of {global_batch} "
                f"({args.per_device_batch_size} x {run.accelerator.num_processes} processes); use a larger "
                "corpus, a smaller --per-device-batch-size or a smaller --block-size"
            )
    if block > args.block_size:
        raise ValueError(f"the data has blocks of {block} tokens but --block-size is {args.block_size}")
    return train_set, eval_set, block, streaming


def micro_batches(job: Job, accelerator, epoch: int, skip: int, position) -> Iterator[dict]:
    """Endless stream of this process's micro-batches from (epoch, skip); ``position.data_epoch`` and
    ``position.data_index`` (the loop's state) track where it is."""
    while True:
        if job.sampler is not None:
            job.sampler.set_epoch(epoch)
        job.train_dl.set_epoch(epoch)  # also re-seeds a streaming dataset's shuffle buffer
        loader = accelerator.skip_first_batches(job.train_dl, skip) if skip else job.train_dl
        position.data_epoch, position.data_index = epoch, skip
        for batch in loader:
            position.data_index += 1
            yield batch
        if position.data_index == 0:
            raise ValueError("the training data yielded no complete batch; use a larger corpus or smaller batches")
        epoch, skip = epoch + 1, 0
