"""Plan for the data: how many passes over the training split a run will make, and what it does about many.

A small corpus and a fast loop make many epochs, and repeated tokens stop teaching: Muennighoff et al.,
"Scaling Data-Constrained Language Models" (NeurIPS 2023) find up to about 4 epochs nearly as good as fresh
data, and returns that fall quickly after (by 16 epochs, extra passes add almost nothing and validation loss
climbs for small models). Issue 24's run on 1.1 MB of plays shows it here: 23 epochs, validation loss lowest at
step 1,000 and higher at the end. So beyond :data:`MANY_EPOCHS` planned epochs the run says so in one line and
turns early stopping on (patience :data:`MANY_EPOCHS_PATIENCE` evaluations, unless ``--early-stopping-patience``
is given); with ``--final-model best`` (the default) the run folder then ends with the best evaluation's model.
Beyond :data:`MANY_EPOCHS_CAP` it also shortens the run to that many epochs (``--max-epochs``, 0: never): the
learning-rate schedule is planned over the shorter run, so the model it ends with is an annealed one. Early
stopping alone keeps a model from the middle of the cosine, whose learning rate is still high; docs/quality.md
measures both. The plan comes from the step plan before the first step; a run planned by ``--max-time`` alone
is planned once its step time is measured (after :data:`TIME_PLAN_AFTER_STEPS` steps).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DataPlan", "MANY_EPOCHS", "MANY_EPOCHS_CAP", "MANY_EPOCHS_PATIENCE", "TIME_PLAN_AFTER_STEPS", "capped_steps",
    "plan_data",
]

logger = logging.getLogger(__name__)

MANY_EPOCHS = 4.0
MANY_EPOCHS_PATIENCE = 3
MANY_EPOCHS_CAP = 16.0  # kjv: the classic loop annealed at 16-18 epochs is level with the plain loop; `modern`: 8
TIME_PLAN_AFTER_STEPS = 10


@dataclass
class DataPlan:
    """Planned epochs (None: not known yet, or a stream), whether that is many, and the patience in force."""

    epochs: float | None = None
    many: bool = False
    early_stopping_patience: int | None = None
    mitigations: list[str] = field(default_factory=list)
    max_steps: int | None = None  # the shorter run the plan applies (an epoch cap), None: none
    known: bool = False  # False while a time-only plan waits for its step time

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the checkpoint (a resumed run keeps its plan)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> DataPlan:
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})


def planned_epochs(steps: int, accumulation: int, batches_per_epoch: int) -> float:
    """Passes over the training split that ``steps`` optimizer steps make."""
    return steps * accumulation / max(1, batches_per_epoch)


def capped_steps(epochs: float, accumulation: int, batches_per_epoch: int) -> int:
    """Optimizer steps in ``epochs`` passes over the training split (at least 1)."""
    return max(1, math.floor(epochs * max(1, batches_per_epoch) / accumulation))


def epoch_cap(args, epochs: float) -> float | None:
    """The epochs the run is cut to: ``--max-epochs`` when given (0: none), else :data:`MANY_EPOCHS_CAP` when
    more are planned; None when the plan stays within it."""
    cap = MANY_EPOCHS_CAP if args.max_epochs is None else args.max_epochs
    return cap if 0 < cap < epochs else None


def plan_data(args, steps: int | None, batches_per_epoch: int | None, log: bool) -> DataPlan:
    """The plan for ``steps`` optimizer steps over ``batches_per_epoch`` micro-batches per epoch (None: a
    stream, unknown length); logs it (``log``) and, beyond :data:`MANY_EPOCHS`, the mitigation it applies."""
    patience = args.early_stopping_patience
    if batches_per_epoch is None:
        return DataPlan(None, False, patience, [], known=True)
    if steps is None:
        return DataPlan(None, False, patience, [], known=False)
    epochs = planned_epochs(steps, args.gradient_accumulation_steps, batches_per_epoch)
    plan = DataPlan(round(epochs, 2), epochs > MANY_EPOCHS, patience, [], known=True)
    cap = epoch_cap(args, epochs)
    if cap is not None:
        plan.max_steps = capped_steps(cap, args.gradient_accumulation_steps, batches_per_epoch)
        plan.mitigations.append(
            f"a shorter run: {cap:g} epochs ({plan.max_steps} steps), its schedule annealed by then "
            "(--max-epochs 0: no cap)"
        )
    if plan.many:
        if patience is None:
            plan.early_stopping_patience = MANY_EPOCHS_PATIENCE
            plan.mitigations.append(f"early stopping after {MANY_EPOCHS_PATIENCE} evaluations without improvement")
        if args.final_model == "best":
            plan.mitigations.append("the final model is the best evaluation's")
    if log:
        _log_plan(plan, steps, epochs)
    return plan


def _log_plan(plan: DataPlan, steps: int, epochs: float) -> None:
    """The plan in one line; beyond :data:`MANY_EPOCHS`, a warning naming what the run applies."""
    logger.info("data plan: %d steps = %.3g epochs of the training split", steps, epochs)
    if plan.many:
        done = "; ".join(plan.mitigations) or (
            "nothing (--early-stopping-patience, --max-epochs and --final-model are set)"
        )
        logger.warning(
            "%.3g planned epochs is more than %g: repeated data overfits; applying: %s. A larger corpus helps "
            "most (dropout and more weight decay measured mixed: docs/quality.md)", epochs, MANY_EPOCHS, done,
        )
    elif plan.max_steps is not None:
        logger.info("--max-epochs: the run ends at step %d", plan.max_steps)
