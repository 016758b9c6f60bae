"""Pretraining loop: a plain function over Accelerate.

``train(args)`` goes corpus -> tokenizer -> packed blocks -> ScratchGPT -> run folder. Accelerate owns devices,
mixed precision, DDP/FSDP/DeepSpeed and the gradient all-reduce; the loop itself owns what has to be exact to
resume: the step counter (from which the data position and the learning rate follow, both pure functions of
the step), the data order (a seeded per-epoch permutation, sharded by Accelerate's prepared DataLoader) and
atomic checkpoints.

Run folder layout::

    runs/tiny/
      config.json model.safetensors generation_config.json tokenizer files   (final model, save_pretrained)
      training_args.json  train_results.json  metrics.jsonl  loss.png
      checkpoints/checkpoint-00000500/  (accelerator.save_state + trainer_state.json + COMPLETE)

A checkpoint is written into ``checkpoint-N.tmp`` and renamed after a ``COMPLETE`` marker is inside, so a crash
during a save leaves a ``.tmp`` folder that ``--resume`` skips with a warning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from .arguments import PRESETS, TrainArguments, parse_duration, resolve_arguments

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "TrainArguments",
    "TrainingDivergedError",
    "build_model",
    "list_checkpoints",
    "lr_multiplier",
    "param_groups",
    "plot_losses",
    "read_metrics",
    "resolve_arguments",
    "train",
]

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
ARGS_FILE = "training_args.json"
RESULTS_FILE = "train_results.json"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the bad update was applied."""


# ------------------------------------------------------------------------------------------------------------
# pure pieces


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices of Linear layers only; none on norms, biases and embeddings."""
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    }
    decay, no_decay, seen = [], [], set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        (no_decay if param.ndim < 2 or id(param) in embedding_params else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def total_steps_for(args: TrainArguments, tokens_per_step: int) -> int:
    """Steps to run: ``max_steps``, or fewer when ``max_tokens`` is reached first."""
    if args.max_tokens is None:
        return args.max_steps
    return min(args.max_steps, max(1, math.ceil(args.max_tokens / tokens_per_step)))


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


# ------------------------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def list_checkpoints(run_dir: str | Path, warn: bool = True) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``run_dir/checkpoints`` as (step, path), oldest first.

    Half-written ones (a ``.tmp`` folder, or no ``COMPLETE`` marker) are skipped with a warning.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        if path.name.endswith(".tmp"):
            if warn:
                logger.warning("skipping half-written checkpoint %s (a save was interrupted)", path)
            continue
        step = _checkpoint_step(path)
        if step is None:
            continue
        if not (path / COMPLETE_MARKER).is_file():
            if warn:
                logger.warning("skipping incomplete checkpoint %s (no %s marker)", path, COMPLETE_MARKER)
            continue
        found.append((step, path))
    return sorted(found)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_checkpoint(accelerator, run_dir: Path, step: int, trainer_state: dict, keep: int) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
        with open(tmp / COMPLETE_MARKER, "w") as fh:
            fh.write(f"step {step}\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old_step, old in list_checkpoints(run_dir, warn=False)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("*.tmp"):  # leftovers of an earlier crash
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------------------------
# metrics and plot


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file (an unreadable last line, e.g. after a kill, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("ignoring a damaged line in %s", path)
    return records


def _truncate_metrics(path: Path, last_step: int) -> None:
    """After a resume, drop records past the checkpoint: they will be written again."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str | None = None) -> Path:
    """Draw train and validation loss against steps into a PNG (matplotlib Agg), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", linewidth=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


class _MetricsWriter:
    def __init__(self, path: Path, enabled: bool, accelerator, trackers: bool) -> None:
        self.path, self.enabled, self.accelerator, self.trackers = path, enabled, accelerator, trackers

    def write(self, record: dict[str, Any]) -> None:
        if self.trackers:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(scalars, step=record["step"])
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------------------
# model and data


def build_model(args: TrainArguments, tokenizer) -> torch.nn.Module:
    """A freshly initialised ScratchGPTForCausalLM sized by ``args`` for ``tokenizer``'s vocabulary."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    config = ScratchGPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.block_size,
        attention_dropout=args.dropout,
        resid_dropout=args.dropout,
        embd_dropout=args.dropout,
        norm_type=args.norm_type,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    config._attn_implementation = args.attn_implementation
    return ScratchGPTForCausalLM(config)


