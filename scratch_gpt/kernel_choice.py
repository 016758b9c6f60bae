"""Choosing between kernels by timing them on the running machine: first call per key, kept for the process.

Several operations of the model can run through more than one kernel (``F.linear``, oneDNN's linear, a
transposed GEMM, ...). Which is fastest depends on the CPU, its vector units, the thread count and how busy
the machine is, so the choice is never hard-coded: the first call for a key (operation, shapes, dtype, thread
count, ...) runs every candidate on the real tensors, interleaved, a few times each, and the one with the
smallest median time is kept in a dict for the rest of the process. The plain torch path is always the first
candidate, so the outcome is never slower than it beyond timing noise. Bounds on the first call: one untimed
warm-up run of each candidate, then interleaved timed rounds, at most ``repeats`` (7), ending once ``budget_s``
(20 ms) is spent after ``min_rounds`` (3) rounds, or at once when the candidates' fastest runs alone would
overrun the budget in one more round (a large product: then one or two rounds decide). Wall-clock time spent
while the machine is busy elsewhere does not cut the rounds below ``min_rounds``: one preempted sample must not
decide. From the second round on, a candidate whose fastest run is ``drop_ratio`` times the best median is
dropped. A candidate replaces the plain one only when its median is more than ``plain_margin`` (5%) faster and
its fastest run is faster too (preemption only adds time, so the fastest run is the least disturbed sample).
A measurement is disturbed when a candidate's median is ``disturbed_ratio`` (3x) its fastest run: on a busy
machine a preempted 2-thread kernel waits milliseconds for a microsecond product. Then the plain path is used
for the next ``retry_after`` (64) calls of that key and measured again, at most ``attempts`` (3) times in all;
still disturbed at the last one, the plain path is kept.

The chosen candidate's result from the last timed round is returned, so a decided call does no extra work.
Every candidate computes the same value up to float rounding; callers that must not run a function twice
(autograd) time under ``torch.no_grad`` and then run the chosen one themselves.

Not used while compiling (``torch.compiler.is_compiling``) or when a path is forced with :func:`forced`
(tests, A/B benchmarks). The winner of each key is logged once at debug level (logger ``scratch_gpt.kernel_choice``
or this module's name as remote code).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

Candidates = Mapping[str, Callable[[], Any]]


class KernelChooser:
    """Times candidate kernels once per key and remembers the fastest (see module doc).

    ``clock`` is a zero-argument function returning seconds (``time.perf_counter``; tests inject a fake one).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        repeats: int = 7,
        budget_s: float = 0.02,
        drop_ratio: float = 2.0,
        plain_margin: float = 0.05,
        min_rounds: int = 3,
        disturbed_ratio: float = 3.0,
        attempts: int = 3,
        retry_after: int = 64,
    ) -> None:
        self.clock = clock
        self.disturbed_ratio = disturbed_ratio
        self.attempts = attempts
        self.retry_after = retry_after
        self._retry: dict[tuple, list[int]] = {}  # key -> [attempts made, calls left before the next one]
        self.repeats = repeats
        self.min_rounds = min_rounds
        self.budget_s = budget_s
        self.drop_ratio = drop_ratio
        self.plain_margin = plain_margin
        self.decisions: dict[tuple, str] = {}  # replaced (never cleared in place) by clear(): Linear's memo checks identity
        self.forced: str | None = None
        self._local = threading.local()  # this thread's forced name (a model step run on the plain path)
        self._lock = threading.RLock()  # re-entrant: a candidate may make a nested choice of its own

    def forcing(self) -> str | None:
        """The name forced in this thread (see :func:`forced_here`) or globally (:func:`forced`), else None."""
        return getattr(self._local, "forced", None) or self.forced

    def note_tuned(self) -> None:
        """Record that a kernel other than the plain one just ran in this thread (read by :class:`StepChooser`)."""
        self._local.tuned_used = True

    def choice(self, key: tuple) -> str | None:
        """The decided candidate for ``key`` (or the forced one), None when not decided yet."""
        return self.forcing() or self.decisions.get(key)

    def run(self, key: tuple, candidates: Candidates) -> tuple[str, Any]:
        """``(name, result)`` of the candidate to use for ``key``, timing them all on the first call.

        A forced name that is not among ``candidates`` falls back to the first (plain) candidate.
        """
        name = self.choice(key)
        if name is not None:
            fn = candidates.get(name)
            if fn is None:
                name, fn = next(iter(candidates.items()))
            return name, fn()
        plain = next(iter(candidates))
        with self._lock:
            name = self.decisions.get(key)
            if name is not None:  # another thread decided meanwhile
                return name, candidates[name]()
            retry = self._retry.get(key)
            if len(candidates) == 1 or (retry is not None and retry[1] > 0):
                if retry is not None:
                    retry[1] -= 1  # a disturbed measurement: the plain path until the next attempt
                else:
                    self.decisions[key] = plain
                return plain, candidates[plain]()
            winner, result, medians, disturbed = self._measure(candidates)
            made = 1 if retry is None else retry[0] + 1
            if disturbed and made < self.attempts:
                self._retry[key] = [made, self.retry_after]
                name = plain
            else:
                self._retry.pop(key, None)
                name = plain if disturbed else winner  # still disturbed at the last attempt: the safe choice
                self.decisions[key] = name
            if name != winner:
                result = candidates[plain]()
        logger.debug("kernel choice %s -> %s%s (median us: %s)", key, name,
                     " for now: the machine is busy, measuring again later" if key in self._retry else "",
                     {k: round(v * 1e6, 1) for k, v in medians.items()})
        return name, result

    def _measure(self, candidates: Candidates) -> tuple[str, Any, dict[str, float], bool]:
        """Warm up, then interleaved timed rounds within the budget; ``(winner, its last result, medians,
        disturbed)``, disturbed when a kept candidate's median is ``disturbed_ratio`` times its fastest run (the
        machine was busy elsewhere: the figures say more about the scheduler than about the kernels)."""
        clock = self.clock
        start = clock()
        for fn in candidates.values():
            fn()  # warm-up: first-call costs (primitive creation, packing, page faults) are not the kernel's
        times: dict[str, list[float]] = {name: [] for name in candidates}
        results: dict[str, Any] = {}
        alive = list(candidates)
        for round_ in range(self.repeats):
            for name in alive:
                t0 = clock()
                results[name] = candidates[name]()
                times[name].append(clock() - t0)
            if round_ >= 1:  # from two samples on: a candidate whose best run lost by drop_ratio is dropped
                best = min(statistics.median(times[name]) for name in alive)
                alive = [name for name in alive if min(times[name]) <= self.drop_ratio * best]
            if len(alive) == 1:
                break
            if round_ + 1 >= self.min_rounds and clock() - start >= self.budget_s:
                break
            if sum(min(times[name]) for name in alive) > self.budget_s:
                break  # even the fastest runs of one more round would exceed the budget: an expensive product
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        winner = min(alive, key=lambda name: (medians[name], list(candidates).index(name)))
        plain = next(iter(candidates))
        if plain in alive and (
            medians[plain] * (1.0 - self.plain_margin) <= medians[winner] or min(times[plain]) <= min(times[winner])
        ):
            winner = plain  # not clearly faster than the plain path: in median by the margin and in its best run
        disturbed = any(medians[name] > self.disturbed_ratio * min(times[name]) for name in alive)
        return winner, results[winner], medians, disturbed

    def clear(self) -> None:
        """Forget every decision (the next call per key measures again)."""
        with self._lock:
            self.decisions = {}  # a new dict: callers that memoised decisions compare identity (Linear._plan)
            self._retry.clear()


