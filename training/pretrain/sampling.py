"""Which token windows an epoch trains on: a fixed block grid, a per-epoch grid offset, or random windows.

The packed training split is a contiguous grid of blocks (``stride == block size``): block ``k`` holds tokens
``[k*B, (k+1)*B)`` of the training stream. Three ways to cut an epoch from it:

- ``grid``: the blocks themselves, in a seeded per-epoch order (the same model sees the same windows every
  epoch; what this package did before).
- ``offset``: the grid shifted by an offset ``o`` in ``[0, B)`` drawn per epoch, so window ``k`` is the tail of
  block ``k`` (from ``o``) followed by the head of block ``k+1``; ``n - 1`` windows, each token once per epoch
  up to the ``B`` tokens the shift leaves at the two ends. On a small corpus read for several epochs the
  model sees new windows (new contexts for every token) each epoch.
- ``random``: ``n - 1`` windows per epoch at uniformly random token offsets (nanoGPT's sampling; with
  replacement, so an epoch is a number of windows, not a cover).

Everything is a function of ``(seed, epoch)``: the sampler yields ``(epoch, i)`` pairs in a seeded order, and the
dataset turns a pair into a window. No state is shared between the two, so Accelerate's batch sharding
(each process takes its slice of every global batch), ``skip_first_batches`` on resume and DataLoader workers
all see the same windows, and a resumed run replays exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from .arguments import SAMPLING_CHOICES

__all__ = ["SAMPLING_CHOICES", "EpochWindows", "WindowSampler", "epoch_offset", "epoch_windows"]


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch  # the permutation seed the pretraining loop has always used


def epoch_offset(seed: int, epoch: int, block_size: int) -> int:
    """The grid offset of ``epoch`` for ``--sampling offset`` (in ``[0, block_size)``)."""
    return random.Random(f"offset:{seed}:{epoch}").randrange(block_size)


class WindowSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, i)`` for every window of the current epoch, in a seeded per-epoch permutation."""

    def __init__(self, num_windows: int, seed: int) -> None:
        self.num_windows, self.seed, self.epoch = num_windows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return ((self.epoch, i) for i in torch.randperm(self.num_windows, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_windows


class EpochWindows(Dataset):
    """Training windows cut per epoch from a contiguous grid of blocks (see the module docstring).

    ``blocks``: a sequence of equal-length rows (``blocks[k]["input_ids"]``), e.g. a ``datasets.Dataset``.
    Indexed by the ``(epoch, i)`` pairs of :class:`WindowSampler`; returns ``{"input_ids": LongTensor}``.
    """

    def __init__(self, blocks, sampling: str, seed: int) -> None:
        if sampling not in SAMPLING_CHOICES:
            raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING_CHOICES)}")
        if sampling != "grid" and len(blocks) < 2:
            raise ValueError(f"--sampling {sampling} needs at least 2 training blocks; use --sampling grid")
        self.blocks, self.sampling, self.seed = blocks, sampling, seed
        self.block_size = len(blocks[0]["input_ids"])
        with_format = getattr(blocks, "with_format", None)
        self._numpy = with_format("numpy", columns=["input_ids"]) if with_format is not None else None
        self._starts: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.blocks) if self.sampling == "grid" else len(self.blocks) - 1

    def start(self, epoch: int, i: int) -> int:
        """Token offset (in the training stream) where window ``i`` of ``epoch`` starts."""
        if self.sampling == "grid":
            return i * self.block_size
        if self.sampling == "offset":
            return i * self.block_size + epoch_offset(self.seed, epoch, self.block_size)
        if epoch not in self._starts:
            self._starts = {epoch: epoch_windows(self.seed, epoch, len(self), len(self.blocks), self.block_size)}
        return self._starts[epoch][i]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """A batch of windows (the DataLoader asks for one batch at once), reading the rows it spans once."""
        places = [divmod(self.start(epoch, i), self.block_size) for epoch, i in keys]
        rows = self._rows(sorted({k for k, _ in places} | {k + 1 for k, o in places if o}))
        return [{"input_ids": rows[k] if o == 0 else torch.cat([rows[k][o:], rows[k + 1][:o]])} for k, o in places]

    def _rows(self, indices: list[int]) -> dict[int, torch.Tensor]:
        if self._numpy is not None:  # a datasets.Dataset: one read of the whole batch as a (rows, block) array
            block = torch.from_numpy(self._numpy[indices]["input_ids"]).long()
            return dict(zip(indices, block))
        return {k: torch.as_tensor(self.blocks[k]["input_ids"], dtype=torch.long) for k in indices}


def epoch_windows(seed: int, epoch: int, count: int, num_blocks: int, block_size: int) -> list[int]:
    """``count`` uniformly random window starts over ``num_blocks`` contiguous blocks, a function of the epoch."""
    g = torch.Generator().manual_seed(_epoch_seed(seed, epoch) ^ 0x5A5A5A5A)
    last_start = (num_blocks - 1) * block_size  # a window starting here is exactly the last block
    return torch.randint(0, last_start + 1, (count,), generator=g).tolist()
