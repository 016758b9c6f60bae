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
dropped. A candidate must beat the plain one by more than ``plain_margin`` (5%) to replace it: closer is noise.

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
    ) -> None:
        self.clock = clock
        self.repeats = repeats
        self.min_rounds = min_rounds
        self.budget_s = budget_s
        self.drop_ratio = drop_ratio
        self.plain_margin = plain_margin
        self.decisions: dict[tuple, str] = {}
        self.forced: str | None = None
        self._lock = threading.RLock()  # re-entrant: a candidate may make a nested choice of its own

    def choice(self, key: tuple) -> str | None:
        """The decided candidate for ``key`` (or the forced one), None when not decided yet."""
        return self.forced or self.decisions.get(key)

    def run(self, key: tuple, candidates: Candidates) -> tuple[str, Any]:
        """``(name, result)`` of the candidate to use for ``key``, timing them all on the first call.

        A forced name that is not among ``candidates`` falls back to the first (plain) candidate.
        """
        name = self.forced or self.decisions.get(key)
        if name is not None:
            fn = candidates.get(name)
            if fn is None:
                name, fn = next(iter(candidates.items()))
            return name, fn()
        with self._lock:
            name = self.decisions.get(key)
            if name is not None:  # another thread decided meanwhile
                return name, candidates[name]()
            if len(candidates) == 1:
                name = next(iter(candidates))
                self.decisions[key] = name
                return name, candidates[name]()
            name, result, medians = self._measure(candidates)
            self.decisions[key] = name
        logger.debug("kernel choice %s -> %s (median us: %s)", key, name,
                     {k: round(v * 1e6, 1) for k, v in medians.items()})
        return name, result

    def _measure(self, candidates: Candidates) -> tuple[str, Any, dict[str, float]]:
        """Warm up, then interleaved timed rounds within the budget; ``(winner, its last result, medians)``."""
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
        if plain in alive and medians[plain] * (1.0 - self.plain_margin) <= medians[winner]:
            winner = plain  # within the margin of the plain path: not worth a private kernel
        return winner, results[winner], medians

    def clear(self) -> None:
        """Forget every decision (the next call per key measures again)."""
        with self._lock:
            self.decisions.clear()


CHOOSER = KernelChooser()


@contextlib.contextmanager
def forced(name: str | None, chooser: KernelChooser = CHOOSER) -> Iterator[None]:
    """Within the block, every choice takes candidate ``name`` where it exists, else the plain (first) one;
    ``None`` restores measuring. For tests and A/B benchmarks; not thread-local."""
    previous, chooser.forced = chooser.forced, name
    try:
        yield
    finally:
        chooser.forced = previous


__all__ = ["CHOOSER", "KernelChooser", "forced"]