class StepChooser:
    """Whole model steps, timed alternately on the tuned kernels and on the plain path; the faster is kept.

    Per-kernel timing runs a product again and again on the same tensors, so its weights sit in the CPU's
    caches; a real decoding step streams every weight of the model from memory once. On a CPU with a large
    last-level cache that can favour kernels that lose in real use. So repeated steps of one shape (decoding:
    same batch, one new token) are also compared end to end: the first ``warmup`` steps run tuned (the
    per-kernel choices are made there), then steps alternate between the plain path (every choice forced to
    the plain candidate, in this thread) and the tuned one, ``samples`` of each. The tuned kernels are kept only
    when their median step is more than ``margin`` faster; otherwise that step key runs plain from then on. A
    step whose warm-up ran no kernel but the plain one (``KernelChooser.note_tuned`` was not called: every
    product decided ``F.linear``) is decided plain after the warm-up, without alternating: the plain path skips the
    per-layer memo lookups, so the default costs no more than ``cpu_fast_paths=False`` there.
    ``clock`` as in :class:`KernelChooser`.
    """

    def __init__(self, chooser: KernelChooser, clock: Callable[[], float] = time.perf_counter,
                 warmup: int = 2, samples: int = 4, margin: float = 0.02) -> None:
        self.chooser, self.clock = chooser, clock
        self.warmup, self.samples, self.margin = warmup, samples, margin
        self.decisions: dict[tuple, str] = {}  # step key -> "tuned" | "plain"
        self._times: dict[tuple, dict[str, list[float]]] = {}
        self._calls: dict[tuple, int] = {}
        self._tuned_seen: set[tuple] = set()  # step keys whose warm-up ran a kernel other than the plain one

    def run(self, key: tuple, step: Callable[[], Any]) -> Any:
        """``step()`` under the policy for ``key`` (measuring while undecided)."""
        decided = self.decisions.get(key)
        if decided == "tuned" or self.chooser.forcing() is not None:
            return step()
        if decided == "plain":  # (no context manager: this runs once per decoding step)
            local = self.chooser._local
            local.forced = PLAIN
            try:
                return step()
            finally:
                local.forced = None
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        if calls <= self.warmup:
            return self._warmup_step(key, calls, step)
        policy = "plain" if calls % 2 else "tuned"
        t0 = self.clock()
        with forced_here(PLAIN if policy == "plain" else None, self.chooser):
            result = step()
        times = self._times.setdefault(key, {"tuned": [], "plain": []})
        times[policy].append(self.clock() - t0)
        if min(len(ts) for ts in times.values()) >= self.samples:
            self._decide(key, times)
        return result

    def _warmup_step(self, key: tuple, calls: int, step: Callable[[], Any]) -> Any:
        """A warm-up step on the tuned kernels; after the last one, a step in which no kernel but the plain one
        ran (every product decided ``F.linear``) is decided plain at once: there is nothing to compare."""
        local = self.chooser._local
        local.tuned_used = False
        result = step()
        if local.tuned_used:
            self._tuned_seen.add(key)
        if calls == self.warmup and key not in self._tuned_seen:
            self.decisions[key] = "plain"
            del self._calls[key]
            logger.debug("step choice %s -> plain (no kernel but the plain one ran in the warm-up)", key)
        return result

    def _decide(self, key: tuple, times: dict[str, list[float]]) -> None:
        tuned, plain = (statistics.median(times[name]) for name in ("tuned", "plain"))
        self.decisions[key] = "tuned" if tuned < plain * (1.0 - self.margin) else "plain"
        del self._times[key], self._calls[key]
        self._tuned_seen.discard(key)
        logger.debug("step choice %s -> %s (median ms: tuned %.3f, plain %.3f)", key, self.decisions[key],
                     tuned * 1e3, plain * 1e3)

    def clear(self) -> None:
        """Forget every step decision."""
        self.decisions.clear()
        self._times.clear()
        self._calls.clear()
        self._tuned_seen.clear()


PLAIN = "__plain__"  # a name no candidate has: every choice falls back to its first (plain) candidate
CHOOSER = KernelChooser()
STEPS = StepChooser(CHOOSER)


@contextlib.contextmanager
def forced(name: str | None, chooser: KernelChooser = CHOOSER) -> Iterator[None]:
    """Within the block, every choice takes candidate ``name`` where it exists, else the plain (first) one;
    ``None`` restores measuring. For tests and A/B benchmarks; not thread-local."""
    previous, chooser.forced = chooser.forced, name
    try:
        yield
    finally:
        chooser.forced = previous


@contextlib.contextmanager
def thread_setting(local: threading.local, name: str, value: Any, default: Any = None) -> Iterator[None]:
    """Within the block, ``local.<name>`` is ``value`` in this thread; the previous value (or ``default``) after."""
    previous = getattr(local, name, default)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)


def forced_here(name: str | None, chooser: KernelChooser = CHOOSER) -> contextlib.AbstractContextManager[None]:
    """Like :func:`forced` for the current thread only (other threads keep their own choices)."""
    return thread_setting(chooser._local, "forced", name)


__all__ = ["CHOOSER", "PLAIN", "STEPS", "KernelChooser", "StepChooser", "forced", "forced_here", "thread_setting"]
