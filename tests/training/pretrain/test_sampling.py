"""Epoch windows: grid and offset cover the training stream once per epoch, random windows are stream slices,
everything is a function of (seed, epoch), and Accelerate's 2-process batch sharding splits each epoch exactly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from training.pretrain.sampling import EpochWindows, WindowSampler, epoch_offset

BLOCK, N_BLOCKS = 16, 13


def _grid(n_blocks=N_BLOCKS, block=BLOCK):
    """A contiguous grid whose token ids are their stream positions, so a window shows where it came from."""
    return [{"input_ids": list(range(k * block, (k + 1) * block))} for k in range(n_blocks)]


def _epoch(dataset, sampler, epoch):
    sampler.set_epoch(epoch)
    return [dataset[key]["input_ids"] for key in sampler]


def _assert_slices(windows):
    for w in windows:
        assert len(w) == BLOCK
        assert torch.equal(w, torch.arange(int(w[0]), int(w[0]) + BLOCK)), "a window is a contiguous stream slice"


@pytest.mark.parametrize("sampling", ["grid", "offset"])
def test_each_epoch_covers_the_stream_once(sampling):
    ds = EpochWindows(_grid(), sampling, seed=3)
    sampler = WindowSampler(len(ds), seed=3)
    offsets = set()
    for epoch in range(6):
        windows = _epoch(ds, sampler, epoch)
        _assert_slices(windows)
        tokens = torch.cat(windows).sort().values
        o = 0 if sampling == "grid" else epoch_offset(3, epoch, BLOCK)
        offsets.add(o)
        assert torch.equal(tokens, torch.arange(o, o + len(ds) * BLOCK))  # each token once, a contiguous cover
        # only the dropped remainder is missing: the shift's o tokens before and B - o after (grid: none)
        assert N_BLOCKS * BLOCK - len(tokens) == (0 if sampling == "grid" else BLOCK)
    assert len(offsets) > 1 if sampling == "offset" else offsets == {0}


def test_grid_order_is_the_loops_historic_permutation():
    sampler = WindowSampler(N_BLOCKS, seed=5)
    sampler.set_epoch(2)
    g = torch.Generator().manual_seed(5 * 1_000_003 + 2)
    assert [i for _, i in sampler] == torch.randperm(N_BLOCKS, generator=g).tolist()


def test_random_windows_are_seeded_stream_slices():
    ds = EpochWindows(_grid(), "random", seed=1)
    sampler = WindowSampler(len(ds), seed=1)
    first, again, other = _epoch(ds, sampler, 0), _epoch(EpochWindows(_grid(), "random", 1), sampler, 0), None
    _assert_slices(first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # a function of (seed, epoch) only
    other = _epoch(ds, sampler, 1)
    assert {int(w[0]) for w in first} != {int(w[0]) for w in other}
    starts = {int(w[0]) for e in range(20) for w in _epoch(ds, sampler, e)}
    assert any(s % BLOCK for s in starts) and max(starts) <= (N_BLOCKS - 1) * BLOCK


def test_two_process_batch_sharding_covers_each_epoch_once():
    from accelerate.data_loader import BatchSamplerShard

    ds = EpochWindows(_grid(n_blocks=41), "offset", seed=0)
    for epoch in range(3):
        per_process = []
        for rank in range(2):
            sampler = WindowSampler(len(ds), seed=0)
            sampler.set_epoch(epoch)
            shard = BatchSamplerShard(BatchSampler(sampler, 4, drop_last=True), num_processes=2, process_index=rank)
            loader = DataLoader(ds, batch_sampler=shard)
            per_process.append(torch.cat([b["input_ids"].reshape(-1) for b in loader]))
        both = torch.cat(per_process)
        assert len(set(per_process[0].tolist()) & set(per_process[1].tolist())) == 0
        assert len(both) == len(set(both.tolist())) == (len(ds) // 8) * 8 * BLOCK  # full global batches, once


def test_resume_mid_epoch_replays_the_same_windows():
    from accelerate.data_loader import SkipBatchSampler

    ds = EpochWindows(_grid(), "offset", seed=4)
    sampler = WindowSampler(len(ds), seed=4)
    sampler.set_epoch(3)
    full = [b["input_ids"] for b in DataLoader(ds, batch_sampler=BatchSampler(sampler, 2, drop_last=True))]
    fresh = WindowSampler(len(ds), seed=4)  # a new process: nothing carried over but (seed, epoch)
    fresh.set_epoch(3)
    skipped = DataLoader(ds, batch_sampler=SkipBatchSampler(BatchSampler(fresh, 2, drop_last=True), 3))
    rest = [b["input_ids"] for b in skipped]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:]))


def test_bad_sampling_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown sampling 'windows'; choose one of grid, offset, random"):
        EpochWindows(_grid(), "windows", seed=0)
    with pytest.raises(ValueError, match="needs at least 2 training blocks"):
        EpochWindows(_grid(n_blocks=1), "offset", seed=0)


@pytest.mark.parametrize("sampling", ["offset", "random"])
def test_a_datasets_batch_read_equals_the_row_by_row_windows(sampling):
    from datasets import Dataset

    rows = _grid()
    packed = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows]}).with_format("torch", columns=["input_ids"])
    by_rows, batched = EpochWindows(rows, sampling, seed=2), EpochWindows(packed, sampling, seed=2)
    sampler = WindowSampler(len(by_rows), seed=2)
    sampler.set_epoch(1)
    keys = list(sampler)
    got = batched.__getitems__(keys)  # what the DataLoader calls for a batch
    assert all(torch.equal(g["input_ids"], by_rows[k]["input_ids"]) for g, k in zip(got, keys))
    assert all(g["input_ids"].dtype == torch.long for g in got)