def _prepare_data(args: TrainArguments, accelerator, run_dir: Path):
    """Tokenizer + packed blocks; the main process builds (and caches) them first, the others reuse them."""
    from training.data.corpus import DataArguments, prepare_datasets
    from training.data.tokenizer import load_tokenizer

    data_args = DataArguments(
        dataset=args.dataset,
        text_column=args.text_column,
        dataset_config=args.dataset_config,
        split=args.split,
        validation_split=args.validation_split,
        revision=args.revision,
        streaming=args.streaming,
        validation_fraction=args.validation_fraction,
        max_documents=args.max_documents,
        num_proc=args.num_proc,
        seed=args.seed,
    )
    tokenizer = None
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif (run_dir / "tokenizer.json").is_file():  # a resumed run reuses the tokenizer it trained
        tokenizer = load_tokenizer(str(run_dir))
    def prepare(tok, show_progress: bool):
        # a given tokenizer sets the model vocabulary; otherwise one of --vocab-size is trained
        vocab = args.vocab_size if tok is None else max(args.vocab_size, len(tok))
        return prepare_datasets(
            data_args, args.block_size, tokenizer=tok, vocab_size=vocab, stride=args.stride,
            show_progress=show_progress,
        )

    blocks = None
    if accelerator.is_main_process:
        if tokenizer is None:
            logger.info("training a %d-token BPE tokenizer on %s", args.vocab_size, args.dataset)
        blocks, tokenizer, stats = prepare(tokenizer, True)
        logger.info("data: %s", json.dumps(stats))
        tokenizer.save_pretrained(run_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        blocks, tokenizer, _ = prepare(load_tokenizer(str(run_dir)), False)
    return blocks, tokenizer


def _micro_batches(
    train_dl, sampler: EpochSampler | None, accelerator, epoch: int, skip: int, position: dict[str, int]
) -> Iterator[dict]:
    """Endless stream of this process's micro-batches from (epoch, skip); ``position`` tracks where it is."""
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_dl.set_epoch(epoch)  # also re-seeds a streaming dataset's shuffle buffer
        loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        position.update(epoch=epoch, index=skip)
        for batch in loader:
            position["index"] += 1
            yield batch
        if position["index"] == 0:
            raise ValueError("the training data yielded no complete batch; use a larger corpus or smaller batches")
        epoch, skip = epoch + 1, 0


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_dl, accelerator) -> float:
    """Mean validation loss over ``eval_dl`` (gathered over processes, duplicates from padding dropped)."""
    model.eval()
    losses = []
    for batch in eval_dl:
        ids = batch["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss.detach().float()
        losses.append(accelerator.gather_for_metrics(loss.repeat(ids.shape[0])))
    model.train()
    if not losses:
        return float("nan")
    return torch.cat(losses).mean().item()


@torch.no_grad()
def sample_continuations(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
) -> list[str]:
    """Sample continuations with a private RNG (the training RNG stream is left untouched)."""
    if num_samples == 0 or tokenizer is None:
        return []
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids if prompt else None
    if ids is None or ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]])
    limit = getattr(model.config, "max_position_embeddings", None) or ids.shape[1] + max_new_tokens
    ids = ids[:, -max(1, limit // 2) :].to(device)  # keep room to continue
    max_new_tokens = min(max_new_tokens, limit - ids.shape[1])
    was_training = model.training
    model.eval()
    fork_devices = [] if device.type == "cpu" else None
    with torch.random.fork_rng(devices=fork_devices, device_type=device.type):
        torch.manual_seed(seed)
        out = model.generate(
            ids.repeat(num_samples, 1),
            attention_mask=torch.ones_like(ids).repeat(num_samples, 1),
            do_sample=True,
            temperature=0.8,
            top_k=50,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    model.train(was_training)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------------------
# the loop


def _check_run_dir(args: TrainArguments, run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"output path {run_dir} exists and is not a folder")
    busy = run_dir.is_dir() and any(run_dir.iterdir())
    if busy and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
            "or --output-dir for a new one"
        )
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")


def _build_accelerator(args: TrainArguments, run_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if args.report_to == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")
        log_with = "tensorboard"
    # Without cpu=True, Accelerate treats a torchrun/`accelerate launch --multi_gpu` job on a machine with no
    # accelerator as a single process; with it, such a job is DDP over gloo (MULTI_CPU).
    has_accelerator = (
        torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    )
    accelerator = Accelerator(
        cpu=not has_accelerator,
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dynamo_backend="inductor" if args.compile else "no",
    )
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use --mixed-precision bf16 or no")
    return accelerator


def train(
    args: TrainArguments,
    *,
    datasets=None,
    tokenizer=None,
    model: torch.nn.Module | None = None,
    callbacks: Sequence[Callable[[int, dict[str, Any]], None]] = (),
) -> Path:
    """Pretrain a causal LM as described by ``args`` and return the run folder.

    ``datasets`` (a DatasetDict with "train"/"validation" blocks in an ``input_ids`` column), ``tokenizer`` and
    ``model`` may be given to skip the corpus pipeline or to train another architecture with the same loop
    (the benchmarks train transformers' GPT-2 this way). ``callbacks`` are called on every process after
    each optimizer step (and after that step's checkpoint) as ``fn(step, record)``.
    """
    from accelerate.utils import set_seed

    args.validate()
    run_dir = args.run_dir
    _check_run_dir(args, run_dir)
    max_time_s = parse_duration(args.max_time) if args.max_time else None
    accelerator = _build_accelerator(args, run_dir)
    main = accelerator.is_main_process

    if main:
        if args.overwrite and run_dir.exists():
            logger.warning("--overwrite: deleting %s", run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    resume_from = None
    if args.resume:
        complete = list_checkpoints(run_dir, warn=main)
        if complete:
            resume_from = complete[-1][1]
        elif main:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", run_dir)
    if main:
        _record_args(run_dir, args, resume_from is not None)

    # ---- data and model (the same seed everywhere: identical initial weights on every process)
    set_seed(args.seed)
    if datasets is None:
        datasets, tokenizer = _prepare_data(args, accelerator, run_dir)
    elif tokenizer is not None and main:
        tokenizer.save_pretrained(run_dir)
    from datasets import IterableDataset

    streaming = isinstance(datasets["train"], IterableDataset)
    global_batch = args.per_device_batch_size * accelerator.num_processes
    if streaming:  # blocks arrive in order; a shuffle buffer mixes them, re-seeded every epoch
        train_set = datasets["train"].select_columns(["input_ids"]).shuffle(seed=args.seed, buffer_size=10_000)
        train_set = train_set.with_format("torch")
        eval_set = datasets["validation"].select_columns(["input_ids"]).with_format("torch")
        if args.eval_batches is not None:
            eval_set = eval_set.take(args.eval_batches * global_batch)
        block = len(next(iter(train_set))["input_ids"])
    else:
        train_set = datasets["train"].with_format("torch", columns=["input_ids"])
        eval_set = datasets["validation"].with_format("torch", columns=["input_ids"])
        block = len(train_set[0]["input_ids"])
        if len(train_set) < global_batch:
            raise ValueError(
                f"only {len(train_set)} training blocks for a global micro-batch of {global_batch} "
                f"({args.per_device_batch_size} x {accelerator.num_processes} processes); use a larger corpus, "
                "a smaller --per-device-batch-size or a smaller --block-size"
            )
        if args.eval_batches is not None:
            eval_set = eval_set.select(range(min(len(eval_set), args.eval_batches * global_batch)))
    if block > args.block_size:
        raise ValueError(f"the data has blocks of {block} tokens but --block-size is {args.block_size}")

    set_seed(args.seed)
    if model is None:
        model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    sampler = None if streaming else EpochSampler(len(train_set), args.seed)
    train_dl = DataLoader(
        train_set,
        batch_size=args.per_device_batch_size,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched by iter()
    )
    eval_dl = DataLoader(
        eval_set, batch_size=args.per_device_batch_size, generator=torch.Generator().manual_seed(args.seed)
    )
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)

    accum = args.gradient_accumulation_steps
    tokens_per_step = global_batch * accum * block
    total_steps = total_steps_for(args, tokens_per_step)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state.update(json.loads((resume_from / TRAINER_STATE).read_text()))
        if main:
            logger.info("resumed from %s at step %d", resume_from, state["step"])
    step = int(state["step"])
    metrics_path = run_dir / METRICS_FILE
    if main:
        if resume_from is not None:
            _truncate_metrics(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()
    trackers = args.report_to != "none"
    if trackers:
        accelerator.init_trackers("pretrain", config={k: v for k, v in args.to_dict().items() if v is not None})
    writer = _MetricsWriter(metrics_path, main, accelerator, trackers)
    if main:
        logger.info(
            "training %.2fM parameters on %d processes: %d steps x %d tokens (%s train blocks of %d)",
            n_params / 1e6, accelerator.num_processes, total_steps, tokens_per_step,
            "streamed" if streaming else len(train_set), block,
        )

    unwrapped = accelerator.unwrap_model(model)
    if streaming:  # no length: the position in the stream is part of the checkpoint
        epoch, skip = int(state.get("data_epoch", 0)), int(state.get("data_index", 0))
    else:  # exact from the step counter: each step consumed `accum` batches of a known-length epoch
        epoch, skip = divmod(step * accum, len(train_dl))
    position = {"epoch": epoch, "index": skip}
    batches = _micro_batches(train_dl, sampler, accelerator, epoch, skip, position)
    progress = _progress_bar(total_steps, step, main)
    t0 = time.perf_counter()
    elapsed_before = float(state["elapsed_s"])
    window_t, window_tokens = time.perf_counter(), 0
    last_eval: dict[str, Any] = {}
    model.train()
    from tqdm.contrib.logging import logging_redirect_tqdm

    cleanup = contextlib.ExitStack()
    if main:
        cleanup.enter_context(logging_redirect_tqdm())  # log lines print above the progress bar
    try:
        while step < total_steps:
            loss_sum = torch.zeros((), device=accelerator.device)
            for micro in range(accum):
                ids = next(batches)["input_ids"]
                sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss = model(input_ids=ids, labels=ids).loss / accum
                    accelerator.backward(loss)
                loss_sum += loss.detach().float()
            if args.debug_nan_step == step + 1:
                loss_sum = loss_sum * float("nan")
            elapsed = elapsed_before + time.perf_counter() - t0
            out_of_time = float(max_time_s is not None and elapsed >= max_time_s)
            reduced = accelerator.reduce(torch.stack([loss_sum, loss_sum.new_tensor(out_of_time)]), "mean")
            train_loss, out_of_time = reduced.tolist()
            if not math.isfinite(train_loss):
                raise TrainingDivergedError(
                    f"loss became {train_loss} at step {step + 1}; stopped before applying that update "
                    f"(newest checkpoint: {_newest_name(run_dir)}). Try a lower --learning-rate, "
                    "--max-grad-norm 1.0 or --mixed-precision bf16 instead of fp16"
                )
            lr = args.learning_rate * lr_multiplier(step, args.warmup_steps, total_steps, args.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            grad_norm = None
            if args.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_tokens += tokens_per_step

            record: dict[str, Any] = {"step": step, "tokens": step * tokens_per_step}
            if step % args.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                tok_s = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                record.update(
                    train_loss=train_loss,
                    lr=lr,
                    tokens_per_s=round(tok_s, 1),
                    elapsed_s=round(elapsed_before + now - t0, 2),
                )
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                writer.write(record)
                progress.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
            progress.update(1)

            stopping = bool(out_of_time) or step == total_steps
            if step % args.eval_every == 0 or stopping:
                last_eval = _evaluate_and_sample(model, unwrapped, eval_dl, accelerator, tokenizer, args, step)
                last_eval["tokens"] = step * tokens_per_step
                writer.write(last_eval)
                record.update(last_eval)
                if main:
                    plot_losses(metrics_path, run_dir / PLOT_FILE, title=f"{run_dir.name}: loss")
                    logger.info(
                        "step %d: val loss %.4f, perplexity %.2f%s", step, last_eval["val_loss"], last_eval["val_ppl"],
                        "".join(f"\n  sample: {t!r}" for t in last_eval.get("samples", [])[:1]),
                    )
                window_t = time.perf_counter()  # evaluation time is not training throughput
            if (args.checkpoint_every and step % args.checkpoint_every == 0) or stopping:
                state = {
                    "step": step,
                    "tokens": step * tokens_per_step,
                    "elapsed_s": elapsed_before + time.perf_counter() - t0,
                    "total_steps": total_steps,
                    "data_epoch": position["epoch"],
                    "data_index": position["index"],
                }
                _save_checkpoint(accelerator, run_dir, step, state, args.keep_checkpoints)
                window_t = time.perf_counter()
            for fn in callbacks:
                fn(step, record)
            if out_of_time:
                if main:
                    logger.info("--max-time %s reached at step %d", args.max_time, step)
                break
    finally:
        progress.close()
        cleanup.close()
        if trackers:
            accelerator.end_training()

    if not last_eval:  # resumed a run that had already reached its last step
        last_eval = _evaluate_and_sample(model, unwrapped, eval_dl, accelerator, tokenizer, args, step)
    elapsed = elapsed_before + time.perf_counter() - t0
    _save_final(accelerator, model, tokenizer, run_dir, args)
    if main:
        results = {
            "steps": step,
            "tokens": step * tokens_per_step,
            "train_time_s": round(elapsed, 1),
            "tokens_per_s": round(step * tokens_per_step / max(elapsed, 1e-9), 1),
            "parameters": n_params,
            "num_processes": accelerator.num_processes,
            **{k: v for k, v in last_eval.items() if k in ("val_loss", "val_ppl", "samples")},
        }
        (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        plot_losses(metrics_path, run_dir / PLOT_FILE, title=f"{run_dir.name}: loss")
        logger.info("finished: %s", {k: v for k, v in results.items() if k != "samples"})
    accelerator.wait_for_everyone()
    return run_dir


def _newest_name(run_dir: Path) -> str:
    complete = list_checkpoints(run_dir, warn=False)
    return complete[-1][1].name if complete else "none"


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


def _evaluate_and_sample(model, unwrapped, eval_dl, accelerator, tokenizer, args, step) -> dict[str, Any]:
    val_loss = evaluate(model, eval_dl, accelerator)
    result: dict[str, Any] = {
        "step": step,
        "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 50.0)) if math.isfinite(val_loss) else float("nan"),
    }
    from accelerate.utils import DistributedType

    # sharded models cannot generate from one process; their samples come from `scratch-gpt generate`
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if accelerator.is_main_process and args.num_samples and not sharded:
        result["samples"] = sample_continuations(
            unwrapped, tokenizer, args.sample_prompt, args.num_samples, args.sample_max_new_tokens, args.seed
        )
    accelerator.wait_for_everyone()
    return result


def _record_args(run_dir: Path, args: TrainArguments, resuming: bool) -> None:
    path = run_dir / ARGS_FILE
    current = args.to_dict()
    if resuming and path.is_file():
        saved = json.loads(path.read_text())
        ignore = {"resume", "overwrite", "max_steps", "max_tokens", "max_time", "debug_nan_step"}
        changed = {k: (saved.get(k), v) for k, v in current.items() if k not in ignore and saved.get(k) != v}
        if changed:
            logger.warning("resuming with changed options (old, new): %s", changed)
    path.write_text(json.dumps(current, indent=2))


def _save_final(accelerator, model, tokenizer, run_dir: Path, args: TrainArguments) -> None:
    """save_pretrained the model (+ tokenizer + generation config) into a temp folder, then move it in."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        gen = unwrapped.generation_config
        if tokenizer is not None:
            gen.eos_token_id = tokenizer.eos_token_id
            gen.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        gen.do_sample = True
        gen.temperature = 0.8
        gen.top_k = 50
        gen.max_new_tokens = min(256, args.block_size)
        tmp = run_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for item in tmp.iterdir():
            os.replace(item, run_dir / item.name)
        tmp.rmdir()
        logger.info("saved final model to %s", run_dir)
    accelerator.wait_for_everyone()
