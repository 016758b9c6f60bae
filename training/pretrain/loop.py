"""Pretraining: :func:`train` reads as the steps it takes, over Accelerate.

``train(args)`` goes corpus -> tokenizer -> packed blocks -> ScratchGPT -> run folder. Accelerate owns devices,
mixed precision, DDP/FSDP/DeepSpeed and the gradient all-reduce; the loop owns what has to be exact to resume:
the step counter (from which the data position and the learning rate follow, both pure functions of the
step), the data order (a seeded per-epoch permutation, sharded by Accelerate's prepared DataLoader) and
atomic checkpoints. The run folder follows :mod:`scratch_gpt.run_folder`::

    runs/tiny/
      config.json model.safetensors generation_config.json tokenizer files   (final model, save_pretrained)
      training_args.json  trainer_state.json (log_history)  train/eval/all_results.json  loss.png
      checkpoints/checkpoint-00000500/  (accelerator.save_state + trainer_state.json + COMPLETE)

The final model and records are written into a staging folder beside the run and swapped in at once
(:func:`scratch_gpt.safe_output.staged_output`), carrying the checkpoints over, so a crash never leaves a
half-replaced run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratch_gpt.safe_output import carry_over, crash_point, staged_output
from training.shared.plot import save_plot

from . import records
from .arguments import TrainArguments
from .best import best_fields, best_state_dict, keep_best, prune_best
from .checkpoints import load_state, newest_name, save_checkpoint
from .distributed import check_resume, full_state_dict
from .evaluation import evaluate_and_sample
from .monitor import overfitting_warning
from .optimizers import set_learning_rates
from .plan import TIME_PLAN_AFTER_STEPS, DataPlan, plan_data
from .setup import Job, Run, apply_epoch_cap, build, micro_batches, prepare

__all__ = ["TrainOutput", "TrainState", "TrainingDivergedError", "train"]

Callback = Callable[[int, dict[str, Any]], None]
logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the bad update was applied."""


@dataclass
class TrainOutput:
    """What :func:`train` returns: the run folder, its final metrics and the last sampled continuations."""

    run_dir: Path
    metrics: dict[str, Any]
    samples: list[str] = field(default_factory=list)
    prompt: str = ""  # the samples' prompt: the start of a validation document unless --sample-prompt


@dataclass
class TrainState:
    """What a checkpoint restores: the step (data position and learning rate follow), time, log history."""

    step: int = 0
    elapsed_s: float = 0.0
    data_epoch: int = 0
    data_index: int = 0
    schedule: dict[str, Any] = field(default_factory=dict)  # the learning-rate plan's state (a time budget)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None  # the lowest validation loss so far, and its step (see .best)
    best_step: int | None = None
    plan: dict[str, Any] = field(default_factory=dict)  # the data plan of a run planned by its time budget

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in saved.items() if k in names})


@dataclass
class StepResult:
    """One optimizer step: the mean loss over processes and micro-batches, and whether time is up."""

    loss: float
    learning_rate: float  # AdamW's (--learning-rate times the schedule)
    grad_norm: Any
    out_of_time: bool
    muon_learning_rate: float | None = None  # Muon's (--muon-lr times the schedule), with --optimizer muon


class Clock:
    """Training time, continued across resumptions."""

    def __init__(self, before: float) -> None:
        self.before, self.t0 = before, time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.t0


