"""A learning-rate schedule planned over a time budget: warmup, then cosine decay that ends when the time does.

``--max-time`` stops a run; with a schedule planned over ``--max-steps`` alone, a run on a slow or loaded
machine stops with its learning rate still high. :class:`TimeBudgetSchedule` plans the cosine over the time
that is left instead, from the measured time per step (an exponential moving average, so the plan follows the
machine as it speeds up or slows down), and with a step cap as well, whichever ends first ends the schedule.

How the decay advances: the loop asks for the factor of optimizer step ``s`` once that step's gradients are
computed, giving the budget used so far ``e``. The run ends after the first step with ``e >= max_time`` (or
after step ``max_steps - 1``), so the planner can count the steps left including this one,
``R = 1 + ceil((max_time - e) / step_time)`` (capped by the steps left), and moves the cosine progress ``p``
a ``1/R`` share of the rest: ``p += (1 - p) / R``. With a steady step time this is an even cosine over the
run; when the estimate changes, the rest of the decay is re-spread over the new estimate without a jump; and the
last step always has ``R = 1``, so it runs at the minimum learning rate whatever the estimate said. The warmup
takes at most a tenth of the planned steps, so a budget that allows only a few steps is not spent warming up.

The state (progress, step-time estimate, last observation) is a small dict that goes into the checkpoint, so a
resumed run continues the plan where it was (with the same clock readings it gives the same factors).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StepSchedule", "TimeBudgetSchedule", "cosine_factor", "lr_multiplier"]


def cosine_factor(progress: float, min_ratio: float) -> float:
    """Cosine from 1 (``progress`` 0) down to ``min_ratio`` (``progress`` 1)."""
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return cosine_factor((step - warmup_steps) / decay_steps, min_ratio)


@dataclass
class StepSchedule:
    """Warmup + cosine over a fixed number of steps: a pure function of the step (the clock is not read)."""

    warmup_steps: int
    total_steps: int
    min_ratio: float

    def multiplier(self, step: int, elapsed_s: float) -> float:
        """Learning-rate factor for optimizer step ``step``; ``elapsed_s`` is ignored."""
        return lr_multiplier(step, self.warmup_steps, self.total_steps, self.min_ratio)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the step says everything."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


@dataclass
class TimeBudgetSchedule:
    """Warmup + cosine over a time budget and/or a step cap (see the module docstring).

    ``max_time_s``: the time budget in seconds (None: steps only); ``max_steps``: a step cap (None: time only);
    ``smoothing``: weight of the newest step time in the moving average; ``warmup_share``: the warmup takes at
    most this share of the planned steps (a budget that allows few steps is not spent warming up; the warmup
    only ever shortens, so the rate never steps back). The remaining fields are the state.
    """

    max_time_s: float | None
    max_steps: int | None
    warmup_steps: int
    min_ratio: float
    smoothing: float = 0.1
    warmup_share: float = 0.1
    progress: float = 0.0
    warmup: int | None = None
    step_time_s: float | None = None
    last_step: int | None = None
    last_elapsed_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_time_s is None and self.max_steps is None:
            raise ValueError("a schedule needs a time budget (max_time) or a step cap (max_steps)")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ValueError(f"max_time_s={self.max_time_s} must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing={self.smoothing} must be in (0, 1]")

    @property
    def finished(self) -> bool:
        """True once the step at the minimum learning rate has been planned (the run's last step)."""
        return self.progress >= 1.0

    def observe(self, step: int, elapsed_s: float) -> None:
        """Record that step ``step`` had its gradients at ``elapsed_s``; updates the step-time estimate.

        The interval that starts at step 0 is skipped: the first step pays for allocation and compilation.
        """
        if self.last_step is not None and step > self.last_step and self.last_step >= 1:
            dt = max(0.0, elapsed_s - float(self.last_elapsed_s)) / (step - self.last_step)
            self.step_time_s = dt if self.step_time_s is None else self.step_time_s + self.smoothing * (
                dt - self.step_time_s
            )
        self.last_step, self.last_elapsed_s = step, elapsed_s

    def steps_left(self, step: int, elapsed_s: float) -> int | None:
        """Steps still to run including ``step`` (at least 1), or None while no step time is measured yet."""
        left = None if self.max_steps is None else max(1, self.max_steps - step)
        if self.max_time_s is not None:
            if elapsed_s >= self.max_time_s:
                return 1
            if self.step_time_s is None:
                return left
            by_time = 1 + math.ceil((self.max_time_s - elapsed_s) / max(self.step_time_s, 1e-9))
            left = by_time if left is None else min(left, by_time)
        return left

    def planned_steps(self, step: int, elapsed_s: float) -> int | None:
        """The run's total steps as now planned (for a progress bar), or None when not yet known."""
        left = self.steps_left(step, elapsed_s)
        return None if left is None else step + left

    def multiplier(self, step: int, elapsed_s: float) -> float:
        """Learning-rate factor for optimizer step ``step`` (0-based) whose gradients are ready at ``elapsed_s``.

        Call once per step, in order: it advances the plan.
        """
        self.observe(step, elapsed_s)
        left = self.steps_left(step, elapsed_s)
        warmup = self.warmup_steps if self.warmup is None else self.warmup
        if left is not None:
            warmup = min(warmup, max(1, math.ceil(self.warmup_share * (step + left))))
        self.warmup = warmup
        if step < warmup and not (left is not None and left <= 1):
            return (step + 1) / warmup
        if left is None:  # decaying before any step time is known (a warmup shorter than two steps)
            left = 2
        self.progress += (1.0 - self.progress) / left
        if left <= 1:
            self.progress = 1.0
        return cosine_factor(self.progress, self.min_ratio)

    def state_dict(self) -> dict[str, Any]:
        """The plan's state, JSON-serialisable, for a checkpoint."""
        return {k: v for k, v in asdict(self).items() if k in _STATE_FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the plan saved by :meth:`state_dict` (the budget and cap stay as configured now)."""
        for key in _STATE_FIELDS:
            if key in state:
                setattr(self, key, state[key])


_STATE_FIELDS = ("progress", "warmup", "step_time_s", "last_step", "last_elapsed_s")
