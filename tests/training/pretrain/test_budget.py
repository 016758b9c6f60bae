"""The time-budget schedule against a fake clock: it ends at the minimum learning rate, also across a resume."""

from __future__ import annotations

import json
import math

import pytest

from training.pretrain.budget import TimeBudgetSchedule, cosine_factor

MIN_RATIO = 0.1


def _run(schedule, step_time, stop_at=None, step=0, elapsed=0.0):
    """The loop's rule on a fake clock: compute a step, ask the factor, stop after the step past the budget."""
    factors = []
    while True:
        elapsed += step_time(step)
        factors.append(schedule.multiplier(step, elapsed))
        step += 1
        out_of_time = schedule.max_time_s is not None and elapsed >= schedule.max_time_s
        if out_of_time or step == schedule.max_steps or step == stop_at:
            return factors, step, elapsed


def _steady(seconds):
    return lambda step: seconds


def test_time_budget_ends_at_minimum_with_an_even_cosine():
    sched = TimeBudgetSchedule(max_time_s=60.0, max_steps=None, warmup_steps=10, min_ratio=MIN_RATIO)
    factors, steps, elapsed = _run(sched, _steady(0.5))
    assert steps == 120 and elapsed == pytest.approx(60.0)
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[-1] == pytest.approx(MIN_RATIO) and sched.finished
    decay = factors[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    # with a steady clock the plan is the plain cosine over the 110 decay steps (once the first step is measured)
    expected = [cosine_factor((j + 1) / 110, MIN_RATIO) for j in range(110)]
    assert decay == pytest.approx(expected, abs=1e-9)


def test_slower_machine_still_ends_at_minimum():
    # the machine gets 3x slower a third of the way through: the rest of the decay is re-spread, no jump up
    sched = TimeBudgetSchedule(max_time_s=60.0, max_steps=None, warmup_steps=5, min_ratio=MIN_RATIO)
    factors, steps, _ = _run(sched, lambda s: 0.5 if s < 40 else 1.5)
    assert 60 < steps < 120
    assert factors[-1] == pytest.approx(MIN_RATIO)
    decay = factors[5:]
    assert all(a >= b - 1e-12 for a, b in zip(decay, decay[1:]))
    assert max(a - b for a, b in zip(decay, decay[1:])) < 0.1  # re-planned smoothly, no cliff


def test_faster_machine_uses_the_whole_budget():
    sched = TimeBudgetSchedule(max_time_s=60.0, max_steps=None, warmup_steps=5, min_ratio=MIN_RATIO)
    factors, steps, elapsed = _run(sched, lambda s: 1.0 if s < 20 else 0.25)
    assert elapsed >= 60.0 and steps > 150
    assert factors[-1] == pytest.approx(MIN_RATIO)
    assert factors[-30] > 0.11  # not decayed early to the floor and then idling there


def test_step_cap_ends_first():
    sched = TimeBudgetSchedule(max_time_s=600.0, max_steps=50, warmup_steps=5, min_ratio=MIN_RATIO)
    factors, steps, elapsed = _run(sched, _steady(0.5))
    assert steps == 50 and elapsed < 600
    assert factors[-1] == pytest.approx(MIN_RATIO)
    assert factors[5:] == pytest.approx([cosine_factor((j + 1) / 45, MIN_RATIO) for j in range(45)], abs=1e-9)


def test_time_ends_before_the_step_cap():
    sched = TimeBudgetSchedule(max_time_s=30.0, max_steps=800, warmup_steps=5, min_ratio=MIN_RATIO)
    factors, steps, _ = _run(sched, _steady(0.5))
    assert steps == 60
    assert factors[-1] == pytest.approx(MIN_RATIO)


@pytest.mark.parametrize("kill_at", [3, 37, 75])
def test_resume_continues_the_plan_exactly(kill_at):
    clock = lambda s: 0.4 + 0.3 * math.sin(s / 7.0) ** 2  # noqa: E731 - a machine whose speed wanders
    def fresh():
        return TimeBudgetSchedule(max_time_s=45.0, max_steps=None, warmup_steps=8, min_ratio=MIN_RATIO)

    full, full_steps, _ = _run(fresh(), clock)
    assert kill_at < full_steps - 1
    first = fresh()
    head, step, elapsed = _run(first, clock, stop_at=kill_at)
    saved = json.loads(json.dumps(first.state_dict()))  # what the checkpoint holds
    resumed = fresh()
    resumed.load_state_dict(saved)
    tail, steps, _ = _run(resumed, clock, step=step, elapsed=elapsed)
    assert steps == full_steps
    assert head + tail == full  # bit-identical factors
    assert tail[-1] == pytest.approx(MIN_RATIO)


def test_planned_steps_estimate():
    sched = TimeBudgetSchedule(max_time_s=100.0, max_steps=None, warmup_steps=2, min_ratio=MIN_RATIO)
    assert sched.planned_steps(0, 1.0) is None  # nothing measured yet
    _run(sched, _steady(1.0), stop_at=10)
    assert sched.planned_steps(10, 11.0) == 100  # step 10 computed at 11 s; step 99 ends at 100 s


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(max_time_s=None, max_steps=None), "needs a time budget"),
        (dict(max_time_s=0.0, max_steps=None), "max_time_s=0.0"),
        (dict(max_time_s=None, max_steps=0), "max_steps=0"),
    ],
)
def test_bad_budget_rejected(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TimeBudgetSchedule(warmup_steps=1, min_ratio=0.1, **kwargs)


def test_max_time_alone_lets_the_time_plan_the_run():
    from training.pretrain.arguments import resolve_arguments
    from training.pretrain.budget import StepSchedule
    from training.pretrain.setup import make_schedule, total_steps_for

    preset = resolve_arguments()  # tiny: 800 steps and 7 minutes, whichever ends first
    assert (preset.max_steps, preset.max_time) == (800, "7m")
    sched = make_schedule(preset, total_steps_for(preset, 2048), 420.0)
    assert isinstance(sched, TimeBudgetSchedule) and (sched.max_steps, sched.max_time_s) == (800, 420.0)
    timed = resolve_arguments(overrides={"max_time": "10m"})
    assert timed.max_steps is None and total_steps_for(timed, 2048) is None
    assert resolve_arguments(overrides={"max_time": "10m", "max_steps": 50}).max_steps == 50
    assert total_steps_for(resolve_arguments(overrides={"max_time": "10m", "max_tokens": 4096}), 2048) == 2
    untimed = resolve_arguments(overrides={"max_time": "none"})
    assert isinstance(make_schedule(untimed, 800, None), StepSchedule)
    with pytest.raises(ValueError, match="--max-steps none needs --max-time or --max-tokens"):
        resolve_arguments(overrides={"max_time": "none", "max_steps": "none"})


def test_a_short_budget_is_not_spent_warming_up():
    # 10 s at 0.5 s a step allows 20 steps; a 50-step warmup shrinks to a tenth of that once a step is timed
    sched = TimeBudgetSchedule(max_time_s=10.0, max_steps=None, warmup_steps=50, min_ratio=MIN_RATIO)
    factors, steps, _ = _run(sched, _steady(0.5))
    assert steps == 20 and sched.warmup == 2
    assert factors[:2] == pytest.approx([1 / 50, 2 / 50])  # before any step time is known
    assert max(factors) > 0.95 and factors[-1] == pytest.approx(MIN_RATIO)
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