class Throughput:
    """Tokens per second over the steps since the last log (evaluations and checkpoints excluded)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.t0, self.tokens = time.perf_counter(), 0

    def rate(self) -> float:
        now = time.perf_counter()
        value = self.tokens / max(now - self.t0, 1e-9)
        self.t0, self.tokens = now, 0
        return value


def train(
    args: TrainArguments,
    *,
    datasets=None,
    tokenizer=None,
    model: torch.nn.Module | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainOutput:
    """Pretrain a causal LM as described by ``args``; returns the run folder and its final metrics.

    ``datasets`` (a DatasetDict with "train"/"validation" blocks in an ``input_ids`` column), ``tokenizer`` and
    ``model`` may be given to skip the corpus pipeline or to train another architecture with the same loop
    (the benchmarks train transformers' GPT-2 this way). ``callbacks`` are called on every process after
    each optimizer step (and after that step's checkpoint) as ``fn(step, record)``.
    """
    run = prepare(args, datasets, tokenizer)
    job = build(run, model)
    state = restore(run, job)
    clock, meter, last_eval = Clock(state.elapsed_s), Throughput(), None
    with running(run, job, state) as (batches, progress):
        while job.total_steps is None or state.step < job.total_steps:
            step = train_step(run, job, state, next_batches(batches, args.gradient_accumulation_steps), clock)
            record = log_if_due(run, job, state, step, meter, clock, progress)
            plan_if_due(run, job, state, progress)
            stopping = step.out_of_time or state.step == job.total_steps
            evaluated, early_stop = evaluate_if_due(run, job, state, stopping, meter), False
            if evaluated is not None:
                last_eval = evaluated
                record.update(evaluated[0])
                early_stop = keep_best(run, job, state, evaluated[0])
            checkpoint_if_due(run, job, state, stopping or early_stop, clock, meter)
            for fn in callbacks:
                fn(state.step, record)
            if step.out_of_time:
                logger.info("--max-time %s reached at step %d", args.max_time, state.step)
            if step.out_of_time or early_stop:
                break
    return finish(run, job, state, last_eval, clock)


# ------------------------------------------------------------------------------------------------------------
# the steps


def restore(run: Run, job: Job) -> TrainState:
    """A fresh state, or the one saved with the checkpoint to resume from (weights and optimizer too)."""
    if run.resume_from is None:
        return TrainState()
    saved = load_state(run.resume_from)
    check_resume(run.resume_from, run.accelerator, saved, job.tokens_per_step)
    if saved.get("optimizer", "adamw") != run.args.optimizer:
        raise ValueError(
            f"{run.resume_from} was trained with --optimizer {saved.get('optimizer', 'adamw')}; resume it with "
            f"the same optimizer (this run asks for {run.args.optimizer})"
        )
    run.accelerator.load_state(str(run.resume_from))
    state = TrainState.from_dict(saved)
    job.schedule.load_state_dict(state.schedule)
    if state.plan and job.plan is not None and not job.plan.known:  # a time-planned run keeps its plan
        job.plan = DataPlan.from_dict(state.plan)
        apply_epoch_cap(job, state.step)
    if run.main:  # best models that only the killed run's later steps had named
        prune_best(run.run_dir, state.best_step)
    if run.main:
        logger.info("resumed from %s at step %d", run.resume_from, state.step)
    return state


@contextlib.contextmanager
def running(run: Run, job: Job, state: TrainState) -> Iterator[tuple[Iterator[dict], Any]]:
    """The micro-batch stream from the state's position, a progress bar and trackers for the loop's duration.

    Whatever ends the loop (the end, a diverged loss, an interruption), the log history is saved.
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if job.streaming:  # no length: the position in the stream is part of the checkpoint
        epoch, skip = state.data_epoch, state.data_index
    else:  # exact from the step counter: each step consumed `accum` batches of a known-length epoch
        epoch, skip = divmod(state.step * run.args.gradient_accumulation_steps, len(job.train_dl))
    trackers = run.args.report_to != "none"
    if trackers:
        run.accelerator.init_trackers("pretrain", config={k: v for k, v in run.args.to_dict().items() if v is not None})
    progress = tqdm(total=job.total_steps, initial=state.step, desc="train", unit="step", disable=not run.main,
                    dynamic_ncols=True)
    with contextlib.ExitStack() as stack:
        if run.main:
            stack.enter_context(logging_redirect_tqdm())  # log lines print above the progress bar
        try:
            job.model.train()
            yield micro_batches(job, run.accelerator, epoch, skip, state), progress
        finally:
            progress.close()
            if trackers:
                run.accelerator.end_training()
            if run.main:
                records.write_progress(run.run_dir, state.log_history, state.step, job.total_steps,
                                       **history_extra(run, state))


def next_batches(batches: Iterator[dict], count: int) -> list[torch.Tensor]:
    """The input ids of the next ``count`` micro-batches."""
    return [next(batches)["input_ids"] for _ in range(count)]


def train_step(run: Run, job: Job, state: TrainState, micro: list[torch.Tensor], clock: Clock) -> StepResult:
    """Forward/backward over the micro-batches, one all-reduce of (loss, out-of-time), clip, update."""
    args, accelerator = run.args, run.accelerator
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, ids in enumerate(micro):
        sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(job.model)
        with sync:
            loss = job.model(input_ids=ids, labels=ids).loss / len(micro)
            accelerator.backward(loss)
        loss_sum += loss.detach().float()
    if args.debug_nan_step == state.step + 1:
        loss_sum = loss_sum * float("nan")
    # one all-reduce: the loss, and the time used (the same on every process, so are the stop and the rate)
    reduced = accelerator.reduce(torch.stack([loss_sum, loss_sum.new_tensor(clock.elapsed())]), "mean")
    train_loss, elapsed = reduced.tolist()
    out_of_time = run.max_time_s is not None and elapsed >= run.max_time_s
    if not math.isfinite(train_loss):
        raise TrainingDivergedError(
            f"loss became {train_loss} at step {state.step + 1}; stopped before applying that update "
            f"(newest checkpoint: {newest_name(run.run_dir)}). Try a lower --learning-rate, "
            "--max-grad-norm 1.0 or --mixed-precision bf16 instead of fp16"
        )
    multiplier = job.schedule.multiplier(state.step, elapsed)
    lr = args.learning_rate * multiplier
    set_learning_rates(job.optimizers, multiplier)  # each group's peak (AdamW's, Muon's) times the schedule
    grad_norm = None
    if args.max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(job.model.parameters(), args.max_grad_norm)
    for optimizer in job.optimizers:
        optimizer.step()
    for optimizer in job.optimizers:
        optimizer.zero_grad(set_to_none=True)
    state.step += 1
    muon_lr = args.muon_lr * multiplier if args.optimizer == "muon" else None
    return StepResult(train_loss, lr, grad_norm, out_of_time, muon_lr)


def log_if_due(
    run: Run, job: Job, state: TrainState, step: StepResult, meter: Throughput, clock: Clock, progress
) -> dict[str, Any]:
    """The step's record; every ``--log-every`` steps (and the last) it holds the loss and joins the history."""
    meter.tokens += job.tokens_per_step
    record: dict[str, Any] = {"step": state.step, "num_input_tokens_seen": state.step * job.tokens_per_step}
    if state.step % run.args.log_every == 0 or state.step == job.total_steps or step.out_of_time:
        rate = meter.rate()
        record.update(loss=step.loss, learning_rate=step.learning_rate, tokens_per_second=round(rate, 1),
                      elapsed_s=round(clock.elapsed(), 2))
        if step.muon_learning_rate is not None:
            record["muon_learning_rate"] = step.muon_learning_rate
        if step.grad_norm is not None:
            record["grad_norm"] = float(step.grad_norm)
        state.log_history.append(record)
        if run.args.report_to != "none":
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            run.accelerator.log(scalars, step=state.step)
        progress.set_postfix(loss=f"{step.loss:.3f}", lr=f"{step.learning_rate:.2e}", tok_s=f"{rate:,.0f}",
                             refresh=False)
    progress.update(1)
    return dict(record)


def evaluate_if_due(
    run: Run, job: Job, state: TrainState, stopping: bool, meter: Throughput
) -> tuple[dict[str, Any], list[str]] | None:
    """Every ``--eval-every`` steps and at the end: validation loss, perplexity and samples, then the plot."""
    if not (state.step % run.args.eval_every == 0 or stopping):
        return None
    metrics, samples = evaluate_and_sample(
        job.model, job.unwrapped, job.eval_dl, run.accelerator, run.tokenizer, run.args, prompt=job.sample_prompt
    )
    record = {"step": state.step, "num_input_tokens_seen": state.step * job.tokens_per_step, **metrics}
    state.log_history.append(record)
    if run.main:
        records.write_progress(run.run_dir, state.log_history, state.step, job.total_steps, **history_extra(run, state))
        save_plot(run.run_dir, state.log_history, run.target.name)
        logger.info(
            "step %d: val loss %.4f, perplexity %.2f%s", state.step, metrics["eval_loss"],
            metrics["eval_perplexity"], "".join(f"\n  sample: {t!r}" for t in samples[:1]),
        )
        warning = overfitting_warning(state.log_history, epochs_seen(run, job, state))
        if warning:
            logger.warning(warning)
    meter.restart()  # evaluation time is not training throughput
    return record, samples


def epochs_seen(run: Run, job: Job, state: TrainState) -> float | None:
    """Passes over the training split so far (None for a stream, whose length is unknown)."""
    if job.streaming:
        return None
    return state.step * run.args.gradient_accumulation_steps / len(job.train_dl)


def checkpoint_if_due(run: Run, job: Job, state: TrainState, stopping: bool, clock: Clock, meter: Throughput) -> None:
    """Every ``--checkpoint-every`` steps and at the end: a complete, resumable checkpoint."""
    every = run.args.checkpoint_every
    if not ((every and state.step % every == 0) or stopping):
        return
    state.elapsed_s = clock.elapsed()
    state.schedule = job.schedule.state_dict()
    state.plan = job.plan.to_dict() if job.plan is not None else {}
    saved = {**asdict(state), "tokens": state.step * job.tokens_per_step, "total_steps": job.total_steps,
             "tokens_per_step": job.tokens_per_step, "num_processes": run.accelerator.num_processes,
             "optimizer": run.args.optimizer, **history_extra(run, state)}
    save_checkpoint(run.accelerator, run.run_dir, state.step, saved, run.args.keep_checkpoints)
    if run.main:
        records.write_progress(run.run_dir, state.log_history, state.step, job.total_steps, **history_extra(run, state))
    meter.restart()


def finish(run: Run, job: Job, state: TrainState, last_eval, clock: Clock) -> TrainOutput:
    """Evaluate if the loop did not (a resumed, finished run), then publish model, tokenizer and records."""
    if last_eval is None:
        metrics, samples = evaluate_and_sample(
            job.model, job.unwrapped, job.eval_dl, run.accelerator, run.tokenizer, run.args, prompt=job.sample_prompt
        )
        last_eval = ({"step": state.step, **metrics}, samples)
    elapsed = clock.elapsed()
    tokens = state.step * job.tokens_per_step
    losses = [r["loss"] for r in records.train_records(state.log_history)]
    final_eval = final_metrics(run, state, last_eval[0])
    results = {
        "train": {
            "global_step": state.step,
            "num_input_tokens_seen": tokens,
            "train_runtime": round(elapsed, 1),
            "train_tokens_per_second": round(tokens / max(elapsed, 1e-9), 1),
            "train_loss": sum(losses) / len(losses) if losses else float("nan"),
            "num_parameters": job.num_parameters,
            "num_processes": run.accelerator.num_processes,
        },
        "eval": {k: v for k, v in final_eval.items() if k.startswith("eval_")},
    }
    publish(run, job, state, results)
    if run.main:
        logger.info("finished: %s", {**results["train"], **results["eval"]})
    return TrainOutput(run.target, {**results["train"], **results["eval"]}, last_eval[1], job.sample_prompt)


def uses_best(run: Run, state: TrainState) -> bool:
    """Whether the final model is an earlier step's best (``--final-model best`` and a better earlier eval)."""
    return run.args.final_model == "best" and state.best_step is not None and state.best_step != state.step


def final_metrics(run: Run, state: TrainState, last: dict[str, Any]) -> dict[str, Any]:
    """The evaluation of the model the run folder ends with: the best one's, or the last one's."""
    if not uses_best(run, state):
        return last
    best = [r for r in records.eval_records(state.log_history) if r["step"] == state.best_step]
    return best[-1] if best else last


def history_extra(run: Run, state: TrainState, run_dir: Path | None = None) -> dict[str, Any]:
    """The best-model fields of ``trainer_state.json`` (see :mod:`.best`)."""
    return best_fields(state, run_dir or run.run_dir, saved=run.args.final_model == "best")


def plan_if_due(run: Run, job: Job, state: TrainState, progress) -> None:
    """A run planned by its time budget alone: plan the data once its step time is measured (see :mod:`.plan`),
    from the step times every process shares (so all of them plan the same), and apply its epoch cap."""
    if job.plan is None or job.plan.known or job.streaming or state.step < TIME_PLAN_AFTER_STEPS:
        return
    planner = getattr(job.schedule, "planned_steps", None)  # a TimeBudgetSchedule's
    elapsed = getattr(job.schedule, "last_elapsed_s", None)
    planned = planner(state.step, elapsed) if planner is not None and elapsed is not None else None
    if planned is not None:
        job.plan = plan_data(run.args, planned, len(job.train_dl), run.main)
        if apply_epoch_cap(job, state.step):
            progress.total = job.total_steps
            progress.refresh()


def publish(run: Run, job: Job, state: TrainState, results: dict[str, dict[str, Any]]) -> None:
    """Stage the final model, tokenizer, generation settings and records beside the run, then swap them in.

    Everything else the run folder holds (checkpoints, tracker logs) is carried into the new folder. With
    ``--overwrite`` the run trained in a work folder: the old run is replaced only now, and the work folder
    (its files hard-linked into the new run) is removed after the swap.
    """
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    state_dict = full_state_dict(accelerator, job.model, job.unwrapped)
    if run.main:
        if uses_best(run, state):  # the lowest validation loss, saved when it was reached
            logger.info("final model: the best evaluation's (step %d, validation loss %.4f)", state.best_step,
                        state.best_metric)
            state_dict = best_state_dict(run.run_dir, state.best_step)
        prune_best(run.run_dir, state.best_step if run.args.final_model == "best" else None)
        keep = [p.name for p in run.run_dir.iterdir()]
        with staged_output(run.target, overwrite=True) as stage:
            job.unwrapped.generation_config.update(**generation_defaults(run.tokenizer, run.args.block_size))
            job.unwrapped.save_pretrained(stage, state_dict=state_dict)
            crash_point("train-model-written")  # crash tests: killed between the weights and the records
            if run.tokenizer is not None:
                run.tokenizer.save_pretrained(stage)
            records.save_final_records(stage, run.target.name, run.args.to_dict(), state.log_history, results,
                                       **history_extra(run, state, run.target))
            carry_over(run.run_dir, stage, keep)
        if run.run_dir != run.target:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        logger.info("saved final model to %s", run.target)
    accelerator.wait_for_everyone()


def generation_defaults(tokenizer, block_size: int) -> dict[str, Any]:
    """What ``generate`` / ``pipeline`` use by default for the saved model: sampling, sized to the context."""
    settings: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_k": 50, "max_new_tokens": min(256, block_size)}
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        settings.update(
            eos_token_id=eos,
            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        )
    return settings
