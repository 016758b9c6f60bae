"""The kernel tuner: with injected timings it keeps the fastest candidate per key, the plain one on ties."""

from __future__ import annotations

import logging
import threading

import pytest

from scratch_gpt.kernel_choice import PLAIN, KernelChooser, StepChooser, forced, forced_here


class FakeClock:
    """A clock that only moves when a fake kernel runs: each kernel advances it by its cost."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: dict[str, int] = {}

    def __call__(self) -> float:
        return self.now

    def kernels(self, costs: dict[str, float]) -> dict:
        def make(name: str, cost: float):
            def kernel() -> str:
                self.now += cost
                self.calls[name] = self.calls.get(name, 0) + 1
                return f"result of {name}"
            return kernel
        return {name: make(name, cost) for name, cost in costs.items()}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def chooser(clock) -> KernelChooser:
    return KernelChooser(clock=clock, repeats=5, budget_s=1.0)


def test_picks_the_fastest_and_returns_its_result(chooser, clock):
    name, result = chooser.run(("op", 1), clock.kernels({"plain": 0.003, "fast": 0.001, "middle": 0.002}))
    assert (name, result) == ("fast", "result of fast")
    assert chooser.choice(("op", 1)) == "fast"


def test_keeps_the_plain_path_when_it_is_fastest_or_within_the_margin(chooser, clock):
    assert chooser.run(("op", 1), clock.kernels({"plain": 0.001, "other": 0.0015}))[0] == "plain"
    assert chooser.run(("op", 2), clock.kernels({"plain": 0.00100, "other": 0.00097}))[0] == "plain"  # 3%: noise
    assert chooser.run(("op", 3), clock.kernels({"plain": 0.00100, "other": 0.00090}))[0] == "other"


def test_decisions_are_per_key_and_measured_once(chooser, clock):
    assert chooser.run(("op", 1), clock.kernels({"plain": 0.003, "a": 0.001, "b": 0.002}))[0] == "a"
    assert chooser.run(("op", 2), clock.kernels({"plain": 0.003, "a": 0.002, "b": 0.001}))[0] == "b"
    calls = dict(clock.calls)
    for _ in range(3):  # decided: only the chosen kernel runs, once per call, with no timing
        assert chooser.run(("op", 1), clock.kernels({"plain": 0.003, "a": 0.001, "b": 0.002})) == ("a", "result of a")
    assert clock.calls["a"] == calls["a"] + 3 and clock.calls["plain"] == calls["plain"]
    assert chooser.decisions == {("op", 1): "a", ("op", 2): "b"}


def test_the_median_decides_not_one_lucky_run(chooser, clock):
    costs = {"plain": [0.002] * 6, "spiky": [0.0005, 0.0005, 0.004, 0.004, 0.004, 0.004]}  # warm-up first

    def kernels():
        def make(name):
            def kernel():
                clock.now += costs[name].pop(0)
                return name
            return kernel
        return {name: make(name) for name in costs}

    assert chooser.run(("op",), kernels())[0] == "plain"


def test_losers_by_twice_are_dropped_and_the_budget_bounds_the_rounds(clock):
    chooser = KernelChooser(clock=clock, repeats=5, budget_s=1.0)
    chooser.run(("op",), clock.kernels({"plain": 0.001, "slow": 0.0025, "close": 0.0012}))
    assert clock.calls == {"plain": 6, "slow": 3, "close": 6}  # warm-up + 5 rounds; slow gone after round 2
    clock.calls.clear()
    tight = KernelChooser(clock=clock, repeats=5, budget_s=0.010)
    tight.run(("op",), clock.kernels({"plain": 0.003, "other": 0.0028}))
    assert clock.calls == {"plain": 4, "other": 4}  # over the 10 ms budget after one round, but 3 rounds decide
    clock.calls.clear()
    tight.run(("op2",), clock.kernels({"plain": 0.006, "other": 0.0055}))
    assert clock.calls == {"plain": 2, "other": 2}  # one more round alone would overrun: one timed round


def test_a_single_candidate_is_not_timed(chooser, clock):
    assert chooser.run(("op",), clock.kernels({"plain": 0.001})) == ("plain", "result of plain")
    assert clock.calls == {"plain": 1}


def test_forced_names_and_fallback_to_the_plain_candidate(chooser, clock):
    with forced("b", chooser):
        assert chooser.run(("op",), clock.kernels({"plain": 0.003, "b": 0.005}))[0] == "b"
        assert chooser.run(("op2",), clock.kernels({"plain": 0.003, "c": 0.001}))[0] == "plain"
    assert chooser.decisions == {}  # forcing measures nothing and decides nothing
    assert chooser.forced is None


def test_first_decision_is_made_once_under_concurrent_calls(chooser, clock):
    results = []
    barrier = threading.Barrier(8)

    def call():
        barrier.wait()
        results.append(chooser.run(("op",), clock.kernels({"plain": 0.0015, "fast": 0.001}))[0])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["fast"] * 8
    assert clock.calls["plain"] == 6  # one measurement (warm-up + 5 rounds), never repeated


def test_the_winner_is_logged_once_at_debug_level(chooser, clock, caplog):
    with caplog.at_level(logging.DEBUG, logger="scratch_gpt.kernel_choice"):
        for _ in range(3):
            chooser.run(("op", 7), clock.kernels({"plain": 0.002, "fast": 0.001}))
    records = [r for r in caplog.records if "kernel choice" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    assert "('op', 7) -> fast" in records[0].getMessage()


def test_clear_forgets_decisions(chooser, clock):
    chooser.run(("op",), clock.kernels({"plain": 0.002, "fast": 0.001}))
    chooser.clear()
    assert chooser.choice(("op",)) is None


def scripted(clock: FakeClock, costs: dict[str, list[float]]) -> dict:
    """Kernels whose successive runs cost the listed seconds (the last cost repeats)."""
    def make(name: str):
        def kernel() -> str:
            clock.now += costs[name].pop(0) if len(costs[name]) > 1 else costs[name][0]
            clock.calls[name] = clock.calls.get(name, 0) + 1
            return name
        return kernel
    return {name: make(name) for name in costs}


def test_a_disturbed_measurement_keeps_the_plain_path_and_measures_again_later(clock):
    chooser = KernelChooser(clock=clock, repeats=3, budget_s=1.0, retry_after=2)
    busy = {"plain": [0.002], "fast": [0.001, 0.001, 0.009, 0.009]}  # warm-up, then two preempted runs of three
    assert chooser.run(("op",), scripted(clock, busy)) == ("plain", "plain")
    assert chooser.choice(("op",)) is None  # nothing decided yet
    for _ in range(2):  # the plain path, unmeasured, for retry_after calls
        before = dict(clock.calls)
        assert chooser.run(("op",), scripted(clock, {"plain": [0.002], "fast": [0.001]}))[0] == "plain"
        assert clock.calls["plain"] == before["plain"] + 1 and clock.calls["fast"] == before["fast"]
    assert chooser.run(("op",), scripted(clock, {"plain": [0.002], "fast": [0.001]})) == ("fast", "fast")  # quiet
    assert chooser.choice(("op",)) == "fast"


def test_a_machine_busy_at_every_attempt_keeps_the_plain_path(clock):
    chooser = KernelChooser(clock=clock, repeats=3, budget_s=1.0, retry_after=0, attempts=2)
    for _ in range(2):
        busy = {"plain": [0.002], "fast": [0.001, 0.001, 0.009, 0.009]}
        assert chooser.run(("op",), scripted(clock, busy))[0] == "plain"
    assert chooser.choice(("op",)) == "plain"


def step_chooser(clock: FakeClock, **kwargs) -> tuple[KernelChooser, StepChooser]:
    chooser = KernelChooser(clock=clock)
    return chooser, StepChooser(chooser, clock=clock, **kwargs)


def timed_step(clock: FakeClock, chooser: KernelChooser, costs: dict[str | None, float], seen: list):
    """A model step costing ``costs[forced name]`` seconds that records the forcing it ran under."""
    def step() -> str:
        name = chooser.forcing()
        seen.append(name)
        clock.now += costs[name]
        if name is None:
            chooser.note_tuned()  # a tuned kernel ran (as Linear reports one that is not F.linear)
        return "logits"
    return step


@pytest.mark.parametrize(("tuned", "plain", "kept"), [
    (0.001, 0.002, "tuned"),     # the tuned kernels win end to end
    (0.002, 0.001, "plain"),     # per-kernel timing misled (cached weights): the plain path is kept
    (0.00099, 0.001, "plain"),   # 1% faster: within the 2% margin, the safe choice
])
def test_steps_alternate_after_the_warmup_and_the_faster_policy_is_kept(clock, tuned, plain, kept):
    chooser, steps = step_chooser(clock, warmup=2, samples=3, margin=0.02)
    seen: list = []
    step = timed_step(clock, chooser, {None: tuned, PLAIN: plain}, seen)
    for _ in range(2 + 2 * 3):
        assert steps.run(("decode", 1), step) == "logits"
    assert seen == [None, None] + [PLAIN, None] * 3  # warm-up on the tuned kernels, then alternating
    assert steps.decisions == {("decode", 1): kept}
    seen.clear()
    steps.run(("decode", 1), step)
    assert seen == [None if kept == "tuned" else PLAIN]
    assert chooser.forcing() is None  # the forcing ends with the step


def test_a_step_that_ran_only_plain_kernels_is_decided_plain_after_the_warmup(clock):
    chooser, steps = step_chooser(clock, warmup=2, samples=3)
    seen: list = []

    def plain_only_step() -> str:  # every product decided F.linear: nothing reports a tuned kernel
        seen.append(chooser.forcing())
        clock.now += 0.001
        return "logits"

    steps.run(("decode", 1), plain_only_step), steps.run(("decode", 1), plain_only_step)
    assert steps.decisions == {("decode", 1): "plain"}  # no alternation: nothing to compare
    steps.run(("decode", 1), plain_only_step)
    assert seen == [None, None, PLAIN]


def test_step_decisions_are_per_key_and_yield_to_a_forced_path(clock):
    chooser, steps = step_chooser(clock, warmup=0, samples=1)
    seen: list = []
    step = timed_step(clock, chooser, {None: 0.002, PLAIN: 0.001, "onednn": 0.003}, seen)
    steps.run(("decode", 1), step), steps.run(("decode", 1), step)
    assert steps.decisions == {("decode", 1): "plain"} and ("decode", 8) not in steps.decisions
    seen.clear()
    with forced("onednn", chooser):  # an A/B benchmark or test forcing a kernel is never overridden
        steps.run(("decode", 1), step)
    assert seen == ["onednn"]


def test_forcing_in_one_thread_leaves_the_others_alone(clock):
    chooser = KernelChooser(clock=clock)
    inside, outside = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        inside.wait()
        seen["other"] = chooser.forcing()
        outside.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with forced_here(PLAIN, chooser):
        seen["here"] = chooser.forcing()
        inside.set()
        outside.wait()
    thread.join()
    assert seen == {"here": PLAIN, "other": None}
    assert chooser.run(("op",), clock.kernels({"plain": 0.002, "fast": 0.001}))[0] == "fast"
    with forced_here(PLAIN, chooser):
        assert chooser.run(("op",), clock.kernels({"plain": 0.002, "fast": 0.001}))[0] == "plain"
